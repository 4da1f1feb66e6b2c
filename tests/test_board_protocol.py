"""Move encoding and reply splitting (pure functions, no port)."""

from __future__ import annotations

import math

import pytest

from robotd.board.protocol import Reply, ReplyParser, encode_move


def test_single_channel_move() -> None:
    assert encode_move({1: 1539}) == b"#1P1539\r\n"


def test_group_move_is_sorted_rounded_and_timed() -> None:
    assert encode_move({2: 666.4, 1: 1000.6}, time_ms=1000) == b"#1P1001#2P666T1000\r\n"


def test_limits_are_inclusive() -> None:
    assert encode_move({1: 500, 32: 2500}, time_ms=0) == b"#1P500#32P2500T0\r\n"


@pytest.mark.parametrize(
    "pulses_us",
    [{0: 1500}, {33: 1500}, {True: 1500}, {1.0: 1500}, {1: 499}, {1: 2501}, {1: math.nan}, {1: math.inf}, {}],
)
def test_invalid_moves_raise(pulses_us: dict) -> None:
    with pytest.raises(ValueError):
        encode_move(pulses_us)


@pytest.mark.parametrize("time_ms", [-1, 1.5, True])
def test_invalid_time_raises(time_ms: object) -> None:
    with pytest.raises(ValueError):
        encode_move({1: 1500}, time_ms=time_ms)  # type: ignore[arg-type]


def test_parser_splits_replies() -> None:
    parser = ReplyParser()
    replies = parser.feed(b"RT\x17OK\r\nOK\r\nERR 3\r\n")
    assert replies == [Reply("handshake", b"\x17"), Reply("ok", b"OK"), Reply("ok", b"OK"), Reply("other", b"ERR 3")]


def test_parser_handles_every_chunking() -> None:
    stream = b"\x00\xffRT\x17\r\nOK\r\nxyzOK\r\nO"
    expected = ReplyParser().feed(stream)
    assert [r.kind for r in expected] == ["other", "handshake", "ok", "other", "ok"]
    for size in range(1, len(stream) + 1):
        parser = ReplyParser()
        got = [r for i in range(0, len(stream), size) for r in parser.feed(stream[i : i + size])]
        assert got == expected, size


def test_parser_waits_for_the_handshake_byte() -> None:
    parser = ReplyParser()
    assert parser.feed(b"R") == []
    assert parser.feed(b"T") == []
    assert parser.feed(b"\r") == [Reply("handshake", b"\r")]


def test_parser_bounds_unterminated_garbage() -> None:
    parser = ReplyParser()
    assert parser.feed(b"x" * 100) == []
    replies = parser.feed(b"x" * 200)
    assert [r.kind for r in replies] == ["other"] and len(replies[0].data) == 300
    assert parser.feed(b"OK") == [Reply("ok", b"OK")]


def test_discard_partial_forgets_half_a_reply() -> None:
    parser = ReplyParser()
    assert parser.feed(b"OK\r\nO") == [Reply("ok", b"OK")]
    parser.discard_partial()
    assert parser.feed(b"K\r\n") == [Reply("other", b"K")]
