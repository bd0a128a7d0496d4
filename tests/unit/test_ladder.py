from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pipeline.analysis.formats import OutputFormat, render_rows
from pipeline.analysis.ladder import LadderMessage, message_label, render_ladder

T0 = datetime(2026, 11, 26, 3, 0, tzinfo=UTC)
A, B, C = "10.0.0.1:5060", "10.0.0.2:5060", "10.0.0.3:5080"


def msg(ms: float, src: str, dst: str, label: str, leg: str | None = None) -> LadderMessage:
    return LadderMessage(T0 + timedelta(milliseconds=ms), src, dst, label, leg)


def test_labels() -> None:
    assert message_label("INVITE", None, None, "INVITE") == "INVITE"
    assert message_label(None, 180, "Ringing", "INVITE") == "180 Ringing"
    assert message_label(None, 200, "OK", "BYE") == "200 OK (BYE)"
    assert message_label(None, 200, None, "INVITE") == "200"


def test_columns_arrows_and_relative_times() -> None:
    text = render_ladder([
        msg(0, A, B, "INVITE"),
        msg(20.5, B, A, "100 Trying"),
        msg(30, B, C, "INVITE"),
        msg(1500, C, A, "200 OK"),
    ])
    lines = text.splitlines()
    header = lines[0]
    assert header.index(A) < header.index(B) < header.index(C)
    body = lines[2:]
    assert len(body) == 4
    assert body[0].lstrip().startswith("+0.000ms")
    assert "+20.500ms" in body[1] and "+1500.000ms" in body[3]
    assert "-INVITE-" in body[0]
    # Arrow direction and extent: from the sender's lane to the receiver's.
    first_lane = lines[1].index("|")
    second_lane = lines[1].index("|", first_lane + 1)
    third_lane = lines[1].index("|", second_lane + 1)
    assert body[0][second_lane - 1] == ">" and body[0][first_lane + 1] == "-"
    assert body[1][first_lane + 1] == "<" and body[1][second_lane - 1] == "-"
    assert body[2][third_lane - 1] == ">"
    # A message crossing a lane overwrites its lifeline.
    assert body[3][first_lane + 1] == "<" and body[3][second_lane] != "|"
    assert "200 OK" in body[3]


def test_long_labels_are_shortened_and_legs_listed() -> None:
    text = render_ladder(
        [msg(0, A, B, "INVITE", "leg-a"),
         msg(1, B, A, "100 trying -- your call is important to us", "leg-a"),
         msg(2, B, C, "INVITE", "leg-b")],
        max_label=20,
    )
    assert "100 trying -- your ~" in text and "important" not in text
    assert "[leg 1]" in text and "[leg 2]" in text
    assert text.rstrip().endswith("leg 2: leg-b")


def test_self_message_and_empty() -> None:
    assert "<-- OPTIONS" in render_ladder([msg(0, A, A, "OPTIONS")])
    assert render_ladder([]) == "(no messages)\n"


def test_formats() -> None:
    rows = [{"a": 1, "b": timedelta(seconds=1.5), "t": T0, "n": None}]
    table = render_rows(rows, ["a", "b", "t", "n"], OutputFormat.table)
    assert table.splitlines()[2].split() == ["1", "1.500", "2026-11-26", "03:00:00.000"]
    assert render_rows(rows, ["a", "b", "t", "n"], OutputFormat.csv) == (
        "a,b,t,n\n1,1.5,2026-11-26T03:00:00+00:00,\n")
    assert '"b": 1.5' in render_rows(rows, ["a", "b"], OutputFormat.json)
    assert render_rows([], ["a"], OutputFormat.table) == "(no rows)\n"
