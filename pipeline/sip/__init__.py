"""Pure SIP parsing: no I/O, no logging, no clock."""

from .callid import scan_call_id
from .errors import REASONS, SipParseError
from .message import SipMessage, SipSummary
from .parser import COMPACT_HEADERS, parse_sip, summarise_sip, summarise_sip_headers

__all__ = [
    "COMPACT_HEADERS",
    "REASONS",
    "SipMessage",
    "SipParseError",
    "SipSummary",
    "parse_sip",
    "scan_call_id",
    "summarise_sip",
    "summarise_sip_headers",
]
