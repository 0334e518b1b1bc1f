"""Importance criteria: which units of a group go first.

A criterion is a name of :data:`IMPORTANCE_NAMES` or any Torch-Pruning ``Importance`` object (for a
criterion of your own or another setting of a built-in one, e.g.
``tp.importance.MagnitudeImportance(p=2, group_reduction="max")``). :func:`rank_units` scores every
group of a search space once, on the dense model, and returns each group's units from least to most
important; the pruner removes them in that order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias, cast

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from autoprune.discovery import build_graph, scoring_group
from autoprune.forward import Inputs, OutputSelector, call, select_output, take
from autoprune.forward import batch_size as count
from autoprune.groups import GroupSpec

__all__ = ["DATA_CRITERIA", "IMPORTANCE_NAMES", "Criterion", "OutputEnergyImportance", "rank_units"]

IMPORTANCE_NAMES = ("l1", "l2", "bn_scale", "taylor", "fpgm", "lamp", "random", "energy")
# criteria that read data: "taylor" a batch's loss gradients, "energy" the activations of many images
DATA_CRITERIA = ("taylor", "energy")
Criterion: TypeAlias = str | tp.importance.Importance
_ROOT_TYPES = (nn.Conv1d, nn.Conv2d, nn.Linear)


class OutputEnergyImportance(tp.importance.Importance):
    """Scores a channel by the output energy it feeds the layers that read it: the sum over those layers
    of ``||W[:, c]||^2 * E[x_c^2]``, with ``E[x_c^2]`` measured on ``inputs``. A data-weighted L2: a
    heavy weight on a channel that is rarely active costs little when removed (cf. ThiNet, NISP).
    Needs a few hundred images; 64 gave unstable rankings on the reference ResNet-20."""

    def __init__(self, model: nn.Module, inputs: Inputs, batch_size: int = 128) -> None:
        self._sums: dict[nn.Module, torch.Tensor] = {}
        self._counts: dict[nn.Module, int] = {}
        hooks = [m.register_forward_hook(self._record) for m in model.modules() if isinstance(m, _ROOT_TYPES)]
        try:
            with torch.no_grad():
                for start in range(0, count(inputs), batch_size):
                    call(model, take(inputs, slice(start, start + batch_size)))
        finally:
            for hook in hooks:
                hook.remove()

    def _record(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        x = inputs[0].detach()
        # one row per channel: the last dimension of a Linear's input, dimension 1 of a conv's
        x = x.flatten(0, -2).T if isinstance(module, nn.Linear) else x.transpose(0, 1).flatten(1)
        self._sums[module] = self._sums.get(module, 0) + (x.double() ** 2).sum(1)
        self._counts[module] = self._counts.get(module, 0) + x.shape[1]

    @torch.no_grad()
    def __call__(self, group: Any) -> torch.Tensor | None:
        scores = None
        for item in group:
            dep, idxs = item
            layer = dep.target.module
            if layer not in self._sums or dep.handler not in (  # _sums: the Conv/Linear layers seen
                    tp.pruner.function.prune_conv_in_channels, tp.pruner.function.prune_linear_in_channels):
                continue
            w = layer.weight.detach().double()
            groups = getattr(layer, "groups", 1)  # grouped convs: input c meets only its group's outputs
            w = w.reshape(groups, w.shape[0] // groups, *w.shape[1:]).transpose(1, 2)
            per_input = (w.flatten(2) ** 2).sum(2).flatten()
            energy = self._sums[layer] / self._counts[layer]
            scores = torch.zeros(len(item.root_idxs), dtype=torch.float64) if scores is None else scores
            scores.scatter_add_(0, torch.tensor(item.root_idxs), (per_input * energy)[idxs])
        return scores


def _importance(name: str, model: nn.Module, calibration: tuple[Inputs, torch.Tensor] | None
                ) -> tp.importance.Importance:
    if name == "energy":  # Pruner checks that the data criteria have their calibration batch
        return OutputEnergyImportance(model, cast(tuple, calibration)[0])
    factories = {
        "l1": lambda: tp.importance.MagnitudeImportance(p=1),
        "l2": lambda: tp.importance.MagnitudeImportance(p=2),
        "bn_scale": tp.importance.BNScaleImportance,
        "taylor": tp.importance.TaylorImportance,
        "fpgm": tp.importance.FPGMImportance,
        "lamp": tp.importance.LAMPImportance,
        "random": tp.importance.RandomImportance,
    }
    if name not in factories:
        raise ValueError(f"unknown importance {name!r}; choose one of: {', '.join(IMPORTANCE_NAMES)}")
    return factories[name]()


def _row_magnitude(layer: nn.Module, p: int) -> torch.Tensor | None:
    """Per output channel, the p-th power norm of the layer's weights (Hugging Face's ``Conv1D`` stores
    them transposed)."""
    weight = getattr(layer, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() < 2:
        return None
    w = weight.detach().T if type(layer).__name__ == "Conv1D" else weight.detach()
    return w.flatten(1).abs().pow(p).sum(1)


def rank_units(model: nn.Module, groups: Sequence[GroupSpec], importance: Criterion, *, example_inputs: Inputs,
               calibration: tuple[Inputs, torch.Tensor] | None = None, seed: int = 0,
               select: OutputSelector = select_output) -> list[np.ndarray]:
    """Each group's units ordered from least to most important under ``importance``.

    Raises:
        ValueError: a data criterion without its calibration batch, or a criterion that fails on
            (or cannot score) a group; the message names the group.
    """
    if importance in DATA_CRITERIA and calibration is None:
        raise ValueError(f"importance {importance!r} needs a calibration batch (x, y) of TRAIN images")
    scorer = _importance(importance, model, calibration) if isinstance(importance, str) else importance
    graph = build_graph(model, example_inputs)
    # Gradients for "taylor", and for a criterion object, which may read them (it is cheap: one batch).
    if calibration is not None and (importance == "taylor" or not isinstance(importance, str)):
        model.zero_grad()
        was_training = model.training
        model.eval()
        nn.functional.cross_entropy(call(model, calibration[0], select), calibration[1]).backward()
        model.train(was_training)
    order = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for g in groups:
            try:
                scores = scorer(scoring_group(graph, model, g))
            except Exception as error:  # a criterion of the user's own: say which group it failed on
                raise ValueError(f"importance {importance!r} failed on group {g.name!r} "
                                 f"({type(error).__name__}: {error})") from error
            if scores is None and importance in ("l1", "l2"):  # a layer Torch-Pruning's criteria skip (Conv1D)
                scores = _row_magnitude(dict(model.named_modules())[g.name], 1 if importance == "l1" else 2)
            if scores is None:  # e.g. BN scale on a group without BatchNorm
                raise ValueError(f"importance {importance!r} cannot score group {g.name!r} "
                                 "(it has no layer that criterion reads); choose another criterion")
            # A unit's score sums the scores of the named layer's output channels it owns.
            own = next(m for m in g.members if m.module == g.name and m.out)
            s = scores.detach().double().numpy()[own.index].sum(axis=1)
            order.append(np.argsort(s, kind="stable"))
    if calibration is not None:
        model.zero_grad(set_to_none=True)
    return order
