"""Runtime benchmarks: SDK overhead of Embedder vs a bare ONNX Runtime session, and gallery search.

    .venv/bin/python benchmarks/bench_runtime.py overhead            # resnet18 at 112 px, batch 1 and 8, CPU
    .venv/bin/python benchmarks/bench_runtime.py gallery [--max-n 1000000]
    .venv/bin/python benchmarks/bench_runtime.py memory [--side 20000]   # peak memory on a huge photo

overhead: the same ONNX model, run (a) by a bare ``onnxruntime.InferenceSession`` fed ready uint8 N x 112 x 112 x 3
tensors and (b) by ``Embedder.embed`` on 640x480 BGR frames (host resize + crop included), alternating in rounds so
both see the same machine load; the ratio is computed per round, reported as median and spread.
gallery: exact numpy search vs FAISS flat inner product (if installed), top-5, 64 queries per call.
memory: peak resident memory (VmHWM) of a fresh process per case, on a --side x --side photo (a JPEG made once):
``Embedder.embed(path)`` (decoded at reduced size), ``embed`` of the decoded array, ``attend`` + ``overlay`` of
the decoded array; the process after loading the model is the baseline.
Prints markdown tables. Needs torch to make the (random-init) model.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _make_model(out: Path, image_size: int = 112) -> Path:
    """A random-init resnet18 LCR checkpoint exported to ONNX by lcr_sdk.export."""
    from lcr_sdk.export import export_model
    from lcr_sdk.train.checkpoint import random_init_checkpoint

    ckpt = random_init_checkpoint(out / "lcr.pt", image_size=image_size, bn_batches=0)

    return export_model(ckpt, out / "lcr.onnx", batch=(1, 8, 32), verify=False, log=None, progress=False)


def _time(fn, reps: int) -> float:
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def overhead(rounds: int, reps: int) -> None:
    import onnxruntime as ort

    from lcr_sdk import Embedder

    with tempfile.TemporaryDirectory() as d:
        model = _make_model(Path(d))
        emb = Embedder(model, device="cpu")
        bare = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        print(
            f"model {model.name}: {emb.manifest.arch} {emb.manifest.input.height}px, provider {emb.provider}, "
            f"onnxruntime {ort.__version__}\n"
        )
        print(
            "| batch | bare session img/s (median, min-max) | Embedder.embed 640x480 img/s | ratio median (min-max) |"
            " Embedder.infer ready img/s |"
        )
        print("|---|---|---|---|---|")
        for n in (1, 8):
            frames = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(n)]
            ready = np.stack([emb.prepare(f) for f in frames])
            runs = {
                "bare": lambda r=ready: bare.run(None, {"images": r}),
                "embed": lambda f=frames: emb.embed(f),
                "infer": lambda r=ready: emb.infer(r),
            }
            for fn in runs.values():
                _time(fn, 3)  # warm up
            res = {k: [] for k in runs}
            for _ in range(rounds):
                for k, fn in runs.items():
                    res[k].append(n / _time(fn, reps))
            ratios = [e / b for e, b in zip(res["embed"], res["bare"], strict=True)]

            def fmt(xs):
                return f"{statistics.median(xs):.1f} ({min(xs):.1f}-{max(xs):.1f})"

            print(
                f"| {n} | {fmt(res['bare'])} | {fmt(res['embed'])} | {statistics.median(ratios):.3f} "
                f"({min(ratios):.3f}-{max(ratios):.3f}) | {fmt(res['infer'])} |"
            )


def _random_unit(n: int, d: int, seed: int = 0, chunk: int = 100_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, d), np.float32)
    for i in range(0, n, chunk):
        v = rng.standard_normal((min(chunk, n - i), d), dtype=np.float32)
        out[i : i + len(v)] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def gallery(max_n: int, max_bytes: float, queries: int) -> None:
    from lcr_sdk.gallery import Gallery

    try:
        import faiss  # noqa: F401

        indexes = ["exact", "faiss"]
    except ImportError:
        indexes = ["exact"]
        print("faiss not installed: exact search only (pip install faiss-cpu)")
    print(
        f"| vectors | D | {' | '.join(f'{i} queries/s (batch {queries})' for i in indexes)} | "
        f"{' | '.join(f'{i} ms/query (single)' for i in indexes)} | same top-5 |"
    )
    print("|---|---|" + "---|" * (2 * len(indexes) + 1))
    for d in (512, 2048):
        for n in (10_000, 100_000, 1_000_000):
            if n > max_n:
                continue
            if n * d * 4 > max_bytes:
                print(
                    f"| {n:,} | {d} | skipped: {n * d * 4 / 2**30:.1f} GiB of float32 exceeds the "
                    f"--max-gib {max_bytes / 2**30:.1f} memory budget of this shared machine |"
                )
                continue
            v, q = _random_unit(n, d), _random_unit(queries, d, seed=1)
            batch_qps, single_ms, tops = [], [], []
            for index in indexes:
                g = Gallery(d, index=index)
                g.add(v)
                g.search(q[:1], k=5)  # builds the FAISS index
                reps = max(1, int(2e9 // (n * d * queries)))
                t = _time(lambda g=g, q=q: g.search(q, k=5), reps)
                batch_qps.append(queries / t)
                single_ms.append(1e3 * _time(lambda g=g, q=q: g.search(q[0], k=5), max(1, reps)))
                tops.append([[h.id for h in row] for row in g.search(q, k=5)])
                del g
            same = all(t == tops[0] for t in tops)
            print(
                f"| {n:,} | {d} | {' | '.join(f'{x:,.0f}' for x in batch_qps)} | "
                f"{' | '.join(f'{x:.2f}' for x in single_ms)} | {same} |"
            )
            del v


_MEMORY_CASE = """
import json, sys
import numpy as np
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024
case, model, jpg = sys.argv[1:4]
import cv2
from lcr_sdk import Embedder
emb = Embedder(model, device="cpu")
emb.embed(np.zeros((64, 64, 3), np.uint8))
base = hwm()
decoded = base
if case == "embed(path)":
    emb.embed(jpg)
else:
    img = cv2.imread(jpg)
    decoded = hwm()
    if case == "embed(array)":
        emb.embed(img)
    else:
        r = emb.attend(img)
        out = r.overlay(img)
print(json.dumps({"base": base, "decoded": decoded, "peak": hwm()}))
"""


def memory(side: int) -> None:
    """Peak resident memory per case on a side x side photo, each case in a fresh process."""
    import json
    import subprocess
    import sys

    import cv2

    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        model = _make_model(folder)
        jpg = folder / "huge.jpg"
        y, x = np.mgrid[0:side:8, 0:side:8]
        small = np.stack([(x * 255 // side), (y * 255 // side), ((x + y) * 127 // side)], -1).astype(np.uint8)
        cv2.imwrite(str(jpg), cv2.resize(small, (side, side), interpolation=cv2.INTER_NEAREST))
        del small, x, y
        print(
            f"{side} x {side} JPEG ({jpg.stat().st_size / 2**20:.0f} MiB file, {side * side * 3 / 2**30:.2f} GiB "
            "decoded), resnet18 LCR at 112 px, ONNX Runtime CPU\n"
        )
        print("| case | peak resident memory, GiB | above the loaded model, GiB | of which cv2.imread's peak, GiB |")
        print("|---|---|---|---|")
        for case in ("embed(path)", "embed(array)", "attend + overlay"):
            run = subprocess.run(
                [sys.executable, "-c", _MEMORY_CASE, case, str(model), str(jpg)], capture_output=True, text=True
            )
            if run.returncode:
                print(f"| {case} | failed: {run.stderr.strip().splitlines()[-1:]} | - | - |")
                continue
            r = json.loads(run.stdout.strip().splitlines()[-1])
            gib = [(r["peak"]) / 2**30, (r["peak"] - r["base"]) / 2**30, (r["decoded"] - r["base"]) / 2**30]
            print(f"| {case} | {gib[0]:.2f} | {gib[1]:.2f} | {gib[2]:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["overhead", "gallery", "memory"])
    ap.add_argument("--side", type=int, default=20000, help="side of the photo (memory)")
    ap.add_argument("--rounds", type=int, default=7, help="alternating measurement rounds (overhead)")
    ap.add_argument("--reps", type=int, default=10, help="calls per round (overhead)")
    ap.add_argument("--max-n", type=int, default=1_000_000, help="largest gallery size")
    ap.add_argument("--max-gib", type=float, default=4.0, help="skip galleries whose vectors exceed this")
    ap.add_argument("--queries", type=int, default=64, help="queries per batched search call")
    a = ap.parse_args()
    if a.what == "overhead":
        overhead(a.rounds, a.reps)
    elif a.what == "memory":
        memory(a.side)
    else:
        gallery(a.max_n, a.max_gib * 2**30, a.queries)


if __name__ == "__main__":
    main()
