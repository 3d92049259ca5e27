"""Evaluation by the paper's protocol (docs/DESIGN.md section 1), on the same graph that gets exported.

- Retrieval: leave-one-out on the test split, cosine of the embedding e: Rank-1, Rank-5, mAP.
- kNN top-1: train split as memory, test split as queries.
- Linear probe: frozen e, a linear classifier trained on the train split (fixed hyper-parameters: nothing is
  tuned on the test split), top-1 on test.
Images go through the deployment resize rule and DeployModel's in-graph preprocessing (uint8 BGR in).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lcr_sdk.metrics import knn_top1, retrieval_metrics
from lcr_sdk.train.checkpoint import load_net
from lcr_sdk.train.data import Split, eval_batches, scan_split
from lcr_sdk.train.model import DeployModel, LCRNet


@torch.no_grad()
def embed_split(net: LCRNet, split: Split, size: int, device: str | torch.device = "cpu", with_attention: bool = False):
    """Embeddings (N x D float32 numpy) of a split; with ``with_attention`` also the masks (N x h x w)."""
    was_training = net.training
    model = DeployModel(net).to(device).eval()
    embs, masks = [], []
    for batch in eval_batches(split, size):
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
    classes, ytr = np.unique(np.asarray(train_y), return_inverse=True)
    ytr = torch.from_numpy(ytr)
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


def evaluate(
    checkpoint: str | Path, data: str | Path, linear: bool = False, device: str | None = None, on_bad: str = "skip"
) -> dict:
    """Metrics of a checkpoint on a data set: rank1/rank5/mAP (test, leave-one-out), knn_top1, [linear_top1].

    Values are fractions in [0, 1]; ``chance`` is 1 / number of classes for reference.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    net, ckpt = load_net(checkpoint)
    net.to(device)
    size = int(ckpt["config"]["image_size"])
    train_split = scan_split(data, "train", on_bad, size=size)
    test_split = scan_split(data, "test", on_bad, size=size)
    if train_split.classes != test_split.classes:
        from lcr_sdk.errors import DataError

        raise DataError(
            f"train and test class folders differ in {data}: {train_split.classes[:5]}... vs "
            f"{test_split.classes[:5]}...; both splits need the same class names"
        )
    te, masks = embed_split(net, test_split, size, device, with_attention=True)
    out = retrieval_metrics(te, test_split.labels)
    boxes = _synth_boxes(Path(data), test_split, size)
    if boxes is not None:  # the synthetic set knows where each object is: how much attention lands on it
        out["attention_on_object"] = attention_on_object(masks, boxes, size)
    tr = embed_split(net, train_split, size, device)
    out["knn_top1"] = knn_top1(tr, train_split.labels, te, test_split.labels)
    if linear:
        out["linear_top1"] = linear_probe(tr, train_split.labels, te, test_split.labels)
    out["chance"] = 1.0 / len(test_split.classes)
    out["method"] = ckpt["config"]["method"]
    out["test_images"] = len(test_split)
    return out


def _synth_boxes(root: Path, split: Split, size: int) -> list | None:
    """Object boxes of a split from ``synth.json``, in pixels of the model's ``size`` x ``size`` input, else None.

    Synthetic images are square, so the deployment resize is a plain scale of the boxes.
    """
    import json

    meta = root / "synth.json"
    if not meta.exists():
        return None
    info = json.loads(meta.read_text())
    scale = size / info["config"]["image_size"]
    boxes = info["boxes"]
    rel = [p.relative_to(root).as_posix() for p in split.paths]
    if not all(r in boxes for r in rel):
        return None
    return [[round(v * scale) for v in boxes[r]] for r in rel]
