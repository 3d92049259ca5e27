"""`lcr-sdk quickstart`: synthetic data -> train LCR, MoCo v2 and a supervised bound -> evaluate -> report.

Everything lands in one folder (which may already exist):

    OUT/data/{train,test}/<class>/*.png   the synthetic data set (kept for later steps)
    OUT/lcr.pt, OUT/moco.pt               one deployable checkpoint per method
    OUT/runs/<method>/                    full training state and logs (log.csv, checkpoint.pt)
    OUT/report/                           metrics.json, attention.png, retrieval.png, curves.png, index.html
    OUT/lcr.onnx (+ .json), OUT/gallery/  when the export extra is installed: the exported model and a gallery
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from lcr_sdk.synth import SynthConfig, generate
from lcr_sdk.train import report
from lcr_sdk.train.checkpoint import load_checkpoint, load_net, save_checkpoint
from lcr_sdk.train.config import TrainConfig
from lcr_sdk.train.data import scan_split
from lcr_sdk.train.engine import train
from lcr_sdk.train.evaluate import embed_split, evaluate

# Budgets: the default finishes in under 10 minutes on 2 CPU cores, --fast in under 3 (docs/BENCHMARKS.md).
DEFAULT = {
    "data": SynthConfig(num_classes=8, train_per_class=100, test_per_class=40, image_size=112),
    "epochs": 8,
    "batch_size": 32,
}
FAST = {
    "data": SynthConfig(num_classes=4, train_per_class=32, test_per_class=8, image_size=64),
    "epochs": 1,
    "batch_size": 32,
}
# Short from-scratch runs: a faster key encoder (m = 0.99, as in MoCo's CIFAR demo), a higher base lr with one
# warm-up epoch, small batches for more steps; every other hyper-parameter is the paper's (docs/BENCHMARKS.md).
SHORT_RUN = {"arch": "resnet18", "lr": 0.12, "warmup_epochs": 1.0, "moco_m": 0.99, "moco_k": 4096, "workers": 0}


def _data(out: Path, cfg: SynthConfig) -> Path:
    root = out / "data"
    meta = root / "synth.json"
    if meta.exists() and json.loads(meta.read_text()).get("config") == asdict(cfg):
        print(f"data: reusing {root}")
        return root
    print(f"data: writing the synthetic data set to {root}")
    return generate(root, cfg)


def _deployable(src: Path, dst: Path) -> Path:
    """Copy a training checkpoint without its training state (what export and the runtime need)."""
    ckpt = load_checkpoint(src)
    ckpt.pop("train_state", None)
    for key in ("format", "format_version", "sdk_version"):
        ckpt.pop(key)
    return save_checkpoint(dst, ckpt)


def quickstart(
    out: str | Path = "lcr-quickstart",
    fast: bool = False,
    epochs: int | None = None,
    seed: int = 0,
    device: str | None = None,
) -> Path:
    """Run the whole quickstart; returns the path of the HTML report."""
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    budget = FAST if fast else DEFAULT
    data_cfg = SynthConfig(**{**asdict(budget["data"]), "seed": seed})
    data = _data(out, data_cfg)
    size = data_cfg.image_size
    epochs = epochs or budget["epochs"]
    runs = {
        "lcr": TrainConfig(method="lcr", **SHORT_RUN),
        "moco": TrainConfig(method="moco", **SHORT_RUN),
        "supervised": TrainConfig(method="moco", supervised=True, **SHORT_RUN),
    }
    metrics, logs, nets = {}, {}, {}
    for name, cfg in runs.items():
        cfg.image_size, cfg.epochs, cfg.batch_size, cfg.seed, cfg.num_parts = (
            size,
            epochs,
            budget["batch_size"],
            seed,
            32,
        )
        print(f"train: {name} ({cfg.arch}, {epochs} epochs, batch {cfg.batch_size}, {size} px)")
        ckpt = train(cfg, data, out / "runs" / name, device=device)
        final = _deployable(ckpt, out / f"{name}.pt")
        metrics[name] = evaluate(final, data, linear=True, device=device)
        logs[name] = out / "runs" / name / "log.csv"
        nets[name] = load_net(final)[0]
    metrics["chance"] = {k: metrics["lcr"]["chance"] for k in ("rank1", "mAP", "knn_top1", "linear_top1")}
    metrics["chance"]["rank5"] = 1 - (1 - metrics["lcr"]["chance"]) ** 5  # ~ P(one of 5 random picks matches)

    rep = out / "report"
    rep.mkdir(exist_ok=True)
    test = scan_split(data, "test", size=size)
    rng = np.random.default_rng(seed)  # one test image per class, first 8 classes
    picks = [int(rng.choice(np.flatnonzero(np.asarray(test.labels) == c))) for c in range(min(8, len(test.classes)))]
    images = [test.images[i] for i in picks]
    embs, masks = {}, {}
    for name in ("lcr", "moco"):
        embs[name], m = embed_split(nets[name], test, size, with_attention=True)
        masks[name] = m[picks]
    report.write_png(rep / "attention.png", report.attention_figure(images, {"LCR": masks["lcr"]}))
    report.write_png(
        rep / "retrieval.png",
        report.retrieval_figure(
            test.images, test.labels, test.classes, {"LCR": embs["lcr"], "MoCo v2": embs["moco"]}, picks[:4]
        ),
    )
    report.curves_figure(logs, rep / "curves.png")
    table = report.metrics_table(metrics)
    notes = [
        f"data: {data_cfg.num_classes} synthetic classes, {data_cfg.train_per_class} train / "
        f"{data_cfg.test_per_class} test images per class, {size} px (lcr-sdk data synth)",
        f"training: resnet18 from random init, {epochs} epochs, batch {budget['batch_size']}, same budget for "
        "every method; final epoch kept (no selection on the test split)",
        "rank1/rank5/mAP: leave-one-out retrieval on the test split; knn_top1: train bank, test queries; "
        "linear_top1: linear probe on frozen embeddings",
        "supervised: same backbone and budget trained with labels (upper bound); chance: 1 / classes",
        "attention_on_object: share of the attention mask inside each bird's box; MoCo v2 and supervised pool "
        "uniformly, so theirs is the box's share of the image (the baseline)",
        "MoCo v2 pools uniformly (its attention is all ones), so only LCR's attention is drawn",
    ]
    extra = _deploy_and_retrieve(out, data)
    if extra:
        notes.append(extra)
    notes.append(f"total time {time.perf_counter() - t0:.0f} s")
    report.save_metrics(rep / "metrics.json", metrics)
    page = report.write_html(
        rep,
        "lcr-sdk quickstart",
        metrics,
        notes,
        [
            ("Attention: where the LCR embedding pools", "attention.png"),
            ("Retrieval: top-5 neighbours", "retrieval.png"),
            ("Training curves", "curves.png"),
        ],
    )
    print(table)
    print("\n".join(notes))
    return page


def _deploy_and_retrieve(out: Path, data: Path) -> str | None:
    """Export LCR to ONNX, build a gallery of the train split and retrieve test images through the runtime.

    Skipped (returns None) when the export extra or the runtime pieces are not available.
    """
    try:
        from lcr_sdk import Embedder, Gallery
        from lcr_sdk.export import export_model
    except ImportError as e:
        print(f"deploy: skipped ({e})")
        return None
    model = export_model(out / "lcr.pt", out / "lcr.onnx", precision="fp32", verify_images=data / "test", log=None)
    size = json.loads((data / "synth.json").read_text())["config"]["image_size"]
    train_split, test_split = scan_split(data, "train", size=size), scan_split(data, "test", size=size)
    with Embedder(model) as emb:
        gallery = Gallery(emb.manifest.embedding_dim, model_sha256=emb.model_id)
        gallery.add(emb.embed(train_split.images), labels=[train_split.classes[y] for y in train_split.labels])
        gallery.save(out / "gallery")
        hits = gallery.search(emb.embed(test_split.images), k=1, model=emb)
    top1 = np.mean([h[0].label == test_split.classes[y] for h, y in zip(hits, test_split.labels)])
    return (
        f"deploy: exported {model.name} (ONNX, fp32, verified against PyTorch on the test split), gallery of "
        f"{len(gallery)} train images in "
        f"{out / 'gallery'}; test images retrieved through Embedder + Gallery: nearest-neighbour top-1 "
        f"{100 * top1:.1f}%"
    )
