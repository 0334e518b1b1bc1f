import time

import numpy as np
import pytest
import torch

from autoprune.budget import Budget, project, uniform_policy
from autoprune.latency import SAMPLE_S, LatencyTable, Timing, make_runner, measure, measure_latency, time_against_dense
from autoprune.models.zoo import create_model
from autoprune.search_spaces import SearchSpace


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    torch.manual_seed(0)
    # 28x28, not smaller: on 8x8 inputs framework overhead dominates, and under load a noisy table once
    # predicted the most-pruned model slower than dense (no latency fraction below 1 was reachable)
    model = create_model("resnet20", in_channels=1, image_size=28).eval()
    space = SearchSpace.from_model(model, torch.randn(1, 1, 28, 28), round_to=4)
    cache = tmp_path_factory.mktemp("latency-cache")
    table = LatencyTable.build(model, space, levels=3, repeats=3, calibration_policies=2, cache_dir=cache,
                               show_progress=False)
    return model, space, table, cache


def _reachable_latency_fraction(space):
    """Halfway between dense and the most-pruned latency: a target the space can always reach.

    Much of a small model's latency is framework overhead, so a fixed target could be infeasible.
    """
    most = space.costs(space.uniform(max(g.high for g in space.groups))).latency
    assert most < space.dense_costs.latency, "the table predicts the most-pruned model no faster than dense"
    return (1 + most / space.dense_costs.latency) / 2


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
def test_runners_compute_the_model(runtime):
    model = create_model("cnn1d", in_channels=1, image_size=8).eval()
    x = torch.randn(2, 1, 8, 8)
    out = make_runner(model, x, runtime)()
    with torch.no_grad():
        np.testing.assert_allclose(np.asarray(out), model(x).numpy(), atol=1e-4)


def test_measure_returns_a_median_per_candidate():
    small_m, big_m = torch.nn.Linear(8, 8), torch.nn.Linear(512, 512)
    x8, x512 = torch.randn(64, 8), torch.randn(64, 512)
    t = measure({"small": make_runner(small_m, x8), "big": make_runner(big_m, x512)}, repeats=5)
    assert set(t) == {"small", "big"} and 0 < t["small"] < t["big"]
    assert measure_latency(small_m, x8, repeats=3) > 0


def test_a_timing_counts_the_median_round_so_one_noisy_round_does_not_decide():
    timing = Timing([{"dense": 2.0, "pruned": 1.0}, {"dense": 2.0, "pruned": 1.8}, {"dense": 1.0, "pruned": 0.6}])
    assert timing.ratios == [0.5, 0.9, 0.6] and timing.ratio == 0.6
    assert timing.ms("dense") == 2000.0 and timing.ms("pruned") == 1000.0
    small_m, big_m = torch.nn.Linear(8, 8), torch.nn.Linear(256, 256)
    measured = time_against_dense(make_runner(big_m, torch.randn(64, 256)), make_runner(small_m, torch.randn(64, 8)),
                                  rounds=2, repeats=3)
    assert len(measured.rounds) == 2 and 0 < measured.ratio < 1


def test_each_sample_times_calls_back_to_back_for_at_least_the_sample_length():
    # one call per sample would time a model whose caches the other model's call just evicted
    calls = {"a": 0, "b": 0}

    def runner(name):
        def run():
            calls[name] += 1
            time.sleep(SAMPLE_S / 10)  # a call of 1 ms: a 1 ms sample would hold one
        return run

    measure({"a": runner("a"), "b": runner("b")}, repeats=3, warmup=1)
    per_sample = [(n - 2) / 3 for n in calls.values()]  # less the warm-up call and the call that sized samples
    assert all(n >= 3 for n in per_sample), calls


def test_table_is_cached_on_disk_and_reloads_identically(small):
    model, space, table, cache = small
    files = list((cache / "latency").glob("*.json"))
    assert len(files) == 1
    again = LatencyTable.build(model, space, levels=3, repeats=3, calibration_policies=2, cache_dir=cache,
                               show_progress=False)
    assert again.meta.get("cache_file") == str(files[0])
    keep = space.keep_units(space.uniform(0.5))
    assert again.predict(space, keep) == pytest.approx(table.predict(space, keep))


def test_cache_key_separates_runtime_and_grid(small, tmp_path):
    model, space, _, _ = small
    other = SearchSpace.from_model(model, torch.randn(1, 1, 28, 28), round_to=None)
    LatencyTable.build(model, other, levels=3, repeats=3, calibration_policies=2, cache_dir=tmp_path,
                       show_progress=False)
    LatencyTable.build(model, space, levels=3, repeats=3, calibration_policies=2, cache_dir=tmp_path,
                       show_progress=False)
    assert len(list((tmp_path / "latency").glob("*.json"))) == 2


def test_latency_budget_is_enforced_by_prediction(small):
    model, space, table, _ = small
    space.attach_latency(table)
    try:
        dense = space.dense_costs
        assert dense.latency and dense.latency > 0
        target = _reachable_latency_fraction(space)
        budget = Budget(latency=target)
        policy = uniform_policy(space, budget)
        assert space.costs(policy).latency <= target * dense.latency
        projected = project(space, budget, space.uniform(0.0))
        assert budget.holds(space.costs(projected), dense)
    finally:
        space.latency_table = None


def test_check_reports_ratio_and_absolute_errors(small):
    model, space, table, _ = small
    rows = table.check(model, space, [space.uniform(0.5)], repeats=3)
    assert set(rows[0]) >= {"predicted_s", "measured_s", "relative_error", "ratio_error"}


def test_latency_budget_without_a_table_is_a_clear_error(small):
    _, space, _, _ = small
    with pytest.raises(ValueError, match="needs a latency table"):
        Budget(latency=0.5).holds(space.costs(space.uniform(0.1)), space.dense_costs)
    with pytest.raises(ValueError, match="fraction of dense latency"):
        Budget(latency=3.0)
    with pytest.raises(ValueError, match="unknown runtime"):
        make_runner(torch.nn.Linear(2, 2), torch.randn(1, 2), "tflite")


def test_env_keeps_episodes_within_a_latency_budget(small):
    from autoprune.envs import PruneEnv
    from autoprune.evaluation import Evaluator
    from tests.conftest import random_data, random_episodes

    model, space, table, _ = small
    space.attach_latency(table)
    try:
        data = random_data(8, shape=(1, 28, 28))
        target = _reachable_latency_fraction(space)
        budget = Budget(latency=target, flops=0.8)
        env = PruneEnv(Evaluator(model, space, train_data=data, val_data=data, budget=budget, val_size=8,
                                 bn_batches=1, batch_size=8, path="exact"))
        for r in random_episodes(env, 5):
            assert r.feasible and r.latency <= target * space.dense_costs.latency and r.flops_ratio <= 0.8
    finally:
        space.latency_table = None


def test_compiled_prediction_equals_the_reference_formula(small):
    model, space, table, _ = small
    rng = np.random.default_rng(0)
    dense_activation = table._dense_activation(space)
    for _ in range(10):
        keep = space.keep_units(space.sample(rng))
        reference = float(np.dot(table.calibration, table._features(space.cost_model.layer_sizes(keep),
                                                                     dense_activation)))
        assert table.predict(space, keep) == pytest.approx(reference, rel=1e-9)


def test_one_slow_dense_reading_moves_neither_the_anchor_nor_the_checked_ratios(small, tmp_path, monkeypatch):
    """Every ratio divides by the dense latency: it is the median of several dense copies, so one
    copy read 3x too slow (as a whole-model reading on a shared VM can be) changes nothing. Timings
    are faked (every model 1 ms) so that only the arithmetic is tested, not this machine's noise."""
    import autoprune.latency as latency

    model, space, _, _ = small

    def one_slow_copy(runners, **kwargs):
        times = dict.fromkeys(runners, 1e-3)
        copies = sorted(n for n in times if n.startswith("dense"))
        if copies:  # whole-model rounds (not the table's per-layer timings)
            times[copies[0]] = 3e-3
        return times

    monkeypatch.setattr(latency, "measure", one_slow_copy)
    table = LatencyTable.build(model, space, levels=3, repeats=3, calibration_policies=2, cache_dir=tmp_path,
                               show_progress=False)
    assert table.dense_measured == pytest.approx(1e-3)
    row = table.check(model, space, [space.uniform(0.0)], repeats=3)[0]
    assert row["measured_ratio"] == pytest.approx(1.0)
