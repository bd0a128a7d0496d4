"""SIP KPIs from stored messages: counts, transaction outcomes and request delays.

Pure code: no I/O, no clock of its own (time is the messages' capture time), no
metrics library. `SipKpi` is fed one SIP message at a time (its partition, a few
parsed fields and its capture time) and adds what it saw to an `Observations`, which
the consumer turns into Prometheus samples once per batch.

What is measured (the names heplify-server's operators know are in brackets; its
metric/prometheus.go keeps the last delay in a gauge, this keeps histograms):

* every message, by node, CSeq method, request or response, response code
  [``heplify_method_response``];
* the outcome of each REGISTER transaction and of each initial INVITE transaction
  (one without a To tag: re-INVITEs are not call setups);
* session request delay [``heplify_kpi_srd``]: an initial INVITE to its first 18x or
  2xx response, timed from the first capture of the INVITE (retransmissions do not
  restart the clock);
* registration request delay [``heplify_kpi_rrd``]: a REGISTER to its 2xx response.

(Both are RFC 6076's names; heplify-server times 180-183 and 200 only.)

A transaction is one (Call-ID, CSeq number, CSeq method): the request and its
responses, seen at any capture point (a call crossing two capture points is one
transaction, timed from its first capture to the first response captured). The
receiver keys Kafka records by Call-ID, so a call's messages share a partition and
are read in order: state per partition is enough. That state is bounded: a pending
transaction without a final response for `KpiLimits.timeout` seconds of capture time
(the newest capture time seen on its partition) is closed as ``no_final_response``;
beyond `KpiLimits.max_pending` transactions per partition the oldest is dropped
without an outcome. Both are counted in `Observations.expired`. A finished
transaction is remembered for `KpiLimits.linger` seconds so that retransmissions and
the same message captured at a second point are not counted as new transactions.

Labels stay bounded: response codes are the common codes or their class (``4xx``),
methods outside the standard ones are ``other``, and at most `KpiLimits.max_nodes`
nodes get a label of their own (the others share ``other``). No Call-ID or user ever
becomes a label.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

#: Methods of RFC 3261 and its extensions that get a label; any other is "other".
METHODS: Final = frozenset({
    "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "SUBSCRIBE",
    "NOTIFY", "PUBLISH", "INFO", "REFER", "MESSAGE", "UPDATE",
})
#: Response codes that get a label of their own; any other is its class ("4xx").
COMMON_CODES: Final = frozenset({
    100, 180, 181, 182, 183, 200, 202, 204, 301, 302, 400, 401, 403, 404, 405, 407, 408,
    415, 420, 480, 481, 482, 483, 484, 486, 487, 488, 491, 500, 501, 502, 503, 504, 600,
    603, 604, 606,
})
OTHER: Final = "other"

#: Call setup outcomes (initial INVITE transactions).
CALL_OUTCOMES: Final = (
    "answered", "redirected", "auth_challenge", "busy", "cancelled", "declined",
    "client_failure", "server_failure", "global_failure", "no_final_response",
)
#: Registration outcomes (REGISTER transactions).
REGISTRATION_OUTCOMES: Final = ("success", "auth_challenge", "failure", "no_final_response")
#: Reasons of Observations.expired.
EXPIRED_REASONS: Final = ("timeout", "capacity")

_INVITE: Final = "INVITE"
_REGISTER: Final = "REGISTER"
_REQUEST: Final = "request"
_SWEEP_INTERVAL: Final = 1.0
_RESPONSE: Final = "response"


def _code_label(status: int | None) -> str:
    if status is None:
        return OTHER
    if status in COMMON_CODES:
        return str(status)
    if 100 <= status <= 699:
        return f"{status // 100}xx"
    return OTHER


_CODE_LABELS: Final = {status: _code_label(status) for status in range(100, 700)}


def code_label(status: int | None) -> str:
    """A response code as a bounded label: itself if common, else its class."""
    label = _CODE_LABELS.get(status)  # type: ignore[arg-type]
    return label if label is not None else _code_label(status)


def method_label(method: str | None) -> str:
    return method if method in METHODS else OTHER


def call_outcome(status: int) -> str:
    """The outcome of an initial INVITE answered with the final `status`."""
    if status < 300:
        return "answered"
    if status < 400:
        return "redirected"
    if status in (401, 407):
        return "auth_challenge"
    if status in (486, 600):
        return "busy"
    if status == 487:
        return "cancelled"
    if status == 603:
        return "declined"
    if status < 500:
        return "client_failure"
    if status < 600:
        return "server_failure"
    return "global_failure"


def registration_outcome(status: int) -> str:
    """The outcome of a REGISTER answered with the final `status`."""
    if status < 300:
        return "success"
    if status in (401, 407):
        return "auth_challenge"
    return "failure"


@dataclass(frozen=True, slots=True)
class KpiLimits:
    """Bounds of the per-partition state (capture-time seconds and entries)."""

    # A call may ring for minutes before its final response.
    timeout: float = 300.0
    max_pending: int = 20_000
    max_nodes: int = 100
    # Timer B/F (64 * T1): retransmissions of a transaction end within 32 s.
    linger: float = 32.0

    def __post_init__(self) -> None:
        if not self.timeout > 0 or not self.linger >= 0:
            raise ValueError("timeout must be positive and linger not negative")
        if self.max_pending < 1 or self.max_nodes < 1:
            raise ValueError("max_pending and max_nodes must be at least 1")


@dataclass(slots=True)
class Observations:
    """What a batch of messages showed, aggregated by label values."""

    # (node, method, "request"|"response", code label or "") -> messages
    messages: dict[tuple[str, str, str, str], int] = field(default_factory=dict)
    # (node, outcome) -> transactions
    registrations: dict[tuple[str, str], int] = field(default_factory=dict)
    call_setups: dict[tuple[str, str], int] = field(default_factory=dict)
    # (node, seconds)
    session_delays: list[tuple[str, float]] = field(default_factory=list)
    registration_delays: list[tuple[str, float]] = field(default_factory=list)
    # reason -> pending transactions dropped without a final response
    expired: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Transaction:
    started: float
    node: str
    method: str  # INVITE or REGISTER
    timed: bool = False  # the delay was observed already


@dataclass(slots=True)
class _PartitionState:
    # Insertion order is start order (capture time, roughly): the oldest comes first.
    pending: dict[tuple[str, int | None, str], _Transaction] = field(default_factory=dict)
    # Finished transactions -> when they finished; insertion order again.
    finished: dict[tuple[str, int | None, str], float] = field(default_factory=dict)
    newest: float = float("-inf")
    # The state is swept for what aged out at most once per second of capture time.
    next_sweep: float = float("-inf")


def _count(counts: dict[tuple[str, str], int], key: tuple[str, str]) -> None:
    counts[key] = counts.get(key, 0) + 1


class SipKpi:
    """Per-partition transaction state and the KPIs it yields."""

    __slots__ = ("_nodes", "_partitions", "limits")

    def __init__(self, limits: KpiLimits | None = None) -> None:
        self.limits = limits or KpiLimits()
        self._partitions: dict[int, _PartitionState] = {}
        self._nodes: dict[str, str] = {}

    def node_label(self, node: str) -> str:
        """`node` itself for the first `max_nodes` nodes seen, else "other"."""
        label = self._nodes.get(node)
        if label is None:
            label = node if len(self._nodes) < self.limits.max_nodes else OTHER
            if label != OTHER:
                self._nodes[node] = label
        return label

    def pending(self) -> int:
        """Transactions awaiting a final response, over every partition."""
        return sum(len(state.pending) for state in self._partitions.values())

    def forget(self, partition: int) -> None:
        """Drop a partition's state (it moved to another consumer)."""
        self._partitions.pop(partition, None)

    def observe(
        self,
        out: Observations,
        partition: int,
        node: str,
        method: str | None,
        status: int | None,
        cseq_number: int | None,
        cseq_method: str,
        call_id: str,
        in_dialog: bool,
        capture_time: float,
    ) -> None:
        """One SIP message: a request (`method` set) or a response (`status` set)."""
        label = self._nodes.get(node) or self.node_label(node)
        state = self._partitions.get(partition)
        if state is None:
            state = self._partitions[partition] = _PartitionState()
        if capture_time > state.newest:
            state.newest = capture_time
            if capture_time >= state.next_sweep:
                state.next_sweep = capture_time + _SWEEP_INTERVAL
                self._expire(state, out)
        kind = cseq_method if cseq_method in METHODS else OTHER
        if method is not None:
            messages_key = (label, kind, _REQUEST, "")
        else:
            messages_key = (label, kind, _RESPONSE, code_label(status))
        messages = out.messages
        messages[messages_key] = messages.get(messages_key, 0) + 1

        if cseq_method != _INVITE and cseq_method != _REGISTER:
            return
        key = (call_id, cseq_number, cseq_method)
        if method is not None:
            if method != cseq_method or key in state.pending or key in state.finished:
                return  # a retransmission, a second capture, or a malformed CSeq
            if method == _INVITE and in_dialog:
                return  # a re-INVITE: not a call setup
            if len(state.pending) >= self.limits.max_pending:
                del state.pending[next(iter(state.pending))]
                out.expired["capacity"] = out.expired.get("capacity", 0) + 1
            state.pending[key] = _Transaction(capture_time, label, method)
            return
        if status is None:
            return
        transaction = state.pending.get(key)
        if transaction is None:
            return  # its request was not seen (or it is finished)
        delay = max(0.0, capture_time - transaction.started)
        if transaction.method == _INVITE:
            if not transaction.timed and (180 <= status <= 189 or 200 <= status <= 299):
                transaction.timed = True
                out.session_delays.append((transaction.node, delay))
            if status >= 200:
                _count(out.call_setups, (transaction.node, call_outcome(status)))
                self._finish(state, key, capture_time)
        elif status >= 200:
            if status <= 299:
                out.registration_delays.append((transaction.node, delay))
            _count(out.registrations, (transaction.node, registration_outcome(status)))
            self._finish(state, key, capture_time)

    def _finish(
        self, state: _PartitionState, key: tuple[str, int | None, str], when: float
    ) -> None:
        del state.pending[key]
        if len(state.finished) >= self.limits.max_pending:
            del state.finished[next(iter(state.finished))]
        state.finished[key] = when

    def _expire(self, state: _PartitionState, out: Observations) -> None:
        """Close what is older than the limits allow, by the partition's newest time."""
        pending = state.pending
        if pending:
            deadline = state.newest - self.limits.timeout
            while pending:
                key = next(iter(pending))
                transaction = pending[key]
                if transaction.started >= deadline:
                    break
                del pending[key]
                out.expired["timeout"] = out.expired.get("timeout", 0) + 1
                counts = out.call_setups if transaction.method == _INVITE else out.registrations
                _count(counts, (transaction.node, "no_final_response"))
        finished = state.finished
        if finished:
            deadline = state.newest - self.limits.linger
            while finished:
                key = next(iter(finished))
                if finished[key] >= deadline:
                    break
                del finished[key]
