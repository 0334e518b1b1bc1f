"""Every architecture family of the gallery: exact costs, pruned models that run, masks equal to removal."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from autoprune.costs import count_costs
from autoprune.forward import NamedInputs, call, examples, select_output
from autoprune.groups import UnsupportedModelError
from autoprune.models.gallery import ENTRIES, build
from autoprune.pruning import Pruner
from autoprune.search_spaces import SearchSpace

AVAILABLE = [e.name for e in ENTRIES if e.available()]
HF = [n for n in AVAILABLE if n.startswith("hf_")]


def _space(name: str) -> tuple[nn.Module, object, SearchSpace]:
    model, x = build(name)
    return model, x, SearchSpace.from_model(model, x)


@pytest.mark.parametrize("name", AVAILABLE)
def test_costs_exact_and_pruned_model_runs_for_random_policies(name):
    model, x, space = _space(name)
    dense_shape = call(model, x).shape
    pruner = Pruner(model, space, example_inputs=x)
    rng = np.random.default_rng(1)
    for _ in range(4):
        policy = space.sample(rng)
        pruned = pruner.prune(policy)
        assert count_costs(pruned, x) == space.costs(policy), name
        with torch.no_grad():
            assert call(pruned, x).shape == dense_shape
    assert space.dense_costs == count_costs(model, x)


@pytest.mark.parametrize("name", ["densenet", "inception", "unet", "resnext", "ghostnet", "convtranspose",
                                  "cspdarknet", *(n for n in HF if n in ("hf_resnet", "hf_mobilenetv2", "hf_vit",
                                                                         "hf_llama_gqa", "hf_gpt2"))])
def test_masked_outputs_equal_physically_pruned_outputs(name):
    model, x, space = _space(name)
    pruner = Pruner(model, space, example_inputs=x)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = np.random.default_rng(2)
    for _ in range(2):  # groups a channel normalisation reads cannot be masked exactly: leave them whole
        policy = {g.name: (r if g.maskable else g.low) for g, r in zip(space.groups, space.sample(rng).values(),
                                                                        strict=True)}
        with torch.no_grad():
            physical = call(pruner.prune(policy), x)
            with pruner.masked(policy) as masked_model:
                masked = call(masked_model, x)
        torch.testing.assert_close(masked, physical, atol=1e-5, rtol=1e-5)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "masks must be undone"


def test_groups_read_by_a_channel_norm_refuse_masks():
    model, x, space = _space("groupnorm_cnn1d")
    assert not any(g.maskable for g in space.groups)
    pruner = Pruner(model, space, example_inputs=x)
    with pytest.raises(ValueError, match="exact path"), pruner.masked(space.uniform(0.5)):
        pass


def test_groupnorm_and_grouped_conv_lose_whole_groups():
    model, x, space = _space("groupnorm_cnn1d")
    pruned = Pruner(model, space, example_inputs=x).prune(space.uniform(0.5))
    for m in pruned.modules():
        if isinstance(m, nn.GroupNorm):
            assert m.num_channels == 4 * (m.num_channels // 4) and m.num_groups < 4
    model, x, space = _space("resnext")
    pruned = Pruner(model, space, example_inputs=x).prune(space.uniform(0.5))
    grouped = [m for m in pruned.modules() if isinstance(m, nn.Conv2d) and 1 < m.groups < m.in_channels]
    assert grouped and all(m.groups < 4 and m.out_channels % m.groups == 0 for m in grouped)


def test_split_with_fixed_sizes_keeps_its_producer_whole_and_says_why():
    _, _, space = _space("yolo_c2f_split")
    reasons = " ".join(space.unprunable.values())
    assert "split([8, 8])" in reasons and "body.1.cv1.1" in reasons
    assert len(space.groups) >= 6  # the bottlenecks and output convs around the cut stay prunable


@pytest.mark.skipif("hf_llama_gqa" not in HF, reason="transformers is not installed")
def test_grouped_query_attention_keeps_its_query_to_key_value_ratio():
    model, x, space = _space("hf_llama_gqa")
    heads = [g for g in space.groups if g.kind == "heads"]
    assert heads and all(g.units == 2 and g.query_heads_per_unit == 2 for g in heads)
    pruned = Pruner(model, space, example_inputs=x).prune({g.name: 0.5 for g in heads})
    for layer in pruned.model.layers:
        attn = layer.self_attn
        assert attn.q_proj.out_features == 2 * attn.k_proj.out_features == 2 * attn.head_dim
        assert attn.o_proj.in_features == attn.q_proj.out_features


@pytest.mark.skipif("hf_llama_lm" not in HF, reason="transformers is not installed")
def test_pruned_causal_lm_still_generates():
    model, x, space = _space("hf_llama_lm")
    pruned = Pruner(model, space, example_inputs=x).prune(space.sample(np.random.default_rng(0)))
    out = pruned.generate(x[:1], max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape == (1, x.shape[1] + 4)


@pytest.mark.skipif("hf_gpt2" not in HF, reason="transformers is not installed")
def test_gpt2_heads_update_split_size_and_head_count():
    model, x, space = _space("hf_gpt2")
    heads = [g for g in space.groups if g.kind == "heads"]
    pruned = Pruner(model, space, example_inputs=x).prune({g.name: 0.5 for g in heads})
    attn = pruned.transformer.h[0].attn
    assert attn.num_heads == 2 and attn.split_size == 2 * attn.head_dim == attn.c_attn.nf // 3


@pytest.mark.skipif("hf_bert" not in HF, reason="transformers is not installed")
def test_text_classifier_with_attention_masks_searches_from_loaders():
    from autoprune.data import Splits
    from autoprune.evaluation import Evaluator

    model, ids = build("hf_bert")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 128, (96, 16), generator=g)
    mask = torch.ones_like(ids)
    mask[:, 12:] = 0
    labels = torch.randint(0, 4, (96,), generator=g)
    batches = [({"input_ids": ids[i:i + 32], "attention_mask": mask[i:i + 32]}, labels[i:i + 32])
               for i in range(0, 96, 32)]
    splits = Splits.from_loaders(batches[:2], batches[2:])
    assert isinstance(splits.train, NamedInputs) and splits.num_classes == 4
    x = splits.example_inputs(2)
    assert set(x) == {"input_ids", "attention_mask"}
    space = SearchSpace.from_model(model, x)
    evaluator = Evaluator(model, space, train_data=splits.train, val_data=splits.val, val_size=32, bn_batches=1,
                          batch_size=16)
    result = evaluator(space.uniform(0.5))
    assert result.failed is None and 0.0 <= result.accuracy <= 1.0
    assert evaluator.path == "exact"  # the residual stream runs through LayerNorms
    inputs, y = examples(splits.val)
    assert isinstance(inputs, dict) and len(y) == 32


def test_output_selector_reads_tensors_logits_tuples_and_dicts():
    t = torch.ones(2, 3)

    class Output:
        logits = t

    assert select_output(t) is t
    assert select_output(Output()) is t
    assert select_output((t, torch.zeros(1))) is t
    assert select_output({"out": t}) is t
    with pytest.raises(TypeError, match="output selector"):
        select_output("text")


def test_discovery_past_its_time_limit_names_the_stage():
    model, x = build("densenet")
    with pytest.raises(UnsupportedModelError, match="stopped in stage 'tracing'"):
        SearchSpace.from_model(model, x, discovery_timeout=1e-6)


def test_cost_mismatch_names_the_layer_and_the_way_out():
    class Sneaky(nn.Module):  # prices its pruned channels through a functional call the cost model cannot see
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 8, 3, padding=1)
            self.fc = nn.Linear(8, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.conv1(x))
            flat = h.flatten(2)
            h = h + (flat @ flat.transpose(1, 2) @ flat).view_as(h) * 0  # matmuls over the pruned channels
            return self.fc(self.conv2(h).mean((2, 3)))

    model = Sneaky().eval()
    x = torch.randn(2, 3, 8, 8)
    space = SearchSpace.from_model(model, x)
    assert "conv1" in space.unprunable and "costs differ" in space.unprunable["conv1"]
