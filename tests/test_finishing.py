"""Which measured candidate a latency-budgeted run ships (the measuring itself: tests/test_search_cli.py)."""

import pytest

from autoprune.finishing import choose_measured
from autoprune.result import Result
from autoprune.search_spaces import Policy

VAL_SIZE = 400  # one standard error at 90% accuracy: 1.5 points


def _candidates(*accuracies):  # in order of reward, as the check sees them
    return [Result(Policy({"g": i / 10}), flops=1, params=1, flops_ratio=0.5, params_ratio=0.5, feasible=True,
                   accuracy=a, reward=a) for i, a in enumerate(accuracies)]


def _script(verdicts):
    """A check that reads each candidate's verdict: "over", "under" (fits, faster than the window) or "lands"."""
    def check(result):
        verdict = verdicts[result.policy["g"]]
        return {"g": result.policy["g"], "fits": verdict != "over", "lands": verdict == "lands"}
    return check


@pytest.mark.parametrize("accuracies, verdicts, measured, shipped", [
    ((0.91, 0.90, 0.89), ("lands", "lands", "lands"), [0], 0),  # the best lands: nothing else measured
    ((0.91, 0.90, 0.89), ("over", "under", "lands"), [0, 1, 2], 2),  # as accurate as the first fit, closer
    ((0.91, 0.90, 0.85, 0.90), ("under", "over", "lands", "lands"), [0, 1, 3], 3),  # 0.85: > 1 SE less accurate
    ((0.91, 0.90, 0.90), ("under", "under", "under"), [0, 1, 2], 0),  # none lands: the first that fits
    ((0.91, 0.90), ("over", "over"), [0, 1], 0),  # none fits: the best as searched, not within the budget
])
def test_the_first_candidate_that_lands_under_the_limit_ships_else_the_first_that_fits(accuracies, verdicts,
                                                                                         measured, shipped):
    candidates, checks = _candidates(*accuracies), []
    result, check = choose_measured(candidates, _script({i / 10: v for i, v in enumerate(verdicts)}), VAL_SIZE,
                                    checks)
    assert [c["g"] for c in checks] == [i / 10 for i in measured]
    assert result is candidates[shipped] and check["g"] == shipped / 10
    assert check["fits"] is (verdicts[shipped] != "over")
