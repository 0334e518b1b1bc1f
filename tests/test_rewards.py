import math
import textwrap

import pytest

from autoprune.evaluation import Result
from autoprune.rewards import REWARDS, Baseline, get_reward
from autoprune.search_spaces import Policy

BASE = Baseline(accuracy=0.9, flops=1000, params=100, latency=0.010)


def _result(acc=0.8, flops=500, params=50, latency=0.005):
    return Result(policy=Policy({}), flops=flops, params=params, flops_ratio=flops / 1000, params_ratio=params / 100,
                  feasible=True, accuracy=acc, latency=latency)


def test_builtins():
    r = _result()
    assert get_reward("accuracy")(r, BASE) == 0.8
    assert get_reward("acc_flops")(r, BASE) == pytest.approx(-0.2 * math.log(500))
    assert get_reward("acc_params")(r, BASE) == pytest.approx(-0.2 * math.log(50))
    assert get_reward("acc_latency")(r, BASE) == pytest.approx(0.8 * 0.5 ** -0.07)
    assert set(REWARDS) >= {"accuracy", "acc_flops", "acc_params", "acc_latency"}


def test_acc_flops_prefers_fewer_flops_at_equal_accuracy():
    f = get_reward("acc_flops")
    assert f(_result(flops=300), BASE) > f(_result(flops=600), BASE)


def test_module_function_string(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(textwrap.dedent("""
        def score(result, baseline):
            return result.accuracy - baseline.accuracy
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert get_reward("my_rewards:score")(_result(acc=0.85), BASE) == pytest.approx(-0.05)


def test_bad_reward_specs_are_clear():
    with pytest.raises(ValueError, match="unknown reward 'acc'.*module:function"):
        get_reward("acc")
    with pytest.raises(ValueError, match="cannot import module 'no_such_pkg.rewards'"):
        get_reward("no_such_pkg.rewards:score")
    with pytest.raises(ValueError, match="has no attribute 'nope'"):
        get_reward("math:nope")
    with pytest.raises(ValueError, match="needs measured latencies"):
        get_reward("acc_latency")(_result(latency=None), BASE)
