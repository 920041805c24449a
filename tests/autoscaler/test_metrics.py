"""Unit tests of the window collector (autoscaler.metrics): Knative's one-second bucket averages,
HA sums, same-source merging, rps, late reports and window changes; time passed in, exact numbers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.metrics import MetricCollector


def feed(c: MetricCollector, values: dict[int, float], source: str = "a", offset: float = 0.5) -> None:
    for sec, v in sorted(values.items()):
        c.record(sec + offset, source, concurrency=v, requests=v)


def test_empty_collector_is_zero():
    c = MetricCollector(stable_window=60, panic_window=6)
    assert c.stable_and_panic(100.0) == (0.0, 0.0)
    assert c.is_empty(100.0) and c.last_activity() is None


def test_partly_filled_window_averages_since_the_first_report():
    c = MetricCollector(stable_window=10, panic_window=2)
    c.record(0.5, "a", concurrency=4, requests=0)
    assert c.stable_and_panic(0.9) == (4.0, 4.0)
    c.record(1.5, "a", concurrency=8, requests=0)
    assert c.stable_and_panic(1.6) == (6.0, 6.0)
    c.record(2.5, "a", concurrency=12, requests=0)
    assert c.stable_and_panic(2.7) == (8.0, 10.0)
    feed(c, {s: 10.0 for s in range(3, 12)})
    assert c.stable_and_panic(11.5) == (10.2, 10.0)  # buckets 2..11: (12 + 9 * 10) / 10


def test_seconds_without_a_report_between_reports_count_as_zero():
    c = MetricCollector(stable_window=60, panic_window=3)
    feed(c, {0: 6, 1: 6, 2: 6, 4: 6})
    assert c.stable_and_panic(4.5) == (4.8, 4.0)  # 24 / 5 seconds; panic: (6 + 0 + 6) / 3
    short = MetricCollector(stable_window=60, panic_window=2)
    feed(short, {0: 6, 1: 6, 2: 6, 4: 6})
    assert short.stable_and_panic(4.5) == (4.8, 6.0)  # a 2 s gap restarts a 2 s window


def test_silence_at_the_end_shrinks_the_window_until_it_is_empty():
    c = MetricCollector(stable_window=10, panic_window=2)
    feed(c, {s: 10.0 for s in range(10)})
    assert c.stable_and_panic(12.5) == (10.0, 0.0)  # buckets 3..9 over 7 seconds; panic expired
    assert c.stable_and_panic(18.9) == (10.0, 0.0)
    assert c.stable_and_panic(19.0) == (0.0, 0.0)  # a whole stable window without a report
    assert not c.is_empty(19.0) and c.is_empty(20.0)


def test_reported_zeros_pull_the_average_down():
    c = MetricCollector(stable_window=10, panic_window=2)
    feed(c, {s: 10.0 for s in range(10)})
    feed(c, {10: 0.0, 11: 0.0, 12: 0.0})
    assert c.stable_and_panic(12.5) == (7.0, 0.0)


def test_a_silence_of_a_window_restarts_that_window_only():
    c = MetricCollector(stable_window=10, panic_window=2)
    feed(c, {s: 10.0 for s in range(5)})
    feed(c, {7: 10.0})  # 3 s after the last report: >= panic window, < stable window
    assert c.stable_and_panic(7.5) == (7.5, 10.0)  # stable 60 / 8 s; panic restarted at 7
    feed(c, {20: 4.0})  # 13 s later: the stable window restarts too
    assert c.stable_and_panic(20.2) == (4.0, 4.0)


def test_activators_are_summed_in_a_second():
    c = MetricCollector(stable_window=10, panic_window=2)
    c.record(0.2, "activator-1", concurrency=4, requests=1)
    c.record(0.7, "activator-2", concurrency=6, requests=1)
    assert c.stable_and_panic(0.8) == (10.0, 10.0)


def test_same_source_twice_in_a_second_is_averaged_not_summed():
    c = MetricCollector(stable_window=10, panic_window=2)
    c.record(0.5, "a", concurrency=10, requests=0)
    c.record(1.1, "a", concurrency=4, requests=0)
    c.record(1.5, "b", concurrency=6, requests=0)
    c.record(1.9, "a", concurrency=8, requests=0)
    assert c.stable_and_panic(1.95) == (11.0, 11.0)  # second 1: (4 + 8) / 2 + 6 = 12


def test_split_reports_are_time_weighted():
    c = MetricCollector(stable_window=10, panic_window=1)
    # a poke makes the activator report 0.3 s early: 10 for 0.3 s then 0 for 0.7 s
    c.record(0.3, "a", concurrency=10, requests=3, window=0.3)
    c.record(0.99, "a", concurrency=0, requests=0, window=0.7)
    assert c.stable_and_panic(0.99) == (3.0, 3.0)
    c.record(1.5, "a", concurrency=4, requests=0, window=0.5)  # alone: its load-seconds, over 1 s
    assert c.stable_and_panic(1.6) == (2.5, 2.0)
    c.record(2.5, "a", concurrency=5, requests=0, window=3.0)  # a late report covering 3 s: a rate
    assert c.stable_and_panic(2.6) == (pytest.approx(3.333333), 5.0)


def test_a_source_that_stops_contributes_nothing():
    c = MetricCollector(stable_window=10, panic_window=2)
    feed(c, {s: 5.0 for s in range(5)}, source="a")
    feed(c, {s: 5.0 for s in range(5)}, source="b")
    feed(c, {s: 5.0 for s in range(5, 10)}, source="a")
    assert c.stable_and_panic(9.5) == (7.5, 5.0)


def test_rps_averages_request_counts():
    c = MetricCollector(stable_window=10, panic_window=2, metric="rps")
    c.record(0.5, "a", concurrency=1, requests=50)
    c.record(1.5, "a", concurrency=3, requests=150)
    assert c.stable_and_panic(1.9) == (100.0, 100.0)
    assert c.stable_and_panic(1.9, metric="concurrency") == (2.0, 2.0)
    c.record(2.2, "a", concurrency=0, requests=30)
    c.record(2.8, "a", concurrency=0, requests=50)  # same source: (30 + 50) / 2
    c.record(2.5, "b", concurrency=0, requests=20)  # another activator: added
    assert c.stable_and_panic(2.9) == (86.666667, 105.0)


def test_rps_split_report_counts_requests_once():
    c = MetricCollector(stable_window=10, panic_window=1, metric="rps")
    c.record(3.3, "a", concurrency=0, requests=3, window=0.3)
    c.record(3.9, "a", concurrency=0, requests=7, window=0.6)
    assert c.stable_and_panic(3.9) == (10.0, 10.0)


def test_late_reports_inside_a_window_count_older_ones_are_dropped():
    c = MetricCollector(stable_window=10, panic_window=2)
    feed(c, {5: 10.0, 6: 10.0})
    c.record(4.5, "a", concurrency=4, requests=0)  # inside the stable window only
    assert c.stable_and_panic(6.6) == (8.0, 10.0)
    c.record(-10.0, "a", concurrency=1000, requests=0)  # older than every window: ignored
    assert c.stable_and_panic(6.6) == (8.0, 10.0)
    c.record(5.7, "b", concurrency=2, requests=0)
    assert c.stable_and_panic(6.6) == (8.666667, 11.0)


def test_last_activity():
    c = MetricCollector(stable_window=10, panic_window=2)
    c.record(0.5, "a", concurrency=0, requests=0)
    assert c.last_activity() is None
    c.record(3.7, "a", concurrency=2, requests=0)
    assert c.last_activity() == 3.0
    c.record(4.2, "a", concurrency=0, requests=0)
    assert c.last_activity() == 3.0
    c.record(6.1, "b", concurrency=0, requests=1)
    assert c.last_activity() == 6.0
    feed(c, {s: 0.0 for s in range(7, 100)})
    assert c.last_activity() == 6.0


def test_growing_a_window_keeps_only_the_span_it_knew():
    c = MetricCollector(stable_window=10, panic_window=2)
    feed(c, {0: 1, 1: 2, 2: 3, 3: 4, 4: 5})
    assert c.stable_and_panic(4.5) == (3.0, 4.5)
    c.update_windows(10, 6)
    assert (c.stable_window, c.panic_window) == (10.0, 6.0)
    assert c.stable_and_panic(4.5) == (3.0, 4.5)  # buckets 3, 4 only
    feed(c, {5: 6})
    assert c.stable_and_panic(5.5) == (3.5, 5.0)  # panic (4 + 5 + 6) / 3


def test_shrinking_a_window():
    c = MetricCollector(stable_window=10, panic_window=2)
    feed(c, {0: 1, 1: 2, 2: 3, 3: 4, 4: 5, 5: 6})
    c.update_windows(3, 2)
    assert c.stable_and_panic(5.5) == (5.0, 5.5)
    partial = MetricCollector(stable_window=60, panic_window=6)
    feed(partial, {0: 6, 1: 6})
    partial.update_windows(10, 2)
    assert partial.stable_and_panic(1.5) == (6.0, 6.0)  # still over the 2 s of data


def test_resize_with_now_restarts_a_stale_window():
    stale = MetricCollector(stable_window=10, panic_window=2)
    feed(stale, {0: 10.0})
    stale.update_windows(20, 2, now=15.0)
    assert stale.stable_and_panic(15.0) == (0.0, 0.0)
    feed(stale, {16: 5.0})
    assert stale.stable_and_panic(16.5) == (5.0, 5.0)
    kept = MetricCollector(stable_window=10, panic_window=2)
    feed(kept, {0: 10.0})
    kept.update_windows(20, 2)
    feed(kept, {16: 5.0})
    assert kept.stable_and_panic(16.5) == (0.882353, 5.0)  # 15 / 17 s


def test_windows_below_one_second_are_one_bucket():
    c = MetricCollector(stable_window=10, panic_window=0.4, metric="cpu")  # cpu: as concurrency
    assert c.panic_window == 1.0
    c.record(0.5, "a", concurrency=3, requests=100)
    c.record(1.5, "a", concurrency=7, requests=100)
    assert c.stable_and_panic(1.6) == (5.0, 7.0)
    assert c.stable_and_panic(2.0) == (5.0, 0.0)


@settings(max_examples=200, deadline=None)
@given(stable=st.integers(1, 90), panic_pct=st.floats(0.01, 1.0), load=st.floats(0, 500),
       sources=st.integers(1, 3), seconds=st.integers(1, 150), offset=st.floats(0, 0.999))
def test_constant_load_averages_to_the_load(stable: int, panic_pct: float, load: float, sources: int,
                                            seconds: int, offset: float):
    c = MetricCollector(stable_window=stable, panic_window=stable * panic_pct, metric="rps")
    for s in range(seconds):
        for i in range(sources):
            c.record(100 + s + offset, f"act-{i}", concurrency=load, requests=load)
    now = 100 + seconds - 1 + offset
    for metric in ("rps", "concurrency"):
        st_avg, pn_avg = c.stable_and_panic(now, metric=metric)
        assert st_avg == pytest.approx(load * sources, abs=1e-5)
        assert pn_avg == pytest.approx(load * sources, abs=1e-5)
