"""Exact analytic FLOPs (MACs) and parameter counts of a pruned model, without pruning it.

Pruning a group shrinks the output dimension of some layers and the input dimension of others, so
every layer's cost is a product of at most two kept-channel counts. The :class:`CostModel` records
each supported layer's shape once (a forward pass with hooks) and then prices any policy with a
few hundred multiplications, in microseconds. Costs are per example (batch 1), in multiply-
accumulates as counted by ``torch.utils.flop_counter`` (which reports FLOPs = 2 x MACs for convs,
matmuls and attention products; normalisation layers and activations are not counted).

:func:`count_costs` is the ground truth; ``SearchSpace.from_model(verify_costs=True)`` checks the
model against it on a physically pruned copy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

if TYPE_CHECKING:
    from autoprune.search_spaces import GroupSpec

__all__ = ["SUPPORTED_LAYERS", "CostModel", "Costs", "count_costs"]

SUPPORTED_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)


@dataclass(frozen=True)
class Costs:
    """Per-example cost of a model: multiply-accumulates, parameter count and, when the search
    space has a latency table, predicted latency in seconds on the target runtime."""

    macs: int
    params: int
    latency: float | None = None

    def ratio(self, dense: Costs) -> tuple[float, float]:
        return self.macs / dense.macs, self.params / dense.params


def count_costs(model: nn.Module, example_inputs: torch.Tensor) -> Costs:
    """Count MACs (``FlopCounterMode`` FLOPs / 2) and parameters of ``model`` on one example."""
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(example_inputs[:1])
    model.train(was_training)
    return Costs(macs=counter.get_total_flops() // 2, params=sum(p.numel() for p in model.parameters()))


# A dimension reference: (group index, indices removed per pruned unit); None = never pruned.
_Dim = tuple[int, int]


@dataclass(frozen=True)
class _Layer:
    """One priced layer: every cost is bilinear in its kept output and input sizes."""

    out: _Dim | None
    inp: _Dim | None
    dense_out: int
    dense_in: int  # input channels per output channel (1 for a depthwise conv)
    macs_per_pair: int  # MACs per (output, input) channel pair: kernel area x positions, tokens...
    params_per_pair: int  # weight entries per pair: kernel area (conv), 1 (linear), 0 (norm)
    params_per_out: int  # bias / affine entries per output channel


class CostModel:
    """Prices kept-unit vectors of a search space's groups (see the module docstring)."""

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor, groups: Sequence[GroupSpec]) -> None:
        self.units = np.array([g.units for g in groups], dtype=np.int64)
        dims: dict[tuple[str, bool], _Dim] = {}
        for i, g in enumerate(groups):
            for m in g.members:
                dims[(m.module, m.out)] = (i, m.index.shape[1])
        shapes = _record_shapes(model, example_inputs[:1])
        self.shapes = shapes  # per layer: (input shape, output shape) on one example
        layers: list[_Layer] = []
        self.layer_names: list[str] = []  # parallel to the priced layers (attention products last)
        for name, module in model.named_modules():
            if name not in shapes:
                continue
            layers.append(_describe(name, module, shapes[name], dims))
            self.layer_names.append(name)
        for i, g in enumerate(groups):  # attention products scale with the heads kept
            if g.kind == "heads":
                tokens = shapes[g.name][0][-2]
                layers.append(_Layer((i, 1), None, g.units, 1, 2 * tokens * tokens * g.unit_size, 0, 0))
                self.layer_names.append(g.name + "#attention")
        self._layers = layers
        # The same layers as columns, so that pricing a policy is a handful of numpy operations
        # (the env's action wall and the projection price hundreds of policies per episode).
        never = len(groups)  # index of the always-zero "removed units" entry of an unpruned dimension
        self._out_group, self._out_step = _columns([layer.out for layer in layers], never)
        self._in_group, self._in_step = _columns([layer.inp for layer in layers], never)
        self._dense_out, self._dense_in, self._macs_per_pair, self._params_per_pair, self._params_per_out = (
            np.array([getattr(layer, f) for layer in layers], dtype=np.int64)
            for f in ("dense_out", "dense_in", "macs_per_pair", "params_per_pair", "params_per_out"))
        counted = count_costs(model, example_inputs)
        full = self.units.copy()
        macs, params = self._sum(full)
        # Layers the model does not prune (and ops outside modules) cost the same in every policy.
        self._const = Costs(counted.macs - macs, counted.params - params)
        self.dense = counted

    def _kept_sizes(self, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Kept output and input(-per-output) sizes of every priced layer, in layer order."""
        removed = np.append(self.units - keep, 0)
        return (self._dense_out - self._out_step * removed[self._out_group],
                self._dense_in - self._in_step * removed[self._in_group])

    def _sum(self, keep: np.ndarray) -> tuple[int, int]:
        out, inp = self._kept_sizes(keep)
        pairs = out * inp
        return int(pairs @ self._macs_per_pair), int(pairs @ self._params_per_pair + out @ self._params_per_out)

    def layer_sizes(self, keep: np.ndarray) -> dict[str, tuple[int, int]]:
        """Kept (output, input-per-output) sizes of every priced layer when group ``i`` keeps ``keep[i]`` units."""
        out, inp = self._kept_sizes(np.asarray(keep, dtype=np.int64))
        return {n: (int(o), int(i)) for n, o, i in zip(self.layer_names, out, inp, strict=True)}

    def costs(self, keep: np.ndarray) -> Costs:
        """Costs of the model when group ``i`` keeps ``keep[i]`` units."""
        macs, params = self._sum(np.asarray(keep, dtype=np.int64))
        return Costs(macs + self._const.macs, params + self._const.params)


def _columns(dims: Sequence[_Dim | None], never: int) -> tuple[np.ndarray, np.ndarray]:
    """Group indices and indices-per-unit of some dimensions; an unpruned one points at ``never``."""
    return (np.array([never if d is None else d[0] for d in dims], dtype=np.int64),
            np.array([0 if d is None else d[1] for d in dims], dtype=np.int64))


def _record_shapes(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[torch.Size, torch.Size]]:
    shapes: dict[str, tuple[torch.Size, torch.Size]] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, SUPPORTED_LAYERS):
            def hook(mod: nn.Module, args: tuple, out: torch.Tensor, name: str = name) -> None:
                shapes.setdefault(name, (args[0].shape, out.shape))
            hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return shapes


def _describe(name: str, module: nn.Module, shapes: tuple[torch.Size, torch.Size],
              dims: dict[tuple[str, bool], _Dim]) -> _Layer:
    in_shape, out_shape = shapes
    out_dim, in_dim = dims.get((name, True)), dims.get((name, False))
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        area = math.prod(module.kernel_size)
        positions = math.prod(out_shape[2:])
        bias = int(module.bias is not None)
        if module.groups == module.in_channels == module.out_channels and module.groups > 1:  # depthwise
            return _Layer(out_dim, None, module.out_channels, 1, area * positions, area, bias)
        # A grouped (not depthwise) conv is only priced whole; discover_groups never prunes one.
        return _Layer(out_dim, in_dim, module.out_channels, module.in_channels // module.groups,
                      area * positions, area, bias)
    if isinstance(module, nn.Linear):
        tokens = math.prod(in_shape) // module.in_features
        return _Layer(out_dim, in_dim, module.out_features, module.in_features, tokens, 1,
                      int(module.bias is not None))
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return _Layer(out_dim, None, module.num_features, 1, 0, 0, 2 if module.affine else 0)
    assert isinstance(module, nn.LayerNorm)
    affine = int(module.weight is not None) + int(module.bias is not None)
    return _Layer(out_dim, None, module.normalized_shape[-1], 1, 0, 0, affine)
