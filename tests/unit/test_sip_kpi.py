"""SIP KPIs (pipeline.sip.kpi) over realistic flows and arbitrary message streams."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.consumer.kpi_rows import node_of, observe_rows
from pipeline.sip.kpi import (
    CALL_OUTCOMES,
    COMMON_CODES,
    METHODS,
    OTHER,
    REGISTRATION_OUTCOMES,
    KpiLimits,
    Observations,
    SipKpi,
    code_label,
)
from tests import flows
from tests.kpi_support import START_US, rows_of

NODE = "2042"


def totals(counts: dict[tuple[str, str], int]) -> dict[str, int]:
    out: Counter[str] = Counter()
    for (_node, outcome), n in counts.items():
        out[outcome] += n
    return dict(out)


def test_every_flow_gives_its_outcome_and_delays() -> None:
    # A timeout of 60 s: the unanswered INVITE (no_final, at 50 s) is closed once the
    # partition's capture time passes 110 s (auth_challenged's BYE, at 205 s).
    kpi = SipKpi(KpiLimits(timeout=60))
    out = observe_rows(kpi, rows_of(flows.all_flows(START_US)))
    assert totals(out.call_setups) == {
        # b2bua a-leg and b-leg, reinvite's initial INVITE, forked, auth's 2nd INVITE
        "answered": 5, "busy": 1, "cancelled": 1, "client_failure": 2,
        "auth_challenge": 1, "no_final_response": 1,
    }
    assert totals(out.registrations) == {"auth_challenge": 3, "success": 1, "failure": 1}
    assert out.expired == {"timeout": 1}
    assert kpi.pending() == 0
    srd = sorted(round(s, 6) for _n, s in out.session_delays)
    # b2bua b-leg 0.485, a-leg 0.505; busy 0.4; cancelled 0.3; reinvite 183 after 0.8;
    # forked: bob's 180 after 0.3; auth: 180 0.66 after the second INVITE.
    assert srd == [0.3, 0.3, 0.4, 0.485, 0.505, 0.66, 0.8]
    assert [(n, round(s, 6)) for n, s in out.registration_delays] == [(NODE, 0.01)]
    assert {node for node, *_ in out.messages} == {NODE}
    assert sum(out.messages.values()) == sum(
        1 for c in flows.all_flows(START_US) if c.proto_type == 1
    )
    assert out.messages[(NODE, "INVITE", "response", "180")] == 9
    assert out.messages[(NODE, "REGISTER", "response", "401")] == 3


def test_without_a_timeout_passing_the_unanswered_call_stays_pending() -> None:
    kpi = SipKpi(KpiLimits(timeout=3600))
    out = observe_rows(kpi, rows_of(flows.all_flows(START_US)))
    assert "no_final_response" not in totals(out.call_setups)
    assert kpi.pending() == 1
    kpi.forget(0)
    assert kpi.pending() == 0


def test_retransmissions_and_second_captures_do_not_restart_the_clock() -> None:
    kpi = SipKpi()
    out = observe_rows(kpi, rows_of(flows.forked(START_US)))
    # Three INVITE captures (alice->proxy, proxy->bob, proxy->carol): one transaction,
    # timed from the first; bob's late 487 belongs to a finished transaction.
    assert totals(out.call_setups) == {"answered": 1}
    assert [round(s, 6) for _n, s in out.session_delays] == [0.3]


def test_re_invites_are_not_call_setups() -> None:
    out = observe_rows(SipKpi(), rows_of(flows.reinvite(START_US)))
    assert totals(out.call_setups) == {"answered": 1}
    assert len(out.session_delays) == 1


def test_capacity_drops_the_oldest_pending_transaction() -> None:
    kpi = SipKpi(KpiLimits(max_pending=1))
    captures = flows.no_final(START_US) + flows.busy(START_US + 5_000_000)
    out = observe_rows(kpi, rows_of(captures))
    assert out.expired == {"capacity": 1}
    assert totals(out.call_setups) == {"busy": 1}


def test_nodes_beyond_the_limit_share_a_label() -> None:
    kpi = SipKpi(KpiLimits(max_nodes=2))
    labels = [kpi.node_label(str(n)) for n in range(5)]
    assert labels == ["0", "1", OTHER, OTHER, OTHER]
    assert kpi.node_label("1") == "1"


def test_node_is_the_node_name_else_the_capture_id() -> None:
    assert node_of("sbc-1", 7) == "sbc-1"
    assert node_of(None, 7) == node_of("", 7) == "7"
    assert node_of(None, None) == "unknown"


@pytest.mark.parametrize(
    ("status", "label"),
    [(200, "200"), (486, "486"), (299, "2xx"), (499, "4xx"), (699, "6xx"), (99, OTHER),
     (700, OTHER), (None, OTHER)],
)
def test_codes_are_common_codes_or_classes(status: int | None, label: str) -> None:
    assert code_label(status) == label


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError):
        KpiLimits(timeout=0)
    with pytest.raises(ValueError):
        KpiLimits(max_pending=0)


# --- properties over arbitrary streams ------------------------------------------------

_message = st.tuples(
    st.integers(0, 2),  # partition
    st.sampled_from(["a", "b", "c", "d"]),  # node
    st.booleans(),  # request?
    st.sampled_from(["INVITE", "REGISTER", "OPTIONS", "BYE", "FOO"]),  # CSeq method
    st.sampled_from([100, 180, 183, 200, 401, 486, 487, 503, 603, 799]),
    st.integers(1, 3),  # CSeq number
    st.sampled_from(["c1", "c2", "c3", "c4", "c5"]),  # Call-ID
    st.booleans(),  # in dialog
    st.floats(0, 50, allow_nan=False),  # seconds since the previous message
)

_LABEL_CODES = {str(c) for c in COMMON_CODES} | {f"{k}xx" for k in range(1, 7)} | {OTHER, ""}


@settings(max_examples=300, deadline=None)
@given(st.lists(_message, max_size=80), st.integers(1, 4), st.integers(1, 3),
       st.floats(1, 100))
def test_state_stays_bounded_and_every_transaction_is_accounted_for(
    messages: list[tuple[int, str, bool, str, int, int, str, bool, float]],
    max_pending: int, max_nodes: int, timeout: float,
) -> None:
    kpi = SipKpi(KpiLimits(timeout=timeout, max_pending=max_pending, max_nodes=max_nodes))
    out = Observations()
    now = 0.0
    opened = 0
    for partition, node, is_request, method, status, cseq, call_id, in_dialog, step in messages:
        now += step
        key = (call_id, cseq, method)
        state = kpi._partitions.get(partition)
        before = state.pending.get(key) if state is not None else None
        kpi.observe(
            out, partition=partition, node=node, method=method if is_request else None,
            status=None if is_request else status, cseq_number=cseq, cseq_method=method,
            call_id=call_id, in_dialog=in_dialog, capture_time=now,
        )
        after = kpi._partitions[partition].pending.get(key)
        if after is not None and after is not before:
            opened += 1
            assert is_request and method in ("INVITE", "REGISTER")
            assert not (method == "INVITE" and in_dialog)
        assert all(len(s.pending) <= max_pending for s in kpi._partitions.values())
    closed = sum(out.call_setups.values()) + sum(out.registrations.values())
    # Every transaction opened ends with an outcome, is dropped for capacity, or waits.
    assert closed + out.expired.get("capacity", 0) + kpi.pending() == opened
    assert sum(out.messages.values()) == len(messages)
    nodes = {key[0] for key in out.messages}
    assert len(nodes - {OTHER}) <= max_nodes
    assert {key[1] for key in out.messages} <= METHODS | {OTHER}
    assert {key[3] for key in out.messages} <= _LABEL_CODES
    assert {o for _n, o in out.call_setups} <= set(CALL_OUTCOMES)
    assert {o for _n, o in out.registrations} <= set(REGISTRATION_OUTCOMES)
    assert all(s >= 0 for _n, s in out.session_delays + out.registration_delays)
