"""SearchSpace: the prunable coupled channel groups of a model, their bounds and their costs.

A *group* is a set of tensor dimensions that must lose the same channels together: the outputs
of a conv, its BatchNorm and the inputs of the next conv; every conv of a residual stage; the
expand, depthwise and project convs of an inverted residual; the q, k and v rows of an attention
head. A policy gives ONE ratio per group (pruning per conv would prune residual stages again and
again). Groups are discovered with Torch-Pruning's dependency graph (see :mod:`autoprune.discovery`)
and listed in forward order, so a sequential agent (AMC) visits them input to output.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Protocol

import numpy as np
import torch
from torch import nn

from autoprune.costs import CostModel, Costs, count_costs
from autoprune.discovery import DISCOVERY_TIMEOUT, discover_groups
from autoprune.forward import Inputs, call, first_example
from autoprune.groups import GroupMember, GroupSpec, UnsupportedModelError
from autoprune.models.zoo import default_ignored_layers
from autoprune.search_spaces.policy import Policy, PolicyError
from autoprune.surgery import prune_shape_only

__all__ = ["GroupMember", "GroupSpec", "LatencyPredictor", "SearchSpace"]


class LatencyPredictor(Protocol):
    """What a search space needs of a latency table (:class:`autoprune.latency.LatencyTable` is one)."""

    def predict(self, space: SearchSpace, keep: np.ndarray) -> float: ...


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
        self.latency_table: LatencyPredictor | None = None

    # ----------------------------------------------------------------------------------------
    @classmethod
    def from_model(cls, model: nn.Module, example_inputs: Inputs, *,
                   ignored_layers: Sequence[nn.Module | str] | None = None,
                   bounds: tuple[float, float] = (0.0, 0.8),
                   group_bounds: Mapping[str, tuple[float, float]] | None = None,
                   round_to: int | None = None, verify_costs: bool = True,
                   discovery_timeout: float = DISCOVERY_TIMEOUT) -> SearchSpace:
        """Discover the prunable groups of ``model``.

        Args:
            model: the trained network (left unchanged).
            example_inputs: a batch the model accepts; its shape fixes the FLOPs count.
            ignored_layers: layers (modules or names) whose outputs must stay whole, e.g. the
                classifier. ``None`` uses :func:`autoprune.models.default_ignored_layers`.
            bounds: default ``(low, high)`` prune-ratio bounds of every group.
            group_bounds: per-group overrides of ``bounds``, by group name.
            round_to: keep channel counts at multiples of this (fast kernels like multiples of 8).
            verify_costs: physically prune random policies and check that the analytic cost
                model matches the counted FLOPs and parameters; raises if it does not.
            discovery_timeout: seconds group discovery may take before it stops with an error.

        Raises:
            autoprune.groups.UnsupportedModelError: nothing prunable, a layer the cost model
                cannot follow (the message names it), or discovery past its time limit.
        """
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
        discovered, unprunable = discover_groups(model, example_inputs, ignored_modules, timeout=discovery_timeout)
        cost_model = CostModel(model, example_inputs, discovered)
        if verify_costs:  # a group whose pruning breaks the model or its costs is left whole, with the reason
            discovered, broken = _probe_groups(model, example_inputs, discovered, cost_model)
            if broken:
                unprunable.update(broken)
                if not discovered:
                    raise UnsupportedModelError("no group can be pruned without breaking the model: " + "; ".join(
                        f"{k}: {v}" for k, v in broken.items()))
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
            space.verify_costs(model, example_inputs)
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

    def attach_latency(self, table: LatencyPredictor) -> None:
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

    def shaped_copy(self, model: nn.Module, policy: Mapping[str, float]) -> nn.Module:
        """A physically pruned copy of ``model`` with the shapes ``policy`` gives (not its accuracy:
        the first units of each group go; costs and latency depend only on how many)."""
        return prune_shape_only(model, self.groups, self.keep_units(self.validate(policy)))

    def verify_costs(self, model: nn.Module, example_inputs: Inputs, *, policies: int = 2, seed: int = 0) -> None:
        """Prune random policies physically and check the analytic costs against counted ones.

        Raises:
            UnsupportedModelError: the pruned model does not run, or its costs differ; the message
                names the layers whose counted and predicted costs differ and what to ignore.
        """
        rng = np.random.default_rng(seed)
        for _ in range(policies):
            policy = self.sample(rng)
            keep = self.keep_units(policy)
            try:
                pruned = prune_shape_only(model, self.groups, keep)
                counted = count_costs(pruned, example_inputs)
            except Exception as e:
                raise UnsupportedModelError(f"the model no longer runs after pruning ({type(e).__name__}: {e}); "
                                            "add the offending layers to ignored_layers") from e
            predicted = self.cost_model.costs(keep)
            if counted != predicted:
                raise UnsupportedModelError(_cost_mismatch(pruned, self.cost_model, keep, counted, predicted))



def _check_bounds(what: str, bounds: tuple[float, float]) -> None:
    low, high = bounds
    if not 0.0 <= low <= high < 1.0:
        raise ValueError(f"{what}={bounds} must satisfy 0 <= low <= high < 1 (a ratio of 1 would remove a group)")


def _probe_groups(model: nn.Module, example_inputs: Inputs, groups: Sequence[GroupSpec], cost_model: CostModel
                  ) -> tuple[list[GroupSpec], dict[str, str]]:
    """Prune each group alone by a quarter: keep the groups whose pruned model runs, gives outputs of
    the dense shape and costs exactly what the cost model says; the others with the reason why.

    A safety net for dependencies Torch-Pruning's graph misses (it visits a layer reached through two
    paths once, e.g. a depthwise conv after a Ghost module's concatenation).
    """
    dense_shape = tuple(call(model.eval(), first_example(example_inputs)).shape)
    units = np.array([g.units for g in groups], dtype=np.int64)
    kept, broken = [], {}
    for i, g in enumerate(groups):
        keep = units.copy()
        keep[i] = max(1, g.units - max(1, g.units // 4))
        try:
            pruned = prune_shape_only(model, groups, keep)
            with torch.no_grad():
                shape = tuple(call(pruned, first_example(example_inputs)).shape)
            counted = count_costs(pruned, example_inputs)
        except Exception as e:
            broken[g.name] = f"pruning it breaks the model ({type(e).__name__}: {str(e).splitlines()[0][:160]})"
            continue
        if shape != dense_shape:
            broken[g.name] = f"pruning it changes the output shape {dense_shape} to {shape}"
        elif counted != cost_model.costs(keep):
            broken[g.name] = "its counted costs differ from the analytic ones (an operation outside the priced layers)"
        else:
            kept.append(g)
    return kept, broken


def _cost_mismatch(pruned: nn.Module, cost_model: CostModel, keep: np.ndarray, counted: Costs,
                   predicted: Costs) -> str:
    """Name the layers whose parameters differ from their prediction (MACs are only known in total)."""
    modules = dict(pruned.named_modules())
    parameters = dict(pruned.named_parameters())
    wrong = []
    for name, cost in cost_model.layer_costs(keep).items():
        if name in parameters:
            actual = parameters[name].numel()
        elif name in modules:
            actual = sum(p.numel() for p in modules[name].parameters(recurse=False))
        else:
            continue
        if actual != cost.params:
            wrong.append(f"{name} ({actual} params counted, {cost.params} predicted)")
    where = "; ".join(wrong[:5]) if wrong else "operations outside the priced layers (a reshape, a functional call)"
    return (f"analytic costs differ from counted after pruning (MACs {predicted.macs} predicted, {counted.macs} "
            f"counted; params {predicted.params} vs {counted.params}) at: {where}; add the layers there to "
            "ignored_layers")
