#!/usr/bin/env python3
"""Gallery at edge scale: enrolment cost, search speed and recall, load time (docs/BENCHMARKS.md, "Gallery").

    python benchmarks/bench_gallery.py spread --model lcr.onnx --data DIR/test     # within/between-class cosines
    python benchmarks/bench_gallery.py quality --model lcr.onnx --data DIR/test    # attention spread: images, blanks
    python benchmarks/bench_gallery.py enrol --sizes 10000 100000 1000000           # before/after, ms per enrolment
    python benchmarks/bench_gallery.py search --n 1000000 --dtype float32           # exact, FAISS flat/HNSW/IVF
    python benchmarks/bench_gallery.py load --n 1000000                              # memory-mapped load, index load

Vectors are clustered like real embeddings, not uniform: item = normalise(m + class offset + noise), with a common
mean m (ReLU features make every embedding of a model point roughly the same way), so that the mean cosine of two
items of one class and of two items of different classes equal what ``spread`` measured on a real exported
model's embeddings of the synthetic data (``--within``, ``--between``). ``enrol`` compares one add + commit
(format 2: an append) with the save-everything of format 1 (``lcr_sdk.gallery.legacy.write_v1``, what
``Gallery.save`` did in lcr-sdk 0.1). Timings are medians with the 10th-90th percentile; galleries are written under
``--work`` (default: a temporary folder on the same disk as the working tree).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


# -- enrolment quality -------------------------------------------------------------------------------------------


def quality(model: str, data: str) -> dict[str, Any]:
    """Attention spread (lcr_sdk.gallery.explain.spread_of) of a labelled folder's images and of frames that give a
    model nothing to look at: does the enrolment check tell them apart for this model?"""
    import cv2

    from lcr_sdk import Embedder
    from lcr_sdk.gallery.explain import MAX_SPREAD, spread_of
    from lcr_sdk.images import labelled_images

    paths, _ = labelled_images(data)
    spreads = []
    with Embedder(model) as emb:
        for i in range(0, len(paths), 32):
            out = emb.infer(np.stack([emb.prepare(str(p)) for p in paths[i : i + 32]]))
            spreads += [spread_of(p) for p in out["parts"]]
        bird = cv2.imread(str(paths[0]))
        small = np.full((480, 640, 3), 200, np.uint8)
        small[200:280, 280:360] = cv2.resize(bird, (80, 80))
        frames = {
            "grey": np.full((480, 640, 3), 128, np.uint8),
            "black": np.zeros((480, 640, 3), np.uint8),
            "noise": np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8),
            "blurred image": cv2.GaussianBlur(cv2.resize(bird, (640, 480)), (0, 0), 12),
            "80 px bird in a 640x480 frame": small,
        }
        bad = {name: spread_of(emb.attend(img).part_grid) for name, img in frames.items()}
        grid = emb.manifest.feature_size
    a = np.asarray(spreads)
    row = {
        "model": model,
        "grid": grid,
        "images": len(a),
        "p5_p50_p95": np.percentile(a, [5, 50, 95]).round(3).tolist(),
        "flagged_at_default": float(np.mean(a > MAX_SPREAD)),
        "frames": {k: round(v, 3) for k, v in bad.items()},
    }
    print(
        f"| {Path(model).name} | {grid[0]}x{grid[1]} | {' / '.join(f'{x:.2f}' for x in row['p5_p50_p95'])} | "
        f"{row['flagged_at_default']:.0%} | " + " | ".join(f"{v:.2f}" for v in bad.values()) + " |"
    )
    return row


# -- data ----------------------------------------------------------------------------------------------------------


def spread(model: str, data: str) -> dict[str, float]:
    """Mean cosine of two items of one class, of two classes, and per-item cosine to its class mean direction."""
    from lcr_sdk import Embedder
    from lcr_sdk.images import labelled_images

    paths, labels = labelled_images(data)
    with Embedder(model) as emb:
        e = emb.embed([str(p) for p in paths])
    lab = np.array(labels)
    s = e @ e.T
    same = lab[:, None] == lab[None, :]
    off = ~np.eye(len(e), dtype=bool)
    centres = {c: e[lab == c].mean(0) for c in set(labels)}
    to_centre = [float(v @ centres[c] / np.linalg.norm(centres[c])) for v, c in zip(e, labels, strict=True)]
    return {
        "images": len(e),
        "classes": len(centres),
        "within": float(s[same & off].mean()),
        "between": float(s[~same].mean()),
        "to_centre": float(np.mean(to_centre)),
        "model": model,
        "manifest_method": emb.manifest.method,
    }


def clustered(n: int, d: int, per_class: int, within: float, between: float, seed: int = 0, chunk: int = 65536):
    """Yield (vectors float32, labels) chunks of n unit vectors in classes of ``per_class`` items whose mean cosines
    within a class and between classes are ``within`` and ``between`` (isotropic Gaussian offsets and noise)."""
    if not 0 < between < within < 1:
        raise SystemExit(f"need 0 < between ({between}) < within ({within}) < 1")
    total = 1.0 / between  # |m|^2 = 1; class and item variances from the two cosines
    var_c, var_w = (within * total - 1) / d, total * (1 - within) / d
    rng = np.random.default_rng(seed)
    m = rng.standard_normal(d).astype(np.float32)
    m /= np.linalg.norm(m)
    classes = (n + per_class - 1) // per_class
    centres = m + np.sqrt(var_c) * np.random.default_rng(seed + 1).standard_normal((classes, d)).astype(np.float32)
    for start in range(0, n, chunk):
        idx = np.arange(start, min(n, start + chunk))
        cls = idx // per_class
        v = centres[cls] + np.sqrt(var_w) * rng.standard_normal((len(idx), d)).astype(np.float32)
        yield v / np.linalg.norm(v, axis=1, keepdims=True), cls


def queries(nq: int, d: int, n: int, per_class: int, within: float, between: float, seed: int = 99) -> np.ndarray:
    """New items of the gallery's classes (same centres, fresh noise): what a camera would query."""
    total = 1.0 / between
    var_c, var_w = (within * total - 1) / d, total * (1 - within) / d
    rng = np.random.default_rng(0)
    m = rng.standard_normal(d).astype(np.float32)
    m /= np.linalg.norm(m)
    classes = (n + per_class - 1) // per_class
    centres = m + np.sqrt(var_c) * np.random.default_rng(1).standard_normal((classes, d)).astype(np.float32)
    pick = np.random.default_rng(seed).integers(0, classes, nq)
    v = centres[pick] + np.sqrt(var_w) * np.random.default_rng(seed + 1).standard_normal((nq, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def build(folder: Path, n: int, d: int, args: argparse.Namespace, dtype: str = "float32", index: str = "exact") -> Path:
    """A saved format-2 gallery of n clustered vectors (reused if it exists)."""
    from lcr_sdk.gallery import Gallery

    if (folder / "CURRENT").exists():
        return folder
    t = time.perf_counter()
    g = Gallery(d, model_sha256="bench", dtype=dtype, index=index)
    for v, cls in clustered(n, d, args.per_class, args.within, args.between):
        g.add(
            v,
            ids=[f"i{c}-{j}" for c, j in zip(cls, range(len(g), len(g) + len(v)), strict=True)],
            labels=[f"c{c}" for c in cls],
        )
    g.save(folder)
    print(f"# built {folder.name}: {n:,} x {d} {dtype} in {time.perf_counter() - t:.0f} s")
    return folder


def _pct(xs: list[float]) -> str:
    a = np.asarray(xs)
    return f"{np.median(a):.2f} ({np.percentile(a, 10):.2f}-{np.percentile(a, 90):.2f})"


# -- enrolment ---------------------------------------------------------------------------------------------------


def enrol(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    from lcr_sdk.gallery import Gallery
    from lcr_sdk.gallery.legacy import write_v1

    rows = []
    print(
        "| items | format 1: save everything, ms per enrolment | enrolments/s | format 2: add + commit, ms | "
        "enrolments/s | ratio |\n|---|---|---|---|---|---|"
    )
    for n in args.sizes:
        d = args.dim
        folder = build(work / f"g{n}", n, d, args)
        new = queries(args.reps, d, n, args.per_class, args.within, args.between, seed=7)
        # after: one add + commit per enrolment into the saved gallery
        g = Gallery.load(folder)
        after = []
        for i in range(args.reps):
            t = time.perf_counter()
            g.add(new[i], ids=[f"new-{n}-{i}-{time.time_ns()}"], labels=["new"], metadata=[{"frame": i}])
            g.commit()
            after.append(1e3 * (time.perf_counter() - t))
        # before: what lcr-sdk 0.1 did per enrolment: the whole gallery written again
        vec = np.asarray(g.vectors, np.float32)
        ids, labels = g.ids, g.labels
        meta = [{} for _ in ids]
        g.close()
        del g
        before = []
        old = work / f"v1-{n}"
        for i in range(max(1, args.before_reps if n >= 1_000_000 else 3 * args.before_reps)):
            t = time.perf_counter()
            write_v1(old, np.concatenate([vec, new[i : i + 1]]), [*ids, f"x{i}"], [*labels, "new"], [*meta, {}])
            before.append(1e3 * (time.perf_counter() - t))
        shutil.rmtree(old, ignore_errors=True)
        del vec
        gc.collect()
        row = {"items": n, "before_ms": before, "after_ms": after}
        rows.append(row)
        print(
            f"| {n:,} | {_pct(before)} | {1e3 / np.median(before):.2f} | {_pct(after)} | "
            f"{1e3 / np.median(after):.0f} | {np.median(before) / np.median(after):,.0f}x |"
        )
    return rows


# -- search ----------------------------------------------------------------------------------------------------------


def _qps(fn: Any, batch: np.ndarray, min_s: float = 3.0, max_calls: int = 2000) -> tuple[float, list[float]]:
    """Queries/s of repeated fn(batch) calls: median over calls, and the per-call seconds."""
    fn(batch)  # warm
    times, t0 = [], time.perf_counter()
    while (time.perf_counter() - t0 < min_s or len(times) < 3) and len(times) < max_calls:
        t = time.perf_counter()
        fn(batch)
        times.append(time.perf_counter() - t)
    return len(batch) / float(np.median(times)), times


def search(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    from lcr_sdk.gallery import Gallery

    n, d = args.n, args.dim
    q = queries(args.queries, d, n, args.per_class, args.within, args.between)
    rows = []
    # recall is measured against exact float32 search (whatever index the reference gallery has saved)
    ref = Gallery.load(build(work / f"g{n}-float32", n, d, args))
    truth = [[h.id for h in row] for row in ref.search(q[: args.recall_queries], k=5, exact=True)]
    ref.close()
    n_cls = (n + args.per_class - 1) // args.per_class
    classes = np.random.default_rng(99).integers(0, n_cls, args.queries)[: args.recall_queries]  # as queries() drew
    same = np.mean([[i.split("-")[0] == f"i{c}" for i in row] for row, c in zip(truth, classes, strict=True)])
    print(f"# exact top-5: {same:.1%} of the items are of the query's class (how much the data say who is who)")
    print(
        "| index | storage | build s | memory MiB (vectors + index) | queries/s batch 1 (ms: median, p10-p90) | "
        "queries/s batch 64 | recall@5 | load avg |\n|---|---|---|---|---|---|---|---|"
    )
    for dtype in args.dtype:
        folder = build(work / f"g{n}-{dtype}", n, d, args, dtype=dtype)
        for spec_sweep in args.index:
            # "faiss:HNSW32;efSearch=64|efSearch=128": one index, timed with each set of search parameters
            spec, _, sweep = spec_sweep.partition("|")
            g = Gallery.load(folder)
            if g.index != spec:
                g.set_index(spec)
            t = time.perf_counter()
            g.search(q[0], k=5)  # builds the index (and saves it into the gallery)
            build_s = time.perf_counter() - t
            info = g.info()
            vec_mib = g.vectors.nbytes / 2**20  # memory-mapped: exact search and re-ranking read them
            index_mib = 0.0
            if info["index_file"]:  # the index is as large in memory as its file
                index_mib = (Path(str(info["path"])) / str(info["version"]) / str(info["index_file"])).stat().st_size
                index_mib /= 2**20
            settings = [spec.partition(";")[2]] + [p for p in sweep.split("|") if p]
            for params in settings:
                name = spec.partition(";")[0] + (f";{params}" if params else "")
                if params and g.index != name:
                    g.set_index(name)  # the same index, other search parameters: kept, not rebuilt
                single, t1 = _qps(lambda b, g=g: g.search(b[0], k=5), q[:1], min_s=args.seconds, max_calls=2000)
                got = [[h.id for h in row] for row in g.search(q[: args.recall_queries], k=5)]
                batch, _ = _qps(lambda b, g=g: g.search(b, k=5), q[:64], min_s=args.seconds, max_calls=200)
                row = {
                    "index": name,
                    "dtype": dtype,
                    "n": n,
                    "build_s": build_s,
                    "vectors_mib": vec_mib,
                    "index_mib": index_mib,
                    "qps_1": single,
                    "ms_1": [1e3 * x for x in t1],
                    "qps_64": batch,
                    "recall5": _recall(got, truth),
                    "load": os.getloadavg()[0],
                }
                rows.append(row)
                print(
                    f"| {name} | {dtype} | {build_s:.0f} | {vec_mib:,.0f} + {index_mib:,.0f} | {single:,.0f} "
                    f"({_pct(row['ms_1'])}) | {batch:,.0f} | {row['recall5']:.3f} | {row['load']:.1f} |",
                    flush=True,
                )
            g.close()
            del g
            gc.collect()
    return rows


def _recall(got: list[list[str]], truth: list[list[str]]) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(got, truth, strict=False)]))


# -- load ------------------------------------------------------------------------------------------------------------


def load(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    from lcr_sdk.gallery import Gallery

    n, d = args.n, args.dim
    rows = []
    for dtype in args.dtype:
        folder = build(work / f"g{n}-{dtype}", n, d, args, dtype=dtype)
        times = []
        for _ in range(args.reps):
            t = time.perf_counter()
            g = Gallery.load(folder)
            times.append(1e3 * (time.perf_counter() - t))
            g.close()
        rows.append({"what": f"Gallery.load {n:,} x {d} {dtype} (memory-mapped)", "ms": times})
        for spec in args.index:
            if not spec.startswith("faiss"):
                continue  # exact search has no index to load
            g = Gallery.load(folder)
            if g.index != spec:
                g.close()
                continue
            g.prepare_index()  # built and saved once, if the gallery had none
            g.close()
            itimes = []
            for _ in range(args.reps):
                g = Gallery.load(folder)
                t = time.perf_counter()
                g.prepare_index()
                itimes.append(1e3 * (time.perf_counter() - t))
                g.close()
            rows.append({"what": f"persisted index {spec} ({dtype})", "ms": itimes})
    print("| what | ms (median, p10-p90) |\n|---|---|")
    for r in rows:
        print(f"| {r['what']} | {_pct(r['ms'])} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["spread", "quality", "enrol", "search", "load"])
    ap.add_argument("--model", help="spread: an exported model")
    ap.add_argument("--data", help="spread: a labelled image folder (the synthetic test split)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--per-class", type=int, default=100, help="items per class of the synthetic gallery")
    ap.add_argument("--within", type=float, default=0.85, help="mean cosine of two items of one class")
    ap.add_argument("--between", type=float, default=0.6, help="mean cosine of two items of different classes")
    ap.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "float16"])
    ap.add_argument(
        "--index", nargs="+", default=["exact", "faiss:Flat", "faiss:HNSW32;efSearch=64", "faiss:IVF4096,SQ8;nprobe=16"]
    )
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--recall-queries", type=int, default=200)
    ap.add_argument("--reps", type=int, default=100)
    ap.add_argument("--before-reps", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0, help="minimum timing per measurement")
    ap.add_argument("--work", type=Path, help="folder for the galleries (kept, reused)")
    ap.add_argument("--json", type=Path, help="also write the raw rows here")
    args = ap.parse_args()
    print(f"# machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (shared with other jobs)")
    if args.what in ("spread", "quality"):
        if not args.model or not args.data:
            raise SystemExit(f"{args.what} needs --model and --data")
        rows: Any = spread(args.model, args.data) if args.what == "spread" else quality(args.model, args.data)
        print(json.dumps(rows, indent=2))
    else:
        work = args.work or Path(tempfile.mkdtemp(prefix="bench-gallery-", dir=ROOT))
        work.mkdir(parents=True, exist_ok=True)
        rows = {"enrol": enrol, "search": search, "load": load}[args.what](args, work)
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
