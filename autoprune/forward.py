"""Calling a model as it comes: tensor or token inputs in, a tensor, tuple, dict or ``ModelOutput`` out.

Example inputs are a tensor (images, sequences, token ids) or a mapping of tensors (``input_ids``
with an ``attention_mask``, as a Hugging Face tokenizer returns them); every tensor's first axis is
the batch. Outputs are reduced to the one tensor a loss or an accuracy reads by an output selector:
by default the output itself when it is a tensor, else its ``logits`` (Hugging Face), else its first
element (a tuple or dict).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeAlias

import torch
from torch import nn
from torch.utils.data import TensorDataset

__all__ = ["Inputs", "NamedInputs", "OutputSelector", "batch_size", "call", "clone", "dataset", "examples",
           "first_example", "select_output", "take", "to_device"]

Inputs: TypeAlias = torch.Tensor | Mapping[str, torch.Tensor]
OutputSelector: TypeAlias = Callable[[Any], torch.Tensor]


def select_output(output: Any) -> torch.Tensor:
    """The default output selector: a tensor, else ``.logits``, else the first element."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, Mapping):
        output = list(output.values())
    if isinstance(output, (tuple, list)) and output:
        return select_output(output[0])
    raise TypeError(f"cannot find the output tensor in a {type(output).__name__}; pass an output selector")


def call(model: nn.Module, inputs: Inputs, select: OutputSelector = select_output) -> torch.Tensor:
    """Run ``model`` on ``inputs`` (a tensor, or keyword tensors) and select its output tensor."""
    return select(model(**inputs) if isinstance(inputs, Mapping) else model(inputs))


def take(inputs: Inputs, index: slice | torch.Tensor) -> Inputs:
    """The same rows of every tensor of ``inputs``."""
    if isinstance(inputs, Mapping):
        return {k: v[index] for k, v in inputs.items()}
    return inputs[index]


def first_example(inputs: Inputs) -> Inputs:
    """A batch of one (costs are per example)."""
    return take(inputs, slice(0, 1))


def clone(inputs: Inputs) -> Inputs:
    """A copy that owns its memory (a view pickles, e.g. to Ray workers, with the whole tensor behind it)."""
    return {k: v.clone() for k, v in inputs.items()} if isinstance(inputs, Mapping) else inputs.clone()


def batch_size(inputs: Inputs) -> int:
    return len(next(iter(inputs.values()))) if isinstance(inputs, Mapping) else len(inputs)


def to_device(inputs: Inputs, device: torch.device) -> Inputs:
    if isinstance(inputs, Mapping):
        return {k: v.to(device) for k, v in inputs.items()}
    return inputs.to(device)


class NamedInputs(TensorDataset):
    """A dataset whose model input is several named tensors (``input_ids``, ``attention_mask``, ...)
    passed as keyword arguments, followed by the labels: ``NamedInputs(ids, mask, labels, names=(
    "input_ids", "attention_mask"))``. A plain ``TensorDataset(x, y)`` passes ``x`` positionally."""

    def __init__(self, *tensors: torch.Tensor, names: Sequence[str]) -> None:
        if len(names) != len(tensors) - 1:
            raise ValueError(f"NamedInputs needs one name per input tensor: {len(tensors) - 1} inputs, "
                             f"{len(names)} names")
        super().__init__(*tensors)
        self.names = tuple(names)


def examples(data: TensorDataset) -> tuple[Inputs, torch.Tensor]:
    """The model inputs and the labels of a dataset (see :class:`NamedInputs`)."""
    names = getattr(data, "names", None)
    if names:
        return dict(zip(names, data.tensors[:-1], strict=True)), data.tensors[-1]
    x, y = data.tensors
    return x, y


def dataset(inputs: Inputs, labels: torch.Tensor) -> TensorDataset:
    """The dataset :func:`examples` reads back as ``(inputs, labels)``."""
    if isinstance(inputs, Mapping):
        return NamedInputs(*inputs.values(), labels, names=list(inputs))
    return TensorDataset(inputs, labels)
