"""Evaluator: Policy -> Result (costs, budget check, accuracy after adaptive BN, timings).

Accuracy is measured on a validation split carved from TRAIN after adaptive BatchNorm
recalibration (EagleEye, Li et al. 2020): a pruned network's BN statistics are stale, so they are
reset and re-estimated on a few training batches before scoring, which ranks policies far better
than the stale statistics do. The TEST split is never used here.

The evaluator applies a policy through the exact path (a physically pruned copy, running at its
reduced cost) or the mask path (the shared model with zeroed channels, running at dense cost),
whichever it measured to be faster for its evaluation size (``path="auto"``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from autoprune.budget import Budget
from autoprune.forward import Inputs, OutputSelector, call, clone, dataset, examples, select_output, take, to_device
from autoprune.forward import batch_size as count
from autoprune.groups import Plan
from autoprune.importance import DATA_CRITERIA, Criterion
from autoprune.pruning import Pruner
from autoprune.result import Result
from autoprune.rewards import Baseline, Reward, get_reward
from autoprune.search_spaces import Policy, SearchSpace
from autoprune.training import TrainConfig, accuracy, model_device, train

__all__ = ["RELEASE_BN_IMAGES", "Evaluator", "Result", "recalibrate_batchnorm"]

# BatchNorm statistics of the model a search hands back come from this many TRAIN images. A search
# scores hundreds of policies on a few batches (cheap, and enough to rank them); the one model that
# ships is recalibrated once on far more, so its statistics do not hinge on which 512 images were
# drawn. On the 17 searched ResNet-20 policies of benchmarks/results/search_quality.md, 512 -> 8,192
# images changed test accuracy by -0.4 to +0.8 points, +0.2 on average.
RELEASE_BN_IMAGES = 8192


def _raw(output: Any) -> Any:  # an output selector that keeps the output as it is (timing, BN statistics)
    return output


def _bn_order(n_train: int, seed: int) -> torch.Tensor:
    """The seeded order in which TRAIN images are drawn for BatchNorm recalibration: the search takes
    its first few, :meth:`Evaluator.release` a longer prefix of the same order."""
    return torch.randperm(n_train, generator=torch.Generator().manual_seed(seed))


def recalibrate_batchnorm(model: nn.Module, x: Inputs, batch_size: int) -> None:
    """Re-estimate every BatchNorm's running statistics on ``x`` (cumulative average, no grads)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: every batch weighs the same
    was_training = model.training
    model.train()
    device = model_device(model)
    try:
        with torch.no_grad():
            for i in range(0, count(x), batch_size):
                call(model, to_device(take(x, slice(i, i + batch_size)), device), select=_raw)  # outputs unused
    finally:
        for bn, m in zip(bns, momenta, strict=True):
            bn.momentum = m
        model.train(was_training)


class Evaluator:
    """Scores policies of one model under one budget.

    Args:
        model: the trained dense model.
        space: its search space.
        train_data: TRAIN split (BN recalibration and fine-tuning batches come from it).
        val_data: validation split carved from TRAIN; the first ``val_size`` examples are used.
        budget: hard limits; ``Result.feasible`` says whether a policy meets them.
        importance: channel-ranking criterion of the pruner: a name of ``autoprune.pruning.IMPORTANCE_NAMES``
            or a Torch-Pruning ``Importance`` object.
        val_size: validation examples scored per policy.
        bn_batches: training batches forwarded for adaptive BN (``0`` disables it).
        batch_size: batch size of BN recalibration, validation and fine-tuning.
        finetune_steps: SGD steps on the pruned copy before scoring (forces the exact path).
        path: ``"exact"``, ``"mask"`` or ``"auto"`` (measure both on the first policy, keep the faster).
        reward: a built-in name (``"accuracy"``, ``"acc_flops"``, ...), ``"module:function"`` or a
            callable ``(result, baseline) -> float``; defaults to the validation accuracy.
        seed: seeds the choice of recalibration images and fine-tuning.
        device: where pruned copies are recalibrated, fine-tuned and scored (``"cuda"`` when a GPU
            is there). Pruning itself runs on the CPU; a device other than the CPU implies the
            exact path, since masks act on the shared CPU model.
        select: picks the logits from the model's output (default: a tensor, else ``.logits``, else the
            first element of a tuple or dict).
    """

    def __init__(self, model: nn.Module, space: SearchSpace, *, train_data: TensorDataset, val_data: TensorDataset,
                 budget: Budget | None = None, importance: Criterion = "l2", val_size: int = 2000, bn_batches: int = 8,
                 batch_size: int = 64, finetune_steps: int = 0, path: str = "auto",
                 reward: str | Reward | None = None, seed: int = 0, device: str | torch.device = "cpu",
                 select: OutputSelector = select_output) -> None:
        if path not in ("auto", "exact", "mask"):
            raise ValueError(f"path must be 'auto', 'exact' or 'mask', got {path!r}")
        if val_size < 1 or bn_batches < 0 or batch_size < 1 or finetune_steps < 0:
            raise ValueError("val_size and batch_size must be >= 1; bn_batches and finetune_steps >= 0")
        self.model = model.eval()
        self.space = space
        self.budget = budget or Budget()
        self.train_data = train_data
        x_val, y_val = examples(val_data)
        # clones, not views: a view pickles (to Ray workers) with the whole split behind it
        self.val = dataset(clone(take(x_val, slice(0, val_size))), y_val[:val_size].clone())
        x_train, y_train = examples(train_data)
        pick = _bn_order(count(x_train), seed)[: bn_batches * batch_size]
        self.bn_inputs = take(x_train, pick)
        self.batch_size, self.finetune_steps, self.seed = batch_size, finetune_steps, seed
        self.reward_fn = get_reward(reward)
        self._baseline: Baseline | None = None
        example = clone(take(x_train, slice(0, 1)))
        # "energy" reads the activations of all the BN images, "taylor" (or a criterion object) one batch's
        # gradients; without BN recalibration they get the images it would have used by default.
        if not len(pick) and (importance in DATA_CRITERIA or not isinstance(importance, str)):
            pick = _bn_order(count(x_train), seed)[: 8 * batch_size]
        used = pick if importance == "energy" else pick[:batch_size]
        calibration = (take(x_train, used), y_train[used]) if len(used) else None
        self.select = select
        self.pruner = Pruner(model, space, importance=importance, example_inputs=example,
                             calibration=calibration, seed=seed, select=select)
        self.device = torch.device(device)
        if path == "mask" and not self.pruner.maskable:
            raise ValueError("path='mask' cannot prune this space exactly (a LayerNorm, RMSNorm or GroupNorm reads "
                             "pruned channels); use path='exact' or 'auto'")
        self.path = "exact" if finetune_steps or self.device.type != "cpu" else path
        self.path_timing: dict[str, float] = {}

    def plan(self, policy: Mapping[str, float]) -> Plan:
        """The pruning plan of ``policy`` (the pruner's importance order applied to its kept counts)."""
        return self.pruner.plan(policy)

    def release_choice(self, policy: Mapping[str, float]) -> dict[str, Any]:
        """Empty: :meth:`release` has one model to return."""
        return {}

    def release(self, policy: Mapping[str, float], *, bn_images: int = RELEASE_BN_IMAGES,
                reconstruct: bool = True) -> nn.Module:
        """The physically pruned model of ``policy`` (on the CPU) as a search hands it back: with
        ``reconstruct``, the layers that lost input channels refitted by least squares to the dense
        model's outputs (:mod:`autoprune.reconstruction`), then its BatchNorm statistics re-estimated
        on ``bn_images`` TRAIN images (a superset of the search's batches)."""
        model = self.pruner.prune(policy)  # without the TRAIN split (a worker's copy) release_images raises
        if reconstruct:
            from autoprune.reconstruction import RECONSTRUCT_IMAGES
            from autoprune.reconstruction import reconstruct as refit

            refit(self.model, model, self.pruner.plan(policy), self.release_images(RECONSTRUCT_IMAGES),
                  batch_size=self.batch_size, seed=self.seed)
        recalibrate_batchnorm(model, self.release_images(bn_images), self.batch_size)
        return model

    def release_images(self, n: int) -> Inputs:
        """The first ``n`` TRAIN images of the seeded order (refit and BN statistics of released models)."""
        if self.train_data is None:
            raise RuntimeError("release() needs the TRAIN split; call it on the driver's evaluator, not a worker's")
        x_train = examples(self.train_data)[0]
        return take(x_train, _bn_order(count(x_train), self.seed)[:n])

    # ----------------------------------------------------------------------------------------
    def __call__(self, policy: Mapping[str, float]) -> Result:
        """Evaluate one policy. Invalid policies raise ``PolicyError``; nothing else raises."""
        start = time.perf_counter()
        policy = self.space.validate(policy)
        costs = self.space.costs(policy)
        dense = self.space.dense_costs
        seconds = {"costs": time.perf_counter() - start}
        if self.path == "auto":
            self._choose_path(policy)
        base = Result(policy=policy, flops=costs.macs, params=costs.params, flops_ratio=costs.macs / dense.macs,
                      params_ratio=costs.params / dense.params, feasible=self.budget.holds(costs, dense),
                      path=self.path, latency=costs.latency, seconds=seconds)
        try:
            t = time.perf_counter()
            with self._pruned(policy) as model:
                model.to(self.device)
                seconds["prune"] = time.perf_counter() - t
                if self.finetune_steps:
                    t = time.perf_counter()
                    torch.manual_seed(self.seed)
                    train(model, self.train_data, TrainConfig(epochs=1.0, batch_size=self.batch_size, max_lr=0.01,
                                                              seed=self.seed),
                          max_steps=self.finetune_steps, show_progress=False, select=self.select)
                    seconds["finetune"] = time.perf_counter() - t
                t = time.perf_counter()
                recalibrate_batchnorm(model, self.bn_inputs, self.batch_size)
                seconds["recalibrate"] = time.perf_counter() - t
                t = time.perf_counter()
                acc = accuracy(model, self.val, batch_size=max(self.batch_size, 500), select=self.select)
                seconds["validate"] = time.perf_counter() - t
            reward = float(self.reward_fn(replace(base, accuracy=acc), self.baseline))
            if not math.isfinite(reward):
                raise ValueError(f"reward returned {reward}")
        except Exception as e:  # a failed evaluation is a result, so a search can go on
            seconds["total"] = time.perf_counter() - start
            return replace(base, failed=f"{type(e).__name__}: {e}")
        seconds["total"] = time.perf_counter() - start
        return replace(base, accuracy=acc, reward=reward)

    def __getstate__(self) -> dict[str, Any]:
        # Sent to every Ray worker: without fine-tuning steps the TRAIN split is not needed there
        # (adaptive BN uses bn_inputs), and it is most of the bytes (172 MB for Fashion-MNIST).
        state = self.__dict__.copy()
        if not self.finetune_steps:
            state["train_data"] = None
        return state

    def map(self, policies: Sequence[Mapping[str, float]]) -> list[Result]:
        """Evaluate several policies (one after the other here; on N Ray workers in ``RayEvaluator``)."""
        return [self(p) for p in policies]

    @contextmanager
    def _pruned(self, policy: Policy):  # type: ignore[no-untyped-def]
        if self.path == "mask":
            with self.pruner.masked(policy) as model:
                yield model
        else:
            yield self.pruner.prune(policy)

    def _choose_path(self, policy: Policy) -> None:
        """Time one batch through each path and extrapolate to a whole evaluation.

        The exact path pays a copy + prune and then runs cheap forward passes; the mask path pays
        almost nothing up front but runs at dense cost. Which wins depends on the model and on
        how many images an evaluation forwards, so it is measured rather than assumed.
        """
        n_batches = math.ceil(count(self.bn_inputs) / self.batch_size) + math.ceil(len(self.val) / self.batch_size)
        x = take(examples(self.val)[0], slice(0, self.batch_size))
        if not self.pruner.maskable:  # masks cannot represent every group of this space exactly
            self.path, self.path_timing = "exact", {}
            return
        timing = {}
        for path in ("exact", "mask"):
            self.path = path
            t = time.perf_counter()
            with self._pruned(policy) as model, torch.no_grad():
                prepare = time.perf_counter() - t
                model.eval()
                call(model, x, select=_raw)  # warm-up
                t = time.perf_counter()
                for _ in range(2):
                    call(model, x, select=_raw)
                per_batch = (time.perf_counter() - t) / 2
            timing[path] = prepare + n_batches * per_batch
        self.path = min(timing, key=timing.__getitem__)
        self.path_timing = {f"{k}_estimated_s": v for k, v in timing.items()}

    @property
    def baseline(self) -> Baseline:
        """The dense model's accuracy and costs (computed once, on first use)."""
        if self._baseline is None:
            dense = self.space.dense_costs
            target = self.budget.limits(dense).get("latency") if dense.latency is not None else None
            self._baseline = Baseline(accuracy=self.dense_accuracy(), flops=dense.macs, params=dense.params,
                                      latency=dense.latency, target_latency=target)
        return self._baseline

    def dense_accuracy(self) -> float:
        """Validation accuracy of the unpruned model (its own BN statistics)."""
        return accuracy(self.model, self.val, batch_size=max(self.batch_size, 500), select=self.select)


