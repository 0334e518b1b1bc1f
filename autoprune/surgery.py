"""Applying a plan: physically removing indices from layer dimensions, in dense coordinates.

A plan (:data:`autoprune.groups.Plan`) says which indices each layer dimension loses. Each
dimension is pruned once with all its indices, so coordinates stay dense ones whatever the order.
Layers use Torch-Pruning's per-layer pruning functions (no graph is traced), block layers
(GroupNorm, grouped convolutions) and Hugging Face's ``Conv1D`` use autoprune's own
(:mod:`autoprune.families`), bare parameters are cut along their channel axis, and afterwards every
attention module's stored head counts are brought in line with its projections.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from autoprune.families import Conv1DPruner, is_conv1d_transposed_linear, prune_block_layer, resync_attention
from autoprune.groups import GroupSpec, Plan, parameter_axis

__all__ = ["apply_plan", "plan_for_keep", "prune_shape_only"]


def apply_plan(model: nn.Module, plan: Mapping[tuple[str, bool], Sequence[int]]) -> nn.Module:
    """Physically remove ``plan``'s indices from ``model`` in place (dense coordinates)."""
    modules = dict(model.named_modules())
    parameters = dict(model.named_parameters())
    # inputs before outputs: a grouped conv's group count (which tells its blocks) changes with its outputs
    for (name, out), idxs in sorted(plan.items(), key=lambda item: item[0][1]):
        idxs = sorted(set(int(i) for i in idxs))
        if not idxs:
            continue
        if name in modules:
            _prune_layer(modules[name], out, idxs)
        else:
            owner_name, _, attr = name.rpartition(".")
            owner = modules[owner_name]
            p = parameters[name]
            axis = parameter_axis(p.shape)
            keep = [i for i in range(p.shape[axis]) if i not in set(idxs)]
            setattr(owner, attr, nn.Parameter(p.detach().index_select(axis, torch.tensor(keep)),
                                              requires_grad=p.requires_grad))
    resync_attention(model)
    return model


def _prune_layer(module: nn.Module, out: bool, idxs: list[int]) -> None:
    if prune_block_layer(module, out, idxs):
        return
    if is_conv1d_transposed_linear(module):
        handler: tp.pruner.function.BasePruningFunc = Conv1DPruner()
    else:
        handler = tp.pruner.function.PrunerBox[tp.ops.module2type(module)]
    (handler.prune_out_channels if out else handler.prune_in_channels)(module, idxs)


def plan_for_keep(groups: Sequence[GroupSpec], keep: np.ndarray, orders: Sequence[np.ndarray] | None = None) -> Plan:
    """The plan that keeps ``keep[i]`` units of group ``i``, removing the first of ``orders[i]``
    (lowest importance first), or simply the first units when no order is given."""
    plan: Plan = {}
    for i, (g, k) in enumerate(zip(groups, keep, strict=True)):
        n = g.units - int(k)
        if n <= 0:
            continue
        pruned = np.sort(orders[i][:n]) if orders is not None else np.arange(n)
        for m in g.members:
            plan.setdefault((m.module, m.out), []).extend(m.indices(pruned))
    return plan


def prune_shape_only(model: nn.Module, groups: Sequence[GroupSpec], keep: np.ndarray) -> nn.Module:
    """A physically pruned copy with the right shapes, keeping ``keep[i]`` units of group ``i``.

    Costs and latency depend only on how many units stay, not which, so this needs no importance
    ranking; use :class:`autoprune.pruning.Pruner` for a model whose accuracy matters.
    """
    return apply_plan(copy.deepcopy(model), plan_for_keep(groups, keep)).eval()
