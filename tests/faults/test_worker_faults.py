"""A Ray worker killed in the middle of an evaluation is replaced and its evaluation run again."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
import torch

from autoprune.evaluation import Evaluator
from autoprune.models.zoo import create_model
from autoprune.search_spaces import SearchSpace
from tests.conftest import random_data

pytestmark = pytest.mark.ray  # make test runs these alone, after the parallel part


class _SlowEvaluator(Evaluator):
    def __call__(self, policy):  # long enough to be killed in the middle of one
        time.sleep(0.5)
        return super().__call__(policy)


@pytest.fixture(params=[3, 0], ids=["restarts", "no-restarts"])
def ray_evaluator(request, monkeypatch):
    pytest.importorskip("ray")
    import autoprune.parallel_evaluation
    from autoprune.parallel_evaluation import RayEvaluator

    monkeypatch.setattr(autoprune.parallel_evaluation, "WORKER_RESTARTS", request.param)
    torch.manual_seed(0)
    model = create_model("resnet20", in_channels=1, image_size=8).eval()
    data = random_data(64, (1, 8, 8))
    space = SearchSpace.from_model(model, data.tensors[0][:1])
    evaluator = _SlowEvaluator(model, space, train_data=data, val_data=data, val_size=32, bn_batches=1,
                               batch_size=16, path="exact")
    ray_ev = RayEvaluator(evaluator, workers=2)
    yield ray_ev, space, request.param
    ray_ev.shutdown()


def test_a_killed_worker_is_replaced_and_its_evaluation_rerun(ray_evaluator):
    from autoprune.parallel_evaluation import WorkersLostError

    ray_ev, space, restarts = ray_evaluator
    policies = [space.sample(np.random.default_rng(i)) for i in range(8)]
    victim = ray_ev.worker_pids()[0]
    threading.Timer(0.8, lambda: os.kill(victim, signal.SIGKILL)).start()  # in the middle of an evaluation
    if not restarts:  # no worker can be had: one line that says to resume
        with pytest.raises(WorkersLostError, match="continue with 'autoprune resume RUN_DIR'"):
            ray_ev.map(policies)
        return
    results = ray_ev.map(policies)
    assert [r.policy for r in results] == [space.validate(p) for p in policies]  # all, once each, in order
    assert all(r.failed is None for r in results)
    pids = ray_ev.worker_pids()
    assert victim not in pids and len(set(pids)) == 2  # replaced


@pytest.mark.parametrize("ray_evaluator", [3], ids=["restarts"], indirect=True)
@pytest.mark.parametrize("answers_again", [True, False], ids=["answers-again", "never-answers"])
def test_a_worker_ray_calls_unavailable_gets_its_policy_again(ray_evaluator, monkeypatch, answers_again):
    """Ray reports an actor *unavailable* while it restarts on another node or is starved of CPU (seen when a
    two-node cluster lost a node on a loaded machine): the batch goes on, each policy scored once, in order;
    an actor that never answers again stops the search with the message that says to resume."""
    import ray
    from ray.exceptions import ActorUnavailableError

    import autoprune.parallel_evaluation
    from autoprune.parallel_evaluation import WorkersLostError

    ray_ev, space, _ = ray_evaluator
    real_get, reports = ray.get, []

    def flaky_get(ref, *args, **kwargs):
        if len(reports) < (2 if answers_again else 10**6):
            reports.append(ref)
            raise ActorUnavailableError("injected: the actor is restarting", None)
        return real_get(ref, *args, **kwargs)

    monkeypatch.setattr(ray, "get", flaky_get)
    policies = [space.sample(np.random.default_rng(i)) for i in range(4)]
    if not answers_again:
        monkeypatch.setattr(autoprune.parallel_evaluation, "UNAVAILABLE_PATIENCE_S", 2.0)
        with pytest.raises(WorkersLostError, match="continue with 'autoprune resume RUN_DIR'"):
            ray_ev.map(policies)
        return
    results = ray_ev.map(policies)
    assert len(reports) == 2
    assert [r.policy for r in results] == [space.validate(p) for p in policies]  # all, once each, in order


def test_ray_start_up_notices_go_to_the_log_not_the_terminal():
    """In a fresh process (Ray's state in this one depends on the tests before): nothing of Ray's on stderr,
    its notices in the log."""
    pytest.importorskip("ray")
    import subprocess
    import sys

    code = ("import logging, sys, torch\n"
            "logging.basicConfig(stream=sys.stdout, level=logging.INFO, format='%(name)s %(message)s')\n"
            "from autoprune.parallel_evaluation import RayEvaluator\nfrom autoprune.evaluation import Evaluator\n"
            "from autoprune.models.zoo import create_model\nfrom autoprune.search_spaces import SearchSpace\n"
            "from tests.conftest import random_data\n"
            "model = create_model('mlp', in_channels=1, image_size=8).eval()\ndata = random_data(32, (1, 8, 8))\n"
            "space = SearchSpace.from_model(model, data.tensors[0][:1])\n"
            "ev = Evaluator(model, space, train_data=data, val_data=data, val_size=16, bn_batches=1, batch_size=16)\n"
            "RayEvaluator(ev, workers=1).shutdown()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-1000:]
    assert "max_restarts" not in done.stderr and "Token authentication" not in done.stderr, done.stderr[-1000:]
    assert "autoprune.parallel_evaluation ray: " in done.stdout  # logged, so a run's log.txt has it
