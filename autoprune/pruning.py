"""The one pruner every policy goes through.

For every group of a search space, the units are ranked once on the dense model by an importance
criterion (:mod:`autoprune.importance`). Applying a policy is then a *plan*: ``(layer, dimension) ->
indices to remove``, in dense coordinates. Two ways to apply it:

* **exact path** (:meth:`Pruner.prune`): copy the model and replay the plan with per-layer pruning
  functions (:mod:`autoprune.surgery`). No graph is traced per copy (tracing costs ~0.1-0.2 s; the
  replay costs milliseconds, see ``benchmarks/pruner.py``), and the copy runs at its reduced cost.
* **mask path** (:meth:`Pruner.masked`): zero the same slices of the shared model in place and
  restore them afterwards. No copy, but the masked model still runs at dense cost.

Both use the same plan, so they remove the same channels and compute the same outputs: a zeroed
output channel with zeroed BatchNorm affine produces exact zeros, and zeroed input columns make
the next layer ignore it, which is what removing it does. Groups read by a normalisation over the
channel axis (LayerNorm, RMSNorm, GroupNorm) are the exception, since zeros still count in its
statistics: those spaces take the exact path (``Pruner.maskable`` is False).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from autoprune.discovery import build_graph
from autoprune.families import is_conv1d_transposed_linear
from autoprune.forward import Inputs, OutputSelector, select_output
from autoprune.groups import Plan, UnsupportedModelError, parameter_axis
from autoprune.importance import Criterion, rank_units
from autoprune.search_spaces import SearchSpace
from autoprune.surgery import apply_plan, plan_for_keep

__all__ = ["Plan", "Pruner", "UnsupportedModelError", "dimension_slices"]


class Pruner:
    """Applies policies of a :class:`SearchSpace` to one dense model, exactly or with masks.

    Args:
        model: the dense model (never modified, except temporarily inside :meth:`masked`).
        space: its search space.
        importance: criterion ranking units within a group (a name of ``IMPORTANCE_NAMES`` or a
            Torch-Pruning ``Importance`` object called on each coupled group); the lowest go first.
            The default ``"l2"`` is Torch-Pruning's default (group L2 magnitude). On the reference
            ResNet-20 at 47% FLOPs (uniform, adaptive BN, 2,000 val images) we measured: l1 68.1%,
            l2 78.1%, bn_scale 75.3%, lamp 78.1%, fpgm 82.6%.
        example_inputs: a batch for tracing the dependency graph.
        calibration: ``(x, y)`` TRAIN batch: the ``"taylor"`` criterion reads its loss gradients, ``"energy"``
            its activations (give it a few hundred images), a criterion object may read either.
        seed: seeds the ``"random"`` criterion.
        select: picks the output tensor of the model (default: a tensor, else ``.logits``, else the first).
    """

    def __init__(self, model: nn.Module, space: SearchSpace, *, importance: Criterion = "l2",
                 example_inputs: Inputs, calibration: tuple[Inputs, torch.Tensor] | None = None,
                 seed: int = 0, select: OutputSelector = select_output) -> None:
        self.model, self.space, self.importance = model, space, importance
        self.example_inputs = example_inputs
        self.order = rank_units(model, space.groups, importance, example_inputs=example_inputs,
                                calibration=calibration, seed=seed, select=select)
        self._parameters = dict(model.named_parameters())

    @property
    def maskable(self) -> bool:
        """Whether the mask path computes what the exact path does for every policy of the space."""
        return all(g.maskable for g in self.space.groups)

    def plan(self, policy: Mapping[str, float]) -> Plan:
        """The indices each layer dimension loses under ``policy`` (validated first)."""
        keep = self.space.keep_units(self.space.validate(policy))
        return plan_for_keep(self.space.groups, keep, self.order)

    def prune(self, policy: Mapping[str, float]) -> nn.Module:
        """A physically pruned copy of the model (the exact path)."""
        pruned = copy.deepcopy(self.model)
        apply_plan(pruned, self.plan(policy))
        return pruned

    def prune_retraced(self, policy: Mapping[str, float]) -> nn.Module:
        """The exact path done the textbook way: trace a new dependency graph on the copy and let
        Torch-Pruning prune group by group. Slower than :meth:`prune` (it traces per copy), kept as
        a cross-check of the replayed plan and for ``benchmarks/pruner.py``. Groups Torch-Pruning
        does not model (heads, whole blocks, uneven maps) are replayed from the plan.
        """
        plan = self.plan(policy)
        pruned = copy.deepcopy(self.model)
        graph = build_graph(pruned, self.example_inputs)
        modules = dict(pruned.named_modules())
        for g in self.space.groups:
            idxs = plan.get((g.name, True))
            if not idxs:
                continue
            own = next(m for m in g.members if m.module == g.name and m.out)
            if g.kind == "heads" or own.index.shape[1] != 1 or g.units != own.index.size:
                apply_plan(pruned, {(m.module, m.out): plan[(m.module, m.out)] for m in g.members})
                continue
            root = modules[g.name]
            handler = graph.get_pruner_of_module(root)
            graph.get_pruning_group(root, handler.prune_out_channels, idxs).prune()
        return pruned

    @contextmanager
    def masked(self, policy: Mapping[str, float]) -> Iterator[nn.Module]:
        """Zero the pruned channels of the shared model in place for the duration of the block.

        Parameters touched and every BatchNorm buffer (adaptive-BN recalibration rewrites them)
        are restored on exit, whatever happens inside.

        Raises:
            ValueError: the policy prunes a group that masks cannot represent exactly (see the module docstring).
        """
        keep = self.space.keep_units(self.space.validate(policy))
        inexact = [g.name for g, k in zip(self.space.groups, keep, strict=True) if k < g.units and not g.maskable]
        if inexact:
            raise ValueError(f"masks cannot prune group(s) {inexact} exactly (a channel normalisation reads them); "
                             "use the exact path")
        plan = plan_for_keep(self.space.groups, keep, self.order)
        saved: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

        def save(t: torch.Tensor) -> None:
            saved.setdefault(id(t), (t, t.detach().clone()))

        for m in self.model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                for b in m.buffers(recurse=False):
                    save(b)
        with torch.no_grad():
            for (name, out), idxs in plan.items():
                index = torch.as_tensor(idxs, dtype=torch.long)
                for pname, axis in dimension_slices(self.model, name, out):
                    p = self._parameters[pname]
                    save(p)
                    p.index_fill_(axis, index, 0.0)
        try:
            yield self.model
        finally:
            with torch.no_grad():
                for t, value in saved.values():
                    t.copy_(value)


def dimension_slices(model: nn.Module, name: str, out: bool) -> list[tuple[str, int]]:
    """The (parameter name, axis) slices of ``model`` that hold dimension ``(name, out)`` of a plan: zeroing
    them along the axis at a plan's indices masks what pruning those indices removes."""
    try:
        module = model.get_submodule(name)
    except AttributeError:  # a bare parameter (a position embedding, a class token)
        return [(name, parameter_axis(model.get_parameter(name).shape))]
    prefix = f"{name}." if name else ""
    if isinstance(module, nn.modules.conv._ConvNd):
        if not out and module.groups > 1:
            return []  # whole groups go with their outputs, which are zeroed
        w_axis = (1 if out else 0) if module.transposed else (0 if out else 1)
    elif is_conv1d_transposed_linear(module):
        w_axis = 1 if out else 0
    elif isinstance(module, nn.Embedding):
        w_axis = 1
    elif isinstance(module, nn.Linear):
        w_axis = 0 if out else 1
    else:  # norms and other per-channel vectors: every direct parameter, along its last axis
        return [(prefix + n, p.dim() - 1) for n, p in module.named_parameters(recurse=False)] if out else []
    slices: list[tuple[str, int]] = [(prefix + "weight", w_axis)] if getattr(module, "weight", None) is not None else []
    if out and getattr(module, "bias", None) is not None:
        slices.append((prefix + "bias", 0))
    return slices
