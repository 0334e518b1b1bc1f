"""Reference model zoo: small, prunable networks written for Torch-Pruning's dependency graph.

There is no CPU torchvision on the machines this is built for, so the zoo is the project's own.
Every model takes ``in_channels`` / ``num_classes`` / ``image_size`` so that the same
architecture runs on 1x28x28 (Fashion-MNIST), 1x8x8 (digits) and 3x32x32 inputs. Design
choices that keep every layer prunable:

* ResNet shortcuts are 1x1 convolutions, never CIFAR "option A" zero padding (it breaks the
  dependency graph).
* Attention uses one ``qkv`` Linear and derives the head count from its width at run time, so
  removing whole heads needs no attribute surgery and masked heads equal removed heads.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from autoprune.models.names import MODEL_NAMES

__all__ = ["create_model", "default_ignored_layers"]


class BasicBlock(nn.Module):
    """ResNet basic block; the shortcut is a 1x1 conv + BN whenever the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR-style ResNet (He et al. 2016): three stages of 16/32/64 channels, depth = 6n + 2."""

    def __init__(self, depth: int, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        layers: list[nn.Module] = []
        in_planes = 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


_VGG_CFG = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
}


class VGG(nn.Module):
    """VGG with BatchNorm; the last pooling is adaptive so any input of >= 16 pixels works."""

    def __init__(self, depth: int, in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        size = image_size
        for v in _VGG_CFG[depth]:
            if not isinstance(v, int):  # "M": a max-pool
                if size >= 2:  # small inputs (digits 8x8) skip pools they cannot afford
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
                continue
            layers += [nn.Conv2d(c, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU()]
            c = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(c, 512), nn.ReLU(), nn.Linear(512, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear projection."""

    def __init__(self, inp: int, out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = inp * expand
        self.use_res = stride == 1 and inp == out
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(inp, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, out, 1, bias=False),
            nn.BatchNorm2d(out),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018) for small images: stride 1 stem, width multiplier."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        cfg = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),  # (expand, channels, blocks, stride)
               (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
        c = int(32 * width)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU6()]
        for t, ch, n, s in cfg:
            out = int(ch * width)
            for i in range(n):
                layers.append(InvertedResidual(c, out, s if i == 0 else 1, t))
                c = out
        last = int(1280 * max(1.0, width))
        layers += [nn.Conv2d(c, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class CNN1d(nn.Module):
    """A 1-D CNN that reads an image as a sequence of H*W steps with C features each."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        chans = [in_channels, 32, 64, 128]
        layers: list[nn.Module] = []
        for i in range(3):
            layers += [nn.Conv1d(chans[i], chans[i + 1], 5, stride=2, padding=2, bias=False),
                       nn.BatchNorm1d(chans[i + 1]), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 2)  # (B, C, H*W)
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class MLP(nn.Module):
    """Three hidden layers with BatchNorm; every hidden width is prunable."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> None:
        super().__init__()
        d = in_channels * image_size * image_size
        widths = [d, 512, 256, 128]
        layers: list[nn.Module] = [nn.Flatten()]
        for i in range(3):
            layers += [nn.Linear(widths[i], widths[i + 1]), nn.BatchNorm1d(widths[i + 1]), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Attention(nn.Module):
    """Multi-head self-attention with one ``qkv`` Linear.

    The head count is derived from ``qkv.out_features`` at run time and the scale is fixed at
    construction, so pruning whole heads (a block of ``head_dim`` rows in each of q, k and v) is
    a pure weight removal, and zero-masked heads compute exactly what removed heads would.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        heads = self.qkv.out_features // (3 * self.head_dim)
        qkv = self.qkv(x).reshape(b, n, 3, heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, heads * self.head_dim)
        return self.proj(out)


class ViTBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim * mlp_ratio)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(dim * mlp_ratio, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    """A small Vision Transformer; heads and MLP widths are the prunable groups."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32, *,
                 patch_size: int = 4, dim: int = 96, depth: int = 4, num_heads: int = 4, mlp_ratio: int = 2) -> None:
        super().__init__()
        patch_size = min(patch_size, image_size)
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, patch_size)
        n_patches = (image_size // patch_size) ** 2
        self.pos_embed = nn.Parameter(torch.zeros(1, n_patches, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.Sequential(*[ViTBlock(dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x.mean(dim=1))


_FACTORIES: dict[str, Callable[[int, int, int], nn.Module]] = {
    "resnet20": lambda c, k, s: CifarResNet(20, c, k),
    "resnet56": lambda c, k, s: CifarResNet(56, c, k),
    "vgg11": lambda c, k, s: VGG(11, c, k, s),
    "vgg16": lambda c, k, s: VGG(16, c, k, s),
    "mobilenetv2": lambda c, k, s: MobileNetV2(c, k),
    "cnn1d": lambda c, k, s: CNN1d(c, k),
    "mlp": lambda c, k, s: MLP(c, k, s),
    "vit": lambda c, k, s: ViT(c, k, s),
}


def create_model(name: str, *, in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> nn.Module:
    """Build a zoo model by name, e.g. ``create_model("resnet20", in_channels=1, image_size=28)``."""
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}") from None
    return factory(in_channels, num_classes, image_size)


def default_ignored_layers(model: nn.Module) -> list[nn.Module]:
    """Layers a search should leave whole: the output layer, and for a ViT the residual stream.

    The output layer is the last Conv/Linear registered (its outputs are the classes). A ViT's
    embedding width runs through LayerNorms, whose statistics change when channels are removed;
    pruning heads and MLP widths instead keeps every group exact under masks as well.
    """
    layers: list[nn.Module] = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    ignored = layers[-1:]
    if isinstance(model, ViT):
        ignored.append(model.patch_embed)
        for block in model.blocks:
            assert isinstance(block, ViTBlock)
            ignored += [block.attn.proj, block.fc2]
    return ignored
