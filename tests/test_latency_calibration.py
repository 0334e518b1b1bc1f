"""The search's latency limit is corrected by measuring whole models, so that what it ships lands on target."""

import pytest
import torch

from autoprune.budget import Budget, InfeasibleBudgetError
from autoprune.costs import count_costs
from autoprune.latency_calibration import LatencyCalibration, calibrate_latency_limit
from autoprune.models.zoo import create_model
from autoprune.search_spaces import SearchSpace

X = torch.randn(1, 1, 28, 28)


class FlopsTable:
    """A latency 'table' predicting latency as FLOPs: it misses the fixed cost every real runtime pays."""

    def predict(self, space, keep):
        return space.cost_model.costs(keep).macs


def _space():
    torch.manual_seed(0)
    model = create_model("resnet20", in_channels=1, image_size=28).eval()
    space = SearchSpace.from_model(model, X)
    space.attach_latency(FlopsTable())
    return model, space


def _runtime_with_overhead(overhead):
    """'Measured' seconds: the counted FLOPs plus a fixed ``overhead`` share of the dense model's."""
    calls = []

    def time_models(models):
        calls.append(len(models))
        macs = {name: count_costs(m, X).macs for name, m in models.items()}
        dense = count_costs(models["dense"], X).macs if "dense" in models else max(macs.values())
        return {name: m + overhead * dense for name, m in macs.items()}
    return time_models, calls


def test_a_table_that_predicts_low_gets_a_lower_limit_whose_models_measure_at_the_aim():
    model, space = _space()
    time_models, calls = _runtime_with_overhead(0.25)  # measured ratio = (f + 0.25) / 1.25 for FLOPs ratio f
    calibration = calibrate_latency_limit(model, space, Budget(latency=0.6), time_models, runtime="torch", batch=1,
                                          margin=0.025)
    assert calibration.aim == pytest.approx(0.585)
    # the table's 58.5% measures (0.585 + 0.25) / 1.25 = 66.8%: the limit must come down to about 48%
    assert calibration.rounds[0]["median"] > 0.64
    assert calibration.limit == pytest.approx(1.25 * 0.585 - 0.25, abs=0.02)
    # whole channels move the measured ratio in steps; the limit kept is the round closest under the aim
    kept = next(r for r in calibration.rounds if r["limit"] == calibration.limit)
    assert 0.575 <= kept["median"] <= 0.59 and len(calibration.rounds) <= 4
    assert all(n == 5 for n in calls)  # the dense model and four probes, timed together each round
    assert calibration.budget(Budget(flops=0.7, latency=0.6)) == Budget(flops=0.7, latency=calibration.limit)


def test_an_absolute_limit_is_turned_into_a_ratio_of_the_measured_dense_model():
    model, space = _space()
    time_models, _ = _runtime_with_overhead(0.0)  # the table is exact here
    dense_s = time_models({"dense": model})["dense"]
    calibration = calibrate_latency_limit(model, space, Budget(latency_ms=0.5 * dense_s * 1e3), time_models,
                                          runtime="torch", batch=1, margin=0.0)
    assert calibration.aim == pytest.approx(0.5)
    assert calibration.limit == pytest.approx(0.5, abs=0.01)
    assert calibration.budget(Budget(latency_ms=1.0)) == Budget(latency=calibration.limit)


def test_an_aim_no_model_can_reach_is_refused_with_the_limit_it_would_need():
    model, space = _space()
    time_models, _ = _runtime_with_overhead(1.5)  # fixed cost: 60% of dense latency
    with pytest.raises(InfeasibleBudgetError, match="latency calibration: .* over the aim of 58.5%"):
        calibrate_latency_limit(model, space, Budget(latency=0.6), time_models, runtime="torch", batch=1,
                                margin=0.025)


def test_a_burst_of_load_on_the_dense_model_is_timed_again():
    model, space = _space()
    time_models, calls = _runtime_with_overhead(0.25)
    burst = iter([1.0, 1.0, 2.0])  # the third round's dense model reads twice as slow once

    def bursty(models):
        seconds = time_models(models)
        return {**seconds, "dense": seconds["dense"] * next(burst, 1.0)}

    calibration = calibrate_latency_limit(model, space, Budget(latency=0.6), bursty, runtime="torch", batch=1,
                                          margin=0.025, tolerance=0.0001)
    assert len(calls) == len(calibration.rounds) + 1  # one round timed twice
    assert all(r["median"] > 0.5 for r in calibration.rounds)  # none read at half the true ratio


def test_a_calibration_round_trips_through_its_record():
    model, space = _space()
    time_models, _ = _runtime_with_overhead(0.1)
    calibration = calibrate_latency_limit(model, space, Budget(latency=0.7), time_models, runtime="onnxruntime",
                                          batch=4, margin=0.0)
    assert LatencyCalibration.from_dict(calibration.to_dict()) == calibration
