"""Configured SIP headers a capture row keeps: custom headers and A-leg correlation headers.

Pure code. The consumer builds one `HeaderExtraction` from its settings and hands it to
`build_row` for every record:

* custom headers (heplify-server's ``CustomHeader``): the value of each configured header
  found in a SIP message is stored in ``data_header`` under the configured name, so that
  homer-app can search it (``data_header->>'X-CID'``), and in the typed ``custom_headers``
  jsonb column (migrations/0006) for SQL.
* A-leg headers (heplify-server's ``AlegIDs``): when a packet carries no HEP correlation
  chunk, the first configured header found (in the configured order) gives
  ``protocol_header.correlation_id``, which homer-app's correlation mapping looks up as the
  other leg's ``sid``; without one the Call-ID does, as heplify-server derives it.

A rule is ``NAME`` or ``NAME,REGEX`` (heplify-server's ``AlegIDs`` syntax). Names match
case-insensitively, compact forms included (``i`` is Call-ID). With a regex the stored
value is its first group (the whole match when it has none); a value the regex does not
match is not stored and counted as a regex miss. A header repeated in one message gives
its first value, as every field the parser reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

from pipeline.sip import COMPACT_HEADERS

__all__ = [
    "A_LEG",
    "CUSTOM",
    "RESERVED_KEYS",
    "HeaderExtraction",
    "HeaderRule",
    "header_extraction",
    "parse_header_rule",
]

#: The `use` label of the counters: what a rule's value was for.
CUSTOM: Final = "custom"
A_LEG: Final = "a_leg"

#: Keys a custom header may not take. homer-app merges protocol_header, data_header and
#: a row's own fields into one object; a key in two of them becomes an array there and
#: breaks its UI (data/service/search.go: dataElement.Merge).
RESERVED_KEYS: Final = frozenset({
    # protocol_header (pipeline.storage.rows._protocol_header)
    "protocolFamily", "protocol", "srcIp", "dstIp", "srcPort", "dstPort", "timeSeconds",
    "timeUseconds", "payloadType", "captureId", "correlation_id", "transport",
    "receiverId", "nodeName", "capturePass",
    # data_header of SIP and non-SIP rows
    "callid", "method", "cseq", "ruri_user", "ruri_domain", "from_user", "from_domain",
    "from_tag", "to_user", "to_domain", "to_tag", "contact_user", "contact_domain",
    "user_agent", "pid_user", "content_type", "reason", "expires", "node", "proto",
    "parse_error",
    # what homer-app adds to each row it shows
    "id", "sid", "create_date", "raw", "dbnode", "profile", "table", "aliasSrc",
    "aliasDst", "uuid", "create_ts", "micro_ts",
})

_is_token = re.compile(r"[A-Za-z0-9.!%*_+`'~-]+").fullmatch


@dataclass(frozen=True, slots=True)
class HeaderRule:
    """One configured header: `key` as configured (its JSON key), `name` as the SIP
    parser names it (lower case, compact form expanded), an optional regex."""

    key: str
    name: str
    pattern: re.Pattern[str] | None = None

    def extract(self, value: str) -> str | None:
        """The value to store, or None when the regex does not match."""
        pattern = self.pattern
        if pattern is None:
            return value
        match = pattern.search(value)
        if match is None:
            return None
        return match.group(1) if pattern.groups else match.group(0)


def parse_header_rule(spec: str) -> HeaderRule:
    """``NAME`` or ``NAME,REGEX``; ValueError says what is wrong with `spec`."""
    key, sep, regex = spec.partition(",")
    key = key.strip()
    if not _is_token(key):
        raise ValueError(f"{spec!r}: a SIP header name (a token) must come first")
    pattern: re.Pattern[str] | None = None
    if sep:
        try:
            pattern = re.compile(regex)
        except re.error as exc:
            raise ValueError(f"{spec!r}: bad regex: {exc}") from exc
    lower = key.lower()
    return HeaderRule(key, COMPACT_HEADERS.get(lower, lower), pattern)


@dataclass(frozen=True, slots=True, eq=False)
class HeaderExtraction:
    """The rules, and what they did: `counts[(use, key, outcome)]`, outcome being
    ``extracted`` or ``regex_miss`` (read by the consumer's metrics at scrape time)."""

    custom: tuple[HeaderRule, ...] = ()
    a_leg: tuple[HeaderRule, ...] = ()
    counts: dict[tuple[str, str, str], int] = field(default_factory=dict)
    #: The parser names of every rule's header: what `summarise_sip_headers` collects.
    wanted: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "wanted", frozenset(rule.name for rule in (*self.custom, *self.a_leg))
        )

    def _apply(self, use: str, rule: HeaderRule, value: str) -> str | None:
        extracted = rule.extract(value)
        outcome = "extracted" if extracted is not None else "regex_miss"
        counter = (use, rule.key, outcome)
        self.counts[counter] = self.counts.get(counter, 0) + 1
        return extracted

    def custom_values(self, found: dict[str, str]) -> dict[str, str] | None:
        """The custom headers of one message by key; None when it has none of them."""
        values: dict[str, str] | None = None
        for rule in self.custom:
            value = found.get(rule.name)
            if value is None:
                continue
            extracted = self._apply(CUSTOM, rule, value)
            if extracted is not None:
                if values is None:
                    values = {}
                values[rule.key] = extracted
        return values

    def a_leg_id(self, found: dict[str, str]) -> str | None:
        """The correlation id the first A-leg header found gives, if any."""
        for rule in self.a_leg:
            value = found.get(rule.name)
            if value is None:
                continue
            extracted = self._apply(A_LEG, rule, value)
            if extracted:
                return extracted
        return None


def header_extraction(custom: tuple[str, ...] = (), a_leg: tuple[str, ...] = ()
                      ) -> HeaderExtraction:
    """The extraction of the configured rule specs; ValueError names a bad one."""
    custom_rules = tuple(parse_header_rule(spec) for spec in custom)
    keys: set[str] = set()
    names: set[str] = set()
    for rule in custom_rules:
        if rule.key in RESERVED_KEYS:
            raise ValueError(
                f"custom header {rule.key!r}: homer-app already has a field of that name"
            )
        if rule.name in names or rule.key in keys:
            raise ValueError(f"custom header {rule.key!r} is configured twice")
        keys.add(rule.key)
        names.add(rule.name)
    return HeaderExtraction(custom_rules, tuple(parse_header_rule(spec) for spec in a_leg))
