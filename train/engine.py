"""The training loop: one process (CPU or one GPU) or many under torchrun / DistributedDataParallel.

Checkpoints (``OUT/checkpoint.pt``) are written atomically at the end of every epoch and every ``save_every``
steps; ``resume=True`` continues from one to the same state (epoch, step, queue, optimiser, scaler, RNG), so a
killed run resumed on the deterministic CPU path ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import csv
import math
import os
import random
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from lcr_sdk.errors import DataError, ModelError
from lcr_sdk.train.augment import moco_v2
from lcr_sdk.train.checkpoint import (
    load_checkpoint,
    load_pretrained,
    plain,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from lcr_sdk.train.config import TrainConfig
from lcr_sdk.train.data import TrainImages, scan_split, split_validation
from lcr_sdk.train.moco import MoCo, Supervised
from lcr_sdk.train.model import LCRNet

LOG_FIELDS = ["epoch", "step", "lr", "loss", "loss_nce", "loss_fit", "acc", "img_per_s", "knn_top1", "own_key"]


def _dist_info() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) for a single process."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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


class Trainer:
    """Trains one model; ``run()`` returns the path of the final checkpoint.

    Args:
        cfg: training options.
        data: data set root (ImageFolder with train/ and test/).
        out: output folder: checkpoint.pt, log.csv, config.json.
        resume: continue from ``out/checkpoint.pt`` if it exists.
        save_every: also checkpoint every N steps (0 = at epoch ends only).
        max_steps: stop after this many steps in this process (for tests that simulate a kill).
        on_bad: unreadable images: 'skip' (report) or 'fail'.
        progress: show a progress bar.
        device: 'cpu', 'cuda', 'cuda:N' or None (CUDA if available).
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
    ):
        self.cfg, self.data, self.out = cfg, Path(data), Path(out)
        self.resume, self.save_every, self.max_steps, self.progress = resume, save_every, max_steps, progress
        self.rank, self.world, local_rank = _dist_info()
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        if device is None:
            device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:  # 'cuda' -> this process's GPU
            self.device = torch.device("cuda", local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if cfg.batch_size % self.world:
            raise DataError(f"batch size {cfg.batch_size} is not divisible by the {self.world} processes")
        cfg.validate()  # fields may have been changed after the config was made
        full = scan_split(self.data, "train", on_bad, size=cfg.image_size)
        self.train_split, self.val_split = split_validation(full, cfg.val_fraction, cfg.val_seed)
        self.test_split = scan_split(self.data, "test", on_bad, size=cfg.image_size)
        n, held = len(self.train_split), f" ({len(self.val_split)} held out for validation)" if cfg.val_fraction else ""
        if n < cfg.batch_size or (n == cfg.batch_size and not cfg.supervised):
            need = cfg.batch_size if cfg.supervised else cfg.batch_size + 1
            why = "" if cfg.supervised else " (MoCo's queue of negatives holds the images outside the batch)"
            raise DataError(
                f"{n} training images{held} are too few for --batch-size {cfg.batch_size}: need at least {need}"
                f"{why}; lower --batch-size below {n} or add images"
            )
        self.history: list[dict] = []

    # -- model ---------------------------------------------------------------------------------------------------
    def _build(self):
        cfg = self.cfg
        _seed_all(cfg.seed)
        method = "moco" if cfg.supervised else cfg.method
        net = LCRNet(cfg.arch, method, cfg.num_parts)
        if not self._resuming():  # a resumed run gets its weights from the checkpoint
            load_pretrained(net, cfg.pretrained)
        if cfg.supervised:
            model = Supervised(net, len(self.train_split.classes))
        else:
            queue = cfg.moco_k
            limit = len(self.train_split) - cfg.batch_size
            if queue > limit:
                warnings.warn(
                    f"queue {queue} is longer than the data set allows ({len(self.train_split)} training images - "
                    f"batch {cfg.batch_size}); using {limit} negatives, as a longer queue would mostly repeat "
                    "images (keys of a query's own image are masked out of its negatives either way)",
                    stacklevel=2,
                )
                queue = limit
            per_proc = cfg.batch_size // self.world
            splits = 1 if (self.world > 1 or cfg.sync_bn) else max(1, min(8, per_proc // 8))
            model = MoCo(
                net,
                cfg.moco_dim,
                cfg.moco_mlp_hidden,
                queue,
                cfg.moco_m,
                cfg.moco_t,
                bn_splits=splits,
                nu=cfg.nu,
                tau=cfg.tau,
                cam_sign=cfg.cam_sign,
                cam_detach=cfg.cam_detach,
                cam_norm=cfg.cam_norm,
            )
        model.to(self.device)
        if self.device.type == "cuda" and cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        if self.world > 1 and cfg.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return net, model

    def _resuming(self) -> bool:
        return self.resume and (self.out / "checkpoint.pt").exists()

    # -- checkpoints ---------------------------------------------------------------------------------------------
    def _checkpoint(
        self, net, model, opt, scaler, epoch: int, step_in_epoch: int, global_step: int, metrics: dict | None = None
    ) -> Path:
        inner = model.module if hasattr(model, "module") else model
        state = {
            "config": self.cfg.to_dict() | {"method": net.method},
            "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
            "metrics": metrics or {},
            "classes": self.train_split.classes,
            "train_state": {
                "trainer": {k: v.detach().cpu() for k, v in inner.state_dict().items()},
                "optimizer": opt.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else {},
                "epoch": epoch,
                "step_in_epoch": step_in_epoch,
                "global_step": global_step,
                "rng": rng_state(),
                "history": self.history,
            },
        }
        return save_checkpoint(self.out / "checkpoint.pt", plain(state))

    def _restore(self, model, opt, scaler) -> tuple[int, int, int]:
        path = self.out / "checkpoint.pt"
        ckpt = load_checkpoint(path, map_location="cpu")
        ts = ckpt.get("train_state")
        if not ts:
            raise ModelError(f"{path} holds no training state (a deploy-only checkpoint); cannot resume from it")
        saved = TrainConfig.from_dict(ckpt["config"])
        for key in ("method", "arch", "image_size", "batch_size", "seed", "epochs"):
            if getattr(saved, key) != getattr(self.cfg, key) and not (key == "method" and self.cfg.supervised):
                raise ModelError(
                    f"cannot resume {path}: it was trained with {key}={getattr(saved, key)!r}, "
                    f"this run asks for {getattr(self.cfg, key)!r}; use the same options or a new --out"
                )
        inner = model.module if hasattr(model, "module") else model
        state = dict(ts["trainer"])
        if "queue" in state and "queue_ids" not in state:  # written before keys carried image indices
            state["queue_ids"] = torch.full((state["queue"].shape[1],), -1, dtype=torch.long)
        inner.load_state_dict(state)
        opt.load_state_dict(ts["optimizer"])
        if scaler is not None and ts["scaler"]:
            scaler.load_state_dict(ts["scaler"])
        set_rng_state(ts["rng"])
        self.history = list(ts.get("history", []))
        return ts["epoch"], ts["step_in_epoch"], ts["global_step"]

    # -- loop ----------------------------------------------------------------------------------------------------
    def run(self) -> Path:
        cfg, dev = self.cfg, self.device
        self.out.mkdir(parents=True, exist_ok=True)
        net, model = self._build()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=lr_at(cfg, 0, 1), momentum=0.9, weight_decay=cfg.weight_decay)
        use_amp = dev.type == "cuda" and cfg.amp != "off"
        amp_dtype = torch.bfloat16 if cfg.amp == "bf16" else torch.float16
        scaler = torch.amp.GradScaler("cuda") if use_amp and amp_dtype == torch.float16 else None
        epoch, start_step, global_step = 0, 0, 0
        if self._resuming():
            epoch, start_step, global_step = self._restore(model, opt, scaler)
        ddp_model = model
        if self.world > 1:
            ddp_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[dev.index] if dev.type == "cuda" else None, find_unused_parameters=False
            )
        dataset = TrainImages(self.train_split, cfg.image_size)
        workers = 0 if dataset.tensor is not None else cfg.workers  # in memory: nothing to load in parallel
        per_proc = cfg.batch_size // self.world
        steps_per_epoch = len(dataset) // cfg.batch_size
        total = steps_per_epoch * cfg.epochs
        steps_here = 0
        self._write_config()
        while epoch < cfg.epochs:
            order = _epoch_order(len(dataset), cfg.seed, epoch)[: steps_per_epoch * cfg.batch_size]
            batches = [
                order[i * cfg.batch_size : (i + 1) * cfg.batch_size][self.rank :: self.world][:per_proc]
                for i in range(steps_per_epoch)
            ]
            loader = torch.utils.data.DataLoader(
                dataset,
                batch_sampler=batches[start_step:],
                num_workers=workers,
                persistent_workers=False,
                pin_memory=dev.type == "cuda",
                worker_init_fn=None,
                generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch),
            )
            model.train()
            bar = tqdm(
                loader,
                desc=f"{'sup' if cfg.supervised else net.method} epoch {epoch + 1}/{cfg.epochs}",
                initial=start_step,
                total=steps_per_epoch,
                disable=not self.progress or self.rank != 0,
                leave=False,
                dynamic_ncols=True,
            )
            t0, seen, sums = time.perf_counter(), 0, {}
            for step, (images, labels, ids) in enumerate(bar, start=start_step):
                lr = lr_at(cfg, global_step, total, steps_per_epoch)
                for group in opt.param_groups:
                    group["lr"] = lr
                images = images.to(dev, non_blocking=True)
                a = moco_v2(images, cfg.image_size)  # B x 3 x S x S, one augmented view per image
                b = labels.to(dev) if cfg.supervised else moco_v2(images, cfg.image_size)
                if dev.type == "cuda" and cfg.channels_last:
                    a = a.contiguous(memory_format=torch.channels_last)
                    if not cfg.supervised:
                        b = b.contiguous(memory_format=torch.channels_last)
                with torch.autocast(dev.type, dtype=amp_dtype, enabled=use_amp):
                    out = ddp_model(a, b) if cfg.supervised else ddp_model(a, b, ids.to(dev))
                opt.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(out["loss"]).backward()
                    scaler.step(opt)
                    scaler.update()
                else:
                    out["loss"].backward()
                    opt.step()
                global_step += 1
                steps_here += 1
                seen += a.shape[0] * self.world
                for k in ("loss", "loss_nce", "loss_fit", "acc", "own_key"):
                    if k in out:
                        sums[k] = sums.get(k, 0.0) + float(out[k].detach())
                n_done = step - start_step + 1
                rate = seen / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(loss=f"{sums['loss'] / n_done:.3f}", lr=f"{lr:.4f}", img_s=f"{rate:.0f}")
                done_epoch = step + 1 == steps_per_epoch
                if self.max_steps is not None and steps_here >= self.max_steps and not done_epoch:
                    if self.rank == 0:
                        self._checkpoint(net, model, opt, scaler, epoch, step + 1, global_step)
                    return self.out / "checkpoint.pt"
                if self.save_every and global_step % self.save_every == 0 and not done_epoch and self.rank == 0:
                    self._checkpoint(net, model, opt, scaler, epoch, step + 1, global_step)
            bar.close()
            row = {
                "epoch": epoch + 1,
                "step": global_step,
                "lr": lr_at(cfg, global_step, total, steps_per_epoch),
                "img_per_s": round(seen / max(time.perf_counter() - t0, 1e-9), 1),
            }
            row |= {k: round(v / max(1, steps_per_epoch - start_step), 5) for k, v in sums.items()}
            epoch, start_step = epoch + 1, 0
            if self.rank == 0 and cfg.eval_every and (epoch % cfg.eval_every == 0 or epoch == cfg.epochs):
                row["knn_top1"] = round(self.knn_monitor(net), 4)
            self.history.append(row)
            if self.rank == 0:
                self._log(row)
                self._checkpoint(net, model, opt, scaler, epoch, 0, global_step)
            if self.max_steps is not None and steps_here >= self.max_steps:
                break
        if self.world > 1:
            dist.barrier()
        return self.out / "checkpoint.pt"

    def knn_monitor(self, net: LCRNet) -> float:
        """kNN top-1 with the training images as memory; queries from the validation split when there is one,
        else from the test split (then a monitor only, never used for a choice)."""
        from lcr_sdk.metrics import knn_top1
        from lcr_sdk.train.evaluate import embed_split

        queries = self.val_split if len(self.val_split) else self.test_split
        tr = embed_split(net, self.train_split, self.cfg.image_size, self.device)
        te = embed_split(net, queries, self.cfg.image_size, self.device)
        return knn_top1(tr, self.train_split.labels, te, queries.labels)

    def _write_config(self) -> None:
        import json

        from lcr_sdk.fileio import atomic_write_text

        if self.rank == 0:
            atomic_write_text(self.out / "config.json", json.dumps(self.cfg.to_dict(), indent=2))

    def _log(self, row: dict) -> None:
        path = self.out / "log.csv"
        new = not path.exists() or row["epoch"] == 1
        with open(path, "w" if new else "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=LOG_FIELDS, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)


def train(cfg: TrainConfig, data: str | Path, out: str | Path, **kwargs) -> Path:
    """Train one model (see :class:`Trainer`); returns the checkpoint path."""
    return Trainer(cfg, data, out, **kwargs).run()
