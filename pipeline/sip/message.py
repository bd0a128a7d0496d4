"""The parsed form of one SIP message."""

from __future__ import annotations

from dataclasses import dataclass, fields, make_dataclass
from typing import NamedTuple


@dataclass(frozen=True, slots=True, kw_only=True)
class SipMessage:
    """Facts extracted from a SIP message's start line and headers.

    Strings are kept as they appear on the wire (stripped of surrounding
    whitespace, percent-escapes left alone); absent or empty values are None.
    Via fields come from the topmost Via only.
    """

    is_request: bool
    method: str | None
    status_code: int | None
    reason: str | None
    request_uri: str | None
    ruri_user: str | None
    ruri_domain: str | None
    call_id: str
    cseq_number: int | None
    cseq_method: str | None
    from_display: str | None
    from_user: str | None
    from_domain: str | None
    from_tag: str | None
    to_display: str | None
    to_user: str | None
    to_domain: str | None
    to_tag: str | None
    via_transport: str | None
    via_host: str | None
    via_port: int | None
    via_branch: str | None
    contact_user: str | None
    contact_host: str | None
    contact_port: int | None
    expires: int | None
    user_agent: str | None
    content_type: str | None
    content_length: int | None
    reason_header: str | None
    p_asserted_identity_user: str | None
    headers: tuple[tuple[str, str], ...]

    @property
    def effective_method(self) -> str | None:
        """The method a message belongs to: a response only names it in CSeq."""
        return self.method if self.is_request else self.cseq_method

    @property
    def cseq(self) -> str | None:
        """CSeq in its canonical ``"N METHOD"`` form."""
        if self.cseq_number is None or self.cseq_method is None:
            return None
        return f"{self.cseq_number} {self.cseq_method}"

    def header(self, name: str) -> str | None:
        """Value of the first header called ``name`` (full lower-case name)."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


# A frozen dataclass's __init__ pays one object.__setattr__ call per field
# (about 4 µs for these 32 fields, a quarter of the per-packet budget). The
# parser instead fills this mutable twin, which has the identical slot layout
# because it is generated from SipMessage's own fields, and then retypes the
# instance (``obj.__class__ = SipMessage``), which CPython allows between
# layout-compatible classes. The result is an ordinary, frozen SipMessage.
_SipMessageBuilder: type = make_dataclass(
    "_SipMessageBuilder",
    [(f.name, f.type) for f in fields(SipMessage)],
    slots=True,
    kw_only=True,
    eq=False,
)


class SipSummary(NamedTuple):
    """The `SipMessage` fields a capture row needs (same names, same values).

    `summarise_sip` returns it: a tuple, so it is built without one call per
    field and a row builder can unpack it in one step.
    """

    is_request: bool
    method: str | None
    status_code: int | None
    reason: str | None
    ruri_user: str | None
    ruri_domain: str | None
    call_id: str
    cseq_number: int | None
    cseq_method: str | None
    from_user: str | None
    from_domain: str | None
    from_tag: str | None
    to_user: str | None
    to_domain: str | None
    to_tag: str | None
    via_branch: str | None
    contact_user: str | None
    contact_host: str | None
    expires: int | None
    user_agent: str | None
    content_type: str | None
    reason_header: str | None
    p_asserted_identity_user: str | None

    @property
    def effective_method(self) -> str | None:
        """The method a message belongs to: a response only names it in CSeq."""
        return self.method if self.is_request else self.cseq_method

    @property
    def cseq(self) -> str | None:
        """CSeq in its canonical ``"N METHOD"`` form."""
        if self.cseq_number is None or self.cseq_method is None:
            return None
        return f"{self.cseq_number} {self.cseq_method}"
