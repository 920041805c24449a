"""The local platform's replica output ring (autoscaler/local/logs.py): bounded in bytes, followed live."""

from __future__ import annotations

import pytest

from autoscaler.local.logs import MAX_LINE_BYTES, SideLog


def test_ring_keeps_the_last_bytes():
    log = SideLog(max_bytes=100)
    for i in range(50):
        log.append("r1", f"line {i:02d}\n".encode())
    kept = [x.text for x in log.tail()]
    assert kept[-1] == "line 49" and len(kept) == 12  # 8 bytes per line: 12 fit in 100
    assert [x.text for x in log.tail(2)] == ["line 48", "line 49"]
    assert log.tail(0) == []


def test_long_lines_are_cut_and_bad_bytes_replaced():
    log = SideLog()
    log.append("r1", b"x" * (MAX_LINE_BYTES * 3) + b"\n")
    log.append("r1", b"\xff\xfe ok\r\n")
    long, bad = log.tail()
    assert len(long.text) == MAX_LINE_BYTES and bad.text == "\ufffd\ufffd ok"
    assert bad.render() == "[r1] \ufffd\ufffd ok"


async def test_followers_get_new_lines_then_the_end():
    log = SideLog()
    log.append("r1", b"before\n")
    q = log.follow()
    log.append("r2", b"after\n")
    assert (await q.get()).text == "after"
    log.close()
    assert await q.get() is None


async def test_a_slow_follower_loses_lines_not_the_end(monkeypatch):
    monkeypatch.setattr("autoscaler.local.logs.FOLLOWER_QUEUE", 3)
    log = SideLog()
    q = log.follow()
    for i in range(10):
        log.append("r1", f"{i}\n".encode())
    assert log.dropped[id(q)] == 7
    log.close()
    got = [q.get_nowait() for _ in range(q.qsize())]
    assert got[-1] is None


def test_max_bytes_must_be_positive():
    with pytest.raises(ValueError):
        SideLog(max_bytes=0)


