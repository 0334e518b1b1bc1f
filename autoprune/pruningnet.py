"""MetaPruning's PruningNet: a meta network that generates the weights of any pruned network of a search space.

Liu et al., "MetaPruning" (ICCV 2019). For every weight layer of the model (a convolution or linear layer
whose channels a group prunes), a generator maps the layer's *encoding* -- the fractions of its output
and input channels kept -- through two fully connected layers to the full-size weight tensor; the pruned
network takes the first kept channels of it. Trained once on random encodings, it scores any candidate
without pruning and recalibrating the trained weights: generate, recalibrate BatchNorm, validate.

Here the encoding comes from the search space's coupled groups (a policy keeps ``k`` units of each
group; the PruningNet always keeps the *first* ``k``, so the generators learn to put what matters first),
so it serves every model whose groups masks represent exactly (BatchNorm CNNs: ResNets, VGG, MobileNetV2).
The last generator layer starts at zero weight and the dense weights as bias: at initialisation every
encoding generates the trained weights, the full-width one the dense model itself.

Training (:func:`train_pruningnet`) samples a policy per step, generates the weights, masks the channels
the policy removes (equivalent to the pruned network, BatchNorm in batch-statistics mode included) and
trains the generators and the shared parameters on the task loss. It is checkpointed and resumable.
"""

from __future__ import annotations

import copy
import logging
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.utils.data import TensorDataset

from autoprune.forward import Inputs, OutputSelector, examples, select_output, take
from autoprune.groups import Plan, UnsupportedModelError
from autoprune.progress import track_progress
from autoprune.pruning import dimension_slices
from autoprune.search_spaces import SearchSpace
from autoprune.surgery import apply_plan, plan_for_keep
from autoprune.training import task_loss

__all__ = ["PruningNet", "load_pruningnet", "save_pruningnet", "train_pruningnet"]

log = logging.getLogger(__name__)
HIDDEN = 32  # MetaPruning's generator width


class _Generator(nn.Module):
    """Encoding (2 numbers) -> FC -> ReLU -> FC -> one layer's full-size weight."""

    def __init__(self, weight: torch.Tensor, hidden: int) -> None:
        super().__init__()
        self.shape = tuple(weight.shape)
        self.hidden = nn.Linear(2, hidden)
        self.out = nn.Linear(hidden, weight.numel())
        with torch.no_grad():  # every encoding starts from the trained weights
            self.out.weight.zero_()
            self.out.bias.copy_(weight.detach().flatten())

    def forward(self, encoding: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.hidden(encoding))).view(self.shape)


class PruningNet(nn.Module):
    """Weight generators for ``model``'s prunable layers under ``space``.

    Args:
        model: the trained dense model (copied; the copy's other parameters are trained with the generators).
        space: its search space; every policy of it can be generated.
        hidden: width of each generator's hidden layer.

    Raises:
        UnsupportedModelError: a group masks cannot represent (a LayerNorm or GroupNorm reads its channels),
            naming it.
    """

    def __init__(self, model: nn.Module, space: SearchSpace, *, hidden: int = HIDDEN) -> None:
        super().__init__()
        unmaskable = [g.name for g in space.groups if not g.maskable]
        if unmaskable:
            raise UnsupportedModelError(
                f"PruningNet cannot serve layer {unmaskable[0]!r}: a channel normalisation (LayerNorm, GroupNorm) "
                "reads its pruned channels, so a masked forward is not the pruned network; use the adaptive-BN "
                "evaluator (evaluation.kind: adaptive_bn)")
        self.space = space
        self.base = copy.deepcopy(model).eval()
        members = {m.module for g in space.groups for m in g.members}
        weights = {name: m.weight for name, m in self.base.named_modules()
                   if name in members and isinstance(m, (nn.Conv2d, nn.Conv1d, nn.Linear))}
        self.layers = list(weights)
        self.shapes = {n: tuple(w.shape) for n, w in weights.items()}
        self.generators = nn.ModuleDict({_key(n): _Generator(w, hidden) for n, w in weights.items()})
        self._first = [np.arange(g.units)[::-1].copy() for g in space.groups]  # remove the last: keep the first

    # ----------------------------------------------------------------------------------------
    def plan(self, policy: Mapping[str, float]) -> Plan:
        """The plan of ``policy`` in the PruningNet's convention: each group keeps its first units."""
        return plan_for_keep(self.space.groups, self.space.keep_units(self.space.validate(policy)), self._first)

    def encoding(self, plan: Plan) -> dict[str, torch.Tensor]:
        """Each generated layer's (output, input) fractions of channels kept under ``plan``."""
        codes = {}
        for name in self.layers:
            layer = self.base.get_submodule(name)
            groups = int(getattr(layer, "groups", 1))
            shape = self.shapes[name]
            out_kept = 1 - len(plan.get((name, True), ())) / shape[0]
            # a grouped (depthwise) conv loses its inputs with its outputs
            in_kept = out_kept if groups > 1 else 1 - len(plan.get((name, False), ())) / shape[1]
            codes[name] = torch.tensor([out_kept, in_kept], dtype=torch.float32)
        return codes

    def weights(self, plan: Plan) -> dict[str, torch.Tensor]:
        """Full-size generated weights (by parameter name) of the network ``plan`` prunes."""
        codes = self.encoding(plan)
        return {f"{n}.weight": self.generators[_key(n)](codes[n]) for n in self.layers}

    def forward(self, x: Inputs, plan: Plan) -> Any:
        """The pruned network of ``plan`` on ``x``, with generated weights and its removed channels masked
        (differentiable: this is how the PruningNet trains)."""
        params: dict[str, torch.Tensor] = dict(self.base.named_parameters())
        params.update(self.weights(plan))
        for (name, out), idxs in plan.items():
            if not idxs:
                continue
            for pname, axis in dimension_slices(self.base, name, out):
                mask = torch.ones(params[pname].shape[axis])
                mask[list(idxs)] = 0.0
                shape = [1] * params[pname].dim()
                shape[axis] = -1
                params[pname] = params[pname] * mask.view(shape)
        state = {**params, **dict(self.base.named_buffers())}
        if isinstance(x, Mapping):
            return functional_call(self.base, state, args=(), kwargs=dict(x))
        return functional_call(self.base, state, args=(x,))

    @torch.no_grad()
    def generate(self, policy: Mapping[str, float]) -> nn.Module:
        """The physically pruned network of ``policy`` with generated weights (BatchNorm statistics still
        the shared ones: recalibrate before use)."""
        plan = self.plan(policy)
        model = copy.deepcopy(self.base)
        for pname, w in self.weights(plan).items():
            model.get_parameter(pname).copy_(w)
        return apply_plan(model, plan).eval()


def _from_state(like: nn.Module, state: Mapping[str, torch.Tensor]) -> nn.Module:
    model = copy.deepcopy(like)
    model.load_state_dict(state)
    return model.eval()


def _key(layer: str) -> str:
    return layer.replace(".", "__")  # ModuleDict keys cannot hold dots


# --------------------------------------------------------------------------------------------
def save_pruningnet(net: PruningNet, path: str | os.PathLike[str], extra: Mapping[str, Any] | None = None) -> None:
    """Write ``net``'s weights (and ``extra``: optimiser state, step, RNG) atomically."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"state_dict": net.state_dict(), **(extra or {})}, tmp)
    os.replace(tmp, path)


def load_pruningnet(net: PruningNet, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load weights saved by :func:`save_pruningnet` into ``net``; returns the rest of the file.

    Raises:
        ValueError: the file is damaged or belongs to another model or space (one line: what to do).
    """
    try:
        blob = torch.load(path, weights_only=False)
        net.load_state_dict(blob.pop("state_dict"))
    except (RuntimeError, EOFError, OSError, KeyError, AttributeError, pickle.UnpicklingError) as e:
        first = str(e).splitlines()[0][:120] if str(e) else ""
        raise ValueError(f"{path} cannot be loaded ({type(e).__name__}: {first}); it is damaged or was trained "
                         "for another model or search space: delete it to train the PruningNet again") from None
    return dict(blob)


def train_pruningnet(net: PruningNet, train_data: TensorDataset, *, steps: int, batch_size: int = 64,
                     lr: float = 1e-3, seed: int = 0, checkpoint: str | os.PathLike[str] | None = None,
                     checkpoint_every: int = 50, select: OutputSelector = select_output,
                     distill: float = 0.0, show_progress: bool = True) -> list[float]:
    """Train ``net`` for ``steps`` steps, each on one random policy of its space and one TRAIN batch.

    ``distill`` > 0 mixes in knowledge distillation from the dense model (that weight on its softened
    outputs, the rest on the labels).

    With ``checkpoint``, the state is saved there every ``checkpoint_every`` steps and at the end, and a
    training whose checkpoint exists continues from it (the same steps as an uninterrupted one).
    Returns the loss of every step run by this call.
    """
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    torch_rng = torch.Generator().manual_seed(seed)
    done = 0
    if checkpoint is not None and Path(checkpoint).exists():
        state = load_pruningnet(net, checkpoint)
        optimizer.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["rng"]
        torch_rng.set_state(state["torch_rng"])
        done = int(state["step"])
        log.info("continuing PruningNet training from its checkpoint at step %d of %d", done, steps)
    teacher = copy.deepcopy(net.base).eval() if distill > 0 else None  # the dense model, before any step
    if teacher is not None and done:  # resumed: the base has moved; its dense weights are the generators' start
        teacher = None if "teacher" not in state else _from_state(net.base, state["teacher"])
    x_train, y_train = examples(train_data)
    n = len(y_train)
    losses = []

    def save(step: int) -> None:
        if checkpoint is not None:
            save_pruningnet(net, checkpoint, {"optimizer": optimizer.state_dict(), "rng": rng.bit_generator.state,
                                              "torch_rng": torch_rng.get_state(), "step": step,
                                              **({"teacher": teacher.state_dict()} if teacher is not None else {})})

    net.train()
    with track_progress("PruningNet training", steps, enabled=show_progress) as bar:
        bar.advance(min(done, steps))
        for step in range(done, steps):
            plan = net.plan(net.space.sample(rng))
            batch = torch.randint(n, (batch_size,), generator=torch_rng)
            x = take(x_train, batch)
            loss = task_loss(select(net(x, plan)), y_train[batch], teacher=teacher, x=x, select=select,
                             weight=distill)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            bar.advance(1, loss=losses[-1])
            if (step + 1) % checkpoint_every == 0:
                save(step + 1)
    save(steps)
    net.eval()
    return losses
