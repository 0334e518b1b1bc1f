"""A gallery of real-world architecture families, small enough to build and prune in a test.

Each entry builds a model with random weights and the example inputs it reads. The hand-written
ones reproduce the structure that makes each family hard to prune (channel concatenation, split
and chunk, grouped convolutions, GroupNorm, transposed convolutions, layer scale, Ghost modules);
the ``hf_*`` ones are Hugging Face ``transformers`` architectures built from config objects (no
download), present only when ``transformers`` is installed (``pip install autoprune[hf]``).

``benchmarks/coverage.py`` runs the whole gallery; the tests build entries one by one.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

__all__ = ["ENTRIES", "GalleryEntry", "build"]


@dataclass(frozen=True)
class GalleryEntry:
    name: str
    family: str  # what it exercises, for the coverage table
    factory: Callable[[], tuple[nn.Module, torch.Tensor]]
    needs: str | None = None  # an optional package it needs

    def available(self) -> bool:
        return self.needs is None or importlib.util.find_spec(self.needs) is not None


def _image(channels: int = 3, size: int = 32) -> torch.Tensor:
    return torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(0))


def _tokens(vocab: int, length: int = 16) -> torch.Tensor:
    return torch.randint(1, vocab, (2, length), generator=torch.Generator().manual_seed(0))


def _cbr(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU())


class _Classifier(nn.Sequential):
    """Global average pool then a Linear: the usual head."""

    def __init__(self, cin: int, classes: int = 10) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes))


# --- concatenation --------------------------------------------------------------------------------
class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, 4 * growth, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(4 * growth), nn.Conv2d(4 * growth, growth, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(torch.relu(self.bn2(self.conv1(torch.relu(self.bn1(x))))))
        return torch.cat([x, y], 1)  # every earlier producer feeds every later layer


class DenseNet(nn.Module):
    """DenseNet-BC: dense blocks of concatenations, 1x1 transitions (nested concats)."""

    def __init__(self, growth: int = 8, blocks: tuple[int, ...] = (3, 3), classes: int = 10) -> None:
        super().__init__()
        c = 2 * growth
        layers: list[nn.Module] = [nn.Conv2d(3, c, 3, 1, 1, bias=False)]
        for i, n in enumerate(blocks):
            for _ in range(n):
                layers.append(DenseLayer(c, growth))
                c += growth
            if i < len(blocks) - 1:
                layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False), nn.AvgPool2d(2)]
                c //= 2
        layers += [nn.BatchNorm2d(c), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.head = _Classifier(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class InceptionBlock(nn.Module):
    def __init__(self, cin: int, c1: int, c3: int, c5: int, cp: int) -> None:
        super().__init__()
        self.b1 = _cbr(cin, c1, 1)
        self.b3 = nn.Sequential(_cbr(cin, c3, 1), _cbr(c3, c3, 3))
        self.b5 = nn.Sequential(_cbr(cin, c5, 1), _cbr(c5, c5, 3), _cbr(c5, c5, 3))
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), _cbr(cin, cp, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], 1)


class Inception(nn.Module):
    """Inception-style branches concatenated on channels, two blocks deep."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = _cbr(3, 32)
        self.a = InceptionBlock(32, 16, 24, 8, 8)
        self.b = InceptionBlock(56, 24, 32, 16, 16)
        self.head = _Classifier(88, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.b(self.a(self.stem(x))))


class UNet(nn.Module):
    """A two-level UNet: max-pool down, ``nn.Upsample`` up, concatenated skips; per-pixel logits."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.enc1, self.enc2 = nn.Sequential(_cbr(3, 16), _cbr(16, 16)), nn.Sequential(_cbr(16, 32), _cbr(32, 32))
        self.mid = nn.Sequential(_cbr(32, 64), _cbr(64, 64))
        self.pool, self.up = nn.MaxPool2d(2), nn.Upsample(scale_factor=2, mode="nearest")
        self.dec2 = nn.Sequential(_cbr(64 + 32, 32), _cbr(32, 32))
        self.dec1 = nn.Sequential(_cbr(32 + 16, 16), _cbr(16, 16))
        self.out = nn.Conv2d(16, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        m = self.mid(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up(m), e2], 1))
        return self.out(self.dec1(torch.cat([self.up(d2), e1], 1)))


# --- split and chunk ------------------------------------------------------------------------------
class Bottleneck(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.cv1, self.cv2 = _cbr(c, c, 3), _cbr(c, c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.cv2(self.cv1(x))


class C2f(nn.Module):
    """YOLOv8's C2f: a 1x1 conv split in two halves, bottlenecks on the second, all concatenated."""

    def __init__(self, cin: int, cout: int, n: int = 2, *, use_chunk: bool = False) -> None:
        super().__init__()
        self.c = cout // 2
        self.use_chunk = use_chunk
        self.cv1 = _cbr(cin, 2 * self.c, 1)
        self.cv2 = _cbr((2 + n) * self.c, cout, 1)
        self.m = nn.ModuleList(Bottleneck(self.c) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1) if self.use_chunk else self.cv1(x).split((self.c, self.c), 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class YoloC2f(nn.Module):
    """A YOLOv8-style backbone: strided convs and C2f stages."""

    def __init__(self, *, use_chunk: bool = False, classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(_cbr(3, 16, 3, 2), C2f(16, 16, use_chunk=use_chunk), _cbr(16, 32, 3, 2),
                                  C2f(32, 32, use_chunk=use_chunk))
        self.head = _Classifier(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class CSPBlock(nn.Module):
    """CSPDarknet's cross-stage partial block: two 1x1 paths, bottlenecks on one, concatenated."""

    def __init__(self, c: int, n: int = 1) -> None:
        super().__init__()
        self.a, self.b = _cbr(c, c // 2, 1), _cbr(c, c // 2, 1)
        self.m = nn.Sequential(*[Bottleneck(c // 2) for _ in range(n)])
        self.out = _cbr(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.cat([self.m(self.a(x)), self.b(x)], 1))


class CSPDarknet(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(_cbr(3, 16, 3, 1), _cbr(16, 32, 3, 2), CSPBlock(32), _cbr(32, 64, 3, 2),
                                  CSPBlock(64, 2))
        self.head = _Classifier(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


# --- grouped convolutions, Ghost modules, layer scale, GroupNorm, transposed convs -----------------
class ResNeXtBlock(nn.Module):
    def __init__(self, c: int, width: int, cardinality: int) -> None:
        super().__init__()
        self.reduce = _cbr(c, width, 1)
        self.grouped = _cbr(width, width, 3, groups=cardinality)
        self.expand = nn.Sequential(nn.Conv2d(width, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.expand(self.grouped(self.reduce(x))))


class ResNeXt(nn.Module):
    """ResNeXt blocks (cardinality 4, grouped 3x3 convs) between strided stems."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(_cbr(3, 32), ResNeXtBlock(32, 32, 4), _cbr(32, 64, 3, 2), ResNeXtBlock(64, 64, 4),
                                  ResNeXtBlock(64, 64, 4))
        self.head = _Classifier(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class GhostModule(nn.Module):
    """GhostNet's module: a primary conv, a cheap depthwise conv on its output, concatenated and sliced."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.cout = cout
        init = (cout + 1) // 2
        self.primary = _cbr(cin, init, 1)
        self.cheap = _cbr(init, init, 3, groups=init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.primary(x)
        return torch.cat([y, self.cheap(y)], 1)[:, : self.cout]


class GhostNet(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(_cbr(3, 16, 3, 2), GhostModule(16, 32), _cbr(32, 32, 3, 2, groups=32),
                                  GhostModule(32, 47), GhostModule(47, 64))  # 47: the slice drops one cheap channel
        self.head = _Classifier(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class GroupNormCNN1d(nn.Module):
    """A 1-D CNN normalised with GroupNorm (4 groups) instead of BatchNorm."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        chans = [3, 32, 64, 64]
        layers: list[nn.Module] = []
        for a, b in zip(chans, chans[1:], strict=False):
            layers += [nn.Conv1d(a, b, 5, 2, 2), nn.GroupNorm(4, b), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x.flatten(2)).mean(-1))


class ConvTransposeNet(nn.Module):
    """An encoder-decoder with ``nn.ConvTranspose2d`` upsampling (a segmentation or autoencoder shape)."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.enc = nn.Sequential(_cbr(3, 16, 3, 2), _cbr(16, 32, 3, 2))
        self.dec = nn.Sequential(nn.ConvTranspose2d(32, 16, 2, 2), nn.BatchNorm2d(16), nn.ReLU(),
                                 nn.ConvTranspose2d(16, 16, 2, 2), nn.BatchNorm2d(16), nn.ReLU())
        self.out = nn.Conv2d(16, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.dec(self.enc(x)))


# --- attention written as timm writes it ---------------------------------------------------------
class StoredHeadsAttention(nn.Module):
    """timm's ``Attention``: a fused ``qkv`` Linear reshaped with the head count *stored* on the module."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv, self.proj = nn.Linear(dim, dim * 3), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))


class LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), 0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class TimmStyleViT(nn.Module):
    """A DeiT-style ViT as timm writes it: class token, position embeddings, stored head counts, layer scale."""

    def __init__(self, dim: int = 64, depth: int = 2, heads: int = 4, classes: int = 10) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, 8, 8)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 17, dim) * 0.02)
        self.blocks = nn.ModuleList()
        for _ in range(depth):
            self.blocks.append(nn.ModuleDict({  # a block per ModuleDict: norm, attention, layer scale, MLP
                "norm1": nn.LayerNorm(dim), "attn": StoredHeadsAttention(dim, heads), "ls1": LayerScale(dim),
                "norm2": nn.LayerNorm(dim), "fc1": nn.Linear(dim, 2 * dim), "fc2": nn.Linear(2 * dim, dim),
                "ls2": LayerScale(dim)}))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], 1) + self.pos_embed
        for block in self.blocks:
            b = cast(nn.ModuleDict, block)
            x = x + b["ls1"](b["attn"](b["norm1"](x)))
            x = x + b["ls2"](b["fc2"](nn.functional.gelu(b["fc1"](b["norm2"](x)))))
        return self.head(self.norm(x)[:, 0])


# --- Hugging Face transformers (built from configs: random weights, no download) -------------------
def _hf_vision(kind: str) -> tuple[nn.Module, torch.Tensor]:
    hf: Any = importlib.import_module("transformers")  # optional: typed loosely

    common = {"image_size": 32, "num_channels": 3, "num_labels": 10}
    if kind == "vit":
        cfg = hf.ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                           patch_size=8, **common)
        return hf.ViTForImageClassification(cfg), _image()
    if kind == "deit":
        cfg = hf.DeiTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                            patch_size=8, **common)
        return hf.DeiTForImageClassification(cfg), _image()
    if kind == "swin":
        cfg = hf.SwinConfig(embed_dim=32, depths=[2, 2], num_heads=[2, 4], window_size=4, patch_size=2,
                            **common)
        return hf.SwinForImageClassification(cfg), _image()
    if kind == "convnext":
        cfg = hf.ConvNextConfig(num_stages=2, hidden_sizes=[32, 64], depths=[2, 2], **common)
        return hf.ConvNextForImageClassification(cfg), _image()
    if kind == "resnet":
        cfg = hf.ResNetConfig(embedding_size=16, hidden_sizes=[32, 64], depths=[1, 1], layer_type="bottleneck",
                              **common)
        return hf.ResNetForImageClassification(cfg), _image()
    if kind == "mobilenetv2":
        cfg = hf.MobileNetV2Config(depth_multiplier=0.35, **common)
        return hf.MobileNetV2ForImageClassification(cfg), _image()
    raise ValueError(kind)


def _hf_text(kind: str) -> tuple[nn.Module, torch.Tensor]:
    hf: Any = importlib.import_module("transformers")  # optional: typed loosely

    vocab = 128
    if kind == "bert":
        cfg = hf.BertConfig(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=128, max_position_embeddings=32, num_labels=4)
        return hf.BertForSequenceClassification(cfg), _tokens(vocab)
    if kind == "gpt2":
        cfg = hf.GPT2Config(vocab_size=vocab, n_embd=64, n_layer=2, n_head=4, n_positions=32, num_labels=4,
                            pad_token_id=0)
        return hf.GPT2ForSequenceClassification(cfg), _tokens(vocab)
    decoder: dict[str, Any] = {"vocab_size": vocab, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 32,
               "pad_token_id": 0, "num_labels": 4}
    if kind == "llama":
        return hf.LlamaForSequenceClassification(hf.LlamaConfig(**decoder)), _tokens(vocab)
    if kind == "qwen2":
        return hf.Qwen2ForSequenceClassification(hf.Qwen2Config(**decoder)), _tokens(vocab)
    if kind == "mistral":
        return hf.MistralForSequenceClassification(hf.MistralConfig(**decoder)), _tokens(vocab)
    if kind == "llama_lm":
        return hf.LlamaForCausalLM(hf.LlamaConfig(**decoder)), _tokens(vocab)
    raise ValueError(kind)


def _own(cls: Callable[[], nn.Module], inputs: Callable[[], torch.Tensor] = _image
         ) -> Callable[[], tuple[nn.Module, torch.Tensor]]:
    return lambda: (cls(), inputs())


def _hf(builder: Callable[[str], tuple[nn.Module, torch.Tensor]], kind: str
        ) -> Callable[[], tuple[nn.Module, torch.Tensor]]:
    return lambda: builder(kind)


ENTRIES: tuple[GalleryEntry, ...] = (
    GalleryEntry("densenet", "concat (dense blocks, nested)", _own(DenseNet)),
    GalleryEntry("inception", "concat of branches", _own(Inception)),
    GalleryEntry("unet", "upsample + concat skips", _own(UNet)),
    GalleryEntry("yolo_c2f_split", "split then concat", _own(YoloC2f)),
    GalleryEntry("yolo_c2f_chunk", "chunk then concat", _own(lambda: YoloC2f(use_chunk=True))),
    GalleryEntry("cspdarknet", "cross-stage partial concat", _own(CSPDarknet)),
    GalleryEntry("resnext", "grouped conv", _own(ResNeXt)),
    GalleryEntry("ghostnet", "concat then slice (uneven)", _own(GhostNet)),
    GalleryEntry("groupnorm_cnn1d", "GroupNorm, Conv1d", _own(GroupNormCNN1d, lambda: torch.randn(2, 3, 8, 8))),
    GalleryEntry("convtranspose", "ConvTranspose2d", _own(ConvTransposeNet)),
    GalleryEntry("timm_style_vit", "stored num_heads, class token, layer scale", _own(TimmStyleViT)),
    GalleryEntry("hf_vit", "separate q/k/v, LayerNorm, cls token + position embeddings",
                 _hf(_hf_vision, "vit"), "transformers"),
    GalleryEntry("hf_deit", "separate q/k/v, distillation token", _hf(_hf_vision, "deit"), "transformers"),
    GalleryEntry("hf_swin", "windowed attention, relative position bias", _hf(_hf_vision, "swin"), "transformers"),
    GalleryEntry("hf_convnext", "depthwise conv, LayerNorm, layer scale", _hf(_hf_vision, "convnext"),
                 "transformers"),
    GalleryEntry("hf_resnet", "bottleneck ResNet", _hf(_hf_vision, "resnet"), "transformers"),
    GalleryEntry("hf_mobilenetv2", "inverted residuals", _hf(_hf_vision, "mobilenetv2"), "transformers"),
    GalleryEntry("hf_bert", "token inputs, separate q/k/v", _hf(_hf_text, "bert"), "transformers"),
    GalleryEntry("hf_gpt2", "Conv1D, fused c_attn", _hf(_hf_text, "gpt2"), "transformers"),
    GalleryEntry("hf_llama_gqa", "grouped-query attention, RMSNorm, SwiGLU", _hf(_hf_text, "llama"),
                 "transformers"),
    GalleryEntry("hf_qwen2", "GQA with q/k/v biases", _hf(_hf_text, "qwen2"), "transformers"),
    GalleryEntry("hf_mistral", "GQA, sliding window", _hf(_hf_text, "mistral"), "transformers"),
    GalleryEntry("hf_llama_lm", "causal LM head, generate()", _hf(_hf_text, "llama_lm"), "transformers"),
)


def build(name: str) -> tuple[nn.Module, torch.Tensor]:
    """Build gallery entry ``name`` (random weights, seeded) in eval mode, with its example inputs."""
    entry = next((e for e in ENTRIES if e.name == name), None)
    if entry is None:
        raise ValueError(f"unknown gallery model {name!r}; choose one of: {', '.join(e.name for e in ENTRIES)}")
    if not entry.available():
        raise ModuleNotFoundError(f"gallery model {name!r} needs {entry.needs}: pip install 'autoprune[hf]'")
    torch.manual_seed(0)
    model, inputs = entry.factory()
    return model.eval(), inputs
