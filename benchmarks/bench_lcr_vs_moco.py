"""LCR vs MoCo v2 on the synthetic benchmark at equal budget, with chance and a supervised upper bound.

Trains every (variant, seed) with `lcr-sdk train` in subprocesses (``--parallel`` at a time), evaluates each final
checkpoint with `lcr-sdk eval --json --linear-probe`, and writes one JSON file per run plus a markdown table of the
mean and standard deviation over seeds. Runs already evaluated in ``--out`` are reused, so the script can be
re-run after an interruption. ``--deadline`` (seconds) stops launching new runs; what finished is reported.

    python benchmarks/bench_lcr_vs_moco.py --out runs/bench --parallel 2 --threads 1   # CPU, the quickstart budget
    python benchmarks/bench_lcr_vs_moco.py --out runs/bench --epochs 60 --train-per-class 300 --parallel 3 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# name -> extra `lcr-sdk train` options; the first three are the comparison, the rest are LCR ablations
VARIANTS = {
    "lcr": ["--method", "lcr"],  # the defaults: cam-sign loss, detached target, cam-norm max, nu 1
    "moco": ["--method", "moco"],
    "supervised": ["--method", "moco", "--supervised"],
    "lcr cam-sign=score": ["--method", "lcr", "--cam-sign", "score"],
    # ablations around the score sign (the default before the attention measurements; docs/BENCHMARKS.md)
    "lcr score no-detach": ["--method", "lcr", "--cam-sign", "score", "--no-cam-detach"],
    "lcr score nu=0.3": ["--method", "lcr", "--cam-sign", "score", "--nu", "0.3"],
    "lcr score nu=3": ["--method", "lcr", "--cam-sign", "score", "--nu", "3"],
    "lcr score cam-norm=none": ["--method", "lcr", "--cam-sign", "score", "--cam-norm", "none"],
}
METRICS = ("rank1", "rank5", "mAP", "knn_top1", "linear_top1", "attention_on_object")


def _slug(name: str) -> str:
    return name.replace(" ", "_").replace("=", "-")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "lcr_sdk.cli", *args]


def run_one(name: str, seed: int, args, data: Path) -> subprocess.Popen | None:
    run_dir = args.out / f"{_slug(name)}_s{seed}"
    if (run_dir / "metrics.json").exists():
        return None
    train = _cli(
        "train",
        str(data),
        "--out",
        str(run_dir),
        "--arch",
        args.arch,
        "--image-size",
        str(args.image_size),
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(args.batch_size),
        "--seed",
        str(seed),
        "--lr",
        str(args.lr),
        "--warmup-epochs",
        str(args.warmup_epochs),
        "--moco-m",
        str(args.moco_m),
        "--moco-k",
        "65536",
        "--no-progress",
        "--eval-every",
        str(args.eval_every),
        *VARIANTS[name],
        *(["--device", args.device] if args.device else []),
    )
    ev = _cli(
        "eval",
        str(run_dir / "checkpoint.pt"),
        str(data),
        "--json",
        "--linear-probe",
        *(["--device", args.device] if args.device else []),
    )
    script = (
        f"set -e; {' '.join(map(_q, train))} > {_q(str(run_dir))}.train.log 2>&1; "
        f"{' '.join(map(_q, ev))} > {_q(str(run_dir))}.eval.json; "
        f"mv {_q(str(run_dir))}.eval.json {_q(str(run_dir / 'metrics.json'))}"
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(["bash", "-c", script], env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})


def _q(s: str) -> str:
    import shlex

    return shlex.quote(s)


def table(out: Path, names: list[str], seeds: list[int]) -> str:
    rows = ["| variant | seeds | " + " | ".join(METRICS) + " | train s (median) |", "|---" * (len(METRICS) + 3) + "|"]
    chance = None
    for name in names:
        results = []
        for s in seeds:
            f = out / f"{_slug(name)}_s{s}" / "metrics.json"
            if f.exists():
                results.append(json.loads(f.read_text()))
        if not results:
            continue
        chance = results[0]["chance"]
        cells = []
        for m in METRICS:
            v = [100 * r[m] for r in results if m in r]
            if not v:
                cells.append("-")
                continue
            sd = statistics.stdev(v) if len(v) > 1 else 0.0
            cells.append(f"{statistics.mean(v):.1f} ± {sd:.1f}")
        secs = [r.get("train_seconds", 0) for r in results]
        rows.append(f"| {name} | {len(results)} | " + " | ".join(cells) + f" | {statistics.median(secs):.0f} |")
    if chance is not None:
        rows.append(
            f"| chance | - | {100 * chance:.1f} | {100 * (1 - (1 - chance) ** 5):.1f} | {100 * chance:.1f} | "
            f"{100 * chance:.1f} | {100 * chance:.1f} | - | - |"
        )
    return "\n".join(rows)


def prepare_data(args: argparse.Namespace) -> Path:
    """The data set to train on. ``--data DIR`` is the user's: used as it is, never written to (a folder without
    train/ and test/ is refused). Without it the synthetic set is generated into this script's own folder,
    ``OUT/data``, which must be empty, missing, or a synthetic set written with the same options.
    """
    from lcr_sdk.synth import SynthConfig, generate, matches

    if args.data is not None:
        missing = [s for s in ("train", "test") if not (args.data / s).is_dir()]
        if missing:
            raise SystemExit(
                f"--data {args.data} has no {' or '.join(missing)}/ folder; pass an ImageFolder data set "
                "(DIR/train/<class>/*, DIR/test/<class>/*), or leave --data out to generate the synthetic set "
                "into OUT/data (nothing is ever written into a --data folder)"
            )
        return args.data
    data = args.out / "data"
    cfg = SynthConfig(
        args.classes, args.train_per_class, args.test_per_class, args.image_size, args.difficulty, seed=1234
    )
    if matches(data, cfg):
        return data
    if data.exists() and any(data.iterdir()):
        raise SystemExit(
            f"{data} exists and is not the synthetic set these options make; it is left alone: choose another "
            "--out, delete the folder, or pass it as --data if it is a data set to train on"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    return generate(data, cfg, progress=False)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench"))
    ap.add_argument(
        "--data", type=Path, help="a data set to use as it is (default: OUT/data, the synthetic set, generated there)"
    )
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--train-per-class", type=int, default=100)
    ap.add_argument("--test-per-class", type=int, default=40)
    ap.add_argument("--difficulty", type=float, default=0.5)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--image-size", type=int, default=112)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--warmup-epochs", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=0.12)
    ap.add_argument("--moco-m", type=float, default=0.99)
    ap.add_argument("--eval-every", type=int, default=0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--ablation-seeds", type=int, nargs="+", help="seeds for the ablations (default: --seeds)")
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads per run")
    ap.add_argument("--device", default=None)
    ap.add_argument("--deadline", type=float, default=0, help="stop launching runs after this many seconds")
    ap.add_argument("--table-only", action="store_true", help="only print the table of the runs in --out")
    ap.add_argument(
        "--reeval",
        action="store_true",
        help="re-evaluate the finished runs in --out (new metrics), then print the table",
    )
    args = ap.parse_args(argv)
    if args.reeval:
        from lcr_sdk.train.evaluate import evaluate

        for f in sorted(args.out.glob("*/metrics.json")):
            old = json.loads(f.read_text())
            new = evaluate(f.parent / "checkpoint.pt", args.data or args.out / "data", linear=True, device=args.device)
            f.write_text(json.dumps({**old, **new}, indent=2))
            print(f"re-evaluated {f.parent.name}", flush=True)
        args.table_only = True
    if args.table_only:  # also after --reeval: never start training from here
        print(table(args.out, list(args.variants), sorted(set(args.seeds) | set(args.ablation_seeds or []))))
        return
    t0 = time.time()
    data = prepare_data(args)
    ab_seeds = args.ablation_seeds or args.seeds
    main_names = [n for n in args.variants if n in ("lcr", "moco", "supervised")]
    jobs = [(n, s) for s in args.seeds for n in main_names]
    jobs += [(n, s) for s in ab_seeds for n in args.variants if n not in main_names]
    running: list[tuple[str, int, subprocess.Popen, float]] = []
    while jobs or running:
        while jobs and len(running) < args.parallel and not (args.deadline and time.time() - t0 > args.deadline):
            name, seed = jobs.pop(0)
            p = run_one(name, seed, args, data)
            if p is not None:
                running.append((name, seed, p, time.time()))
                print(f"[{time.time() - t0:6.0f}s] started {name} seed {seed}", flush=True)
        if args.deadline and time.time() - t0 > args.deadline:
            jobs.clear()
        for item in list(running):
            name, seed, p, start = item
            if p.poll() is not None:
                running.remove(item)
                f = args.out / f"{_slug(name)}_s{seed}" / "metrics.json"
                if p.returncode == 0 and f.exists():
                    m = json.loads(f.read_text())
                    m["train_seconds"] = round(time.time() - start, 1)
                    f.write_text(json.dumps(m, indent=2))
                    print(
                        f"[{time.time() - t0:6.0f}s] done {name} seed {seed}: rank1 {m['rank1']:.3f} "
                        f"mAP {m['mAP']:.3f}",
                        flush=True,
                    )
                else:
                    print(f"[{time.time() - t0:6.0f}s] FAILED {name} seed {seed} (see its .train.log)", flush=True)
        time.sleep(0.5)
    names = list(dict.fromkeys(args.variants))
    md = table(args.out, names, sorted(set(args.seeds) | set(ab_seeds)))
    print(md)
    (args.out / "table.md").write_text(md + "\n")


if __name__ == "__main__":
    main()
