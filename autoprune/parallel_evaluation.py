"""Parallel evaluations on Ray: N actors, each holding the model and data once.

A :class:`RayEvaluator` wraps an :class:`~autoprune.evaluation.Evaluator`: its ``map`` scores a
batch of policies on N long-lived Ray actors (starting a Ray task or Tune trial per evaluation
costs seconds, more than an evaluation), everything else reads through to the wrapped evaluator.
Searchers record the results in the driver, in batch order, so the ledger has one writer and a
seeded search records the same evaluations whatever the number of workers.

``workers=N`` starts a local Ray with N CPUs; ``address="ray://..."`` or ``"auto"`` joins an
existing cluster.

Workers may die (killed, out of memory, their node lost): Ray restarts a dead actor (on another node
if its own is gone) and runs the evaluation it was doing again, up to :data:`WORKER_RESTARTS` times
per actor; the search goes on and the ledger records the evaluation once. When no worker can be
had, :class:`WorkersLostError` says to resume.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from autoprune.progress import stderr_into
from autoprune.result import Result
from autoprune.scoring import PolicyEvaluator

__all__ = ["UNAVAILABLE_PATIENCE_S", "WORKER_RESTARTS", "RayEvaluator", "WorkersLostError"]

log = logging.getLogger(__name__)
WORKER_RESTARTS = 3  # Ray restarts of each dead actor, each retrying the evaluation it was running
# How long an actor may stay unavailable (restarting on another node; starved of CPU) before the search stops
UNAVAILABLE_PATIENCE_S = 120.0


class WorkersLostError(RuntimeError):
    """A Ray worker died and could not be replaced."""


def _lost(error: Exception) -> WorkersLostError:
    return WorkersLostError(f"a Ray worker died and could not be replaced ({type(error).__name__}); the evaluations "
                            "recorded so far are kept: continue with 'autoprune resume RUN_DIR'")


@contextmanager
def _stderr_to_log() -> Iterator[None]:
    """Send what Ray writes to the process's stderr during the block to this module's log, not the terminal."""
    with tempfile.TemporaryFile(mode="w+b") as sink:
        try:
            with stderr_into(sink):
                yield
        finally:
            sink.seek(0)
            for line in sink.read().decode(errors="replace").splitlines():
                if line.strip():
                    log.info("ray: %s", line.strip())


class _EvaluatorActor:
    """One Ray worker: unpickles the evaluator once, then scores the policies it is sent."""

    def __init__(self, evaluator: PolicyEvaluator, threads: int) -> None:
        torch.set_num_threads(threads)
        self.evaluator = evaluator

    def evaluate(self, policy: Mapping[str, float]) -> Result:
        return self.evaluator(policy)

    def pid(self) -> int:
        return os.getpid()

    def node(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()


class RayEvaluator:
    """Score policies on ``workers`` Ray actors.

    Args:
        evaluator: the evaluator each actor holds a copy of (sent once through Ray's object store).
        workers: number of actors, each using ``threads_per_worker`` torch threads.
        address: an existing Ray cluster (``"auto"``, ``"ray://host:10001"``, ``"host:6379"``);
            ``None`` starts a local Ray sized to ``workers``.
    """

    def __init__(self, evaluator: PolicyEvaluator, *, workers: int = 2, address: str | None = None,
                 threads_per_worker: int = 1) -> None:
        import ray

        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self._started_ray = not ray.is_initialized()
        with _stderr_to_log():  # Ray's start-up notices go to the run's log.txt, not the terminal
            if self._started_ray:
                ray.init(address=address, num_cpus=None if address else workers * threads_per_worker,
                         include_dashboard=False, log_to_driver=False, configure_logging=False)
            self._local = evaluator
            # held for the actors' lifetime: a restarted actor is rebuilt from this object
            self._shared = ray.put(evaluator)
            # spread over the cluster's nodes (memory bandwidth; one lost node takes fewer workers with it)
            actor = ray.remote(num_cpus=threads_per_worker, max_restarts=WORKER_RESTARTS,
                               max_task_retries=WORKER_RESTARTS, scheduling_strategy="SPREAD")(_EvaluatorActor)
            self._actors = [actor.remote(self._shared, threads_per_worker)  # type: ignore[attr-defined]
                            for _ in range(workers)]
            self.workers = workers
            # waits until every actor is up, and says where they run
            self.nodes = sorted(set(ray.get([a.node.remote() for a in self._actors])))  # type: ignore[attr-defined]
        log.info("%d Ray workers on %d node(s)", workers, len(self.nodes))

    def map(self, policies: Sequence[Mapping[str, float]]) -> list[Result]:
        """Results in the order of ``policies``, computed on the actors in parallel (each actor one at a time).

        When Ray calls an actor *unavailable* (restarting, or its node too busy to answer), its policy is sent
        again to the next free actor, for up to :data:`UNAVAILABLE_PATIENCE_S`: scoring a policy has no side
        effect, and the driver records each result once. (Ray's ``ActorPool`` gives up the whole batch on the
        first error.)

        Raises:
            WorkersLostError: a worker died more often than Ray may restart it (or its cluster is gone), or
                stayed unavailable past the patience.
        """
        import ray
        from ray.exceptions import ActorUnavailableError, RayActorError

        results: list[Result | None] = [None] * len(policies)
        queue, free = deque(range(len(policies))), list(self._actors)
        running: dict[Any, tuple[int, Any]] = {}
        unavailable_since: float | None = None
        while queue or running:
            while queue and free:
                i, actor = queue.popleft(), free.pop()
                running[actor.evaluate.remote(policies[i])] = (i, actor)  # type: ignore[attr-defined]
            [ref], _ = ray.wait(list(running), num_returns=1)
            i, actor = running.pop(ref)
            try:
                results[i] = ray.get(ref)
                unavailable_since = None
            except ActorUnavailableError as e:
                unavailable_since = unavailable_since or time.monotonic()
                if time.monotonic() - unavailable_since > UNAVAILABLE_PATIENCE_S:
                    raise _lost(e) from None
                log.warning("a Ray worker is unavailable (%s); its policy is sent again", type(e).__name__)
                time.sleep(1.0)
                queue.append(i)
            except RayActorError as e:
                raise _lost(e) from None
            free.append(actor)
        return results  # type: ignore[return-value]  # every index was filled or the loop raised

    def worker_pids(self) -> list[int]:
        """Process ids of the workers (on their nodes), e.g. to check that a killed one was replaced."""
        import ray

        return list(ray.get([a.pid.remote() for a in self._actors]))  # type: ignore[attr-defined]

    def __call__(self, policy: Mapping[str, float]) -> Result:
        return self.map([policy])[0]

    def __getattr__(self, name: str) -> Any:  # space, budget, pruner, baseline, ...: the driver's copy
        return getattr(self._local, name)

    def shutdown(self) -> None:
        """Stop the actors, and Ray itself when this evaluator started it."""
        import ray

        for a in self._actors:
            ray.kill(a)  # type: ignore[arg-type]
        self._actors = []
        if self._started_ray:
            ray.shutdown()
