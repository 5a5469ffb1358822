"""The benchmark's figures on known inputs: percentiles, TPOT, goodput, throughputs, per-turn TTFT."""

from __future__ import annotations

import numpy as np
import pytest

from tandem.bench.metrics import Distribution, RequestRecord, Slo, compute_metrics, percentile


def record(
    turn: int = 0, ttft: float = 0.1, latency: float = 1.0, tokens: int = 10, **kw: object
) -> RequestRecord:
    return RequestRecord(
        conversation=0, turn=turn, success=True, ttft=ttft, latency=latency, output_tokens=tokens, **kw
    )  # type: ignore[arg-type]


@pytest.mark.parametrize("q", [0, 10, 50, 90, 99, 100])
def test_percentile_interpolates_like_numpy(q: float) -> None:
    samples = [5.0, 1.0, 9.0, 3.0, 7.5, 2.0, 11.0]
    assert percentile(samples, q) == pytest.approx(float(np.percentile(samples, q)))


def test_percentile_refuses_empty_and_out_of_range() -> None:
    with pytest.raises(ValueError, match="no samples"):
        percentile([], 50)
    with pytest.raises(ValueError, match="q=101"):
        percentile([1.0], 101)


def test_distribution_is_in_milliseconds() -> None:
    dist = Distribution.of_seconds([0.1, 0.2, 0.3, 0.4])
    assert dist.count == 4
    assert dist.mean == pytest.approx(250.0)
    assert dist.median == pytest.approx(250.0)
    assert dist.p90 == pytest.approx(370.0)
    assert dist.p99 == pytest.approx(397.0)
    assert Distribution.of_seconds([]) == Distribution()


def test_tpot_excludes_the_first_token() -> None:
    assert record(ttft=0.2, latency=1.1, tokens=10).tpot == pytest.approx(0.1)
    assert record(tokens=1).tpot is None


def test_slo_parse_and_errors() -> None:
    assert Slo.parse(["ttft:500", "tpot:50"]) == Slo(ttft=500.0, tpot=50.0)
    assert Slo.parse([]) is None
    with pytest.raises(ValueError, match="NAME:MS"):
        Slo.parse(["latency:5"])
    with pytest.raises(ValueError, match="not a number"):
        Slo.parse(["ttft:fast"])
    with pytest.raises(ValueError, match="must be > 0"):
        Slo(ttft=0)


def test_goodput_counts_requests_within_every_slo() -> None:
    slo = Slo(ttft=200, tpot=50)
    good = record(ttft=0.1, latency=0.1 + 9 * 0.04)
    slow_first = record(ttft=0.3, latency=0.3 + 9 * 0.04)
    slow_decode = record(ttft=0.1, latency=0.1 + 9 * 0.06)
    one_token = record(ttft=0.1, latency=0.1, tokens=1)  # no TPOT: only TTFT applies
    failed = RequestRecord(0, 0, success=False, error="HTTP 500")
    metrics = compute_metrics([good, slow_first, slow_decode, one_token, failed], 2.0, slo)
    assert metrics.goodput == pytest.approx(2 / 2.0)
    assert compute_metrics([good], 2.0, None).goodput is None
    assert Slo(e2el=100).met_by(record(latency=0.2)) is False


def test_compute_metrics_totals_and_throughputs() -> None:
    records = [
        record(ttft=0.1, latency=0.5, tokens=5, prompt_tokens=100, itl=[0.1, 0.1, 0.1, 0.1]),
        record(ttft=0.3, latency=0.7, tokens=3, prompt_tokens=50, itl=[0.2, 0.2]),
        RequestRecord(0, 0, success=False, prompt_tokens=999, output_tokens=7),
    ]
    m = compute_metrics(records, 4.0, None)
    assert (m.completed, m.failed) == (2, 1)
    assert (m.total_input_tokens, m.total_output_tokens) == (150, 8)
    assert m.request_throughput == pytest.approx(0.5)
    assert m.output_throughput == pytest.approx(2.0)
    assert m.total_token_throughput == pytest.approx(158 / 4)
    assert m.ttft.mean == pytest.approx(200.0)
    assert m.itl.count == 6 and m.itl.mean == pytest.approx(400 / 3)
    assert m.tpot.mean == pytest.approx((100 + 200) / 2)
    assert m.e2el.median == pytest.approx(600.0)


def test_ttft_by_turn() -> None:
    records = [
        record(turn=0, ttft=0.4),
        record(turn=1, ttft=0.2),
        record(turn=0, ttft=0.6),
        record(turn=1, ttft=0.1),
    ]
    m = compute_metrics(records, 1.0, None)
    assert [t.median for t in m.ttft_by_turn] == pytest.approx([500.0, 150.0])


def test_compute_metrics_refuses_a_zero_duration() -> None:
    with pytest.raises(ValueError, match="duration_s"):
        compute_metrics([], 0.0, None)
