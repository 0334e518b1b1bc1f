"""Exact analytic FLOPs (MACs) and parameter counts of a pruned model, without pruning it.

Pruning shrinks layer dimensions, and every dimension's kept size is *linear* in the units each
group removes: ``kept = dense - sum over groups g of step_g * removed_g``. A plain dimension has
one term; the input of a layer reading a concatenation has one term per producer group (nested
concatenations included); a dimension no group touches has none. Every layer's cost is then
bilinear in its kept output and input sizes, so the :class:`CostModel` records each layer's shape
once (a forward pass with hooks) and prices any policy with two small matrix-vector products.

Costs are per example (batch 1), in multiply-accumulates as counted by ``torch.utils.flop_counter``
(FLOPs = 2 x MACs for convolutions, matmuls and attention products; normalisations, activations
and elementwise products are not counted). Attention products (``q @ k^T`` and ``attn @ v``) scale
with the heads a ``heads`` group keeps. The cost model reads only group descriptions
(:mod:`autoprune.groups`), never Torch-Pruning objects.

:func:`count_costs` is the ground truth; ``SearchSpace.from_model(verify_costs=True)`` checks the
model against it on physically pruned copies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from autoprune.families import conv1d_sizes, is_conv1d_transposed_linear
from autoprune.forward import Inputs, call, first_example
from autoprune.groups import GroupSpec, UnsupportedModelError, parameter_axis

__all__ = ["CostModel", "Costs", "Dim", "PricedLayer", "count_costs"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_TRANSPOSES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)


@dataclass(frozen=True)
class Costs:
    """Per-example cost of a model: multiply-accumulates, parameter count and, when the search
    space has a latency table, predicted latency in seconds on the target runtime."""

    macs: int
    params: int
    latency: float | None = None


def _attention_flops(query_shape: torch.Size, key_shape: torch.Size, value_shape: torch.Size, *args: object,
                     out_shape: object = None, **kwargs: object) -> int:
    """FLOPs of fused attention: ``q @ k^T`` and ``attn @ v`` for every query head (keys and values may
    have fewer heads under grouped-query attention; causal masking is not discounted)."""
    b, heads, s_q, d_q = query_shape
    s_k, d_v = key_shape[-2], value_shape[-1]
    return 2 * b * heads * s_q * s_k * (d_q + d_v)


# PyTorch's flop counter has no formula for the CPU fused-attention kernel that F.scaled_dot_product_attention
# (and so every Hugging Face model by default) calls on CPU; without one, attention would be free.
_FUSED_ATTENTION = {op: _attention_flops for op in (
    getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None),) if op is not None}


def count_costs(model: nn.Module, example_inputs: Inputs) -> Costs:
    """Count MACs (``FlopCounterMode`` FLOPs / 2) and parameters of ``model`` on one example."""
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_FUSED_ATTENTION) as counter:
        call(model, first_example(example_inputs))
    model.train(was_training)
    return Costs(macs=counter.get_total_flops() // 2, params=sum(p.numel() for p in model.parameters()))


@dataclass(frozen=True)
class Dim:
    """A layer dimension: ``kept = dense - sum(step * removed units of group) over terms``."""

    dense: int
    terms: tuple[tuple[int, int], ...] = ()  # (group index, indices removed per unit)


@dataclass(frozen=True)
class PricedLayer:
    """One priced layer (or bare parameter, or attention product): cost is bilinear in its kept sizes.

    ``macs = macs_per_pair * out * inp`` and ``params = params_per_pair * out * inp + params_per_out * out``,
    where ``inp`` is the input size *per output channel* (fixed for depthwise and grouped convolutions).
    """

    name: str
    kind: str  # "conv", "conv_transpose", "linear", "norm", "embedding", "parameter", "attention"
    out: Dim
    inp: Dim
    macs_per_pair: int
    params_per_pair: int
    params_per_out: int


class CostModel:
    """Prices kept-unit vectors of a search space's groups (see the module docstring).

    Attributes:
        layers: the priced layers (those a group touches, and one attention product per heads group);
            everything else costs the same in every policy and is folded into a constant.
        shapes: per hooked layer, its (input shape, output shape) on one example.
        units: units of each group (the dense model keeps all).
        dense: counted costs of the dense model.
    """

    def __init__(self, model: nn.Module, example_inputs: Inputs, groups: Sequence[GroupSpec]) -> None:
        self.units = np.array([g.units for g in groups], dtype=np.int64)
        terms: dict[tuple[str, bool], list[tuple[int, int]]] = {}
        for i, g in enumerate(groups):
            for m in g.members:
                terms.setdefault((m.module, m.out), []).append((i, m.index.shape[1]))
        modules = dict(model.named_modules())
        parameters = dict(model.named_parameters())
        touched = {name for name, _ in terms}
        self.shapes = _record_shapes(model, first_example(example_inputs),
                                     {n for n in touched if n in modules} | {g.name for g in groups})
        layers: list[PricedLayer] = []
        order = {n: i for i, n in enumerate([*modules, *parameters])}
        for name in sorted(touched, key=lambda n: order.get(n, len(order))):
            if name in modules:
                layers.append(_describe(name, modules[name], self.shapes.get(name), terms))
            elif name in parameters:
                layers.append(_describe_parameter(name, parameters[name], terms))
            else:
                raise UnsupportedModelError(f"group member {name!r} is neither a module nor a parameter of the model")
        for i, g in enumerate(groups):  # attention products scale with the heads kept
            if g.kind == "heads":
                if g.name not in self.shapes:
                    raise UnsupportedModelError(f"attention layer {g.name!r} did not run on the example inputs")
                # every query row meets every key of its sequence (a window, for windowed attention)
                in_shape = self.shapes[g.name][0]
                queries, keys = _tokens(modules[g.name], in_shape), int(in_shape[-2]) if len(in_shape) > 2 else 1
                layers.append(PricedLayer(g.name + "#attention", "attention", Dim(g.channels, ((i, g.unit_size),)),
                                          Dim(1), 2 * queries * keys, 0, 0))
        self.layers: tuple[PricedLayer, ...] = tuple(layers)
        self.layer_names = [layer.name for layer in layers]
        # Dimensions as matrices, so that pricing a policy is two matrix-vector products (the env's
        # action wall and the budget projection price hundreds of policies per episode).
        n_groups = len(groups)
        self._out_steps = _steps([layer.out for layer in layers], n_groups)
        self._in_steps = _steps([layer.inp for layer in layers], n_groups)
        self._dense_out = np.array([layer.out.dense for layer in layers], dtype=np.int64)
        self._dense_in = np.array([layer.inp.dense for layer in layers], dtype=np.int64)
        self._macs_per_pair, self._params_per_pair, self._params_per_out = (
            np.array([getattr(layer, f) for layer in layers], dtype=np.int64)
            for f in ("macs_per_pair", "params_per_pair", "params_per_out"))
        counted = count_costs(model, example_inputs)
        macs, params = self._sum(self.units)
        # Layers the model does not prune (and ops outside modules) cost the same in every policy.
        self._const = Costs(counted.macs - macs, counted.params - params)
        self.dense = counted

    def _kept_sizes(self, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Kept output and input(-per-output) sizes of every priced layer, in layer order."""
        removed = self.units - keep
        return self._dense_out - self._out_steps @ removed, self._dense_in - self._in_steps @ removed

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

    def layer_costs(self, keep: np.ndarray) -> dict[str, Costs]:
        """Per priced layer, its MACs and parameters (for error messages that name a layer)."""
        out, inp = self._kept_sizes(np.asarray(keep, dtype=np.int64))
        pairs = out * inp
        macs = pairs * self._macs_per_pair
        params = pairs * self._params_per_pair + out * self._params_per_out
        return {n: Costs(int(a), int(b)) for n, a, b in zip(self.layer_names, macs, params, strict=True)}


def _steps(dims: Sequence[Dim], n_groups: int) -> np.ndarray:
    matrix = np.zeros((len(dims), n_groups), dtype=np.int64)
    for row, dim in enumerate(dims):
        for g, step in dim.terms:
            matrix[row, g] += step
    return matrix


def _record_shapes(model: nn.Module, x: Inputs, names: set[str]) -> dict[str, tuple[torch.Size, torch.Size]]:
    shapes: dict[str, tuple[torch.Size, torch.Size]] = {}
    hooks = []
    for name, module in model.named_modules():
        if name in names:
            def hook(mod: nn.Module, args: tuple, out: object, name: str = name) -> None:
                if args and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor):
                    shapes.setdefault(name, (args[0].shape, out.shape))
            hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            call(model, x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return shapes


def _tokens(module: nn.Module, in_shape: torch.Size) -> int:
    """Token positions a Linear-like layer reads per example (its input over its feature width)."""
    if is_conv1d_transposed_linear(module):
        return math.prod(in_shape) // conv1d_sizes(module)[1]
    return math.prod(in_shape) // int(getattr(module, "in_features", in_shape[-1]))


def _dims(name: str, out_size: int, in_size: int, terms: dict[tuple[str, bool], list[tuple[int, int]]]
          ) -> tuple[Dim, Dim]:
    return Dim(out_size, tuple(terms.get((name, True), ()))), Dim(in_size, tuple(terms.get((name, False), ())))


def _describe(name: str, module: nn.Module, shapes: tuple[torch.Size, torch.Size] | None,
              terms: dict[tuple[str, bool], list[tuple[int, int]]]) -> PricedLayer:
    def needs_shapes() -> tuple[torch.Size, torch.Size]:
        if shapes is None:
            raise UnsupportedModelError(f"layer {name!r} did not run on the example inputs, so it cannot be priced; "
                                        "add it to ignored_layers")
        return shapes

    bias = int(getattr(module, "bias", None) is not None)
    if isinstance(module, _CONVS):
        area, groups = math.prod(module.kernel_size), module.groups
        positions = math.prod(needs_shapes()[1][2:])
        out, inp = _dims(name, module.out_channels, module.in_channels, terms)
        if groups > 1:  # depthwise / grouped: pruned in whole groups, inputs per output stay fixed
            inp = Dim(module.in_channels // groups)
        return PricedLayer(name, "conv", out, inp, area * positions, area, bias)
    if isinstance(module, _CONV_TRANSPOSES):
        if module.groups > 1:
            raise UnsupportedModelError(f"grouped transposed conv {name!r} is not supported; add it to ignored_layers")
        area = math.prod(module.kernel_size)
        positions = math.prod(needs_shapes()[0][2:])  # a transposed conv costs per *input* position
        out, inp = _dims(name, module.out_channels, module.in_channels, terms)
        return PricedLayer(name, "conv_transpose", out, inp, area * positions, area, bias)
    if isinstance(module, nn.Linear) or is_conv1d_transposed_linear(module):
        o, i = conv1d_sizes(module) if is_conv1d_transposed_linear(module) else (
            cast(nn.Linear, module).out_features, cast(nn.Linear, module).in_features)
        out, inp = _dims(name, o, i, terms)
        return PricedLayer(name, "linear", out, inp, _tokens(module, needs_shapes()[0]), 1, bias)
    if isinstance(module, nn.Embedding):
        out, inp = _dims(name, module.embedding_dim, 1, terms)
        return PricedLayer(name, "embedding", out, inp, 0, 0, module.num_embeddings)
    if isinstance(module, (*_NORMS, nn.PReLU)) or _is_norm_like(module):
        params = list(module.parameters(recurse=False))
        size = params[0].shape[-1] if params else _norm_width(module)
        per_out = sum(p.numel() for p in params) // max(size, 1)
        out, inp = _dims(name, int(size), 1, terms)
        return PricedLayer(name, "norm", out, inp, 0, 0, per_out)
    raise UnsupportedModelError(f"layer {name!r} ({type(module).__name__}) is coupled to a pruned group but "
                                "autoprune cannot price it; add it to ignored_layers")


def _describe_parameter(name: str, p: torch.Tensor, terms: dict[tuple[str, bool], list[tuple[int, int]]]
                        ) -> PricedLayer:
    axis = parameter_axis(p.shape)
    size = p.shape[axis]
    out, inp = _dims(name, size, 1, terms)
    return PricedLayer(name, "parameter", out, inp, 0, 0, p.numel() // size)


def _is_norm_like(module: nn.Module) -> bool:
    """A module holding only per-channel vectors, e.g. Hugging Face's ``LlamaRMSNorm``."""
    params = list(module.parameters(recurse=False))
    return bool(params) and all(p.dim() == 1 for p in params) and not list(module.children())


def _norm_width(module: nn.Module) -> int:
    for attr in ("num_features", "num_channels", "normalized_shape"):
        value = getattr(module, attr, None)
        if value is not None:
            return int(value[-1] if isinstance(value, (tuple, list)) else value)
    return 1
