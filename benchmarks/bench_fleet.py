#!/usr/bin/env python3
"""Fleet gallery (Milvus protocol, milvus-lite server) beside the local gallery (docs/BENCHMARKS.md, "Fleet gallery").

    python benchmarks/bench_fleet.py latency --n 100000 --dim 512     # enrol and search, both backends, one run
    python benchmarks/bench_fleet.py sync --n 10000 --dim 512         # items/s pushed and pulled by a sync

Vectors come from bench_gallery.py's generator (clustered like a model's embeddings). The fleet side is a
``milvus-lite server`` subprocess on 127.0.0.1 (its own process, as a server would be; started and stopped here),
reached through pymilvus's gRPC client like any Milvus. Enrolment = one ``add`` + ``commit`` of one item; search =
one query, top-5, through ``search`` (batch 1); recall@5 against exact float32 search of the same vectors. Timings
are medians with the 10th-90th percentile.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gallery import clustered, queries  # noqa: E402

from lcr_sdk.gallery import Gallery  # noqa: E402
from lcr_sdk.gallery.fleet import choose_index, connect  # noqa: E402
from lcr_sdk.gallery.sync import sync  # noqa: E402


def _pct(xs: list[float]) -> str:
    a = np.asarray(xs)
    return f"{np.median(a):.2f} ({np.percentile(a, 10):.2f}-{np.percentile(a, 90):.2f})"


class Server:
    """`milvus-lite server` on a free loopback port, for the duration of a ``with`` block."""

    def __init__(self, data: Path):
        self.data = data

    def __enter__(self) -> str:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(self.data), "--host", "127.0.0.1"]
        self.proc = subprocess.Popen([*cmd, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(600):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return f"http://127.0.0.1:{port}"
            except OSError:
                time.sleep(0.1)
        raise SystemExit("milvus-lite server did not start")

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def _fill(g: Any, n: int, d: int, args: argparse.Namespace) -> float:
    t = time.perf_counter()
    for v, cls in clustered(n, d, args.per_class, args.within, args.between):
        start = len(g) if isinstance(g, Gallery) else args._filled
        g.add(v, ids=[f"i{start + j}" for j in range(len(v))], labels=[f"c{c}" for c in cls])
        args._filled = start + len(v)
        if not isinstance(g, Gallery):
            g.commit()  # in chunks: a fleet writes 64k rows per commit here
    if isinstance(g, Gallery):
        g.commit()
    return time.perf_counter() - t


def latency(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    n, d = args.n, args.dim
    q = queries(args.queries, d, n, args.per_class, args.within, args.between)
    exact = None
    out: dict[str, Any] = {"n": n, "dim": d, "index": choose_index(n).type}
    with Server(work / "milvus") as uri:
        local = Gallery(d, "bench")
        local.save(work / "local")
        fleet = connect(uri, "bench", model="bench", dim=d, timeout=60)
        for name, g in (("local", local), ("fleet", fleet)):
            args._filled = 0
            out[f"{name}_build_s"] = round(_fill(g, n, d, args), 1)
            g.calibration  # noqa: B018 (computed and stored before timing, as a running gallery has it)
            new = queries(args.reps, d, n, args.per_class, args.within, args.between, seed=7)
            enrol = []
            for j, v in enumerate(new):
                t = time.perf_counter()
                g.add(v, ids=[f"new{j}"], labels=["new"])
                g.commit()
                enrol.append(1000 * (time.perf_counter() - t))
            search, got = [], []
            for v in q:
                t = time.perf_counter()
                hits = g.search(v, k=5)
                search.append(1000 * (time.perf_counter() - t))
                got.append([h.id for h in hits])
            if exact is None:
                exact = got  # the local gallery's default search is exact
            recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(got, exact)])
            out[name] = {"enrol_ms": _pct(enrol), "search_ms": _pct(search), "recall_at_5": round(float(recall), 3)}
            print(json.dumps({name: out[name], f"{name}_build_s": out[f"{name}_build_s"]}), flush=True)
        out["fleet_index"] = fleet.info()["index"]
        fleet.close()
    return out


def sync_rate(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    n, d = args.n, args.dim
    out: dict[str, Any] = {"n": n, "dim": d}
    with Server(work / "milvus") as uri:
        for images in (False, True):
            tag = "with_crops" if images else "vectors_only"
            a = Gallery(d, "bench")
            crops = None
            for v, cls in clustered(n, d, args.per_class, args.within, args.between):
                if images:
                    rng = np.random.default_rng(0)
                    crops = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(len(v))]
                a.add(
                    v, ids=[f"i{j}" for j in range(len(a), len(a) + len(v))], labels=[f"c{c}" for c in cls], crops=crops
                )
            a.save(work / f"a-{tag}")
            t = time.perf_counter()
            push = sync(a, uri, f"sync_{tag}", device="a", images=images, timeout=60)
            t_push = time.perf_counter() - t
            b = Gallery(d, "bench")
            b.save(work / f"b-{tag}")
            t = time.perf_counter()
            pull = sync(b, uri, f"sync_{tag}", device="b", timeout=60)
            t_pull = time.perf_counter() - t
            t = time.perf_counter()
            again = sync(b, uri, f"sync_{tag}", device="b", timeout=60)
            t_noop = time.perf_counter() - t
            out[tag] = {
                "push_items_per_s": round(push.pushed / t_push),
                "pull_items_per_s": round(pull.pulled / t_pull),
                "nothing_to_do_s": round(t_noop, 2),
                "pushed": push.pushed,
                "pulled": pull.pulled,
                "unchanged": again.unchanged,
            }
            print(json.dumps({tag: out[tag]}), flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["latency", "sync"])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--reps", type=int, default=100, help="enrolments timed")
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--within", type=float, default=0.926)
    p.add_argument("--between", type=float, default=0.784)
    p.add_argument("--work", help="folder for the galleries (default: a temporary one)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        result = (latency if args.what == "latency" else sync_rate)(args, Path(tmp))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
