"""What autoprune knows about particular layer families, one small handler each.

Torch-Pruning's dependency graph follows channels through convolutions, norms, concatenation and
elementwise ops, but not through the reshape that splits a projection into attention heads, and it
knows nothing of Hugging Face's ``Conv1D``. Everything family-specific lives here:

* **Attention spellings** (:data:`ATTENTION_SPELLINGS`): each finds its attention blocks and writes
  their head structure out explicitly (which rows of q, k, v and which columns of the output
  projection go with each head) and, after surgery, updates the head counts the module stores.
  Adding a spelling is one class here plus its test.
* **Layer pruners** (:func:`custom_pruners`): Torch-Pruning pruning functions for layers it lacks,
  registered through its ``customized_pruners`` extension point.
* **Block layers** (:func:`block_size`): layers whose channels may only go in whole blocks
  (GroupNorm groups, grouped-convolution groups), and the surgery that keeps their structure valid.

This module imports no other part of autoprune but the group description.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

__all__ = ["ATTENTION_SPELLINGS", "AttentionSpelling", "HeadLayout", "block_size", "conv1d_sizes",
           "find_attention", "is_conv1d_transposed_linear", "prune_block_layer", "resync_attention"]


def is_conv1d_transposed_linear(module: nn.Module) -> bool:
    """GPT-2's ``transformers.pytorch_utils.Conv1D``: a Linear whose weight is stored ``(in, out)``."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "nx")


def conv1d_sizes(module: nn.Module) -> tuple[int, int]:
    """(out, in) features of a Hugging Face ``Conv1D``."""
    m = cast(Any, module)
    return int(m.nf), int(m.nx)


# ---------------------------------------------------------------------------------------------
# Attention spellings
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HeadLayout:
    """The head structure of one attention block.

    Attributes:
        block: qualified name of the attention module (whose stored head counts surgery updates).
        rows: ``(layer, index)`` of the output dimensions a unit owns (q, k, v rows); ``index`` is
            ``(units, k)`` as in :class:`autoprune.groups.GroupMember`.
        cols: ``(layer, index)`` of the input dimensions a unit owns (the output projection).
        extra: ``(parameter, index)`` of bare parameters with a head axis (relative position bias).
        query_heads_per_unit: query heads per unit (a key/value head and its queries under GQA).
        head_dim: channels per head.
    """

    block: str
    rows: tuple[tuple[str, np.ndarray], ...]
    cols: tuple[tuple[str, np.ndarray], ...]
    extra: tuple[tuple[str, np.ndarray], ...]
    query_heads_per_unit: int
    head_dim: int

    @property
    def units(self) -> int:
        return int(self.rows[0][1].shape[0])

    @property
    def query(self) -> str:
        """The layer that names the group: the first projection (q, or the fused qkv)."""
        return self.rows[0][0]


def _head_rows(units: int, per_unit: int, head_dim: int, offset: int = 0) -> np.ndarray:
    """Rows ``offset + (u * per_unit + h) * head_dim + j`` for unit ``u``, its heads ``h``, channels ``j``."""
    heads = np.arange(units)[:, None] * per_unit + np.arange(per_unit)[None, :]
    rows = heads[:, :, None] * head_dim + np.arange(head_dim)[None, None, :]
    return offset + rows.reshape(units, per_unit * head_dim)


def _head_dim(module: nn.Module, width: int) -> int | None:
    for attr in ("head_dim", "attention_head_size"):
        value = getattr(module, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    for attr in ("num_heads", "num_attention_heads", "n_head"):
        value = getattr(module, attr, None)
        if isinstance(value, int) and value > 0 and width % value == 0:
            return width // value
    return None


def _head_biases(model: nn.Module, block: str, module: nn.Module, heads: int, per_unit: int
                 ) -> tuple[tuple[str, np.ndarray], ...]:
    """Bare parameters of the block with one column per query head (Swin's relative position bias)."""
    found = []
    for name, p in module.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("weight", "bias") or p.dim() < 2 or p.shape[-1] != heads:
            continue
        found.append((f"{block}.{name}", _head_rows(heads // per_unit, per_unit, 1)))
    return tuple(found)


def _fused_layout(model: nn.Module, block: str, module: nn.Module, fused: str, out: str, width: int
                  ) -> HeadLayout | None:
    """Heads of a fused projection (rows q | k | v, ``width`` each) and its output projection."""
    d = _head_dim(module, width)
    if d is None:
        return None
    heads = width // d
    rows = np.concatenate([_head_rows(heads, 1, d, s * width) for s in range(3)], axis=1)
    return HeadLayout(block, ((f"{block}.{fused}", rows),), ((f"{block}.{out}", _head_rows(heads, 1, d)),),
                      _head_biases(model, block, module, heads, 1), 1, d)


class AttentionSpelling:
    """One way of writing attention. Subclasses find blocks; :meth:`resync` is shared."""

    name = "attention"
    # attributes that store a head count or width, and what they count after pruning
    HEAD_COUNTS = ("num_heads", "num_attention_heads", "n_head")

    def find(self, model: nn.Module) -> Iterator[HeadLayout]:
        raise NotImplementedError

    def resync(self, module: nn.Module, layout: HeadLayout, kept_units: int) -> None:
        """Make the module's stored head counts match its pruned projections."""
        q_heads = kept_units * layout.query_heads_per_unit
        for attr in self.HEAD_COUNTS:
            if isinstance(getattr(module, attr, None), int):
                setattr(module, attr, q_heads)
        if isinstance(getattr(module, "num_key_value_heads", None), int):
            cast(Any, module).num_key_value_heads = kept_units
        if isinstance(getattr(module, "all_head_size", None), int):
            cast(Any, module).all_head_size = q_heads * layout.head_dim


class FusedQKV(AttentionSpelling):
    """One ``qkv`` Linear (rows q | k | v) and a ``proj`` Linear: the zoo's ViT, timm's ``Attention``."""

    name = "fused qkv"

    def find(self, model: nn.Module) -> Iterator[HeadLayout]:
        for block, m in model.named_modules():
            qkv, proj = getattr(m, "qkv", None), getattr(m, "proj", None)
            if not (isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear)):
                continue
            layout = _fused_layout(model, block, m, "qkv", "proj", qkv.out_features // 3)
            if layout is not None:
                yield layout


class SeparateProjections(AttentionSpelling):
    """Separate q, k, v projections and an output projection, with grouped-query attention:
    ``q_proj/k_proj/v_proj/o_proj`` (Llama, Qwen2, Mistral, and ViT/DeiT/Swin in transformers 5) and
    BERT's ``query/key/value`` with the sibling ``output.dense``. Under GQA a unit is one key/value
    head with the query heads that read it, so the query/key-value ratio stays valid."""

    name = "separate q/k/v"
    SPELLINGS = (("q_proj", "k_proj", "v_proj", "o_proj"), ("query", "key", "value", None))

    def find(self, model: nn.Module) -> Iterator[HeadLayout]:
        modules = dict(model.named_modules())
        for block, m in modules.items():
            for q_name, k_name, v_name, o_name in self.SPELLINGS:
                q, k, v = (getattr(m, n, None) for n in (q_name, k_name, v_name))
                if not all(isinstance(layer, nn.Linear) for layer in (q, k, v)):
                    continue
                assert isinstance(q, nn.Linear) and isinstance(k, nn.Linear)
                o_path = f"{block}.{o_name}" if o_name else _sibling_output(modules, block)
                if o_path is None or not isinstance(modules.get(o_path), nn.Linear):
                    continue
                d = _head_dim(m, q.out_features)
                if d is None or k.out_features % d or q.out_features % k.out_features:
                    continue
                kv_heads, per_unit = k.out_features // d, q.out_features // k.out_features
                q_rows, kv_rows = _head_rows(kv_heads, per_unit, d), _head_rows(kv_heads, 1, d)
                yield HeadLayout(block, ((f"{block}.{q_name}", q_rows), (f"{block}.{k_name}", kv_rows),
                                         (f"{block}.{v_name}", kv_rows)), ((o_path, q_rows),),
                                 _head_biases(model, block, m, kv_heads * per_unit, per_unit), per_unit, d)


def _sibling_output(modules: dict[str, nn.Module], block: str) -> str | None:
    """BERT's layout: ``attention.self`` holds q/k/v, ``attention.output.dense`` projects back."""
    parent = block.rpartition(".")[0]
    path = f"{parent}.output.dense" if parent else "output.dense"
    return path if path in modules else None


class GPT2Attention(AttentionSpelling):
    """GPT-2: a fused ``c_attn`` and a ``c_proj``, both ``Conv1D``; ``split_size`` splits q | k | v."""

    name = "GPT-2 Conv1D"

    def find(self, model: nn.Module) -> Iterator[HeadLayout]:
        for block, m in model.named_modules():
            c_attn, c_proj = getattr(m, "c_attn", None), getattr(m, "c_proj", None)
            if not (c_attn is not None and c_proj is not None and is_conv1d_transposed_linear(c_attn)
                    and is_conv1d_transposed_linear(c_proj) and isinstance(getattr(m, "split_size", None), int)):
                continue
            layout = _fused_layout(model, block, m, "c_attn", "c_proj", conv1d_sizes(c_attn)[0] // 3)
            if layout is not None:
                yield layout

    def resync(self, module: nn.Module, layout: HeadLayout, kept_units: int) -> None:
        super().resync(module, layout, kept_units)
        cast(Any, module).split_size = kept_units * layout.head_dim


ATTENTION_SPELLINGS: tuple[AttentionSpelling, ...] = (FusedQKV(), SeparateProjections(), GPT2Attention())


def find_attention(model: nn.Module) -> list[tuple[AttentionSpelling, HeadLayout]]:
    """Every attention block of ``model`` a spelling recognises (the first spelling that claims it wins)."""
    found: list[tuple[AttentionSpelling, HeadLayout]] = []
    claimed: set[str] = set()
    for spelling in ATTENTION_SPELLINGS:
        for layout in spelling.find(model):
            if layout.block not in claimed:
                claimed.add(layout.block)
                found.append((spelling, layout))
    return found


def resync_attention(model: nn.Module) -> None:
    """After surgery: every attention module's stored head counts follow its (pruned) projections."""
    modules = dict(model.named_modules())
    for spelling, layout in find_attention(model):
        layer = modules[layout.query]
        rows = conv1d_sizes(layer)[0] if is_conv1d_transposed_linear(layer) else cast(Any, layer).out_features
        q_width = int(rows) // (3 if len(layout.rows) == 1 else 1)
        kept_units = q_width // (layout.head_dim * layout.query_heads_per_unit)
        spelling.resync(modules[layout.block], layout, kept_units)


# ---------------------------------------------------------------------------------------------
# Layer pruners Torch-Pruning lacks
# ---------------------------------------------------------------------------------------------
class Conv1DPruner(tp.pruner.function.BasePruningFunc):
    """Hugging Face's ``Conv1D`` (GPT-2): weight ``(in, out)``, bias ``(out,)``."""

    def prune_out_channels(self, layer: nn.Module, idxs: list[int]) -> nn.Module:
        keep = _keep(self.get_out_channels(layer), idxs)
        layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 1)
        layer.bias = self._prune_parameter_and_grad(layer.bias, keep, 0)
        cast(Any, layer).nf = len(keep)
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: list[int]) -> nn.Module:
        keep = _keep(self.get_in_channels(layer), idxs)
        layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 0)
        cast(Any, layer).nx = len(keep)
        return layer

    def get_out_channels(self, layer: nn.Module) -> int:
        return conv1d_sizes(layer)[0]

    def get_in_channels(self, layer: nn.Module) -> int:
        return conv1d_sizes(layer)[1]


def _keep(n: int, idxs: list[int]) -> list[int]:
    drop = set(int(i) for i in idxs)
    return [i for i in range(int(n)) if i not in drop]


def custom_pruners(model: nn.Module) -> dict[type, tp.pruner.function.BasePruningFunc]:
    """Pruners to register with Torch-Pruning for the layer classes of ``model`` it lacks."""
    return {type(m): Conv1DPruner() for m in model.modules() if is_conv1d_transposed_linear(m)}



# ---------------------------------------------------------------------------------------------
# Layers pruned in whole blocks
# ---------------------------------------------------------------------------------------------
def block_size(module: nn.Module, out: bool) -> int | None:
    """Channels per block if ``module``'s dimension may only lose whole blocks, else None.

    GroupNorm normalises groups of channels: a group must stay whole. A grouped (not depthwise)
    convolution connects each group of inputs to its own group of outputs: both sides lose whole
    groups together, and the layer's ``groups`` shrinks.
    """
    if isinstance(module, nn.GroupNorm) and module.num_groups > 1:
        return module.num_channels // module.num_groups if out else None
    if isinstance(module, nn.modules.conv._ConvNd) and 1 < module.groups and not (
            module.groups == module.in_channels == module.out_channels):
        return (module.out_channels if out else module.in_channels) // module.groups
    return None


@torch.no_grad()
def prune_block_layer(module: nn.Module, out: bool, idxs: list[int]) -> bool:
    """Surgery for block layers, keeping their group structure; False if ``module`` is not one."""
    if isinstance(module, nn.GroupNorm) and module.num_groups > 1:
        per_group = module.num_channels // module.num_groups
        tp.pruner.function.prune_groupnorm_out_channels(module, idxs)
        module.num_groups = module.num_channels // per_group
        return True
    if block_size(module, out) is None:
        return False
    assert isinstance(module, nn.modules.conv._ConvNd)
    out_per_group = module.out_channels // module.groups
    if out:
        keep = _keep(module.out_channels, idxs)
        axis = 1 if module.transposed else 0
        module.weight = nn.Parameter(module.weight.index_select(axis, torch.tensor(keep)))
        if module.bias is not None:
            module.bias = nn.Parameter(module.bias[keep])
        module.out_channels = len(keep)
        module.groups = module.out_channels // out_per_group
    else:  # whole input groups go with their outputs: the weight has no column for them
        module.in_channels -= len(set(idxs))
    return True
