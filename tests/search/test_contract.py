"""One contract, every backend: seeded, within budget, resumable, duplicate-free, failure-tolerant."""

import json
import threading

import numpy as np
import pytest
import torch

from autoprune.budget import Budget
from autoprune.evaluation import Evaluator
from autoprune.models.zoo import create_model
from autoprune.search import SEARCHERS, Ledger, create_searcher
from autoprune.search_spaces import SearchSpace
from autoprune.training import TrainConfig, train

BACKENDS = {
    "random": {},
    "uniform": {},
    "evolution": {"population": 6, "top_k": 3, "n_mutation": 2, "n_crossover": 2},
    "tpe": {"n_startup_trials": 4},
    "gp": {"n_startup_trials": 4},
    "cmaes": {"n_startup_trials": 4},
    "qmc": {},
    "nsga2": {},
    "ddpg": {"warmup": 4, "batch_size": 8},
    "ddpg amc": {"warmup": 4, "batch_size": 8, "variant": "amc"},  # AMC's recipe, kept as a named variant
    # three lockstep episodes per step, scored as one batch; 10 and 7 evaluations end on a partial batch
    "ddpg x3": {"warmup": 4, "batch_size": 8, "parallel_episodes": 3},
}


@pytest.fixture(scope="module")
def evaluator(digits):
    torch.manual_seed(0)
    model = create_model("cnn1d", in_channels=1, num_classes=10, image_size=8)
    train(model, digits.train, TrainConfig(epochs=2, batch_size=64, max_lr=0.05, hflip=False), show_progress=False)
    space = SearchSpace.from_model(model.eval(), digits.example_inputs())
    return Evaluator(model, space, train_data=digits.train, val_data=digits.val, budget=Budget(flops=0.5),
                     val_size=150, bn_batches=1, batch_size=64, path="exact")


def _searcher(name, evaluator, seed=0, ledger=None):
    return create_searcher(name.split()[0], evaluator=evaluator, seed=seed, ledger=ledger, **BACKENDS[name])


def _policies(searcher):
    return [tuple(round(v, 10) for v in r.policy.values()) for r in searcher.ledger.results]


def test_every_registered_backend_is_covered():
    assert set(SEARCHERS) - {"optuna"} == {name.split()[0] for name in BACKENDS}


@pytest.mark.parametrize("name", BACKENDS)
def test_seeded_runs_are_reproducible(name, evaluator):
    a, b = _searcher(name, evaluator), _searcher(name, evaluator)
    a.run(10, show_progress=False)
    b.run(10, show_progress=False)
    assert _policies(a) == _policies(b)


@pytest.mark.parametrize("name", BACKENDS)
def test_runs_exactly_n_distinct_evaluations_all_within_budget(name, evaluator):
    s = _searcher(name, evaluator)
    best = s.run(10, show_progress=False)
    expected = 1 if name == "uniform" else 10
    assert len(s.ledger) == expected
    keys = [s.ledger.key(r.policy) for r in s.ledger.results]
    assert len(set(keys)) == len(keys), "a pruned network was evaluated twice"
    assert all(r.feasible and r.flops_ratio <= 0.5 for r in s.ledger.results)
    assert best is not None and best.reward == max(r.reward for r in s.ledger.results)


@pytest.mark.parametrize("name", BACKENDS)
def test_state_round_trip_continues_identically(name, evaluator, tmp_path):
    reference = _searcher(name, evaluator, ledger=tmp_path / "ref")
    reference.run(14, show_progress=False)

    first = _searcher(name, evaluator, ledger=tmp_path / "run")
    # stopped between steps, as a crash-safe run always is (stopping "ddpg x3" at 7 would end on a
    # one-episode step, and the continued search would batch its episodes differently)
    first.run(6 if name == "ddpg x3" else 7, show_progress=False)
    state = first.state_dict()
    del first
    resumed = _searcher(name, evaluator, seed=123, ledger=tmp_path / "run")  # reopened, as after a restart;
    # the state must override the seed
    resumed.load_state_dict(state)
    resumed.run(14, show_progress=False)
    assert _policies(resumed) == _policies(reference)


@pytest.mark.parametrize("name", ["random", "evolution", "tpe", "ddpg", "ddpg x3"])
def test_failed_evaluations_are_recorded_and_the_search_goes_on(name, evaluator):
    calls = {"n": 0}

    def flaky(result, baseline):
        calls["n"] += 1
        if calls["n"] % 3 == 0:
            raise RuntimeError("reward service down")
        return result.accuracy

    flaky_evaluator = Evaluator(evaluator.model, evaluator.space, train_data=evaluator.train_data,
                                val_data=evaluator.val, budget=evaluator.budget, val_size=150, bn_batches=1,
                                batch_size=64, path="exact", reward=flaky)
    s = _searcher(name, flaky_evaluator)
    best = s.run(9, show_progress=False)
    failed = [r for r in s.ledger.results if r.failed]
    assert len(s.ledger) == 9 and failed and all("reward service down" in r.failed for r in failed)
    assert best is not None and best.failed is None


def test_loading_another_backends_state_is_refused(evaluator):
    with pytest.raises(ValueError, match="cannot be loaded"):
        _searcher("random", evaluator).load_state_dict(_searcher("tpe", evaluator).state_dict())


def test_a_ledger_with_other_objectives_is_refused(evaluator):
    with pytest.raises(ValueError, match="needs \\['maximize', 'minimize'\\]"):
        _searcher("nsga2", evaluator, ledger=Ledger(evaluator.space))


def test_unknown_backend_and_bad_options():
    with pytest.raises(ValueError, match="choose one of: ddpg"):
        create_searcher("annealing")
    with pytest.raises(ValueError, match="bad options for backend 'random'"):
        create_searcher("random", evaluator=None, population=3)


def test_nsga2_returns_a_pareto_front(evaluator):
    loose = Evaluator(evaluator.model, evaluator.space, train_data=evaluator.train_data, val_data=evaluator.val,
                      budget=Budget(flops=0.9), val_size=150, bn_batches=1, batch_size=64, path="exact")
    s = create_searcher("nsga2", evaluator=loose, seed=0)
    s.run(16, show_progress=False)
    front = s.pareto_front()
    assert front and all(r.feasible for r in front)
    for a in front:  # no member of the front dominates another
        assert not any(b.accuracy >= a.accuracy and b.flops_ratio < a.flops_ratio
                       or b.accuracy > a.accuracy and b.flops_ratio <= a.flops_ratio for b in front)


def test_optuna_state_saves_a_sampler_holding_a_thread_lock(evaluator, tmp_path):
    # Optuna >= 5's genetic samplers hold a threading.Lock, which plain pickle refuses; give one to
    # any sampler so that this holds whichever Optuna is installed, and hold it while saving
    s = _searcher("tpe", evaluator, ledger=tmp_path / "run")
    s.run(4, show_progress=False)
    s.sampler.cache_lock = threading.Lock()
    with s.sampler.cache_lock:
        state = s.state_dict()
    resumed = _searcher("tpe", evaluator, ledger=tmp_path / "run")
    resumed.load_state_dict(state)
    assert isinstance(resumed.sampler.cache_lock, type(threading.Lock()))
    assert not resumed.sampler.cache_lock.locked()  # a fresh lock: the saved one was held


def test_ledger_reopens_with_every_result(evaluator, tmp_path):
    s = _searcher("random", evaluator, ledger=f"sqlite:///{tmp_path / 'ledger.db'}")
    s.run(5, show_progress=False)
    again = Ledger.open(tmp_path, evaluator.space)
    assert [r.policy for r in again.results] == [r.policy for r in s.ledger.results]
    assert again.best().reward == s.best.reward
    assert np.isclose(again.best().accuracy, s.best.accuracy)


def test_optuna_batches_ask_several_trials_before_telling(evaluator):
    s = create_searcher("tpe", evaluator=evaluator, seed=0, batch_size=4, n_startup_trials=4)
    results = s.step()
    assert len(results) == 4 and len(s.ledger) == len({s.ledger.key(r.policy) for r in results})
    s.run(10, show_progress=False)
    assert len(s.ledger) == 10  # the last batch is cut to what is left


def test_optuna_models_the_repaired_policy_and_flags_no_proposal_infeasible(evaluator):
    # Over-budget proposals are repaired and scored; telling the sampler they were infeasible would
    # keep the repaired policies on the budget's edge out of its model (TPE found worse policies so).
    s = create_searcher("tpe", evaluator=evaluator, seed=0, n_startup_trials=4)
    s.run(8, show_progress=False)
    trials = s.ledger.study.get_trials()
    repaired = [t for t in trials if not evaluator.budget.holds(evaluator.space.costs(t.params),
                                                                evaluator.space.dense_costs)]
    assert repaired  # the test means something only if some proposals were over budget
    assert all(not any("constraint" in k for k in t.system_attrs) for t in trials)
    for t in repaired:
        assert t.values == [json.loads(t.user_attrs["result"])["reward"]]


@pytest.mark.parametrize(("name", "options"), [("random", {}), ("evolution", {}), ("tpe", {"fill_budget": True})])
def test_filling_searches_spend_the_budget_and_the_others_do_not(name, options, evaluator):
    # A policy under budget is filled toward the budget (a bigger model for the same price) by the
    # backends that fill; TPE does not by default, and a Pareto search must keep its cheaper policies.
    limit = evaluator.budget.flops
    s = create_searcher(name, evaluator=evaluator, seed=0, **{**BACKENDS[name], **options})
    s.run(10, show_progress=False)
    assert s.fills_budget and min(r.flops_ratio for r in s.ledger.results) > 0.9 * limit
    for plain in ("tpe", "nsga2"):
        other = create_searcher(plain, evaluator=evaluator, seed=0)
        other.run(10, show_progress=False)
        assert not other.fills_budget and min(r.flops_ratio for r in other.ledger.results) < 0.9 * limit
    with pytest.raises(ValueError, match="Pareto front"):
        create_searcher("nsga2", evaluator=evaluator, fill_budget=True)
