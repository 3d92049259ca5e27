"""Training options, with the paper's defaults (MoCo v2 + LCR). Stored in every checkpoint as plain types."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from lcr_sdk.errors import InputError
from lcr_sdk.manifest import ARCH_DIMS, MIN_INPUT_SIDE

METHODS = ("lcr", "moco")
CAM_SIGNS = ("loss", "score")
CAM_NORMS = ("max", "none")
AMP_MODES = ("bf16", "fp16", "off")
FLOAT32_MAX = 3.4028234663852886e38  # the optimiser applies the learning rate in float32


@dataclass
class TrainConfig:
    """Options of one training run. Defaults are the paper's unless a comment says otherwise.

    Every option is checked when the config is made (and again when a Trainer starts, in case a field was changed
    after construction): a bad value raises :class:`~lcr_sdk.errors.InputError` naming the option, what is valid
    and how to fix it.

    Attributes:
        method: 'lcr' (MoCo v2 + GradCAM Fitting Branch) or 'moco' (the MoCo v2 baseline).
        arch: torchvision ResNet (resnet50 in the paper; resnet18 for CPU and quick runs).
        image_size: training / deployment input side in pixels (224 in the paper; at least 32).
        epochs, batch_size: schedule length and global batch size.
        lr: base learning rate for batch 256 (lr_used = lr * batch_size / 256), SGD momentum 0.9, cosine schedule.
        weight_decay: SGD weight decay.
        warmup_epochs: linear learning-rate warm-up before the cosine schedule (0 in the paper; short runs from
            random init need it to avoid an early blow-up).
        moco_dim: projection dimension d.
        moco_mlp_hidden: hidden width of the MLP head (0 = the backbone's C, as in MoCo v2).
        moco_k: queue length; capped at (train images - batch) for small data sets, with a warning.
        moco_m: key-encoder momentum.
        moco_t: InfoNCE temperature.
        num_parts: K, part maps of the GFB.
        nu: weight of the GFB fitting loss.
        tau: temperature of the two softmaxes in the fitting loss.
        cam_sign: 'loss' (CAM from +dL/dF, as in the authors' released code: regions whose features raise the
            contrastive loss, i.e. what images share; the default, chosen by measurement) or 'score' (-dL/dF,
            standard Grad-CAM: regions that help instance discrimination).
        cam_detach: detach the Grad-CAM target (default); False reproduces the released code.
        cam_norm: 'max' divides each image's CAM by its maximum before the tempered softmax (default); 'none'
            keeps raw values (near-uniform target, batch-size dependent; released behaviour).
        seed: seed for everything (data order, augmentation, init).
        workers: data-loader processes for data sets too large to keep in memory (0 = main process).
        amp: mixed precision on CUDA: 'bf16', 'fp16' or 'off'.
        channels_last: channels_last memory format on CUDA.
        sync_bn: SyncBatchNorm under DDP instead of shuffle-BN.
        pretrained: '' (random init), 'imagenet' (torchvision weights API, needs internet), a torchvision ResNet
            state-dict file or an lcr-sdk checkpoint (its backbone).
        eval_every: epochs between kNN monitor evaluations (0 = never during training).
        supervised: train with labels (cross-entropy on the pooled feature) instead: the upper bound, and the
            pretraining stage of the two-stage workflow.
        val_fraction: share of each class of the train split held out as a validation split (0 = none). Training
            then uses the rest; every model choice is made on the validation split, never on the test split.
        val_seed: seed of the validation split. Separate from ``seed`` so that runs with different training
            seeds share one validation split.
    """

    method: str = "lcr"
    arch: str = "resnet50"
    image_size: int = 224
    epochs: int = 200
    batch_size: int = 256
    lr: float = 0.03
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.0
    moco_dim: int = 128
    moco_mlp_hidden: int = 0
    moco_k: int = 65536
    moco_m: float = 0.999
    moco_t: float = 0.2
    num_parts: int = 32
    nu: float = 1.0
    tau: float = 0.4
    cam_sign: str = "loss"
    cam_detach: bool = True
    cam_norm: str = "max"
    seed: int = 0
    workers: int = 2
    amp: str = "bf16"
    channels_last: bool = True
    sync_bn: bool = False
    pretrained: str = ""
    eval_every: int = 0
    supervised: bool = False
    val_fraction: float = 0.0
    val_seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every option; raise :class:`InputError` for the first bad one.

        Raises:
            InputError: names the option (as its command-line flag), the value given, what is valid and the fix.
        """
        _choice("method", self.method, METHODS)
        _choice("arch", self.arch, tuple(ARCH_DIMS), "resnet18 for CPU runs, resnet50 for the paper's setting")
        _choice("cam_sign", self.cam_sign, CAM_SIGNS)
        _choice("cam_norm", self.cam_norm, CAM_NORMS)
        _choice("amp", self.amp, AMP_MODES)
        _integer("image_size", self.image_size, MIN_INPUT_SIDE, "a ResNet downsamples by 32; 224 is the paper's")
        _integer("epochs", self.epochs, 1, "train for at least one epoch")
        _integer("batch_size", self.batch_size, 2, "batch norm needs two or more images a batch")
        _integer("moco_dim", self.moco_dim, 1)
        _integer("moco_mlp_hidden", self.moco_mlp_hidden, 0, "0 uses the backbone's width")
        _integer("moco_k", self.moco_k, 1)
        _integer("num_parts", self.num_parts, 1, "the paper uses 32 part maps")
        _integer("seed", self.seed, 0, high=2**32 - 1)
        _integer("val_seed", self.val_seed, 0, high=2**32 - 1)
        _integer("workers", self.workers, 0)
        _integer("eval_every", self.eval_every, 0, "0 turns the kNN monitor off")
        _number("lr", self.lr, 0.0, None, "the paper's base lr is 0.03 (scaled by batch / 256)", low_open=True)
        used = self.lr * self.batch_size / 256
        if used > FLOAT32_MAX:
            raise InputError(
                f"--lr {self.lr!r} is not valid: the rate used, lr x batch-size / 256 = {used:g}, is beyond float32's "
                "range; give a learning rate like the paper's 0.03"
            )
        _number("weight_decay", self.weight_decay, 0.0, None)
        _number("warmup_epochs", self.warmup_epochs, 0.0, None)
        _number("moco_m", self.moco_m, 0.0, 1.0, "MoCo's key-encoder momentum is 0.999 (0.99 for short runs)")
        _number("moco_t", self.moco_t, 0.0, None, "MoCo v2 uses 0.2", low_open=True)
        _number("nu", self.nu, 0.0, None, "0 turns the fitting loss off; the paper uses 1")
        _number("tau", self.tau, 0.0, None, "the paper uses 0.4", low_open=True)
        _number("val_fraction", self.val_fraction, 0.0, 1.0, "0 for no validation split; 0.1-0.2 is usual")
        for name in ("cam_detach", "channels_last", "sync_bn", "supervised"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{_flag(name)} {getattr(self, name)!r} is not valid; give true or false")
        if not isinstance(self.pretrained, str):
            raise InputError(f"--pretrained {self.pretrained!r} is not valid; give '', 'imagenet' or a file path")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """A config from a checkpoint's ``config`` dict; unknown keys are ignored, missing ones get defaults."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _choice(name: str, value: object, valid: tuple[str, ...], hint: str = "") -> None:
    if value not in valid:
        extra = f" ({hint})" if hint else ""
        raise InputError(f"{_flag(name)} {value!r} is not valid; choose one of {', '.join(valid)}{extra}")


def _integer(name: str, value: object, low: int, hint: str = "", high: int | None = None) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high)
    if not ok:
        rng = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"
        extra = f" ({hint})" if hint else ""
        raise InputError(f"{_flag(name)} {value!r} is not valid; give {rng}{extra}")


def _number(
    name: str,
    value: object,
    low: float,
    high: float | None,
    hint: str = "",
    low_open: bool = False,
    high_open: bool = True,
) -> None:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = number and math.isfinite(float(value))  # type: ignore[arg-type]
    if ok:
        v = float(value)  # type: ignore[arg-type]
        ok = (v > low if low_open else v >= low) and (high is None or (v < high if high_open else v <= high))
    if not ok:
        lo = f"> {low:g}" if low_open else f">= {low:g}"
        rng = f"a finite number {lo}" + ("" if high is None else f" and < {high:g}")
        extra = f" ({hint})" if hint else ""
        raise InputError(f"{_flag(name)} {value!r} is not valid; give {rng}{extra}")
