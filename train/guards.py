"""What `lcr-sdk train` checks before any work, and how it launches and stops worker processes.

Torch-free at import. Checked before training starts (and, with ``--nproc-per-node N``, before torchrun launches
any worker, so that a bad input is one error line, not one per worker plus the launcher's traceback):

- the output folder is a folder (or can be made one) that this user may write;
- a finished or interrupted run's ``OUT/checkpoint.pt`` is never replaced by a new run: without ``--resume`` the
  run is refused, naming ``--resume`` and a new ``--out``;
- a ``--pretrained`` file exists and is PyTorch weights (not an exported model);
- the data set has the ImageFolder layout, and enough training images for the batch;
- ``--resume`` continues on the data set the checkpoint was trained on (:func:`data_identity` is recorded in the
  checkpoint's training state) and with the same options (:func:`check_resumable`).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import warnings
from pathlib import Path
from typing import Any

from lcr_sdk.errors import DataError, InputError, ModelError
from lcr_sdk.images import list_images

CHECKPOINT = "checkpoint.pt"
# Options a resumed run may change: they do not alter what is trained (everything else must match the checkpoint).
RESUMABLE = ("workers", "eval_every", "amp", "channels_last", "pretrained", "grad_log_every")
PREFLIGHT_DONE = "LCR_SDK_PREFLIGHT_DONE"  # set to "1" for the workers of our own launcher: checked once, before them
STOP_GRACE_S = 60.0  # after forwarding a stop: how long the workers get to end before they are killed


def check_out(out: Path) -> None:
    """The output folder must be a folder (or creatable as one) that this user may write.

    Raises:
        InputError: ``out`` (or a parent) is a file, or the nearest existing folder is not writable.
    """
    for parent in (out, *out.parents):
        if parent.exists():
            if not parent.is_dir():
                what = "is a file" if parent == out else f"is inside {parent}, which is a file"
                raise InputError(f"--out {out} {what}; give a folder (it is created if missing)")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise InputError(f"--out {out}: folder {parent} is not writable; choose another --out")
            return


def check_new_run(out: Path, resume: bool) -> None:
    """Refuse a run that would replace the checkpoint already in ``out`` (a new run saves over it at its first save).

    Raises:
        InputError: ``out/checkpoint.pt`` exists and ``resume`` is False.
    """
    path = out / CHECKPOINT
    if not resume and (path.exists() or path.is_symlink()):
        raise InputError(
            f"--out {out} already holds a training checkpoint ({path}); a new run would replace it at its first save. "
            "Continue that run with --resume, or give a new --out"
        )


def data_identity(root: str | os.PathLike) -> dict[str, Any]:
    """What identifies a data set for ``--resume``: its root, and a fingerprint of the sorted relative paths and
    sizes of its training images (``root/train/<class>/*``; cheap: no image is read).

    A data set moved elsewhere keeps its fingerprint; one with other, added, removed or changed files does not.
    """
    root = Path(root)
    folder = root / "train"
    h = hashlib.sha256()
    files = size = 0
    found = folder.iterdir() if folder.is_dir() else iter(())
    classes = sorted(p for p in found if p.is_dir() and not p.name.startswith("."))
    for cls in classes:
        for p in list_images(cls, recursive=True):  # what training reads
            n = p.stat().st_size
            h.update(f"{p.relative_to(folder).as_posix()}\0{n}\n".encode("utf-8", "surrogateescape"))
            files, size = files + 1, size + n
    return {"root": str(root.resolve()), "train_images": files, "bytes": size, "fingerprint": h.hexdigest()}


def check_same_data(saved: Any, current: dict[str, Any], path: Path, data: Path, warn: bool = True) -> None:
    """Refuse to resume ``path`` on another data set than the one it was trained on (the root may differ: a moved
    copy has the same fingerprint).

    Args:
        saved: the checkpoint's recorded :func:`data_identity` (None for a checkpoint written before it was recorded:
            a warning, not a refusal).
        current: :func:`data_identity` of the data set this run was given.
        path: the checkpoint (for the message).
        data: the data set this run was given (for the message).
        warn: warn about a checkpoint that does not record its data set (off where the trainer warns later).

    Raises:
        InputError: the fingerprints differ.
    """
    if not isinstance(saved, dict) or "fingerprint" not in saved:
        if not warn:
            return
        warnings.warn(
            f"{path} does not record which data set it was trained on (written by an older lcr-sdk); make sure "
            f"{data} is that data set",
            stacklevel=2,
        )
        return
    if saved["fingerprint"] == current["fingerprint"]:
        return
    raise InputError(
        f"cannot resume {path} on {data}: it was trained on {saved.get('root')} ({saved.get('train_images')} training "
        f"images), and {data} holds other training images ({current['train_images']}, or other files or sizes). "
        "Resume with the data set it was trained on, or start a new --out to train on this one"
    )


def check_resumable(wanted: dict[str, Any], saved_config: dict[str, Any], path: Path) -> None:
    """Refuse to resume with an option that changes what is trained, naming the first one that differs.

    Args:
        wanted: this run's ``TrainConfig.to_dict()``.
        saved_config: the checkpoint's ``config``.
        path: the checkpoint (for the message).

    Raises:
        ModelError: an option outside :data:`RESUMABLE` differs.
    """
    from lcr_sdk.train.config import TrainConfig

    saved = TrainConfig.from_dict(saved_config).to_dict()  # keys it lacks: what it trained with then
    if saved.get("supervised") and wanted["supervised"]:
        saved["method"] = wanted["method"]  # a supervised run records its network's method ('moco')
    for key in ("supervised", *wanted):  # --supervised first: it also changes the recorded method
        if key in RESUMABLE or saved.get(key) == wanted[key]:
            continue
        flag = "--" + key.replace("_", "-")
        raise ModelError(
            f"cannot resume {path}: it was trained with {flag} {saved.get(key)!r}, this run asks for {flag} "
            f"{wanted[key]!r}, and {flag} is not resumable; resume with the same options (only "
            f"{', '.join('--' + k.replace('_', '-') for k in RESUMABLE)} may change) or start a new --out"
        )


def check_batch(cfg: Any, n_train: int, n_val: int) -> None:
    """Enough training images for ``cfg.batch_size`` (MoCo's queue needs at least one image outside the batch).

    Raises:
        DataError: too few images, naming the count and the fix.
    """
    held = f" ({n_val} held out for validation)" if cfg.val_fraction else ""
    if n_train < cfg.batch_size or (n_train == cfg.batch_size and not cfg.supervised):
        need = cfg.batch_size if cfg.supervised else cfg.batch_size + 1
        why = "" if cfg.supervised else " (MoCo's queue of negatives holds the images outside the batch)"
        raise DataError(
            f"{n_train} training images{held} are too few for --batch-size {cfg.batch_size}: need at least {need}"
            f"{why}; lower --batch-size below {n_train} or add images"
        )


def check_classes(cfg: Any, classes: list[str], folder: Path) -> None:
    """Supervised training needs two classes or more (with one, the loss is 0 from the first step); self-supervised
    training uses no labels, so one folder of images is fine for it.

    Raises:
        DataError: --supervised with fewer than two class folders.
    """
    if cfg.supervised and len(classes) < 2:
        raise DataError(
            f"--supervised needs two or more class folders in {folder}, found {len(classes)} ({', '.join(classes)}): "
            "a classifier over one class learns nothing; add class folders, or train self-supervised (without "
            "--supervised), which uses no labels"
        )


def preflight(cfg: Any, data: Path, out: Path, resume: bool) -> None:
    """Every check that needs no image decoded and no worker started (run by the command before it launches any).

    Images are listed, not decoded: an unreadable image is still found by the workers' scan.

    Raises:
        InputError, DataError, ModelError: the first problem found, as one line.
    """
    from lcr_sdk.train.data import Split, check_same_classes, split_validation
    from lcr_sdk.train.data import _find_images as find_images

    check_out(out)
    check_new_run(out, resume)
    if cfg.pretrained and cfg.pretrained != "imagenet":
        from lcr_sdk.train.checkpoint import check_pretrained_file

        check_pretrained_file(cfg.pretrained)
    folder, classes, paths, labels = find_images(data, "train")
    check_classes(cfg, classes, folder)
    check_same_classes(classes, find_images(data, "test")[1], data)
    train_part, val_part = split_validation(Split(folder, paths, labels, classes), cfg.val_fraction, cfg.val_seed)
    check_batch(cfg, len(train_part), len(val_part))
    path = out / CHECKPOINT
    if resume and path.exists():
        from lcr_sdk.train.checkpoint import load_checkpoint

        ckpt = load_checkpoint(path, resume=True)
        check_resumable(cfg.to_dict(), ckpt["config"], path)
        check_same_data(ckpt["train_state"].get("data"), data_identity(data), path, data, warn=False)


def launch(cmd: list[str], grace_s: float = STOP_GRACE_S) -> int:
    """Run a launcher (torchrun) in its own process group and return its exit code.

    Ctrl+C or SIGTERM here (a :class:`KeyboardInterrupt`) is forwarded as SIGTERM to the launcher's process group,
    which stops its workers; this waits up to ``grace_s`` seconds for it to end, then kills the group, and re-raises
    the interrupt. No worker is left running behind the command.
    """
    proc = subprocess.Popen(cmd, start_new_session=True, env={**os.environ, PREFLIGHT_DONE: "1"})
    try:
        return proc.wait()
    except KeyboardInterrupt:
        stop(proc, grace_s)
        raise
    finally:
        if proc.poll() is None:  # any other exit from here: never leave the group behind
            stop(proc, grace_s)


def stop(proc: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> int | None:
    """SIGTERM to ``proc``'s process group, wait up to ``grace_s`` s, then SIGKILL it; returns the exit code."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            return _wait(proc, wait_s)
        except subprocess.TimeoutExpired:
            continue
    return proc.poll()


def _wait(proc: subprocess.Popen, timeout: float) -> int:
    """``proc.wait(timeout)`` that a further Ctrl+C / SIGTERM does not cut short."""
    while True:
        try:
            return proc.wait(timeout)
        except KeyboardInterrupt:
            continue
