"""What a coupled group is, as plain data: the leaf every pruning, costing and search module shares.

A *group* is a set of tensor dimensions that must lose the same units together: the outputs of a
conv, its BatchNorm and the inputs of the next conv; every conv of a residual stage; the producers
of a concatenation and the matching slice of its consumer's input; the q, k, v rows and the output
projection's columns of an attention head (for grouped-query attention, a key/value head with the
query heads that share it). This module imports nothing of autoprune and no Torch-Pruning object:
discovery writes these descriptions, the cost model prices them, the pruner applies them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["GroupMember", "GroupSpec", "Plan", "UnsupportedModelError", "parameter_axis"]

# (layer or parameter name, True for its output dimension / False for its input dimension)
#   -> indices to remove, in dense coordinates. A bare parameter's "output" dimension is its last
#   non-singleton axis (the axis Torch-Pruning couples it by).
Plan = dict[tuple[str, bool], list[int]]


def parameter_axis(shape: Sequence[int]) -> int:
    """The channel axis of a bare parameter: its last non-singleton axis, the one Torch-Pruning couples
    it by (a position embedding ``(1, N, C)``, a class token ``(1, 1, C)``, a layer scale ``(C,)``)."""
    axes = [i for i, s in enumerate(shape) if s > 1]
    return axes[-1] if axes else 0


class UnsupportedModelError(ValueError):
    """The model has nothing autoprune can prune, or a layer its cost model cannot follow."""


@dataclass(frozen=True, eq=False)
class GroupMember:
    """One tensor dimension a group prunes.

    Attributes:
        module: qualified name of the layer (or of a bare ``nn.Parameter``).
        out: True for its output dimension (dim 0 of a Linear/Conv weight, bias, norm affine; dim 1
            of an Embedding or a GPT-2 ``Conv1D``), False for its input dimension.
        index: ``(units, k)`` integer array; row ``u`` lists the indices of this dimension that go
            when unit ``u`` of the group is pruned (``k`` > 1 behind a flatten, for heads, or for
            whole GroupNorm / grouped-conv groups).
    """

    module: str
    out: bool
    index: np.ndarray = field(repr=False)

    def indices(self, units: np.ndarray) -> list[int]:
        """Indices of this dimension removed when ``units`` (of the group) are pruned."""
        return self.index[units].ravel().tolist()


@dataclass(frozen=True)
class GroupSpec:
    """A prunable coupled group and everything a search needs to know about it.

    Attributes:
        name: the group's stable name: the first layer (in forward order) whose outputs it prunes.
        kind: ``"channels"`` or ``"heads"`` (attention heads, pruned whole).
        units: how many channels (or heads, or channel blocks) the group has.
        unit_size: output channels of ``name`` per unit (1 for channels, ``head_dim`` x query heads
            per unit for heads, channels per group for GroupNorm / grouped-conv blocks).
        members: the tensor dimensions pruned with it.
        position: forward-execution index of ``name`` in the model.
        in_channels, kernel, stride: facts of the layer ``name`` (AMC's layer embedding).
        low, high: bounds of the prune ratio of this group.
        flops_share, params_share: fraction of the dense model's FLOPs (MACs) / parameters that
            depend on this group, i.e. what removing it entirely would save.
        maskable: zeroing the group's slices computes what removing them does. False where a
            normalisation over the channel axis (LayerNorm, RMSNorm, GroupNorm) reads the group:
            zeros would still count in its statistics, so only the exact path is exact.
        query_heads_per_unit: for ``heads`` groups, query heads per unit (> 1 under grouped-query
            attention, where a unit is a key/value head and the query heads that read it).
    """

    name: str
    kind: str
    units: int
    unit_size: int
    members: tuple[GroupMember, ...] = field(repr=False)
    position: int = 0
    in_channels: int = 0
    kernel: int = 1
    stride: int = 1
    low: float = 0.0
    high: float = 0.8
    flops_share: float = 0.0
    params_share: float = 0.0
    maskable: bool = True
    query_heads_per_unit: int = 1

    @property
    def layers(self) -> tuple[str, ...]:
        """Names of the layers this group touches, in order of first mention."""
        return tuple(dict.fromkeys(m.module for m in self.members))

    @property
    def channels(self) -> int:
        """Output channels of the named layer that this group controls."""
        return self.units * self.unit_size
