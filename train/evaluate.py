"""Evaluation by the paper's protocol (docs/DESIGN.md section 1), on the same graph that gets exported.

- Retrieval: leave-one-out on the test split, cosine of the embedding e: Rank-1, Rank-5, mAP.
- kNN top-1: train split as memory, test split as queries.
- Linear probe: frozen e, a linear classifier trained on the train split (fixed hyper-parameters: nothing is
  tuned on the test split), top-1 on test.
- ``split='val'``: the same three on the validation split carved from train (:func:`split_validation`), with the
  rest of train as memory and probe training set. Model choices are made there, never on the test split.
- ``pooling='uniform'``: an LCR model's backbone evaluated with its mask replaced by uniform pooling (its GFB
  dropped, as MoCo v2 pools): the diagnostic that tells a lost backbone from a mask that does not help, so a
  collapse cannot hide behind the mask.
Images go through the manifest's resize rule and DeployModel's in-graph preprocessing (uint8 BGR in), as in the
runtime.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal, overload

import numpy as np
import torch
import torch.nn.functional as F

from lcr_sdk.errors import DataError, InputError
from lcr_sdk.manifest import InputSpec, manifest_for_checkpoint
from lcr_sdk.metrics import chance_retrieval, knn_top1, retrieval_metrics
from lcr_sdk.train.checkpoint import load_net
from lcr_sdk.train.data import Split, check_same_classes, eval_batches, scan_split, split_validation
from lcr_sdk.train.model import DeployModel, LCRNet


def deploy_input(net: LCRNet, size: int) -> InputSpec:
    """The input spec the exported model of ``net`` at ``size`` declares (its manifest's): evaluation resizes by it."""
    config = {"arch": net.arch, "method": net.method, "num_parts": net.num_parts, "image_size": size}
    return manifest_for_checkpoint(config, checkpoint_sha256="").input


@overload
def embed_split(
    net: LCRNet, split: Split, size: int, device: str | torch.device = ..., with_attention: Literal[False] = ...
) -> np.ndarray: ...
@overload
def embed_split(
    net: LCRNet, split: Split, size: int, device: str | torch.device = ..., *, with_attention: Literal[True]
) -> tuple[np.ndarray, np.ndarray]: ...
@torch.no_grad()
def embed_split(
    net: LCRNet, split: Split, size: int, device: str | torch.device = "cpu", with_attention: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Embeddings (N x D float32 numpy) of a split; with ``with_attention`` also the masks (N x h x w).

    Images are brought to the model's input by its manifest's resize rule, as the runtime does.
    """
    was_training = net.training
    spec = deploy_input(net, size)
    model = DeployModel(net).to(device).eval()
    embs, masks = [], []
    for batch in eval_batches(split, spec):
        out = model(batch.to(device))
        embs.append(out[0].float().cpu())
        masks.append(out[1].float().cpu())
    net.train(was_training)
    e = torch.cat(embs).numpy()
    return (e, torch.cat(masks).numpy()) if with_attention else e


def attention_on_object(masks: np.ndarray, boxes: list, size: int) -> float:
    """Mean share of the attention mask's mass inside each image's object box (boxes in S x S image pixels).

    For an all-ones mask (MoCo v2) this is just the box's share of the image: the baseline to compare with.
    """
    import cv2

    shares = []
    for m, (x0, y0, x1, y1) in zip(masks, boxes):
        up = cv2.resize(m.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
        shares.append(up[y0:y1, x0:x1].sum() / max(float(up.sum()), 1e-12))
    return float(np.mean(shares))


def linear_probe(
    train_x: np.ndarray,
    train_y,
    test_x: np.ndarray,
    test_y,
    epochs: int = 300,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> float:
    """Top-1 of a linear classifier on frozen features (full-batch L-BFGS, fixed settings)."""
    torch.manual_seed(seed)
    xtr, xte = torch.from_numpy(train_x).float(), torch.from_numpy(test_x).float()
    classes, inverse = np.unique(np.asarray(train_y), return_inverse=True)
    ytr = torch.from_numpy(inverse)
    mean, std = xtr.mean(0), xtr.std(0).clamp_min(1e-6)
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    clf = torch.nn.Linear(xtr.shape[1], len(classes))
    opt = torch.optim.LBFGS(clf.parameters(), lr=1.0, max_iter=epochs, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(clf(xtr), ytr) + weight_decay * clf.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        pred = classes[clf(xte).argmax(1).numpy()]
    return float((pred == np.asarray(test_y)).mean())


def _trained_data(ckpt: dict) -> dict | None:
    """The data set a checkpoint records it was trained on (``train_state['data']``: its fingerprint, image count and
    bytes), or None where it records none (ImageNet weights, a deploy-only file)."""
    ts = ckpt.get("train_state")
    saved = ts.get("data") if isinstance(ts, dict) else None
    return saved if isinstance(saved, dict) and "fingerprint" in saved else None


def _check_held_out(ckpt: dict, data: str | Path, checkpoint: str | Path) -> None:
    """Refuse a validation split that is not the one training held out: the split is drawn from the list of
    training images, so a data set with files added, removed or changed since training draws another one, which
    can hold images the model was trained on. Checked where the checkpoint records its data set."""
    from lcr_sdk.train.guards import data_identity

    saved = _trained_data(ckpt)
    if saved is None:
        return
    now = data_identity(data)
    if now["fingerprint"] == saved["fingerprint"]:
        return
    raise DataError(
        f"{data}/train has changed since {checkpoint} was trained ({saved.get('train_images')} images, "
        f"{saved.get('bytes')} bytes then; {now['train_images']} images, {now['bytes']} bytes now), so the "
        "validation split drawn now is not the one training held out and may hold images it trained on. Evaluate "
        "on the data set as it was, use --split test, or pass --val-fraction (and --val-seed) to draw a split anyway"
    )


def evaluate(
    checkpoint: str | Path,
    data: str | Path,
    linear: bool = False,
    device: str | None = None,
    on_bad: str = "skip",
    split: str = "test",
    val_fraction: float | None = None,
    val_seed: int | None = None,
    pooling: str = "mask",
) -> dict:
    """Metrics of a checkpoint on a data set: rank1/rank5/mAP (leave-one-out), knn_top1, [linear_top1].

    Args:
        checkpoint: an lcr-sdk checkpoint.
        data: the data set root (train/ and test/ class folders).
        linear: also train a linear probe (frozen embeddings).
        device: 'cpu', 'cuda' or None (CUDA if available).
        on_bad: unreadable images: 'skip' or 'fail'.
        split: 'test' (the paper's protocol: queries from test/, kNN and probe trained on train/) or 'val' (the
            validation split carved from train/ as the checkpoint's training did: queries from it, kNN bank and
            probe on the rest of train/). Every model choice is made on 'val'; 'test' is for the final figures.
        val_fraction: for split='val', the validation share; default the checkpoint's ``val_fraction``. Needed
            for a checkpoint trained without one (then its training saw these images: the figures are optimistic,
            except for a checkpoint trained on other data, such as a random-init or pretrained-only one).
        val_seed: for split='val', the validation split's seed; default the checkpoint's ``val_seed``.
        pooling: 'mask' (the model as deployed) or 'uniform' (the backbone with average pooling: an LCR model's
            mask is replaced by ones; the same as 'mask' for a MoCo v2 model).

    Returns:
        Fractions in [0, 1] (``chance`` = 1 / number of classes for reference), plus ``method``, ``split``,
        ``pooling``, the number of query images and, for 'val', the fraction and seed used.

    Raises:
        InputError: an unknown split or pooling, or split='val' without a validation fraction.
        DataError, ModelError: unreadable data or checkpoint.
    """
    if split not in ("test", "val"):
        raise InputError(f"split {split!r} is not valid; choose test or val")
    if pooling not in ("mask", "uniform"):
        raise InputError(f"pooling {pooling!r} is not valid; choose mask or uniform")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    net, ckpt = load_net(checkpoint)
    if pooling == "uniform":
        net.gfb = None  # LCRNet.attention is then all ones: average pooling of the same backbone
    net.to(device)
    cfg = ckpt["config"]
    size = int(cfg["image_size"])
    train_split = scan_split(data, "train", on_bad, size=size)
    out: dict = {}
    if split == "val":
        fraction = float(cfg.get("val_fraction", 0.0)) if val_fraction is None else val_fraction
        seed = int(cfg.get("val_seed", 0)) if val_seed is None else val_seed
        if not fraction:
            why = (
                "--val-fraction 0 leaves no validation split"
                if val_fraction is not None
                else f"{checkpoint} was trained without a validation split (val_fraction 0)"
            )
            raise InputError(
                f"{why}; pass --val-fraction F (e.g. 0.1) to carve one, or train with --val-fraction so that its "
                "images are held out"
            )
        if val_fraction is None and val_seed is None:
            _check_held_out(ckpt, data, checkpoint)
        else:
            _warn_if_trained_on(ckpt, data, fraction, seed, checkpoint)
        bank, queries = split_validation(train_split, fraction, seed)
        out |= {"val_fraction": fraction, "val_seed": seed}
    else:
        bank, queries = train_split, scan_split(data, "test", on_bad, size=size)
        check_same_classes(train_split.classes, queries.classes, Path(data))
    if len(set(queries.labels)) < 2:
        raise DataError(
            f"the {'validation' if split == 'val' else 'test'} split of {data} holds one class "
            f"({queries.classes[queries.labels[0]] if len(queries.labels) else 'none'}): retrieval and kNN figures "
            "need two or more (with one, every neighbour is right); add class folders to score this model"
        )
    q, masks = embed_split(net, queries, size, device, with_attention=True)
    out |= retrieval_metrics(q, queries.labels)
    boxes = synth_boxes(Path(data), queries, size)
    if boxes is not None:  # the synthetic set knows where each object is: how much attention lands on it
        out["attention_on_object"] = attention_on_object(masks, boxes, size)
    b = embed_split(net, bank, size, device)
    out["knn_top1"] = knn_top1(b, bank.labels, q, queries.labels)
    if linear:
        out["linear_top1"] = linear_probe(b, bank.labels, q, queries.labels)
    out["chance"] = 1.0 / len(queries.classes)  # kNN and linear probe (balanced classes)
    out |= {f"chance_{k}": v for k, v in chance_retrieval(queries.labels).items()}  # a random ranking's Rank-k, mAP
    out["method"] = cfg["method"]
    out["split"] = split
    out["pooling"] = pooling
    out[f"{split}_images"] = len(queries)
    return out


def _warn_if_trained_on(ckpt: dict, data: str | Path, fraction: float, seed: int, checkpoint: str | Path) -> None:
    """Warn when the checkpoint was trained on this data set's train/ (its recorded fingerprint) and the validation
    split asked for is not the one it held out: the split holds images it trained on. A checkpoint that records no
    data set (ImageNet weights, a deploy-only file) is not judged."""
    from lcr_sdk.train.guards import data_identity

    cfg = ckpt["config"]
    if (fraction, seed) == (float(cfg.get("val_fraction", 0.0)), int(cfg.get("val_seed", 0))):
        return
    saved = _trained_data(ckpt)
    if saved is None or saved["fingerprint"] != data_identity(data)["fingerprint"]:
        return
    trained = (
        "on all of train/"
        if not cfg.get("val_fraction")
        else f"holding out another split (--val-fraction {cfg['val_fraction']:g} --val-seed {cfg['val_seed']})"
    )
    warnings.warn(
        f"{checkpoint} was trained {trained}: this validation split holds images it trained on, so its figures are "
        "optimistic; compare models only on a split held out from all of them",
        stacklevel=3,
    )


def synth_boxes(root: Path, split: Split, size: int) -> list | None:
    """Object boxes of a split from ``synth.json``, in pixels of the model's ``size`` x ``size`` input, else None.

    Synthetic images are square, so the deployment resize is a plain scale of the boxes.
    """
    from lcr_sdk.synth import load_meta

    info = load_meta(root)  # DataError naming the file if it is damaged
    if info is None:
        return None
    scale = size / info["config"]["image_size"]
    boxes = info["boxes"]
    rel = [p.relative_to(root).as_posix() for p in split.paths]
    if not all(r in boxes for r in rel):
        return None
    return [[round(v * scale) for v in boxes[r]] for r in rel]
