"""Which policy a latency-budgeted run ships (timing itself: tests/test_latency.py; the whole run: test_search_cli)."""

from types import SimpleNamespace

import pytest

import autoprune.latency_check
from autoprune.budget import Budget
from autoprune.latency import Timing
from autoprune.latency_check import LatencyCheck, choose_measured
from autoprune.result import Result
from autoprune.search_spaces import Policy

VAL_SIZE = 400  # one standard error at 90% accuracy: 1.5 points


def _result(predicted, accuracy, i=0):
    """A scored policy whose one group's ratio is its predicted latency (a fraction of dense), ``i`` apart."""
    return Result(Policy({"g": predicted, "i": i / 100}), flops=1, params=1, flops_ratio=0.5, params_ratio=0.5,
                  feasible=True, accuracy=accuracy, reward=accuracy, latency=predicted)


def _script(verdicts):
    """A check that reads each candidate's verdict: "over", "under" (fits, faster than the window) or "lands"."""
    def check(result):
        verdict = verdicts[round(result.policy["i"] * 100)]
        return {"i": round(result.policy["i"] * 100), "fits": verdict != "over", "lands": verdict == "lands"}
    return check


@pytest.mark.parametrize("accuracies, verdicts, measured, shipped", [
    ((0.91, 0.90, 0.89), ("lands", "lands", "lands"), [0], 0),  # the best lands: nothing else measured
    ((0.91, 0.90, 0.89), ("over", "under", "lands"), [0, 1, 2], 2),  # as accurate as the first fit, closer
    ((0.91, 0.90, 0.85, 0.90), ("under", "over", "lands", "lands"), [0, 1, 3], 3),  # 0.85: > 1 SE less accurate
    ((0.91, 0.90, 0.90), ("under", "under", "under"), [0, 1, 2], 0),  # none lands: the first that fits
    ((0.91, 0.90), ("over", "over"), [0, 1], 0),  # none fits: the best as searched
])
def test_the_first_candidate_that_lands_under_the_limit_ships_else_the_first_that_fits(accuracies, verdicts,
                                                                                         measured, shipped):
    candidates, checked = [_result(0.5, a, i) for i, a in enumerate(accuracies)], []
    check = _script(verdicts)

    def recording(result):
        checked.append(check(result))
        return checked[-1]

    result, verdict = choose_measured(candidates, recording, VAL_SIZE)
    assert [c["i"] for c in checked] == measured
    assert result is candidates[shipped] and verdict["i"] == shipped
    assert verdict["fits"] is (verdicts[shipped] != "over")


class _Modelled(LatencyCheck):
    """Measures every policy at ``bias`` times the table's prediction: the table's error for a search's policies."""

    def __init__(self, bias, limit=0.6, resized_accuracy=0.9):
        evaluator = SimpleNamespace(space=SimpleNamespace(dense_costs=SimpleNamespace(latency=1.0)),
                                    budget=Budget(latency=limit + 0.05),  # the search's calibrated limit
                                    map=lambda policies: [_result(p["g"], resized_accuracy, 99) for p in policies])
        super().__init__(evaluator, Budget(latency=limit), inputs=None, runtime="torch", window=0.03, margin=0.025,
                         val_size=VAL_SIZE)
        self.bias = bias

    def time(self, policy):
        return Timing([{"dense": 1e-3, "pruned": 1e-3 * self.bias * policy["g"]}] * self.rounds)


@pytest.fixture
def same_shape_projection(monkeypatch):  # the budget projection, on the one group that holds the prediction
    monkeypatch.setattr(autoprune.latency_check, "project",
                        lambda space, budget, policy, fill: Policy({"g": budget.latency, "i": policy["i"]}))


@pytest.mark.parametrize("bias, predicted", [(1.1, 0.62), (0.9, 0.6)])  # over the limit; far under it
def test_a_policy_that_measures_off_the_window_is_resized_by_its_measurement_until_it_lands(
        same_shape_projection, bias, predicted):
    check = _Modelled(bias)
    shipped, verdict = check.choose([_result(predicted, 0.9, i) for i in range(3)])
    assert verdict["resized"] and verdict["lands"] and 0.57 <= verdict["ratio"] <= 0.6
    assert verdict["ratio"] == pytest.approx(0.585)  # where the search aimed (mid-window), and this model is exact
    assert shipped.policy["g"] == pytest.approx(0.585 / bias)
    assert [c["resized"] for c in check.checks][-1] and sum(c["resized"] for c in check.checks) == 1


def test_a_resized_policy_that_scores_clearly_worse_does_not_replace_one_that_fits(same_shape_projection):
    check = _Modelled(0.9, resized_accuracy=0.85)  # more than one standard error under the candidates' 0.90
    candidates = [_result(0.6, 0.9, i) for i in range(3)]
    shipped, verdict = check.choose(candidates)
    assert shipped is candidates[0] and verdict["fits"] and not verdict["lands"] and not verdict["resized"]
    assert check.checks[-1]["resized"] and check.checks[-1]["lands"]  # it was tried, and measured on target


def test_when_no_policy_can_be_made_that_fast_the_best_ships_as_searched_and_over_budget(monkeypatch):
    def infeasible(space, budget, policy, fill):
        raise autoprune.latency_check.InfeasibleBudgetError("no policy within the bounds is that fast")

    monkeypatch.setattr(autoprune.latency_check, "project", infeasible)
    candidates = [_result(0.6, 0.9, i) for i in range(3)]
    shipped, verdict = _Modelled(1.2).choose(candidates)
    assert shipped is candidates[0] and not verdict["fits"]
