"""Least-squares reconstruction: refit the layers that lost input channels so that they reproduce
the dense model's outputs (channel pruning with reconstruction, He et al. 2017; ThiNet; AMC).

Pruning a group removes output channels of some layers and the matching input channels of the
layers that read them. Each reading layer's weights were trained for inputs it no longer gets. In
forward order, every Conv/Linear layer that lost inputs is refitted in closed form: its new weights
minimise ``|| f(X_pruned; W) - Y_dense ||^2 + ridge`` where ``X_pruned`` is what the pruned model
(with the layers before it already refitted) feeds it and ``Y_dense`` is the dense layer's output
on its kept channels, over a few hundred TRAIN images. No gradients, no labels; seconds on a CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from autoprune.forward import Inputs, call, take, to_device
from autoprune.forward import batch_size as count
from autoprune.training import model_device

__all__ = ["RECONSTRUCT_IMAGES", "reconstruct", "reconstruct_in_one_pass"]

RECONSTRUCT_IMAGES = 512
# Rows of the least-squares problem kept per image and layer: every output position of a small
# feature map, a random subset of a large one (the normal equations then stay exact to sampling).
_POSITIONS_PER_IMAGE = 64


def reconstruct(dense: nn.Module, pruned: nn.Module, plan: Mapping[tuple[str, bool], Sequence[int]],
                images: Inputs, *, batch_size: int = 64, ridge: float = 1e-3, seed: int = 0) -> list[str]:
    """Refit, in place, every layer of ``pruned`` that lost input channels under ``plan`` (dense
    coordinates, as :meth:`autoprune.pruning.Pruner.plan` gives it) to reproduce ``dense``'s outputs
    on ``images``. Depthwise/grouped convolutions, convolutions with string padding or
    non-zero padding modes, and layers called more than once are left alone.

    ``ridge`` is relative to the mean diagonal of each layer's Gram matrix. Returns the refitted layers' names.
    """
    dense_modules, pruned_modules = dict(dense.named_modules()), dict(pruned.named_modules())
    calls = _call_counts(pruned, take(images, slice(0, 1)))
    removed_out = {name: set(idxs) for (name, out), idxs in plan.items() if out}
    refitted = []
    generator = torch.Generator().manual_seed(seed)
    for name in calls:  # forward order
        layer = pruned_modules[name]
        if (name, False) not in plan or calls[name] != 1 or not _refittable(layer):
            continue
        keep_out = torch.tensor([i for i in range(dense_modules[name].weight.shape[0])
                                 if i not in removed_out.get(name, ())])
        channels = -1 if isinstance(layer, nn.Linear) else 1  # a Linear's features are its input's last dim
        gram, cross = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
        for i in range(0, count(images), batch_size):  # the normal equations, accumulated batch by batch
            x = take(images, slice(i, i + batch_size))
            y = _capture(dense, dense_modules[name], x, output=True).index_select(channels, keep_out)
            rows, targets = _rows(layer, _capture(pruned, layer, x, output=False), y, generator=generator)
            gram, cross = gram + rows.T @ rows, cross + rows.T @ targets
        _solve_into(layer, gram, cross, ridge)
        refitted.append(name)
    return refitted


def reconstruct_in_one_pass(dense: nn.Module, pruned: nn.Module, plan: Mapping[tuple[str, bool], Sequence[int]],
                            images: Inputs, *, ridge: float = 1e-3, seed: int = 0) -> list[str]:
    """:func:`reconstruct` in two forward passes instead of two per layer (AMC's way): ``images`` go through
    the dense model once, as one batch, keeping every refitted layer's targets at sampled output positions;
    then once through ``pruned``, each layer refitted when the pass reaches it (its inputs then come from
    the layers before it, already refitted) and its new output passed on. Meant for scoring candidates
    during a search (a few hundred images: they are one batch); same maths, other position samples.
    """
    dense_modules, pruned_modules = dict(dense.named_modules()), dict(pruned.named_modules())
    calls = _call_counts(pruned, take(images, slice(0, 1)))
    removed_out = {name: set(idxs) for (name, out), idxs in plan.items() if out}
    names = [n for n in calls if (n, False) in plan and calls[n] == 1 and _refittable(pruned_modules[n])]
    generator = torch.Generator().manual_seed(seed)
    targets: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def keep(name: str, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        layer, removed = pruned_modules[name], removed_out.get(name, set())
        kept = torch.tensor([i for i in range(dense_modules[name].weight.shape[0]) if i not in removed])
        y = out.detach().index_select(-1 if isinstance(layer, nn.Linear) else 1, kept)
        if isinstance(layer, nn.Linear):
            return y, None
        pick = _positions(y.flatten(2).shape[-1], generator)
        return (y.flatten(2)[..., pick] if pick is not None else y), pick

    def record(name: str) -> Callable[..., None]:
        return lambda _m, _i, out: targets.__setitem__(name, keep(name, out))

    def refit(name: str) -> Callable[..., torch.Tensor]:
        def hook(layer: Any, inputs: tuple[torch.Tensor, ...], _out: torch.Tensor) -> torch.Tensor:
            y, pick = targets[name]
            rows, wanted = _rows(layer, inputs[0].detach(), y, pick=pick)
            _solve_into(layer, rows.T @ rows, rows.T @ wanted, ridge)
            with torch.no_grad():
                return type(layer).forward(layer, inputs[0])  # type: ignore[no-any-return]  # no hooks run again
        return hook

    _run_hooked(dense, {dense_modules[n]: record(n) for n in names}, images)
    _run_hooked(pruned, {pruned_modules[n]: refit(n) for n in names}, images)
    return names


def _run_hooked(model: nn.Module, hooks: Mapping[nn.Module, Callable[..., Any]], x: Inputs) -> None:
    """One forward pass of ``model`` (eval, no gradients) with forward ``hooks`` on some of its layers."""
    handles = [m.register_forward_hook(fn) for m, fn in hooks.items()]
    try:
        with torch.no_grad():
            call(model.eval(), to_device(x, model_device(model)))
    finally:
        for h in handles:
            h.remove()


def _solve_into(layer: Any, gram: torch.Tensor, cross: torch.Tensor, ridge: float) -> None:
    """Solve the ridge-regularised normal equations and write the solution into ``layer``'s weight (and bias)."""
    gram = gram + ridge * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    solution = torch.linalg.solve(gram, cross).T.to(layer.weight.dtype)  # (out, inputs [+ bias])
    with torch.no_grad():
        if layer.bias is not None:
            layer.bias.copy_(solution[:, -1])
            solution = solution[:, :-1]
        layer.weight.copy_(solution.reshape(layer.weight.shape))


def _refittable(layer: nn.Module) -> bool:
    if isinstance(layer, nn.Linear):
        return True
    return (isinstance(layer, (nn.Conv1d, nn.Conv2d)) and layer.groups == 1
            and not isinstance(layer.padding, str) and layer.padding_mode == "zeros")  # what F.unfold reproduces


def _call_counts(model: nn.Module, x: Inputs) -> dict[str, int]:
    """Conv/Linear layers in the order the forward pass calls them, with how often it does."""
    counts: dict[str, int] = {}
    _run_hooked(model, {m: lambda *_, n=n: counts.__setitem__(n, counts.get(n, 0) + 1)
                        for n, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))}, x)
    return counts


class _Captured(Exception):
    """Raised by the hook to stop the forward pass once the layer of interest has run."""


def _capture(model: nn.Module, layer: nn.Module, x: Inputs, *, output: bool) -> torch.Tensor:
    seen: list[torch.Tensor] = []

    def hook(_: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        seen.append((out if output else inputs[0]).detach().cpu())
        raise _Captured

    handle = layer.register_forward_hook(hook)
    try:
        with torch.no_grad():
            call(model.eval(), to_device(x, model_device(model)))
    except _Captured:
        pass
    finally:
        handle.remove()
    return seen[0]


def _rows(layer: nn.Module, x: torch.Tensor, y: torch.Tensor, *, generator: torch.Generator | None = None,
          pick: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The least-squares rows (one per output position, float64) and their targets: a convolution's output
    positions sampled by ``generator`` when it has many, or at ``pick`` when ``y`` is already sampled there."""
    if isinstance(layer, nn.Linear):
        rows, targets = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
    else:
        cols = _unfold(layer, x)  # (N, C_in * k, positions)
        if pick is None and generator is not None:
            pick = _positions(cols.shape[-1], generator)
            y = y.flatten(2)[..., pick] if pick is not None else y
        if pick is not None:
            cols = cols[..., pick]
        rows = cols.transpose(1, 2).reshape(-1, cols.shape[1])
        targets = y.flatten(2).transpose(1, 2).reshape(-1, y.shape[1])
    if layer.bias is not None:
        rows = torch.cat([rows, torch.ones(len(rows), 1, dtype=rows.dtype)], dim=1)
    return rows.double(), targets.double()


def _unfold(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(layer, nn.Conv1d):  # a Conv1d is a Conv2d of height 1
        x = x.unsqueeze(2)
        geometry = [(1, *layer.kernel_size), (1, *layer.dilation), (0, *layer.padding), (1, *layer.stride)]
    else:
        geometry = [getattr(layer, a) for a in ("kernel_size", "dilation", "padding", "stride")]
    return F.unfold(x, *geometry)


def _positions(positions: int, generator: torch.Generator) -> torch.Tensor | None:
    """Output positions kept per image: all of a small feature map, a random subset of a large one."""
    return torch.randperm(positions, generator=generator)[:_POSITIONS_PER_IMAGE] if positions > _POSITIONS_PER_IMAGE \
        else None
