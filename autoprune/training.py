"""Training and fine-tuning: one-cycle SGD on in-memory tensors, optionally distilled from a teacher."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from autoprune.forward import Inputs, OutputSelector, call, examples, select_output, take, to_device
from autoprune.progress import track_progress

__all__ = ["TrainConfig", "accuracy", "model_device", "task_loss", "train"]


def model_device(model: nn.Module) -> torch.device:
    """Where ``model``'s parameters live; data stays on the CPU and moves there batch by batch."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@dataclass(frozen=True)
class TrainConfig:
    """Options of :func:`train`. The defaults train the reference ResNet-20 on Fashion-MNIST."""

    epochs: float = 4.0
    batch_size: int = 128
    max_lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    hflip: bool = True
    distill_temperature: float = 4.0
    distill_weight: float = 0.9
    seed: int = 0


def task_loss(logits: torch.Tensor, labels: torch.Tensor, *, teacher: nn.Module | None = None, x: Inputs | None = None,
              select: OutputSelector = select_output, temperature: float = 4.0, weight: float = 0.9) -> torch.Tensor:
    """Cross-entropy, or with a ``teacher`` (called on ``x``) the knowledge-distillation mix:
    ``(1 - weight) * CE + weight * T^2 * KL(teacher / T || student / T)``."""
    loss = F.cross_entropy(logits, labels)
    if teacher is None or x is None:
        return loss
    with torch.no_grad():
        t_logits = call(teacher, x, select)
    t = temperature
    kd = F.kl_div(F.log_softmax(logits / t, 1), F.softmax(t_logits / t, 1), reduction="batchmean") * t * t
    return (1 - weight) * loss + weight * kd


def onednn_safe(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether oneDNN's CPU convolution backward can be trusted with ``model`` and inputs like ``x``.

    On torch 2.13, oneDNN's convolution backward on channels-last activations corrupts the heap
    (the process aborts with "double free or corruption") for about a quarter of randomly pruned
    ResNet-20s, whose channel counts are not multiples of 8. Measured here: 0 of 32 policies rounded
    to multiples of 8 and 0 of 16 unrounded ones fed row-major images crashed. Training falls back
    to ATen's own kernels (about 2x slower) only for that combination.
    """
    channels_last = x.dim() == 4 and x.size(1) > 0 and x.stride(1) == 1
    convs = [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    # the stem's input channels are the image's (1 or 3), never pruned
    multiples_of_8 = all(m.out_channels % 8 == 0 and (m.in_channels % 8 == 0 or i == 0) for i, m in enumerate(convs))
    return multiples_of_8 or not channels_last


@contextmanager
def _onednn(*, enabled: bool) -> Iterator[None]:
    # not torch.backends.mkldnn.flags(): it also sets oneDNN's TF32 flag, which warns on CPU builds
    before = bool(torch.backends.mkldnn.enabled)
    torch.backends.mkldnn.enabled = enabled and before  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before  # type: ignore[assignment]


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    return list(torch.randperm(n, generator=generator).split(batch_size))


@torch.no_grad()
def accuracy(model: nn.Module, data: TensorDataset, *, batch_size: int = 500, limit: int | None = None,
             select: OutputSelector = select_output) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) on the first ``limit`` examples of ``data``."""
    x_all, y_all = examples(data)
    if limit is not None:
        x_all, y_all = take(x_all, slice(0, limit)), y_all[:limit]
    was_training = model.training
    model.eval()
    device = model_device(model)
    correct = 0
    for i in range(0, len(y_all), batch_size):
        logits = call(model, to_device(take(x_all, slice(i, i + batch_size)), device), select)
        correct += int((logits.argmax(-1).cpu() == y_all[i:i + batch_size]).sum())
    model.train(was_training)
    return correct / max(1, len(y_all))


def train(model: nn.Module, data: TensorDataset, config: TrainConfig = TrainConfig(), *,
          teacher: nn.Module | None = None, max_steps: int | None = None, show_progress: bool = True,
          select: OutputSelector = select_output) -> nn.Module:
    """Train ``model`` in place with one-cycle SGD and return it.

    Args:
        model: the network to train (dense, or a pruned copy to fine-tune).
        data: training tensors ``(x, y)``, or :class:`~autoprune.forward.NamedInputs` (token ids and masks).
        config: optimiser schedule; ``epochs`` may be fractional.
        teacher: if given, the loss mixes cross-entropy with KL divergence to the teacher's
            softened outputs (Hinton et al. 2015), useful to recover a pruned model.
        max_steps: stop after this many steps (a short fine-tune inside an evaluation).
        show_progress: show a progress bar with the running loss.
        select: picks the logits from the model's output (default: a tensor, else ``.logits``, else the first).
    """
    x_all, y_all = examples(data)
    gen = torch.Generator().manual_seed(config.seed)
    steps_per_epoch = math.ceil(len(y_all) / config.batch_size)
    total = max(1, int(round(config.epochs * steps_per_epoch)))
    if max_steps is not None:
        total = min(total, max_steps)
    opt = torch.optim.SGD(model.parameters(), lr=config.max_lr, momentum=config.momentum,
                          weight_decay=config.weight_decay, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.max_lr, total_steps=total)
    if teacher is not None:
        teacher.eval()
    model.train()
    device = model_device(model)
    step, running = 0, float("nan")
    batches: list[torch.Tensor] = []
    safe = device.type != "cpu" or not isinstance(x_all, torch.Tensor) or onednn_safe(model, x_all)
    with track_progress("training", total, enabled=show_progress) as bar, _onednn(enabled=safe):
        while step < total:
            if not batches:
                batches = _batches(len(y_all), config.batch_size, gen)
            idx = batches.pop(0)
            x, y = take(x_all, idx), y_all[idx]
            if config.hflip and isinstance(x, torch.Tensor) and x.dim() == 4:
                flip = torch.rand(len(idx), generator=gen) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(3), x)
            x, y = to_device(x, device), y.to(device)
            logits = call(model, x, select)
            loss = task_loss(logits, y, teacher=teacher, x=x, select=select, temperature=config.distill_temperature,
                             weight=config.distill_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            value = loss.item()
            running = value if math.isnan(running) else 0.98 * running + 0.02 * value
            bar.advance(1, loss=running)
    model.eval()
    return model
