"""A SIP message flow as a ladder diagram for the terminal. Pure: text in, text out.

Endpoints ("ip:port") are columns in order of first appearance; each message is one
line with its time relative to the first message, and an arrow from the sender's
column to the receiver's, labelled with the method or the status::

                      192.0.2.10:5060      192.0.2.1:5060
                             |                    |
        +0.000ms             |------INVITE------->|
       +20.000ms             |<----100 Trying-----|
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

_TIME_WIDTH = 14
_MIN_GAP = 16
_MAX_LABEL = 32


@dataclass(frozen=True, slots=True)
class LadderMessage:
    """One captured message: when, from where, to where, and its arrow label."""

    time: datetime
    src: str
    dst: str
    label: str
    leg: str | None = None


def message_label(
    method: str | None, status: int | None, reason: str | None, cseq_method: str | None
) -> str:
    """`INVITE` for a request; `200 OK`, or `200 OK (BYE)` when it answers no INVITE."""
    if method:
        return method
    if status is None:
        return "?"
    text = f"{status} {reason}" if reason else str(status)
    if cseq_method and cseq_method != "INVITE":
        text += f" ({cseq_method})"
    return text


def _shorten(label: str, limit: int) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "~"


def _relative_ms(start: datetime, when: datetime) -> str:
    return f"+{(when - start).total_seconds() * 1000:.3f}ms"


def render_ladder(messages: Sequence[LadderMessage], *, max_label: int = _MAX_LABEL) -> str:
    """The ladder diagram of `messages`, in the order given (sort them by time first)."""
    if not messages:
        return "(no messages)\n"
    endpoints: list[str] = []
    for message in messages:
        for endpoint in (message.src, message.dst):
            if endpoint not in endpoints:
                endpoints.append(endpoint)
    labels = [_shorten(m.label, max_label) for m in messages]
    gap = max(_MIN_GAP, max(len(label) for label in labels) + 6,
              max(len(e) for e in endpoints) + 2)
    first = len(endpoints[0])
    lanes = [_TIME_WIDTH + first // 2 + 2 + i * gap for i in range(len(endpoints))]
    width = lanes[-1] + 1
    legs = list(dict.fromkeys(m.leg for m in messages if m.leg))
    show_legs = len(legs) > 1

    def blank() -> list[str]:
        line = [" "] * width
        for x in lanes:
            line[x] = "|"
        return line

    header = [" "] * (width + gap)
    for name, x in zip(endpoints, lanes, strict=True):
        start = x - len(name) // 2
        header[start : start + len(name)] = name
    out = ["".join(header).rstrip(), "".join(blank()).rstrip()]
    start_time = messages[0].time
    for message, label in zip(messages, labels, strict=True):
        line = blank()
        stamp = _relative_ms(start_time, message.time).rjust(_TIME_WIDTH - 2)
        line[: len(stamp)] = stamp
        a = lanes[endpoints.index(message.src)]
        b = lanes[endpoints.index(message.dst)]
        if a == b:
            text = f"<-- {label}"
            line[a + 1 : a + 1 + len(text)] = text
        else:
            low, high = min(a, b), max(a, b)
            span = high - low - 1
            body = ["-"] * span
            if a < b:
                body[-1] = ">"
            else:
                body[0] = "<"
            offset = (span - len(label)) // 2
            body[offset : offset + len(label)] = label
            line[low + 1 : high] = body
        text = "".join(line).rstrip()
        if show_legs and message.leg:
            text += f"   [leg {legs.index(message.leg) + 1}]"
        out.append(text)
    if show_legs:
        out.append("")
        out += [f"leg {n}: {leg}" for n, leg in enumerate(legs, 1)]
    return "\n".join(out) + "\n"
