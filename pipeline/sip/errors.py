"""Errors raised by the SIP parser."""

from __future__ import annotations

from typing import Final

EMPTY: Final = "empty"
BAD_START_LINE: Final = "bad_start_line"
BAD_STATUS_CODE: Final = "bad_status_code"
MISSING_CALL_ID: Final = "missing_call_id"
MISSING_CSEQ: Final = "missing_cseq"
BAD_CSEQ: Final = "bad_cseq"

#: Every value ``SipParseError.reason`` can take; stable, meant to be stored.
REASONS: Final = frozenset(
    {EMPTY, BAD_START_LINE, BAD_STATUS_CODE, MISSING_CALL_ID, MISSING_CSEQ, BAD_CSEQ}
)


class SipParseError(ValueError):
    """The payload is not a SIP message we can index.

    ``reason`` is a short machine-readable code (one of ``REASONS``) so the
    pipeline can store the raw message together with why it was not parsed.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail

    def __reduce__(self) -> tuple[type[SipParseError], tuple[str, str]]:
        # The default reduce replays self.args, which holds the formatted
        # message, so a pickled error (e.g. across a process pool) would come
        # back with the message as its reason.
        return (type(self), (self.reason, self.detail))
