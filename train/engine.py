"""The training loop: one process (CPU or one GPU) or many under torchrun / DistributedDataParallel.

Checkpoints (``OUT/checkpoint.pt``) are written atomically at the end of every epoch and every ``save_every``
steps; ``resume=True`` continues from one to the same state (epoch, step, queue, optimiser, scaler, RNG), so a
killed run resumed on the deterministic CPU path ends with the same weights as an uninterrupted one. A loss or
weights that stop being finite end the run with an error naming the options to change; the last checkpoint (all
finite) is kept.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm  # type: ignore[import-untyped]

from lcr_sdk.errors import InputError, ModelError
from lcr_sdk.fileio import atomic_write_text, is_disk_full
from lcr_sdk.manifest import normalisation
from lcr_sdk.train.augment import moco_v2
from lcr_sdk.train.checkpoint import (
    load_checkpoint,
    load_pretrained,
    plain,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_error,
)
from lcr_sdk.train.config import TrainConfig, check_on_bad
from lcr_sdk.train.data import TrainImages, check_same_classes, scan_split, split_validation, warn_extreme_aspects
from lcr_sdk.train.guards import check_batch, check_classes, check_out, check_resumable, check_same_data, data_identity
from lcr_sdk.train.moco import MoCo, Supervised
from lcr_sdk.train.model import LCRNet

log = logging.getLogger(__name__)

LOG_FIELDS = [
    "epoch",
    "step",
    "lr",
    "loss",
    "loss_nce",
    "loss_fit",
    "acc",
    "img_per_s",
    "knn_top1",
    "own_key",
    "grad_nce",
    "grad_fit",
    "grad_ratio",
    "cam_contrast",
]


def _dist_info() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) for a single process."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _as_moco_draws(net: LCRNet, seed: int) -> None:
    """Leave the random state where a MoCo v2 run of ``seed`` has it after building its network.

    An LCR network of a seed draws the same backbone as a MoCo v2 network of that seed (the backbone is drawn
    first), then its GFB. Re-drawing a MoCo v2 network here puts the random state back on MoCo v2's path, so the
    two runs also draw the same heads, augmentations and key shuffles (the data order has its own generator). With
    the fitting gradient stopped at the GFB (``fit_grad='gfb'``) their backbones then stay identical on a
    deterministic device, and the two differ only in the mask: the comparison the seeds pair up measures it alone.
    """
    _seed_all(seed)
    LCRNet(net.arch, "moco")


def lr_at(cfg: TrainConfig, step: int, total: int, steps_per_epoch: int = 1) -> float:
    """Linear warm-up (``warmup_epochs``), then cosine from lr * batch / 256 to 0."""
    base = cfg.lr * cfg.batch_size / 256
    warm = int(cfg.warmup_epochs * steps_per_epoch)
    if step < warm:
        return base * (step + 1) / warm
    return base * 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The sample order of an epoch: a function of (seed, epoch) only, so a resumed run sees the same order."""
    g = torch.Generator().manual_seed(seed * 100003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def resolve_device(device: str | None, local_rank: int = 0) -> torch.device:
    """'cpu', 'cuda', 'cuda:N' or None (this process's GPU if there is one, else the CPU) -> a usable device.

    Raises:
        InputError: an unknown device name, or a CUDA device that is not there.
    """
    if device is None:
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InputError(f"--device {device!r} is not a device name; use cpu, cuda or cuda:N") from e
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"--device {device!r} is not supported; use cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(
                f"--device {device}: no CUDA GPU is visible to PyTorch here (torch.cuda.is_available() is False); "
                "use --device cpu, or install a CUDA build of torch on a machine with a GPU"
            )
        index = local_rank if dev.index is None else dev.index  # 'cuda' -> this process's GPU
        if index >= torch.cuda.device_count():
            raise InputError(
                f"--device {device}: there are {torch.cuda.device_count()} CUDA GPUs (cuda:0 to "
                f"cuda:{torch.cuda.device_count() - 1}); pick one of them"
            )
        dev = torch.device("cuda", index)
    return dev


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[Path]:
    """Turn an OSError while writing ``path`` into the one-line error naming the path and the free space."""
    try:
        yield path
    except OSError as e:
        raise write_error(path, e, full=is_disk_full(e)) from e


def _unwrapped(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / SyncBatchNorm-converted wrapper (or the module itself)."""
    inner = getattr(model, "module", model)
    return inner if isinstance(inner, nn.Module) else model


def _finite_weights(module: nn.Module) -> bool:
    """Every floating-point tensor of the state dict (weights and BN statistics) is finite (one device sync)."""
    checks = [torch.isfinite(t).all() for t in module.state_dict().values() if t.is_floating_point()]
    return bool(torch.stack(checks).all()) if checks else True


@dataclass
class _Run:
    """What one training run holds while it runs (built by :meth:`Trainer._start`)."""

    net: LCRNet
    model: nn.Module  # MoCo or Supervised
    ddp: nn.Module  # ``model``, wrapped in DistributedDataParallel under torchrun
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    amp: torch.dtype | None  # autocast dtype, None = float32
    dataset: TrainImages
    steps_per_epoch: int
    epochs: int
    epoch: int = 0
    step: int = 0  # steps done in the current epoch
    global_step: int = 0
    steps_here: int = 0  # steps done by this process (for max_steps)
    lr: float = 0.0  # of the last step
    bar: Any = None  # the epoch's progress bar

    @property
    def total(self) -> int:
        return self.steps_per_epoch * self.epochs


@dataclass
class _Meter:
    """Per-epoch sums of the logged quantities and throughput; the gradient norms are averaged over the steps
    that measured them."""

    start: float = field(default_factory=time.perf_counter)
    steps: int = 0
    seen: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    grad_steps: int = 0
    grads: dict[str, float] = field(default_factory=dict)

    def add(self, out: dict[str, torch.Tensor], images: int) -> None:
        self.steps += 1
        self.seen += images
        for k in ("loss", "loss_nce", "loss_fit", "acc", "own_key", "cam_contrast"):
            if k in out:
                self.sums[k] = self.sums.get(k, 0.0) + float(out[k].detach())
        if "grad_nce" in out:
            self.grad_steps += 1
            for k in ("grad_nce", "grad_fit"):
                if k in out:
                    self.grads[k] = self.grads.get(k, 0.0) + float(out[k])

    def rate(self) -> float:
        return self.seen / max(time.perf_counter() - self.start, 1e-9)

    def state(self) -> dict[str, Any]:
        """The epoch's sums so far, for a mid-epoch checkpoint (a resumed epoch's row then covers all its steps;
        its throughput is this process's own)."""
        return {"steps": self.steps, "sums": dict(self.sums), "grad_steps": self.grad_steps, "grads": dict(self.grads)}

    @classmethod
    def resumed(cls, state: Any) -> _Meter:
        """A meter going on from a checkpoint's :meth:`state` (a fresh one where there is none, or it is not one)."""
        m = cls()
        try:
            m.steps, m.grad_steps = int(state["steps"]), int(state["grad_steps"])
            m.sums = {str(k): float(v) for k, v in state["sums"].items()}
            m.grads = {str(k): float(v) for k, v in state["grads"].items()}
        except (KeyError, TypeError, ValueError, AttributeError):
            return cls()
        return m

    def means(self) -> dict[str, float]:
        row = {k: round(v / max(1, self.steps), 5) for k, v in self.sums.items()}
        row |= {k: round(v / self.grad_steps, 5) for k, v in self.grads.items()}
        if "grad_fit" in self.grads:  # the fitting term's backbone gradient over InfoNCE's, over the epoch
            row["grad_ratio"] = round(self.grads["grad_fit"] / max(self.grads["grad_nce"], 1e-12), 4)
        return row


class Trainer:
    """Trains one model; ``run()`` returns the path of the final checkpoint.

    Everything that can be checked before training is checked when the Trainer is made: the options (also
    validated by :class:`TrainConfig`), the device, the output folder and the data set.

    Args:
        cfg: training options.
        data: data set root (ImageFolder with train/ and test/).
        out: output folder: checkpoint.pt, log.csv, config.json.
        resume: continue from ``out/checkpoint.pt`` if it exists (refused if it was trained with other options).
        save_every: also checkpoint every N steps (0 = at epoch ends only).
        max_steps: stop after this many steps in this process (for tests that simulate a kill).
        on_bad: unreadable images: 'skip' (report) or 'fail'.
        progress: show a progress bar.
        device: 'cpu', 'cuda', 'cuda:N' or None (CUDA if available).
        on_epoch: called with each finished epoch's log.csv row (rank 0 only), e.g. to print a line per epoch
            where there is no progress bar.

    Raises:
        InputError: a bad option, device or output folder.
        DataError: a missing, empty or unreadable data set, or too few images for the batch.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        data: str | Path,
        out: str | Path,
        resume: bool = False,
        save_every: int = 0,
        max_steps: int | None = None,
        on_bad: str = "skip",
        progress: bool = True,
        device: str | None = None,
        on_epoch: Callable[[dict], None] | None = None,
    ):
        cfg.validate()  # fields may have been changed after the config was made
        if not (isinstance(save_every, int) and save_every >= 0):
            raise InputError(f"--save-every {save_every!r} is not valid; give 0 (epoch ends only) or a step count")
        if max_steps is not None and max_steps < 1:
            raise InputError(f"max_steps {max_steps!r} is not valid; give None or a step count >= 1")
        check_on_bad(on_bad)
        self.cfg, self.data, self.out = cfg, Path(data), Path(out)
        self.resume, self.save_every, self.max_steps, self.progress = resume, save_every, max_steps, progress
        self.on_epoch = on_epoch
        self.rank, self.world, local_rank = _dist_info()
        unused = cfg.unused_options()
        if unused:
            what = f"--fit-form {cfg.fit_form}" if cfg.method == "lcr" and not cfg.supervised else "this method"
            self._warn(f"{', '.join(unused)}: no effect with {what} (they act on --fit-form ours only)")
        self.device = resolve_device(device, local_rank)
        check_out(self.out)
        if cfg.batch_size % self.world:
            raise InputError(
                f"--batch-size {cfg.batch_size} is not divisible by the {self.world} processes; use a multiple of "
                f"{self.world}"
            )
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        with warnings.catch_warnings():
            if self.rank > 0:  # every process scans the same data: its warnings are said once, by rank 0
                warnings.simplefilter("ignore")
            full = scan_split(self.data, "train", on_bad, size=cfg.image_size)
            self.train_split, self.val_split = split_validation(full, cfg.val_fraction, cfg.val_seed)
            self.test_split = scan_split(self.data, "test", on_bad, size=cfg.image_size)
            check_same_classes(full.classes, self.test_split.classes, self.data)  # the kNN monitor's labels agree
            warn_extreme_aspects(full)
        self.skipped = [(str(p), why) for p, why in full.skipped + self.test_split.skipped]  # config.json keeps them
        self._check_size()
        self.data_id = data_identity(self.data)  # recorded in the checkpoint: --resume refuses another data set
        self.history: list[dict] = []
        self._meter: _Meter | None = None  # the running epoch's
        self._resumed_meter: Any = None  # a mid-epoch checkpoint's sums, for the resumed epoch

    def _check_size(self) -> None:
        check_classes(self.cfg, self.train_split.classes, self.train_split.root)
        check_batch(self.cfg, len(self.train_split), len(self.val_split))

    @property
    def checkpoint_path(self) -> Path:
        return self.out / "checkpoint.pt"

    def _resuming(self) -> bool:
        return self.resume and self.checkpoint_path.exists()

    # -- model ---------------------------------------------------------------------------------------------------
    def build(self) -> tuple[LCRNet, nn.Module]:
        """The deployable network and the training module around it (MoCo or Supervised), seeded, on the device.

        The backbone starts from ``cfg.pretrained`` unless the run resumes (then the checkpoint has the weights).
        """
        cfg = self.cfg
        _seed_all(cfg.seed)
        net = LCRNet(cfg.arch, "moco" if cfg.supervised else cfg.method, cfg.num_parts)
        if net.gfb is not None:  # the rest drawn as a MoCo v2 run of this seed draws it (see _as_moco_draws)
            _as_moco_draws(net, cfg.seed)
        if not self._resuming():
            load_pretrained(net, cfg.pretrained)
        model: nn.Module = Supervised(net, len(self.train_split.classes)) if cfg.supervised else self._moco(net)
        model.to(self.device)
        if self.device.type == "cuda" and cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        if self.world > 1 and cfg.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return net, model

    def _moco(self, net: LCRNet) -> MoCo:
        cfg, n = self.cfg, len(self.train_split)
        queue = cfg.moco_k
        if queue > n - cfg.batch_size:
            self._warn(
                f"queue {queue} is longer than the data set allows ({n} training images - batch {cfg.batch_size}); "
                f"using {n - cfg.batch_size} negatives, as a longer queue would mostly repeat images (keys of a "
                "query's own image are masked out of its negatives either way)"
            )
            queue = n - cfg.batch_size
        splits = 1
        if self.world == 1:  # several processes shuffle keys across processes (or sync BN) instead
            splits = bn_splits(cfg.batch_size)
            if cfg.sync_bn:
                self._warn(
                    "--sync-bn in one process is plain BatchNorm: queries and their keys share BN statistics (the "
                    "shortcut shuffle-BN prevents); drop --sync-bn, which is for several processes"
                )
                splits = 1
            elif splits == 1:
                self._warn(
                    f"--batch-size {cfg.batch_size} splits into no equal sub-batches of 4 or more images, so BN "
                    "statistics are shared by queries and their keys (the shortcut shuffle-BN prevents); use an even "
                    "batch size of 8 or more"
                )
        return build_moco(net, cfg, queue, splits)

    def _warn(self, message: str) -> None:
        """A training warning, once (rank 0 of several processes)."""
        if self.rank == 0:
            warnings.warn(message, stacklevel=4)

    # -- checkpoints ---------------------------------------------------------------------------------------------
    def _checkpoint(self, r: _Run, metrics: dict | None = None) -> Path:
        """Save the run's state (rank 0 only). Refuses weights that are not finite: the last good file stays."""
        if not _finite_weights(r.net):
            raise self._diverged(r, "the weights are no longer finite")
        inner = _unwrapped(r.model)
        state = {
            "config": self.cfg.to_dict() | {"method": r.net.method},
            "model": {k: v.detach().cpu() for k, v in r.net.state_dict().items()},
            "metrics": metrics or {},
            "classes": self.train_split.classes,
            "train_state": {
                "trainer": {k: v.detach().cpu() for k, v in inner.state_dict().items()},
                "optimizer": r.opt.state_dict(),
                "scaler": r.scaler.state_dict() if r.scaler is not None else {},
                "epoch": r.epoch,
                "step_in_epoch": r.step,
                "global_step": r.global_step,
                "rng": rng_state(),
                "history": self.history,
                "data": self.data_id,
                # the epoch's sums so far (a mid-epoch save): a resumed epoch's log row covers all its steps
                "meter": self._meter.state() if self._meter is not None and r.step > 0 else {},
            },
        }
        return save_checkpoint(self.checkpoint_path, plain(state))

    def _restore(self, r: _Run) -> None:
        path = self.checkpoint_path
        ckpt = load_checkpoint(path, map_location="cpu", resume=True)  # train_state's keys and types checked
        ts = ckpt["train_state"]
        self._check_resumable(ckpt["config"], path)
        check_same_data(ts.get("data"), self.data_id, path, self.data)
        inner = _unwrapped(r.model)
        state = dict(ts["trainer"])
        if "queue" in state and "queue_ids" not in state:  # written before keys carried image indices
            state["queue_ids"] = torch.full((state["queue"].shape[1],), -1, dtype=torch.long)
        try:
            inner.load_state_dict(state)
            r.opt.load_state_dict(ts["optimizer"])
            if r.scaler is not None and ts["scaler"]:
                r.scaler.load_state_dict(ts["scaler"])
            set_rng_state(ts["rng"])
        except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as e:
            why = (str(e).strip().splitlines() or [type(e).__name__])[-1].strip()[:200]
            raise ModelError(
                f"cannot resume {path}: its training state does not fit this run ({why}); the file "
                "was edited or damaged: re-copy it, or start a new --out"
            ) from e
        self.history = list(ts.get("history", []))
        r.epoch, r.step, r.global_step = ts["epoch"], ts["step_in_epoch"], ts["global_step"]
        self._resumed_meter = ts.get("meter") if r.step > 0 else None
        log.info("resumed %s at epoch %d, step %d", path, r.epoch + 1, r.step)

    def _check_resumable(self, saved_config: dict, path: Path) -> None:
        """Refuse to resume with an option that changes what is trained, naming the first one that differs."""
        check_resumable(self.cfg.to_dict(), saved_config, path)

    # -- loop ----------------------------------------------------------------------------------------------------
    def run(self) -> Path:
        """Train to the last epoch (or ``max_steps``); returns the checkpoint path.

        Raises:
            InputError: the loss or the weights stopped being finite (the message names the options to change).
            ModelError: ``--resume`` from a checkpoint trained with other options, or an unwritable checkpoint.
        """
        r = self._start()
        while r.epoch < self.cfg.epochs:
            meter = _Meter.resumed(self._resumed_meter) if self._resumed_meter else _Meter()
            self._resumed_meter, self._meter = None, meter
            for images, labels, ids in self._batches(r):
                out = self._step(r, images, labels, ids)
                meter.add(out, images.shape[0] * self.world)
                if self._after_step(r, meter):
                    return self.checkpoint_path  # max_steps reached mid-epoch (a simulated kill)
            self._end_epoch(r, meter)
            if self.max_steps is not None and r.steps_here >= self.max_steps:
                break
        if self.world > 1:
            dist.barrier()
        return self.checkpoint_path

    def _start(self) -> _Run:
        """Build the model, optimiser, AMP scaler and data set; restore them when resuming."""
        cfg, dev = self.cfg, self.device
        self.out.mkdir(parents=True, exist_ok=True)
        net, model = self.build()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=lr_at(cfg, 0, 1), momentum=0.9, weight_decay=cfg.weight_decay)
        amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp) if dev.type == "cuda" else None
        scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
        dataset = TrainImages(self.train_split, cfg.image_size)
        r = _Run(net, model, model, opt, scaler, amp, dataset, len(dataset) // cfg.batch_size, cfg.epochs)
        if self._resuming():
            self._restore(r)
        if self.world > 1:
            r.ddp = nn.parallel.DistributedDataParallel(
                model, device_ids=[dev.index] if dev.type == "cuda" else None, find_unused_parameters=False
            )
        if self.rank == 0:
            # the options as given (None: the documented default), and what they came to on this machine
            used = {
                "fit_weight": cfg.fit_weight,
                "device": str(dev),
                "processes": self.world,
                "amp": cfg.amp if amp is not None else "off",  # mixed precision runs on CUDA only
                "channels_last": dev.type == "cuda" and cfg.channels_last,
                # self-supervised runs: BN sub-batches of one process (1: plain BN) and the queue's length
                **({"bn_splits": model.bn_splits, "queue": model.queue.shape[1]} if isinstance(model, MoCo) else {}),
                "skipped_images": [{"path": p, "reason": why} for p, why in self.skipped],  # unreadable, left out
            }
            with _writing(self.out / "config.json") as path:
                atomic_write_text(path, json.dumps({**cfg.to_dict(), "used": used}, indent=2))
        return r

    def _batches(self, r: _Run) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """This process's batches of the current epoch, from the step the run is at, behind a progress bar."""
        cfg = self.cfg
        per_proc = cfg.batch_size // self.world
        order = _epoch_order(len(r.dataset), cfg.seed, r.epoch)[: r.steps_per_epoch * cfg.batch_size]
        batches = [
            order[i * cfg.batch_size : (i + 1) * cfg.batch_size][self.rank :: self.world][:per_proc]
            for i in range(r.steps_per_epoch)
        ]
        loader = torch.utils.data.DataLoader(
            r.dataset,
            batch_sampler=batches[r.step :],
            num_workers=0 if r.dataset.tensor is not None else cfg.workers,  # in memory: nothing to load
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(cfg.seed * 7919 + r.epoch),
        )
        r.model.train()
        r.bar = tqdm(
            loader,
            desc=f"{'sup' if cfg.supervised else r.net.method} epoch {r.epoch + 1}/{cfg.epochs}",
            initial=r.step,
            total=r.steps_per_epoch,
            disable=not self.progress or self.rank != 0,
            leave=False,
            dynamic_ncols=True,
        )
        try:
            yield from r.bar
        finally:
            r.bar.close()

    def _step(self, r: _Run, images: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """One optimiser step on one batch; raises if the loss is not finite (before the weights change)."""
        cfg, dev = self.cfg, self.device
        lr = lr_at(cfg, r.global_step, r.total, r.steps_per_epoch)
        for group in r.opt.param_groups:
            group["lr"] = lr
        images = images.to(dev, non_blocking=True)
        extent = r.dataset.extent[ids]  # B x 2: where each image lies in its canvas
        norm = normalisation(cfg.arch)  # the arch's input normalisation, as DeployModel applies it
        a = moco_v2(images, cfg.image_size, extent=extent, norm=norm)  # B x 3 x S x S, one augmented view per image
        b = labels.to(dev) if cfg.supervised else moco_v2(images, cfg.image_size, extent=extent, norm=norm)
        if dev.type == "cuda" and cfg.channels_last:
            a = a.contiguous(memory_format=torch.channels_last)
            b = b if cfg.supervised else b.contiguous(memory_format=torch.channels_last)
        # the gradient log (single process: under DDP an extra autograd.grad would run outside its reducer)
        measure = bool(cfg.grad_log_every) and self.world == 1 and r.global_step % cfg.grad_log_every == 0
        with torch.autocast(dev.type, dtype=r.amp or torch.bfloat16, enabled=r.amp is not None):
            out = r.ddp(a, b) if cfg.supervised else r.ddp(a, b, ids.to(dev), measure_grads=measure)
        if not bool(torch.isfinite(out["loss"].detach())):
            raise self._diverged(r, f"the loss is {float(out['loss'].detach())}")
        r.opt.zero_grad(set_to_none=True)
        if r.scaler is not None:
            r.scaler.scale(out["loss"]).backward()
            r.scaler.step(r.opt)
            r.scaler.update()
        else:
            out["loss"].backward()
            r.opt.step()
        r.global_step += 1
        r.steps_here += 1
        r.step += 1
        r.lr = lr
        return out

    def _after_step(self, r: _Run, meter: _Meter) -> bool:
        """Progress bar, step checkpoints; True when ``max_steps`` ends the run mid-epoch."""
        r.bar.set_postfix(loss=f"{meter.sums['loss'] / meter.steps:.3f}", lr=f"{r.lr:.4f}", img_s=f"{meter.rate():.0f}")
        if r.step == r.steps_per_epoch:
            return False  # the epoch end saves
        if self.max_steps is not None and r.steps_here >= self.max_steps:
            if self.rank == 0:
                self._checkpoint(r)
            return True
        if self.save_every and r.global_step % self.save_every == 0 and self.rank == 0:
            self._checkpoint(r)
        return False

    def _end_epoch(self, r: _Run, meter: _Meter) -> None:
        """Log the epoch, run the kNN monitor when due, checkpoint."""
        cfg = self.cfg
        row: dict = {
            "epoch": r.epoch + 1,
            "step": r.global_step,
            "lr": lr_at(cfg, max(0, r.global_step - 1), r.total, r.steps_per_epoch),  # the epoch's last step's
            "img_per_s": round(meter.rate(), 1),
        }
        row |= meter.means()
        if self.rank == 0 and row.get("grad_ratio", 0.0) > 1.0:
            log.warning(
                "epoch %d: the fitting term's gradient on the backbone is %.2f times InfoNCE's (norms %.3g vs %.3g, "
                "mean of %d measured steps): it, not the contrastive loss, is training the backbone, which can lose "
                "its retrieval geometry; use --fit-grad gfb or a lower --nu",
                r.epoch + 1,
                row["grad_ratio"],
                row["grad_fit"],
                row["grad_nce"],
                meter.grad_steps,
            )
        r.epoch, r.step = r.epoch + 1, 0
        if self.rank == 0 and cfg.eval_every and (r.epoch % cfg.eval_every == 0 or r.epoch == cfg.epochs):
            row["knn_top1"] = round(self.knn_monitor(r.net), 4)
        self.history.append(row)
        if self.rank == 0:
            self._log(row)
            self._checkpoint(r)
            if self.on_epoch is not None:
                self.on_epoch(row)

    def _diverged(self, r: _Run, what: str) -> InputError:
        cfg = self.cfg
        kept = (
            f"the last checkpoint {self.checkpoint_path} (all weights finite) is kept"
            if self.checkpoint_path.exists()
            else "no checkpoint was written"
        )
        tau = f" and --tau ({cfg.tau:g})" if cfg.method == "lcr" and cfg.fit_form == "ours" else ""
        return InputError(
            f"training diverged at epoch {r.epoch + 1}, step {r.step + 1}: {what}. Lower --lr (now {cfg.lr:g}) or "
            f"raise --warmup-epochs (now {cfg.warmup_epochs:g}); check --moco-t ({cfg.moco_t:g}){tau}; {kept}"
        )

    def knn_monitor(self, net: LCRNet) -> float:
        """kNN top-1 with the training images as memory; queries from the validation split when there is one,
        else from the test split (then a monitor only, never used for a choice)."""
        from lcr_sdk.metrics import knn_top1
        from lcr_sdk.train.evaluate import embed_split

        queries = self.val_split if len(self.val_split) else self.test_split
        tr = embed_split(net, self.train_split, self.cfg.image_size, self.device)
        te = embed_split(net, queries, self.cfg.image_size, self.device)
        return knn_top1(tr, self.train_split.labels, te, queries.labels)

    def _log(self, row: dict) -> None:
        """Append the epoch's row to log.csv (a new file at epoch 1)."""
        new = not (self.out / "log.csv").exists() or row["epoch"] == 1
        fields = LOG_FIELDS
        if not new:  # a run resumed from an earlier release keeps its file's columns
            with open(self.out / "log.csv", newline="") as f:
                fields = next(csv.reader(f), []) or LOG_FIELDS
        with _writing(self.out / "log.csv") as path, open(path, "w" if new else "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)


def bn_splits(batch: int) -> int:
    """Sub-batches of one process's shuffle-BN (MoCo's single-GPU emulation of per-GPU BN): ``batch // 8`` up to 8,
    else the largest count that divides the batch into equal parts of 4 or more images; 1 (plain BN) if none does."""
    first = min(8, batch // 8)
    for s in range(max(first, 2), 1, -1):
        if batch % s == 0 and batch // s >= 4:
            return s
    return 1


def build_moco(net: LCRNet, cfg: TrainConfig, queue: int, bn_splits: int) -> MoCo:
    """The MoCo v2 (+ GFB) training module for ``cfg``, as training builds it (benchmarks build it here too, so
    what they time is what trains)."""
    return MoCo(
        net,
        cfg.moco_dim,
        cfg.moco_mlp_hidden,
        queue,
        cfg.moco_m,
        cfg.moco_t,
        bn_splits=bn_splits,
        nu=cfg.fit_weight,
        tau=cfg.tau,
        cam_sign=cfg.cam_sign,
        cam_detach=cfg.cam_detach,
        cam_norm=cfg.cam_norm,
        fit_grad=cfg.fit_grad,
        fit_form=cfg.fit_form,
    )


def train(cfg: TrainConfig, data: str | Path, out: str | Path, **kwargs) -> Path:
    """Train one model (see :class:`Trainer`); returns the checkpoint path."""
    return Trainer(cfg, data, out, **kwargs).run()
