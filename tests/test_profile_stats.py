"""Latency statistics against numpy on known data, the CV flag and the stopping rule."""
import itertools

import numpy as np
import pytest

from edgekd.profile.stats import StopRule, summarize, time_until_stable


def test_percentiles_mean_std_against_numpy_and_hand_values():
    data = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    s = summarize(data)
    assert s.p50_ms == 5.5 and s.p90_ms == pytest.approx(9.1) and s.p99_ms == pytest.approx(9.91)
    assert s.mean_ms == 5.5 and s.std_ms == pytest.approx(np.sqrt(8.25))  # population std of 1..10
    assert (s.min_ms, s.max_ms, s.runs) == (1.0, 10.0, 10)
    rng = np.random.default_rng(3)
    x = rng.lognormal(0, 0.3, 1001)
    s = summarize(x)
    assert [s.p50_ms, s.p90_ms, s.p99_ms] == pytest.approx(list(np.percentile(x, [50, 90, 99])))
    assert s.cv == pytest.approx(x.std() / x.mean())


def test_cv_flag_above_five_percent():
    steady = summarize([10.0, 10.1, 9.9, 10.0])  # cv ~0.7%
    noisy = summarize([10.0, 11.0, 9.0, 10.0])  # std 0.707 / mean 10 = 7.1%
    assert not steady.cv_flag and noisy.cv_flag and noisy.cv == pytest.approx(0.0707, abs=1e-4)
    assert not summarize([10.0, 11.0, 9.0, 10.0], cv_limit=0.08).cv_flag


@pytest.mark.parametrize("bad, message", [([], "no latency samples"), ([1.0, float("nan")], "finite"),
                                          ([-1.0], ">= 0")])
def test_summarize_rejects_bad_samples(bad, message):
    with pytest.raises(ValueError, match=message):
        summarize(bad)


@pytest.mark.parametrize("kw, message", [
    ({"min_runs": 0}, "min_runs must be >= 1"), ({"min_runs": 10, "max_runs": 5}, "max_runs .* must be >= min_runs"),
    ({"rel_tol": 0}, "rel_tol must be in"), ({"time_cap_s": 0}, "time_cap_s must be > 0"),
    ({"block": 0}, "block must be >= 1"), ({"min_time_s": 20}, "min_time_s must be in"),
])
def test_stop_rule_validation(kw, message):
    with pytest.raises(ValueError, match=message):
        StopRule(**kw)


class FakeClock:
    """A clock that advances by the next planned duration each time the timed function runs."""

    def __init__(self, durations):
        self.now, self.durations = 0.0, iter(durations)

    def __call__(self):
        return self.now

    def run(self):
        self.now += next(self.durations)


def test_stops_when_median_is_stable():
    clock = FakeClock(itertools.repeat(0.001))
    samples, why = time_until_stable(clock.run, StopRule(min_runs=40, block=20, min_time_s=0), clock=clock)
    assert why == "stable" and len(samples) == 40 and samples[0] == pytest.approx(1.0)


def test_min_time_delays_the_stop():
    clock = FakeClock(itertools.repeat(0.001))  # 1 ms runs: 0.1 s needs 100 runs
    samples, why = time_until_stable(clock.run, StopRule(min_runs=20, block=20, min_time_s=0.1), clock=clock)
    assert why == "stable" and len(samples) == 100


def test_stops_at_max_runs():
    clock = FakeClock(itertools.count(1))  # ever slower: never stable
    samples, why = time_until_stable(clock.run, StopRule(min_runs=5, max_runs=7, block=3, min_time_s=0,
                                                         time_cap_s=1e9), clock=clock)
    assert why == "max_runs" and len(samples) == 7


def test_stops_at_time_cap_when_median_keeps_moving():
    clock = FakeClock(0.001 * 1.1 ** i for i in itertools.count())  # each run 10% slower than the last
    blocks = []
    samples, why = time_until_stable(clock.run, StopRule(min_runs=10, block=10, time_cap_s=0.5, min_time_s=0),
                                     on_block=blocks.append, clock=clock)
    assert why == "time_cap" and len(samples) == sum(blocks) and set(blocks) == {10}
    assert clock.now >= 0.5
