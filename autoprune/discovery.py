"""Group discovery: the one user of Torch-Pruning's dependency graph.

Torch-Pruning traces the model once and yields its coupled channel groups; this module turns each
into a plain :class:`~autoprune.groups.GroupSpec` (which indices of which layer dimension go with
each unit) that the cost model, the search space and the pruner read without Torch-Pruning. On
top of the graph it adds what Torch-Pruning 1.6 does not do (see :mod:`autoprune.families`):

* attention heads, written out per spelling (the graph loses heads behind reshapes);
* whole-block units for GroupNorm and grouped convolutions (both sides of a grouped conv merge
  into one group whose unit is one conv group);
* uneven maps (a concatenation sliced short, as in GhostNet): the units that map to fewer indices
  stay whole, so every prunable unit removes the same number of indices and costs stay exact;
* split / chunk: Torch-Pruning 1.6.1's index mapping for ``split`` fails (``IndexError``) or maps
  the pieces wrongly, so splits are traced as slices (:func:`_splits_as_slices`) and their producer
  is kept whole with the reason (:func:`_split_pieces`); the layers around the cut stay prunable.
* a safety net in :meth:`autoprune.search_spaces.SearchSpace.from_model` prunes each group alone and
  leaves whole, with the reason, any group whose pruned model breaks or mis-prices.
"""

from __future__ import annotations

import signal
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from autoprune.families import block_size, conv1d_sizes, custom_pruners, find_attention, is_conv1d_transposed_linear
from autoprune.forward import Inputs, call, select_output
from autoprune.groups import GroupMember, GroupSpec, UnsupportedModelError

__all__ = ["DISCOVERY_TIMEOUT", "build_graph", "discover_groups", "forward_order", "scoring_group"]

DISCOVERY_TIMEOUT = 120.0  # seconds; a model whose graph takes longer gets an error, never a hang
_ROOT_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.Linear)
_PRICED = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm,
           nn.modules.instancenorm._InstanceNorm, nn.PReLU, nn.Embedding)
_CHANNEL_NORMS = (nn.LayerNorm, nn.GroupNorm)


@contextmanager
def _time_limit(stage: str, seconds: float) -> Iterator[None]:
    """Raise :class:`UnsupportedModelError` naming ``stage`` if the block runs past ``seconds``.

    Uses SIGALRM, so it guards the main thread only (elsewhere the block runs unguarded).
    """
    if seconds <= 0 or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        yield
        return
    start = time.monotonic()

    def expire(signum: int, frame: object) -> None:
        raise UnsupportedModelError(
            f"group discovery stopped in stage '{stage}' after {time.monotonic() - start:.0f} s "
            f"(limit {seconds:.0f} s); "
            "add the layers of the slow part to ignored_layers, or raise discovery_timeout")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def forward_order(model: nn.Module, x: Inputs) -> dict[str, int]:
    """Index of each leaf module in the order a forward pass first calls it."""
    order: dict[str, int] = {}

    def visit(name: str) -> None:  # a pre-hook that returns a value would replace the inputs
        order.setdefault(name, len(order))

    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: visit(name))
             for name, m in model.named_modules() if not list(m.children()) or is_conv1d_transposed_linear(m)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            call(model, x)
    except Exception as e:
        shape = {k: tuple(v.shape) for k, v in x.items()} if isinstance(x, Mapping) else tuple(x.shape)
        raise UnsupportedModelError(f"the model cannot run on example_inputs of shape {shape} "
                                    f"({type(e).__name__}: {e}); check that example_inputs match its forward()") from e
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return order


@dataclass(frozen=True)
class _SplitCall:
    """A ``split`` / ``chunk`` seen while tracing: who produced the tensor and how it was cut."""

    producer: str | None  # the nearest layer (by its parameters) upstream of the cut tensor
    dim: int
    sizes: tuple[int, ...]
    fixed: bool  # sizes written into the model's code (split) rather than derived at run time (chunk)


def _producer(t: torch.Tensor, owners: dict[int, str]) -> str | None:
    """The module of the first parameter found walking the autograd graph back from ``t``."""
    frontier, seen = [t.grad_fn], set()
    while frontier:
        nxt = []
        for fn in frontier:
            if fn is None or id(fn) in seen:
                continue
            seen.add(id(fn))
            variable = getattr(fn, "variable", None)
            if variable is not None and id(variable) in owners:
                return owners[id(variable)]
            nxt += [f for f, _ in getattr(fn, "next_functions", ())]
        frontier = nxt
    return None


@contextmanager
def _splits_as_slices(model: nn.Module | None = None, calls: list[_SplitCall] | None = None) -> Iterator[None]:
    """Trace ``split`` / ``chunk`` as one slice per piece, which Torch-Pruning 1.6.1 maps correctly,
    and record each call in ``calls``.

    Its ``split`` index mapping misplaces indices (pruning a C2f block fails with ``IndexError`` or a
    channel mismatch); slices are mapped exactly. Only the tracing forward pass is affected.
    """
    originals = torch.Tensor.split, torch.Tensor.chunk, torch.split, torch.chunk
    owners = {id(p): name.rpartition(".")[0] for name, p in (model.named_parameters() if model else ())}

    def cut(t: torch.Tensor, size: int | Sequence[int], dim: int = 0, fixed: bool = True) -> tuple[torch.Tensor, ...]:
        dim = dim % t.dim()
        n = t.shape[dim]
        sizes = [min(size, n - i) for i in range(0, n, size)] if isinstance(size, int) else list(size)
        if calls is not None:
            calls.append(_SplitCall(_producer(t, owners), dim, tuple(sizes), fixed and not isinstance(size, int)))
        out, start = [], 0
        index: list[slice] = [slice(None)] * t.dim()
        for s in sizes:
            index[dim] = slice(start, start + s)
            out.append(t[tuple(index)])
            start += s
        return tuple(out)

    def chunk(t: torch.Tensor, chunks: int, dim: int = 0) -> tuple[torch.Tensor, ...]:
        return cut(t, -(-t.shape[dim] // chunks), dim, fixed=False)

    def split(t: torch.Tensor, size: int | Sequence[int], dim: int = 0) -> tuple[torch.Tensor, ...]:
        return cut(t, size, dim)

    torch.Tensor.split, torch.Tensor.chunk = split, chunk  # type: ignore[method-assign,assignment]
    torch.split, torch.chunk = split, chunk  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.Tensor.split, torch.Tensor.chunk, torch.split, torch.chunk = originals  # type: ignore[method-assign]


def build_graph(model: nn.Module, example_inputs: Inputs, *, timeout: float = DISCOVERY_TIMEOUT,
                splits: list[_SplitCall] | None = None) -> tp.DependencyGraph:
    """Trace ``model`` into Torch-Pruning's dependency graph (with autoprune's custom pruners);
    ``splits`` collects the ``split`` / ``chunk`` calls seen."""
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings(), _time_limit("tracing", timeout), _splits_as_slices(model, splits):
            # Bare nn.Parameters are pruned along their last non-singleton axis, as autoprune prices them.
            warnings.filterwarnings("ignore", message=".*Unwrapped parameters.*")
            warnings.filterwarnings("ignore", message=".*last non-singleton dimension.*")
            return tp.DependencyGraph().build_dependency(
                model, example_inputs=example_inputs, output_transform=select_output,
                customized_pruners=custom_pruners(model), verbose=False)
    except UnsupportedModelError:
        raise
    except Exception as e:  # tracing failures come as anything from autograd internals
        raise UnsupportedModelError(f"Torch-Pruning could not trace the model ({type(e).__name__}: {e}); "
                                    "check that example_inputs match its forward()") from e
    finally:
        model.train(was_training)


def scoring_group(graph: tp.DependencyGraph, model: nn.Module, group: GroupSpec) -> tp.dependency.Group:
    """Torch-Pruning's group for ``group``'s root, as its importance criteria expect to read it.

    A heads group is scored on its named projection's rows alone (the traced dependencies miss the
    heads, and following them from a q projection can take minutes on a Llama).
    """
    root = dict(model.named_modules())[group.name]
    pruner = graph.get_pruner_of_module(root)
    n = pruner.get_out_channels(root)
    if group.kind != "heads":
        return graph.get_pruning_group(root, pruner.prune_out_channels, list(range(n)))
    fn = pruner.prune_out_channels
    node = graph.module2node[root]
    scoring = tp.dependency.Group()
    scoring._DG = graph
    scoring.add_dep(tp.dependency.Dependency(fn, fn, source=node, target=node), list(range(n)))
    scoring[0].root_idxs = list(range(n))
    return scoring


def _layer_facts(module: nn.Module | None) -> dict[str, int]:
    """AMC's layer embedding: input channels, kernel size and stride of a group's named layer."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return {"in_channels": module.in_channels, "kernel": int(module.kernel_size[0]),
                "stride": int(module.stride[0])}
    if isinstance(module, nn.Linear):
        return {"in_channels": module.in_features, "kernel": 1, "stride": 1}
    if module is not None and is_conv1d_transposed_linear(module):
        return {"in_channels": conv1d_sizes(module)[1], "kernel": 1, "stride": 1}
    return {"in_channels": 0, "kernel": 1, "stride": 1}


def _spec(name: str, kind: str, units: int, unit_size: int, members: Sequence[GroupMember], position: int,
          module: nn.Module | None, query_heads_per_unit: int = 1) -> GroupSpec:
    facts = _layer_facts(module)
    return GroupSpec(name=name, kind=kind, units=units, unit_size=unit_size, members=tuple(members),
                     position=position, in_channels=facts["in_channels"], kernel=facts["kernel"],
                     stride=facts["stride"], query_heads_per_unit=query_heads_per_unit)


def _is_norm(module: nn.Module | None) -> bool:
    """Normalises over the channel axis (zeros would count in its statistics), incl. RMSNorm-likes."""
    if isinstance(module, _CHANNEL_NORMS):
        return True
    return module is not None and "norm" in type(module).__name__.lower() and not isinstance(
        module, nn.modules.batchnorm._BatchNorm)


def _owner(name: str, modules: dict[str, nn.Module]) -> nn.Module | None:
    return modules.get(name.rpartition(".")[0])


def discover_groups(model: nn.Module, example_inputs: Inputs, ignored_layers: Sequence[nn.Module], *,
                    timeout: float = DISCOVERY_TIMEOUT) -> tuple[list[GroupSpec], dict[str, str]]:
    """Find the prunable coupled groups of ``model`` in forward order.

    Returns:
        The groups (bounds and cost shares not yet set) and ``{layer: reason}`` for groups that
        exist but cannot be pruned.
    """
    modules = dict(model.named_modules())
    names = {m: n for n, m in modules.items()}
    param_names = {p: n for n, p in model.named_parameters()}
    order = forward_order(model, example_inputs)
    ignored = list(ignored_layers)
    ignored_names = {names.get(m) for m in ignored}
    groups: list[GroupSpec] = []
    unprunable: dict[str, str] = {}

    # Attention heads, written out per spelling; the projections are kept out of Torch-Pruning's
    # channel groups (a per-channel group of q would break the head reshape).
    for _, layout in find_attention(model):
        ignored += [modules[layer] for layer, _ in layout.rows]
        if any(layer in ignored_names for layer, _ in layout.rows):
            continue
        heads = [GroupMember(layer, True, idx) for layer, idx in layout.rows]
        heads += [GroupMember(layer, False, idx) for layer, idx in layout.cols]
        heads += [GroupMember(param, True, idx) for param, idx in layout.extra]
        query = layout.query
        groups.append(_spec(query, "heads", layout.units, layout.head_dim * layout.query_heads_per_unit, heads,
                            order.get(query, 0), modules[query], layout.query_heads_per_unit))

    splits: list[_SplitCall] = []
    graph = build_graph(model, example_inputs, timeout=timeout, splits=splits)
    roots = (*_ROOT_TYPES, *custom_pruners(model))
    with _time_limit("grouping", timeout):
        tp_groups = list(graph.get_all_groups(ignored_layers=ignored, root_module_types=roots))
    for group in tp_groups:
        root = group[0].dep.target.module
        units = len(group[0].idxs)
        members: list[GroupMember] = []
        problem = None
        for item in group:
            target = item.dep.target.module
            if isinstance(target, nn.Parameter):
                if target not in param_names:
                    continue
                name, out = param_names[target], True
            elif target in names:
                name, out = names[target], graph.is_out_channel_pruning_fn(item.dep.handler)
                if not (isinstance(target, _PRICED) or is_conv1d_transposed_linear(target)
                        or _is_norm(target)):
                    problem = f"it couples {type(target).__name__} {name!r}, which autoprune cannot price"
                    continue
                if isinstance(target, nn.modules.conv._ConvNd) and target.transposed and target.groups > 1:
                    problem = f"grouped transposed conv {name!r} is not supported"
            else:  # Torch-Pruning's own pseudo-ops (add, reshape, concat, ...)
                continue
            members.append(GroupMember(name, out, np.stack([np.asarray(item.idxs), np.asarray(item.root_idxs)])))
        outs = [m.module for m in members if m.out and m.module in modules]
        first = min(outs, key=lambda n: order.get(n, 1 << 30)) if outs else names.get(root, "?")
        if problem:
            unprunable[first] = problem
            continue
        spec = _even_units(first, units, members, order, modules)
        if isinstance(spec, str):
            unprunable[first] = spec
        else:
            groups.append(spec)
    groups, blocked = _whole_blocks(groups, modules, order)
    unprunable.update(blocked)
    groups, cut = _split_pieces(groups, splits)
    unprunable.update(cut)
    groups = [replace(g, maskable=not any(_is_norm(modules.get(m.module) or _owner(m.module, modules))
                                          for m in g.members)) for g in groups]
    if not groups:
        raise UnsupportedModelError(
            "found no prunable channel group (every Conv/Linear output is ignored or coupled to an unsupported "
            f"layer{': ' + '; '.join(f'{k}: {v}' for k, v in unprunable.items()) if unprunable else ''})")
    groups.sort(key=lambda g: g.position)
    return groups, unprunable


def _even_units(first: str, units: int, raw: list[GroupMember], order: dict[str, int],
                modules: dict[str, nn.Module]) -> GroupSpec | str:
    """A group whose every unit removes the same indices from each member (see the module docstring).

    ``raw`` members carry ``[idxs; root_idxs]`` as Torch-Pruning gave them.
    """
    # One dimension can appear several times (reached through several paths, e.g. both halves of a
    # concatenation feeding one depthwise conv): merge its (index, root index) pairs.
    merged: dict[tuple[str, bool], np.ndarray] = {}
    for m in raw:
        key = (m.module, m.out)
        merged[key] = m.index if key not in merged else np.concatenate([merged[key], m.index], axis=1)
    counts = {}
    for key, pairs in merged.items():
        pairs = np.unique(pairs, axis=1)
        merged[key] = pairs
        counts[key] = np.bincount(pairs[1], minlength=units)
    full = np.ones(units, dtype=bool)
    for c in counts.values():
        full &= c == c.max()
    prunable = np.flatnonzero(full)
    if len(prunable) == 0:
        return f"layer {first!r} maps channels unevenly"
    unique: dict[tuple[str, bool], GroupMember] = {}
    for key, (idx, root_idx) in merged.items():
        k = counts[key].max()
        if k == 0:
            continue
        pick = np.isin(root_idx, prunable)
        index = idx[pick][np.argsort(root_idx[pick], kind="stable")].reshape(len(prunable), k)
        unique[key] = GroupMember(key[0], key[1], index)
    members = sorted(unique.values(), key=lambda m: (order.get(m.module, 1 << 30), not m.out))
    named = next((m for m in members if m.module == first and m.out), None)
    return _spec(first, "channels", len(prunable), named.index.shape[1] if named else 1, members,
                 order.get(first, 0), modules.get(first))


def _regroup(group: GroupSpec, key: tuple[str, bool], block: int) -> GroupSpec | str:
    """``group`` with units merged into whole blocks of ``block`` consecutive indices of dimension ``key``."""
    member = next(m for m in group.members if (m.module, m.out) == key)
    if member.index.shape[1] != 1:
        return f"layer {key[0]!r} is pruned in blocks but its channels are already grouped"
    position = member.index[:, 0]
    blocks = position // block
    ids, sizes = np.unique(blocks, return_counts=True)
    if not np.all(sizes == block):
        return f"layer {key[0]!r} must lose whole groups of {block} channels, but its channels come from several groups"
    order = np.lexsort((position, blocks))  # units sorted by block, then position
    rows = order.reshape(len(ids), block)
    members = tuple(GroupMember(m.module, m.out, m.index[rows].reshape(len(ids), -1)) for m in group.members)
    named = next((m for m in members if m.module == group.name and m.out), members[0])
    return replace(group, units=len(ids), unit_size=named.index.shape[1], members=members)


def _split_pieces(groups: list[GroupSpec], splits: Sequence[_SplitCall]) -> tuple[list[GroupSpec], dict[str, str]]:
    """Leave the producer of a channel ``split`` / ``chunk`` whole, saying why.

    ``split`` with sizes written into the model's code would cut the pruned tensor at the old sizes.
    For ``chunk`` (sizes derived at run time) every piece would have to lose as many channels, and
    Torch-Pruning 1.6.1 follows the pieces to their consumers incompletely (a layer reached along two
    paths is visited once), so the group it returns would not prune the model consistently. The
    layers on either side of the cut (a C2f block's bottlenecks and its output conv) stay prunable.
    """
    problems: dict[str, str] = {}
    work = list(groups)
    for cut in splits:
        if cut.producer is None or cut.dim != 1 or len(cut.sizes) < 2:
            continue
        i = next((k for k, g in enumerate(work) if any(m.module == cut.producer and m.out for m in g.members)), None)
        if i is None:
            continue
        how = (f"split({list(cut.sizes)}) with sizes fixed in the model's code (it would cut the pruned tensor "
               "at the old sizes)" if cut.fixed else f"chunk() into {len(cut.sizes)} pieces (each piece would "
               "have to lose as many channels, which Torch-Pruning 1.6.1 does not follow)")
        problems[work.pop(i).name] = f"layer {cut.producer!r} feeds {how}; kept whole"
    return work, problems


def _whole_blocks(groups: list[GroupSpec], modules: dict[str, nn.Module], order: dict[str, int]
                  ) -> tuple[list[GroupSpec], dict[str, str]]:
    """Make GroupNorm and grouped-conv dimensions lose whole blocks; merge a grouped conv's two sides."""
    problems: dict[str, str] = {}
    work = list(groups)

    def holder(key: tuple[str, bool]) -> int | None:
        return next((i for i, g in enumerate(work) if any((m.module, m.out) == key for m in g.members)), None)

    def make_blocks(key: tuple[str, bool], block: int) -> int | None:
        i = holder(key)
        if i is None:
            return None
        width = next(m.index.shape[1] for m in work[i].members if (m.module, m.out) == key)
        if width == block:
            return i  # already whole blocks
        regrouped = _regroup(work[i], key, block) if width == 1 else f"layer {key[0]!r} cannot lose whole blocks"
        if isinstance(regrouped, str):
            problems[work[i].name] = regrouped
            work.pop(i)
            return None
        work[i] = regrouped
        return i

    for name, module in modules.items():
        out_block, in_block = block_size(module, True), block_size(module, False)
        if out_block is None:
            continue
        b = make_blocks((name, True), out_block)
        if in_block is None:  # GroupNorm: one side
            continue
        a = make_blocks((name, False), in_block)
        b = holder((name, True)) if b is not None else None
        if a is not None and b is not None and a != b:  # one unit: input group j with output group j
            first, second = sorted((work[a], work[b]), key=lambda g: g.position)
            seen = {(m.module, m.out) for m in first.members}
            members = sorted(first.members + tuple(m for m in second.members if (m.module, m.out) not in seen),
                             key=lambda m: (order.get(m.module, 1 << 30), not m.out))
            work = [g for k, g in enumerate(work) if k not in (a, b)] + [replace(first, members=tuple(members))]
        elif (a is None) != (b is None):
            i = a if a is not None else b
            assert i is not None
            problems[work[i].name] = f"grouped conv {name!r} has one prunable side and one fixed side"
            work.pop(i)
    return work, problems
