"""SearchSpace: the prunable coupled channel groups of a model, their bounds and their costs.

A *group* is a set of tensor dimensions that must lose the same channels together: the outputs
of a conv, its BatchNorm and the inputs of the next conv; every conv of a residual stage; the
expand, depthwise and project convs of an inverted residual; the q, k and v rows of an attention
head. A policy gives ONE ratio per group (pruning per conv would prune residual stages again and
again). Groups are discovered with Torch-Pruning's dependency graph (see :mod:`autoprune.pruning`)
and listed in forward order, so a sequential agent (AMC) visits them input to output.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from autoprune.search_spaces.policy import Policy, PolicyError

if TYPE_CHECKING:
    from autoprune.costs import CostModel, Costs
    from autoprune.latency import LatencyTable

__all__ = ["GroupMember", "GroupSpec", "SearchSpace"]


@dataclass(frozen=True, eq=False)
class GroupMember:
    """One tensor dimension a group prunes.

    Attributes:
        module: qualified name of the layer.
        out: True for its output dimension (dim 0 of weight, bias, BN affine), False for its input
            dimension (dim 1 of weight).
        index: ``(units, k)`` integer array; row ``u`` lists the indices of this dimension that go
            when unit ``u`` of the group is pruned (``k`` > 1 behind a flatten, or for heads).
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
        units: how many channels (or heads) the group has.
        unit_size: output channels of ``name`` per unit (1 for channels, ``head_dim`` for heads).
        members: the tensor dimensions pruned with it.
        position: forward-execution index of ``name`` in the model.
        in_channels, kernel, stride: facts of the layer ``name`` (AMC's layer embedding).
        low, high: bounds of the prune ratio of this group.
        flops_share, params_share: fraction of the dense model's FLOPs (MACs) / parameters that
            depend on this group, i.e. what removing it entirely would save.
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

    @property
    def layers(self) -> tuple[str, ...]:
        """Names of the layers this group touches, in order of first mention."""
        return tuple(dict.fromkeys(m.module for m in self.members))

    @property
    def channels(self) -> int:
        """Output channels of the named layer that this group controls."""
        return self.units * self.unit_size


class SearchSpace:
    """The groups a policy may prune, with bounds, rounding and an exact analytic cost model.

    Build one with :meth:`from_model`. A policy is a mapping ``group name -> ratio``; the kept
    number of units of a group is ``units - floor(ratio * units)``, rounded to a multiple of
    ``round_to`` channels when set, and never below one unit (Torch-Pruning silently ignores a
    request to keep nothing, so the space never makes one).
    """

    def __init__(self, groups: Sequence[GroupSpec], *, cost_model: CostModel, round_to: int | None = None,
                 ignored: Sequence[str] = (), unprunable: Mapping[str, str] | None = None) -> None:
        self.groups: tuple[GroupSpec, ...] = tuple(groups)
        self.round_to = round_to
        self.ignored: tuple[str, ...] = tuple(ignored)
        self.unprunable: dict[str, str] = dict(unprunable or {})
        self.cost_model = cost_model
        self._index = {g.name: i for i, g in enumerate(self.groups)}
        self._units = np.array([g.units for g in self.groups], dtype=np.int64)
        self.latency_table: LatencyTable | None = None

    # ----------------------------------------------------------------------------------------
    @classmethod
    def from_model(cls, model: nn.Module, example_inputs: torch.Tensor, *,
                   ignored_layers: Sequence[nn.Module | str] | None = None,
                   bounds: tuple[float, float] = (0.0, 0.8),
                   group_bounds: Mapping[str, tuple[float, float]] | None = None,
                   round_to: int | None = None, verify_costs: bool = True) -> SearchSpace:
        """Discover the prunable groups of ``model``.

        Args:
            model: the trained network (left unchanged).
            example_inputs: a batch the model accepts; its shape fixes the FLOPs count.
            ignored_layers: layers (modules or names) whose outputs must stay whole, e.g. the
                classifier. ``None`` uses :func:`autoprune.models.default_ignored_layers`.
            bounds: default ``(low, high)`` prune-ratio bounds of every group.
            group_bounds: per-group overrides of ``bounds``, by group name.
            round_to: keep channel counts at multiples of this (fast kernels like multiples of 8).
            verify_costs: physically prune one random policy and check that the analytic cost
                model matches the counted FLOPs and parameters; raises if it does not.

        Raises:
            autoprune.pruning.UnsupportedModelError: nothing prunable, or a layer the cost model
                cannot follow.
        """
        from autoprune import pruning
        from autoprune.costs import CostModel
        from autoprune.models import default_ignored_layers

        _check_bounds("bounds", bounds)
        if round_to is not None and round_to < 1:
            raise ValueError(f"round_to must be a positive channel count, got {round_to}")
        if ignored_layers is None:
            ignored_layers = default_ignored_layers(model)
        named = dict(model.named_modules())
        ignored_modules = []
        for layer in ignored_layers:
            if isinstance(layer, str):
                if layer not in named:
                    raise ValueError(f"ignored layer {layer!r} is not a module of the model")
                layer = named[layer]
            ignored_modules.append(layer)
        discovered, unprunable = pruning.discover_groups(model, example_inputs, ignored_modules)
        cost_model = CostModel(model, example_inputs, discovered)
        group_bounds = dict(group_bounds or {})
        unknown = set(group_bounds) - {g.name for g in discovered}
        if unknown:
            raise ValueError(f"group_bounds names unknown groups {sorted(unknown)}; "
                             f"groups are: {[g.name for g in discovered]}")
        units = np.array([g.units for g in discovered])
        dense = cost_model.dense
        groups = []
        for i, g in enumerate(discovered):
            low, high = group_bounds.get(g.name, bounds)
            _check_bounds(f"group_bounds[{g.name!r}]", (low, high))
            without = units.copy()
            without[i] = 0
            empty = cost_model.costs(without)
            groups.append(replace(g, low=low, high=high,
                                  flops_share=(dense.macs - empty.macs) / dense.macs,
                                  params_share=(dense.params - empty.params) / dense.params))
        names = {m: n for n, m in named.items()}
        space = cls(groups, cost_model=cost_model, round_to=round_to,
                    ignored=[names.get(m, "?") for m in ignored_modules], unprunable=unprunable)
        if verify_costs:
            pruning.verify_cost_model(model, space, example_inputs)
        return space

    # ----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.groups)

    def __iter__(self) -> Iterator[GroupSpec]:
        return iter(self.groups)

    @property
    def names(self) -> list[str]:
        return [g.name for g in self.groups]

    def group(self, name: str) -> GroupSpec:
        try:
            return self.groups[self._index[name]]
        except KeyError:
            raise PolicyError(f"unknown group {name!r}; groups are: {', '.join(self.names)}") from None

    def validate(self, policy: Mapping[str, float]) -> Policy:
        """Check ``policy`` against the space and return it complete, in group order.

        Groups the policy leaves out get their lower bound (the least pruning allowed).

        Raises:
            PolicyError: an unknown group, or a ratio outside that group's bounds.
        """
        policy = policy if isinstance(policy, Policy) else Policy(policy)
        unknown = [k for k in policy if k not in self._index]
        if unknown:
            raise PolicyError(f"policy names unknown group(s) {unknown}; groups are: {', '.join(self.names)}")
        ratios = {}
        for g in self.groups:
            r = policy.get(g.name, g.low)
            if not g.low - 1e-9 <= r <= g.high + 1e-9:
                raise PolicyError(f"ratio {r:.4f} of group {g.name!r} is outside its bounds [{g.low}, {g.high}]")
            ratios[g.name] = r
        return Policy(ratios)

    def keep_units(self, policy: Mapping[str, float]) -> np.ndarray:
        """Units (channels or heads) each group keeps under ``policy``, in group order."""
        ratios = np.array([policy.get(g.name, g.low) for g in self.groups], dtype=np.float64)
        keep = self._units - np.floor(ratios * self._units + 1e-9).astype(np.int64)
        if self.round_to:
            for i, g in enumerate(self.groups):
                if g.kind == "channels":
                    r = self.round_to
                    keep[i] = min(g.units, max(r, int(math.floor(keep[i] / r + 0.5)) * r))
        return np.clip(keep, 1, self._units)

    def uniform(self, ratio: float) -> Policy:
        """The same ratio for every group, clipped to each group's bounds."""
        return Policy({g.name: float(min(max(ratio, g.low), g.high)) for g in self.groups})

    def sample(self, rng: np.random.Generator) -> Policy:
        """A policy drawn uniformly within the bounds."""
        return Policy({g.name: float(rng.uniform(g.low, g.high)) for g in self.groups})

    def attach_latency(self, table: LatencyTable) -> None:
        """Make :meth:`costs` also predict latency with ``table`` (so latency budgets can be enforced)."""
        self.latency_table = table

    def costs(self, policy: Mapping[str, float]) -> Costs:
        """Exact FLOPs (MACs) and parameters of the pruned model, without pruning anything, plus
        its predicted latency when a latency table is attached."""
        return self._costs(self.keep_units(policy))

    def _costs(self, keep: np.ndarray) -> Costs:
        c = self.cost_model.costs(keep)
        if self.latency_table is None:
            return c
        return replace(c, latency=self.latency_table.predict(self, keep))

    @property
    def dense_costs(self) -> Costs:
        return self._costs(self._units)

    def summary(self) -> list[dict[str, object]]:
        """One row per group (name, kind, units, layers, FLOPs share) for tables and reports."""
        return [{"group": g.name, "kind": g.kind, "units": g.units, "layers": len(g.layers),
                 "flops_share": g.flops_share, "params_share": g.params_share, "bounds": (g.low, g.high)}
                for g in self.groups]


def _check_bounds(what: str, bounds: tuple[float, float]) -> None:
    low, high = bounds
    if not 0.0 <= low <= high < 1.0:
        raise ValueError(f"{what}={bounds} must satisfy 0 <= low <= high < 1 (a ratio of 1 would remove a group)")
