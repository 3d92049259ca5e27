"""Training options, with the paper's defaults (MoCo v2 + LCR). Stored in every checkpoint as plain types."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass
class TrainConfig:
    """Options of one training run. Defaults are the paper's unless a comment says otherwise.

    Attributes:
        method: 'lcr' (MoCo v2 + GradCAM Fitting Branch) or 'moco' (the MoCo v2 baseline).
        arch: torchvision ResNet (resnet50 in the paper; resnet18 for CPU and quick runs).
        image_size: training / deployment input side in pixels (224 in the paper).
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
        pretrained: '' (random init), 'imagenet' (torchvision weights API, needs internet) or a path to a
            torchvision ResNet state-dict file.
        eval_every: epochs between kNN monitor evaluations (0 = only at the end).
        supervised: train with labels (cross-entropy on the pooled feature) instead: the upper bound.
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

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
