"""MoCo v2 augmentations on a whole batch at once, on the batch's device (docs/DESIGN.md section 1).

Per-image torchvision transforms cost ~5-15 ms a view on a CPU core, which starves a GPU and takes a third of a
2-core CPU step. Here every random choice is drawn per image, but the work is a few batched tensor ops:

    random resized crop (scale 0.2-1, ratio 3/4-4/3) + horizontal flip   one affine grid_sample, anywhere in the
                                                                          whole image (aspect kept)
    colour jitter 0.4/0.4/0.4/0.1 with p=0.8                              brightness, contrast, saturation, hue
    grayscale p=0.2
    Gaussian blur sigma 0.1-2.0 at 224 px, scaled with the side, p=0.5   separable per-image kernels
    ImageNet mean/std normalisation

Differences from torchvision, by design: the four jitters are applied in a fixed order (torchvision shuffles them)
and the hue shift is a rotation in YIQ space (torchvision converts to HSV); both keep the augmentation's strength.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from lcr_sdk.manifest import IMAGENET_MEAN, IMAGENET_STD


def _u(n: int, lo: float, hi: float, g: torch.Generator | None, device: torch.device | str) -> torch.Tensor:
    """n uniform numbers in [lo, hi), drawn on the CPU (so a seeded generator gives the same on every device)."""
    return torch.rand(n, generator=g, device="cpu").to(device) * (hi - lo) + lo


def _p(n: int, p: float, g: torch.Generator | None, device: torch.device | str) -> torch.Tensor:
    """n coin flips that come up True with probability p."""
    return (torch.rand(n, generator=g, device="cpu") < p).to(device)


def resized_crop_flip(
    x: torch.Tensor,
    size: int,
    g: torch.Generator | None = None,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    extent: torch.Tensor | None = None,
) -> torch.Tensor:
    """Random resized crop to ``size`` x ``size`` and random horizontal flip, from anywhere in each image.

    As torchvision's RandomResizedCrop: a crop covers ``scale`` of the image's area with a width/height ratio in
    ``ratio`` (in pixels, so a wide image gets crops of the same shapes as a square one), placed uniformly.

    Args:
        x: B x 3 x H x W float; image i lies in the box ``extent[i]`` of its canvas (the rest is padding that
            crops never reach).
        size: output side.
        g: generator for the random draws (None: torch's global one).
        scale, ratio: crop area share and aspect range.
        extent: B x 4 boxes (x0, y0, x1, y1) of the images as shares of the canvas; None = the whole canvas.
    """
    b, dev = x.shape[0], x.device
    box = torch.tensor([0.0, 0.0, 1.0, 1.0], device=dev).expand(b, 4) if extent is None else extent.to(dev)
    ew, eh = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]  # image size as shares of the canvas
    aspect = (ew * x.shape[3]) / (eh * x.shape[2])  # each image's width / height in pixels
    area = _u(b, *scale, g, dev)
    log_r = _u(b, math.log(ratio[0]), math.log(ratio[1]), g, dev)
    w = torch.sqrt(area * torch.exp(log_r) / aspect).clamp(max=1.0)  # crop width as a share of the image's
    h = torch.sqrt(area / torch.exp(log_r) * aspect).clamp(max=1.0)
    # crop centre in [-1, 1] image coordinates, then in the canvas's
    cx = ((_u(b, 0, 1, g, dev) * (1 - w) + w / 2) * 2 - 1) * ew + (box[:, 0] + box[:, 2] - 1)
    cy = ((_u(b, 0, 1, g, dev) * (1 - h) + h / 2) * 2 - 1) * eh + (box[:, 1] + box[:, 3] - 1)
    flip = torch.where(_p(b, 0.5, g, dev), -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2] = w * ew * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = h * eh, cy
    grid = F.affine_grid(theta, [b, 3, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]  # B x 1 x H x W


def colour_jitter(
    x: torch.Tensor,
    g: torch.Generator | None = None,
    b_: float = 0.4,
    c_: float = 0.4,
    s_: float = 0.4,
    h_: float = 0.1,
    p: float = 0.8,
) -> torch.Tensor:
    """Brightness, contrast, saturation and hue jitter on RGB in [0, 1], applied to each image with prob. p."""
    n, dev = x.shape[0], x.device
    on = _p(n, p, g, dev).view(n, 1, 1, 1)
    bri = _u(n, 1 - b_, 1 + b_, g, dev).view(n, 1, 1, 1)
    con = _u(n, 1 - c_, 1 + c_, g, dev).view(n, 1, 1, 1)
    sat = _u(n, 1 - s_, 1 + s_, g, dev).view(n, 1, 1, 1)
    hue = _u(n, -h_, h_, g, dev) * 2 * math.pi
    y = (x * bri).clamp(0, 1)
    mean = _gray(y).mean(dim=(1, 2, 3), keepdim=True)
    y = ((y - mean) * con + mean).clamp(0, 1)
    gray = _gray(y)
    y = ((y - gray) * sat + gray).clamp(0, 1)
    # hue: rotate the chroma plane of YIQ
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], device=dev)
    from_yiq = torch.linalg.inv(to_yiq)
    cos, sin = torch.cos(hue), torch.sin(hue)
    rot = torch.zeros(n, 3, 3, device=dev)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    m = from_yiq @ rot @ to_yiq  # n x 3 x 3
    y = torch.bmm(m, y.flatten(2)).view_as(y).clamp(0, 1)
    return torch.where(on, y, x)


def random_grayscale(x: torch.Tensor, g: torch.Generator | None = None, p: float = 0.2) -> torch.Tensor:
    """Replace each image by its luma, with probability p."""
    on = _p(x.shape[0], p, g, x.device).view(-1, 1, 1, 1)
    return torch.where(on, _gray(x).expand_as(x), x)


def gaussian_blur(
    x: torch.Tensor, g: torch.Generator | None = None, sigma: tuple[float, float] = (0.1, 2.0), p: float = 0.5
) -> torch.Tensor:
    """Blur each image with its own sigma, with probability p.

    ``sigma`` is in pixels of a 224 px image (MoCo v2's setting) and scales with the side, so a 112 px image gets
    the same relative blur (0.05-1.0 px) instead of one twice as strong; the kernel is ~10% of the side, odd.
    """
    n, c, h, w = x.shape
    k = max(3, int(0.1 * h) // 2 * 2 + 1)
    s = _u(n, sigma[0], sigma[1], g, x.device) * (h / 224)
    on = _p(n, p, g, x.device)
    t = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2
    kern = torch.exp(-(t[None] ** 2) / (2 * s[:, None] ** 2))
    kern = kern / kern.sum(1, keepdim=True)  # n x k
    kern = kern.repeat_interleave(c, 0)  # (n*c) x k
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, (k // 2, k // 2, 0, 0), mode="reflect"), kern.view(n * c, 1, 1, k), groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, k // 2, k // 2), mode="reflect"), kern.view(n * c, 1, k, 1), groups=n * c)
    return torch.where(on.view(n, 1, 1, 1), y.view(n, c, h, w), x)


def normalise(
    x: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """RGB in [0, 1] -> (x - mean) / std (default ImageNet's; each arch's: :func:`lcr_sdk.manifest.normalisation`)."""
    m = torch.tensor(tuple(mean), device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(tuple(std), device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def moco_v2(
    images: torch.Tensor,
    size: int,
    g: torch.Generator | None = None,
    extent: torch.Tensor | None = None,
    norm: tuple[Sequence[float], Sequence[float]] = (IMAGENET_MEAN, IMAGENET_STD),
) -> torch.Tensor:
    """One MoCo v2 view of each image.

    Args:
        images: B x 3 x H x W uint8 RGB, any device.
        size: output side S.
        g: generator for every random draw (None: torch's global one); the same generator state gives the same
            views.
        extent: B x 4 box of each image in its canvas (see :func:`resized_crop_flip`); None = all of it.
        norm: (mean, std) of the arch's input normalisation.

    Returns:
        B x 3 x S x S float, normalised with ``norm``.
    """
    x = images.float() / 255.0
    x = resized_crop_flip(x, size, g, extent=extent)
    x = colour_jitter(x, g)
    x = random_grayscale(x, g)
    x = gaussian_blur(x, g)
    return normalise(x, *norm)
