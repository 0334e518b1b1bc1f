"""The one pruner every policy goes through; the only module that imports ``torch_pruning``.

Torch-Pruning's ``DependencyGraph`` finds the coupled groups once. From them we keep, for every
group, which indices of which layer dimension go with each unit (channel or head) and a ranking of
units by an importance criterion computed once on the dense model. Applying a policy is then a
*plan*: ``(layer, dimension) -> indices to remove``, in dense coordinates. Two ways to apply it:

* **exact path** (:meth:`Pruner.prune`): copy the model and replay the plan with Torch-Pruning's
  layer pruning functions. No graph is traced per copy (tracing costs ~0.1-0.2 s; the replay
  costs milliseconds, see ``benchmarks/pruner.py``), and the copy runs at its reduced cost.
* **mask path** (:meth:`Pruner.masked`): zero the same slices of the shared model in place and
  restore them afterwards. No copy, but the masked model still runs at dense cost.

Both use the same plan, so they remove the same channels and compute the same outputs: a zeroed
output channel with zeroed BatchNorm affine produces exact zeros, and zeroed input columns make
the next layer ignore it, which is what removing it does.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeAlias, cast

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from autoprune.costs import SUPPORTED_LAYERS, count_costs
from autoprune.search_spaces import GroupMember, GroupSpec, SearchSpace

__all__ = ["DATA_CRITERIA", "IMPORTANCE_NAMES", "Criterion", "OutputEnergyImportance", "Plan", "Pruner",
           "UnsupportedModelError", "apply_plan", "discover_groups", "export_onnx", "load_pruned", "prune_shape_only",
           "read_plan", "save_pruned", "verify_cost_model"]

IMPORTANCE_NAMES = ("l1", "l2", "bn_scale", "taylor", "fpgm", "lamp", "random", "energy")
# criteria that read data: "taylor" a batch's loss gradients, "energy" the activations of many images
DATA_CRITERIA = ("taylor", "energy")
# A criterion by name, or any Torch-Pruning importance object (for a criterion of your own or another
# setting of a built-in one, e.g. ``tp.importance.MagnitudeImportance(p=2, group_reduction="max")``).
Criterion: TypeAlias = str | tp.importance.Importance
_ROOT_TYPES = (nn.Conv1d, nn.Conv2d, nn.Linear)

# (layer name, True for output dimension / False for input dimension) -> dense indices to remove
Plan = dict[tuple[str, bool], list[int]]


class UnsupportedModelError(ValueError):
    """The model has nothing autoprune can prune, or a layer its cost model cannot follow."""


# ---------------------------------------------------------------------------------------------
# Group discovery
# ---------------------------------------------------------------------------------------------
def _attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Attention blocks in the zoo's convention: a ``qkv`` Linear, a ``proj`` Linear and ``head_dim``."""
    return {name: m for name, m in model.named_modules()
            if isinstance(getattr(m, "qkv", None), nn.Linear) and isinstance(getattr(m, "proj", None), nn.Linear)
            and isinstance(getattr(m, "head_dim", None), int)}


def _forward_order(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """Index of each leaf module in the order a forward pass first calls it."""
    order: dict[str, int] = {}

    def visit(name: str) -> None:  # a pre-hook that returns a value would replace the inputs
        order.setdefault(name, len(order))

    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: visit(name))
             for name, m in model.named_modules() if not list(m.children())]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    except Exception as e:
        raise UnsupportedModelError(f"the model cannot run on example_inputs of shape {tuple(x.shape)} "
                                    f"({type(e).__name__}: {e}); check that example_inputs match its forward()") from e
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return order


def _build_graph(model: nn.Module, example_inputs: torch.Tensor) -> tp.DependencyGraph:
    try:
        with warnings.catch_warnings():
            # Bare nn.Parameters (position embeddings) only matter to groups we leave alone.
            warnings.filterwarnings("ignore", message=".*Unwrapped parameters.*")
            warnings.filterwarnings("ignore", message=".*last non-singleton dimension.*")
            return tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
    except Exception as e:  # tracing failures come as anything from torch.jit-like internals
        raise UnsupportedModelError(f"Torch-Pruning could not trace the model ({type(e).__name__}: {e}); "
                                    "check that example_inputs match its forward()") from e


def _layer_facts(module: nn.Module) -> dict[str, int]:
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return {"in_channels": module.in_channels, "kernel": int(module.kernel_size[0]),
                "stride": int(module.stride[0])}
    if isinstance(module, nn.Linear):
        return {"in_channels": module.in_features, "kernel": 1, "stride": 1}
    return {"in_channels": 0, "kernel": 1, "stride": 1}


def discover_groups(model: nn.Module, example_inputs: torch.Tensor,
                    ignored_layers: Sequence[nn.Module]) -> tuple[list[GroupSpec], dict[str, str]]:
    """Find the prunable coupled groups of ``model`` in forward order.

    Returns:
        The groups (bounds and cost shares not yet set) and ``{layer: reason}`` for groups that
        exist but cannot be pruned.
    """
    names = {m: n for n, m in model.named_modules()}
    order = _forward_order(model, example_inputs)
    attention = _attention_modules(model)
    ignored = list(ignored_layers)
    graph = _build_graph(model, example_inputs)
    groups: list[GroupSpec] = []
    unprunable: dict[str, str] = {}

    # Attention heads: Torch-Pruning's trace loses the head structure behind reshape/permute, so a
    # head group is written out explicitly: head h owns rows {s*E + h*d + j} of qkv (s = q, k, v)
    # and columns {h*d + j} of proj.
    for attn in attention.values():
        qkv, proj, d = cast(nn.Linear, attn.qkv), cast(nn.Linear, attn.proj), cast(int, attn.head_dim)
        ignored.append(qkv)  # keep Torch-Pruning from making a (wrong) channel group of it
        if any(qkv is m for m in ignored_layers):
            continue
        e = qkv.out_features // 3
        heads = e // d
        j = np.arange(d)
        qkv_rows = np.stack([np.concatenate([s * e + h * d + j for s in range(3)]) for h in range(heads)])
        proj_cols = np.stack([h * d + j for h in range(heads)])
        heads_members = (GroupMember(names[qkv], True, qkv_rows), GroupMember(names[proj], False, proj_cols))
        groups.append(GroupSpec(name=names[qkv], kind="heads", units=heads, unit_size=d, members=heads_members,
                                position=order.get(names[qkv], 0), **_layer_facts(qkv)))

    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=_ROOT_TYPES):
        root = group[0].dep.target.module
        units = len(group[0].idxs)
        members: list[GroupMember] = []
        problem = None
        for item in group:
            target = item.dep.target.module
            if target not in names:  # Torch-Pruning's own pseudo-ops (add, reshape, ...)
                if isinstance(target, nn.Parameter):
                    problem = "it couples a bare nn.Parameter"
                continue
            if not isinstance(target, SUPPORTED_LAYERS):
                problem = f"it couples {type(target).__name__} {names[target]!r}, which autoprune cannot price"
                continue
            idx, root_idx = np.asarray(item.idxs), np.asarray(item.root_idxs)
            counts = np.bincount(root_idx, minlength=units)
            if counts.min() != counts.max():
                problem = f"layer {names[target]!r} maps channels unevenly"
                continue
            index = idx[np.argsort(root_idx, kind="stable")].reshape(units, counts[0])
            out = graph.is_out_channel_pruning_fn(item.dep.handler)
            if isinstance(target, (nn.Conv1d, nn.Conv2d)) and 1 < target.groups and not (
                    target.groups == target.in_channels == target.out_channels):
                problem = f"grouped conv {names[target]!r} is not supported (depthwise is)"
            members.append(GroupMember(names[target], out, index))
        outs = [m.module for m in members if m.out]
        first = min(outs, key=lambda n: order.get(n, 1 << 30)) if outs else names[root]
        if problem:
            unprunable[first] = problem
            continue
        members.sort(key=lambda m: (order.get(m.module, 1 << 30), not m.out))
        groups.append(GroupSpec(name=first, kind="channels", units=units, unit_size=1, members=tuple(members),
                                position=order.get(first, 0), **_layer_facts(dict(model.named_modules())[first])))
    if not groups:
        raise UnsupportedModelError(
            "found no prunable channel group (every Conv/Linear output is ignored or coupled to an unsupported "
            f"layer{': ' + '; '.join(f'{k}: {v}' for k, v in unprunable.items()) if unprunable else ''})")
    groups.sort(key=lambda g: g.position)
    return groups, unprunable


# ---------------------------------------------------------------------------------------------
# Importance and plans
# ---------------------------------------------------------------------------------------------
class OutputEnergyImportance(tp.importance.Importance):
    """Scores a channel by the output energy it feeds the layers that read it: the sum over those layers
    of ``||W[:, c]||^2 * E[x_c^2]``, with ``E[x_c^2]`` measured on ``inputs``. A data-weighted L2: a
    heavy weight on a channel that is rarely active costs little when removed (cf. ThiNet, NISP).
    Needs a few hundred images; 64 gave unstable rankings on the reference ResNet-20."""

    def __init__(self, model: nn.Module, inputs: torch.Tensor, batch_size: int = 128) -> None:
        self._sums: dict[nn.Module, torch.Tensor] = {}
        self._counts: dict[nn.Module, int] = {}
        hooks = [m.register_forward_hook(self._record) for m in model.modules() if isinstance(m, _ROOT_TYPES)]
        try:
            with torch.no_grad():
                for chunk in inputs.split(batch_size):
                    model(chunk)
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


def _importance(name: str, model: nn.Module, calibration: tuple[torch.Tensor, torch.Tensor] | None
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
    """

    def __init__(self, model: nn.Module, space: SearchSpace, *, importance: Criterion = "l2",
                 example_inputs: torch.Tensor, calibration: tuple[torch.Tensor, torch.Tensor] | None = None,
                 seed: int = 0) -> None:
        self.model, self.space, self.importance = model, space, importance
        if importance in DATA_CRITERIA and calibration is None:
            raise ValueError(f"importance {importance!r} needs a calibration batch (x, y) of TRAIN images")
        self.example_inputs = example_inputs
        self.order = self._rank(example_inputs, calibration, seed)
        self._modules = dict(model.named_modules())

    def _rank(self, example_inputs: torch.Tensor, calibration: tuple[torch.Tensor, torch.Tensor] | None,
              seed: int) -> list[np.ndarray]:
        scorer = (_importance(self.importance, self.model, calibration) if isinstance(self.importance, str)
                  else self.importance)
        graph = _build_graph(self.model, example_inputs)
        modules = dict(self.model.named_modules())
        # Gradients for "taylor", and for a criterion object, which may read them (it is cheap: one batch).
        if calibration is not None and (self.importance == "taylor" or not isinstance(self.importance, str)):
            self.model.zero_grad()
            was_training = self.model.training
            self.model.eval()
            nn.functional.cross_entropy(self.model(calibration[0]), calibration[1]).backward()
            self.model.train(was_training)
        order = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for g in self.space.groups:
                root = modules[g.name]
                pruner = graph.get_pruner_of_module(root)
                n = pruner.get_out_channels(root)
                tp_group = graph.get_pruning_group(root, pruner.prune_out_channels, list(range(n)))
                if g.kind == "heads":  # score the qkv rows only; the traced proj dependency is wrong
                    tp_group._group = [it for it in tp_group._group if it.dep.target.module is root]
                try:
                    scores = scorer(tp_group)
                except Exception as error:  # a criterion of the user's own: say which group it failed on
                    raise ValueError(f"importance {self.importance!r} failed on group {g.name!r} "
                                     f"({type(error).__name__}: {error})") from error
                if scores is None:  # e.g. BN scale on a group without BatchNorm
                    raise ValueError(f"importance {self.importance!r} cannot score group {g.name!r} "
                                     "(it has no layer that criterion reads); choose another criterion")
                # A unit's score sums the scores of the named layer's output channels it owns.
                own = next(m for m in g.members if m.module == g.name and m.out)
                s = scores.detach().double().numpy()[own.index].sum(axis=1)
                order.append(np.argsort(s, kind="stable"))
        if calibration is not None:
            self.model.zero_grad(set_to_none=True)
        return order

    def plan(self, policy: Mapping[str, float]) -> Plan:
        """The indices each layer dimension loses under ``policy`` (validated first)."""
        policy = self.space.validate(policy)
        keep = self.space.keep_units(policy)
        plan: Plan = {}
        for g, order, k in zip(self.space.groups, self.order, keep, strict=True):
            pruned = np.sort(order[: g.units - int(k)])
            if len(pruned) == 0:
                continue
            for m in g.members:
                plan.setdefault((m.module, m.out), []).extend(m.indices(pruned))
        return plan

    def prune(self, policy: Mapping[str, float]) -> nn.Module:
        """A physically pruned copy of the model (the exact path)."""
        pruned = copy.deepcopy(self.model)
        apply_plan(pruned, self.plan(policy))
        return pruned

    def prune_retraced(self, policy: Mapping[str, float]) -> nn.Module:
        """The exact path done the textbook way: trace a new dependency graph on the copy and let
        Torch-Pruning prune group by group. Slower than :meth:`prune` (it traces per copy), kept as
        a cross-check of the replayed plan and for ``benchmarks/pruner.py``.
        """
        plan = self.plan(policy)
        pruned = copy.deepcopy(self.model)
        graph = _build_graph(pruned, self.example_inputs)
        modules = dict(pruned.named_modules())
        for g in self.space.groups:
            idxs = plan.get((g.name, True))
            if not idxs:
                continue
            if g.kind == "heads":  # the traced graph gets head dependencies wrong (see discover_groups)
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
        """
        plan = self.plan(policy)
        saved: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

        def save(t: torch.Tensor) -> None:
            saved.setdefault(id(t), (t, t.detach().clone()))

        for m in self.model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                for b in m.buffers(recurse=False):
                    save(b)
        with torch.no_grad():
            for (name, out), idxs in plan.items():
                module = self._modules[name]
                index = torch.as_tensor(idxs, dtype=torch.long)
                for pname, p in module.named_parameters(recurse=False):
                    save(p)
                    if out:
                        p.index_fill_(0, index, 0.0)
                    elif pname == "weight" and p.dim() > 1:
                        p.index_fill_(1, index, 0.0)
        try:
            yield self.model
        finally:
            with torch.no_grad():
                for t, value in saved.values():
                    t.copy_(value)


def apply_plan(model: nn.Module, plan: Mapping[tuple[str, bool], Sequence[int]]) -> nn.Module:
    """Physically remove ``plan``'s indices from ``model`` in place (dense coordinates).

    Each layer dimension is pruned once with all its indices, so the coordinates stay dense ones
    whatever the order.
    """
    modules = dict(model.named_modules())
    for (name, out), idxs in plan.items():
        module = modules[name]
        handler = tp.pruner.function.PrunerBox[tp.ops.module2type(module)]
        fn = handler.prune_out_channels if out else handler.prune_in_channels
        fn(module, sorted(set(int(i) for i in idxs)))
    return model


def prune_shape_only(model: nn.Module, space: SearchSpace, policy: Mapping[str, float]) -> nn.Module:
    """A physically pruned copy with the right shapes, removing the first units of each group.

    Costs and latency depend only on how many channels stay, not which, so this needs no
    importance ranking; use :class:`Pruner` for a model whose accuracy matters.
    """
    keep = space.keep_units(space.validate(policy))
    plan: Plan = {}
    for g, k in zip(space.groups, keep, strict=True):
        if g.units - k:
            for m in g.members:
                plan.setdefault((m.module, m.out), []).extend(m.indices(np.arange(g.units - int(k))))
    return apply_plan(copy.deepcopy(model), plan).eval()


def verify_cost_model(model: nn.Module, space: SearchSpace, example_inputs: torch.Tensor, seed: int = 0) -> None:
    """Prune a random policy physically and check the analytic costs against counted ones."""
    policy = space.sample(np.random.default_rng(seed))
    try:
        counted = count_costs(prune_shape_only(model, space, policy), example_inputs)
    except Exception as e:
        raise UnsupportedModelError(f"the model no longer runs after pruning ({type(e).__name__}: {e}); "
                                    "add the offending layers to ignored_layers") from e
    predicted = space.cost_model.costs(space.keep_units(policy))
    if counted != predicted:
        raise UnsupportedModelError(
            f"analytic costs {predicted} differ from counted {counted} after pruning; the model uses "
            "operations on pruned channels outside supported layers: add those layers to ignored_layers")


# ---------------------------------------------------------------------------------------------
# Portable save / load and ONNX export
# ---------------------------------------------------------------------------------------------
def save_pruned(path: str | os.PathLike[str], model: nn.Module, plan: Plan, model_spec: Mapping[str, Any]) -> Path:
    """Save a pruned model as ``model_spec`` (how to build the dense model) + plan + state_dict.

    The file loads with ``torch.load(weights_only=True)``: nothing pickled but tensors and plain data.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"format": "autoprune.pruned/1", "model_spec": json.dumps(dict(model_spec)),
            "plan": [[name, bool(out), [int(i) for i in idxs]] for (name, out), idxs in plan.items()],
            "state_dict": model.state_dict()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)
    return path


def _read_pruned(path: str | os.PathLike[str]) -> dict[str, Any]:
    blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != "autoprune.pruned/1":
        raise ValueError(f"{path} is not an autoprune pruned-model file")
    return blob


def _plan_of(blob: Mapping[str, Any]) -> Plan:
    return {(name, out): idxs for name, out, idxs in blob["plan"]}


def read_plan(path: str | os.PathLike[str]) -> Plan:
    """The pruning plan stored in a file written by :func:`save_pruned`."""
    return _plan_of(_read_pruned(path))


def load_pruned(path: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model saved by :func:`save_pruned`: dense model from its spec, replay the plan, load weights."""
    import importlib

    from autoprune.models import create_model

    blob = _read_pruned(path)
    spec = json.loads(blob["model_spec"])
    if ":" in spec["model"]:  # a user's "package.module:factory"
        module, _, factory = spec["model"].partition(":")
        model = getattr(importlib.import_module(module), factory)()
    else:
        model = create_model(spec["model"], in_channels=spec["in_channels"], num_classes=spec["num_classes"],
                             image_size=spec["image_size"])
    apply_plan(model, _plan_of(blob))
    model.load_state_dict(blob["state_dict"])
    return model.eval(), spec


def export_onnx(model: nn.Module, example_inputs: torch.Tensor, path: str | os.PathLike[str], *,
                atol: float = 1e-4) -> float:
    """Export ``model`` to ONNX and check onnxruntime's outputs against torch's.

    Returns:
        The largest absolute difference between the two outputs.

    Raises:
        RuntimeError: the outputs differ by more than ``atol``.
    """
    import onnxruntime as ort

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    import logging

    quiet = logging.getLogger("torch.onnx._internal.exporter._registration")  # "torchvision is not installed"
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example_inputs,), str(path), input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=True,
                          verbose=False)
    quiet.setLevel(level)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(example_inputs).numpy()
    got = session.run(None, {"input": example_inputs.numpy()})[0]
    err = float(np.abs(got - expected).max())
    if err > atol:
        raise RuntimeError(f"ONNX outputs differ from torch by {err:.2e} > {atol:.0e} ({path})")
    return err
