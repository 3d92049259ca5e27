"""Gallery: exact search order, add/remove, persistence in SQLite + .npy, model check, FAISS, crash-safe save."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from lcr_sdk.errors import InputError, ModelError
from lcr_sdk.gallery import Gallery, topk
from lcr_sdk.metrics import ranking, retrieval_metrics


def _unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_search_returns_nearest_by_cosine():
    v = _unit(50, 16)
    g = Gallery(16, model_sha256="abc")
    ids = g.add(v, labels=[f"c{i % 5}" for i in range(50)], metadata=[{"n": i} for i in range(50)])
    assert ids[:3] == ["0", "1", "2"] and len(g) == 50
    hits = g.search(v[7], k=3)
    assert [h.id for h in hits][0] == "7" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[0].label == "c2" and hits[0].metadata == {"n": 7}
    expected = np.argsort(-(v @ v[7]))[:3]
    assert [h.id for h in hits] == [str(i) for i in expected]
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    many = g.search(v[:4] * 3.0, k=2)  # queries are normalised
    assert [row[0].id for row in many] == ["0", "1", "2", "3"]


def test_ties_broken_by_insertion_order_like_metrics_ranking():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 4, (30, 200)).astype(np.float32)  # many ties
    for k in (1, 5, 17, 200):
        np.testing.assert_array_equal(topk(scores, k), ranking(scores)[:, :k])
    base = _unit(3, 8)
    g = Gallery(8)
    g.add(np.repeat(base, [4, 1, 3], axis=0), ids=list("abcdefgh"))
    assert [h.id for h in g.search(base[0], k=3)] == ["a", "b", "c"]
    assert [h.id for h in g.search(base[2], k=2)] == ["f", "g"]


def test_add_remove_and_ids():
    g = Gallery(8)
    g.add(_unit(3, 8), ids=["x", "y", "z"], labels=["A", "B", "C"])
    with pytest.raises(InputError, match="already in the gallery"):
        g.add(_unit(1, 8), ids=["y"])
    with pytest.raises(InputError, match="repeat"):
        g.add(_unit(2, 8), ids=["q", "q"])
    assert g.remove(["y"]) == 1 and g.ids == ["x", "z"] and g.labels == ["A", "C"]
    assert [h.id for h in g.search(g.vectors[1], k=1)] == ["z"]
    with pytest.raises(InputError, match="not in the gallery"):
        g.remove("nope")
    g.add(_unit(1, 8, seed=3))
    assert g.ids[-1] == "3"  # auto ids keep counting, never reuse


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((2, 7), np.float32), r"\(N, 8\)"),
        (np.zeros((2, 8), np.float32), "zero, NaN"),
        (np.full((1, 8), np.nan, np.float32), "zero, NaN"),
    ],
)
def test_bad_vectors(bad, match):
    g = Gallery(8)
    with pytest.raises(InputError, match=match):
        g.add(bad)
    g.add(_unit(2, 8))
    with pytest.raises(InputError, match=match):
        g.search(bad)


def test_bad_arguments():
    with pytest.raises(InputError, match="positive int"):
        Gallery(0)
    with pytest.raises(InputError, match="index="):
        Gallery(8, index="annoy")
    g = Gallery(8)
    assert g.search(_unit(1, 8)[0]) == []
    g.add(_unit(1, 8))
    with pytest.raises(InputError, match="k must"):
        g.search(_unit(1, 8), k=0)
    with pytest.raises(InputError, match="JSON"):
        g.add(_unit(1, 8), metadata=[{"f": object()}])


def test_save_load_roundtrip_sqlite_npy(tmp_path):
    import sqlite3

    v = _unit(20, 12)
    g = Gallery(12, model_sha256="f" * 64)
    g.add(
        v,
        ids=[f"img{i}" for i in range(20)],
        labels=[str(i % 3) for i in range(20)],
        metadata=[{"path": f"/data/{i}.jpg", "tags": ["a", i]} for i in range(20)],
    )
    g.remove(["img4"])
    version = g.save(tmp_path / "g")
    assert (tmp_path / "g" / "CURRENT").read_text().strip() == version.name
    rows = sqlite3.connect(version / "items.sqlite").execute("SELECT COUNT(*) FROM items").fetchone()
    assert rows == (19,)
    h = Gallery.load(tmp_path / "g")
    assert isinstance(h.vectors, np.memmap)  # memory-mapped, not read into RAM
    assert len(h) == 19 and h.ids == g.ids and h.labels == g.labels and h.model_sha256 == "f" * 64
    np.testing.assert_array_equal(h.vectors, g.vectors)
    assert h.search(v[7], k=1)[0].metadata == {"path": "/data/7.jpg", "tags": ["a", 7]}
    h.add(_unit(1, 12, seed=9), ids=["new"])  # a loaded gallery grows and saves again
    h.save(tmp_path / "g")
    assert len(Gallery.load(tmp_path / "g")) == 20
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["CURRENT", "v000002"]


def test_save_and_load_refuse_wrong_folders(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    with pytest.raises(InputError, match="not a gallery"):
        Gallery(4).save(tmp_path / "other")
    with pytest.raises(InputError, match="no CURRENT"):
        Gallery.load(tmp_path / "other")
    g = Gallery(4)
    g.add(_unit(2, 4))
    ver = g.save(tmp_path / "g")
    (ver / "vectors.npy").write_bytes(b"junk")
    with pytest.raises(InputError, match="damaged"):
        Gallery.load(tmp_path / "g")


def test_other_model_refused_unless_forced():
    g = Gallery(8, model_sha256="a" * 64)
    g.add(_unit(3, 8))
    with pytest.raises(ModelError, match="not comparable"):
        g.search(_unit(1, 8)[0], model="b" * 64)
    assert len(g.search(_unit(1, 8)[0], k=2, model="b" * 64, force=True)) == 2
    assert len(g.search(_unit(1, 8)[0], model="a" * 64)) == 3


def test_faiss_index_agrees_with_exact():
    pytest.importorskip("faiss")
    v, q = _unit(500, 32), _unit(20, 32, seed=5)
    exact, fast = Gallery(32), Gallery(32, index="faiss")
    exact.add(v)
    fast.add(v)
    for a, b in zip(exact.search(q, k=5), fast.search(q, k=5), strict=True):
        assert [h.id for h in a] == [h.id for h in b]
        np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-5)
    fast.remove(["0", "1"])
    assert all(h.id not in ("0", "1") for row in fast.search(v[:2], k=3) for h in row)


_SAVER = textwrap.dedent("""
    import sys, numpy as np
    from lcr_sdk.gallery import Gallery
    root, n = sys.argv[1], 0
    while True:  # alternate between two galleries that differ in every file
        size = 3000 if n % 2 else 5000
        g = Gallery(256, model_sha256=str(size))
        v = np.full((size, 256), 1.0, np.float32)
        g.add(v, ids=[f"{size}-{i}" for i in range(size)], labels=[str(size)] * size)
        g.save(root)
        n += 1
        print(n, flush=True)
""")


@pytest.mark.slow
def test_save_is_crash_safe(tmp_path):
    """Kill a process mid-save at random moments: the folder always loads as one complete gallery."""
    root = tmp_path / "g"
    rng = np.random.default_rng(0)
    kills = interrupted = 0
    for attempt in range(12):
        proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(root)], stdout=subprocess.PIPE, text=True)
        if attempt == 0:
            proc.stdout.readline()  # let the first one finish one save so a gallery exists
        time.sleep(float(rng.uniform(0.0, 0.8)))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
        current = (root / "CURRENT").read_text().strip()
        interrupted += any(p.name != current and p.name != "CURRENT" for p in root.iterdir())
        g = Gallery.load(root)
        size = len(g)
        assert size in (3000, 5000)
        assert g.model_sha256 == str(size) and set(g.labels) == {str(size)}
        assert g.ids[0] == f"{size}-0" and g.ids[-1] == f"{size}-{size - 1}"
        assert g.vectors.shape == (size, 256)
    assert kills == 12
    print(f"{interrupted} of {kills} kills left an unfinished save behind")
    assert interrupted >= 2  # the kills did land inside save(), not only between saves


@pytest.mark.torch
def test_leave_one_out_rank1_equals_retrieval_metrics(lcr_checkpoint, synth_root, tmp_path):
    """Acceptance: Rank-1 of each test image against all others through Gallery.search = retrieval_metrics."""
    from model_helpers import export_onnx, synth_images

    from lcr_sdk import Embedder

    paths, labels = synth_images(synth_root)
    with Embedder(export_onnx(lcr_checkpoint, tmp_path / "lcr.onnx")) as emb:
        e = emb.embed(paths)
        g = Gallery(emb.manifest.embedding_dim, model_sha256=emb.model_id)
        g.add(e, ids=[f"{p.parent.name}/{p.name}" for p in paths], labels=labels)
        g.save(tmp_path / "g")
        g = Gallery.load(tmp_path / "g")
        hits = g.search(e, k=len(g), model=emb)
    correct = []
    for i, row in enumerate(hits):
        others = [h for h in row if h.id != f"{paths[i].parent.name}/{paths[i].name}"]  # leave the query out
        correct.append(others[0].label == labels[i])
    expected = retrieval_metrics(e, labels)["rank1"]
    assert np.mean(correct) == pytest.approx(expected)
    assert 0 < expected < 1  # random-init weights: an informative, non-trivial value
    # and the same Rank-1 as `lcr-sdk eval` (PyTorch, same checkpoint and test split)
    from lcr_sdk.train.evaluate import evaluate

    assert evaluate(lcr_checkpoint, synth_root, device="cpu")["rank1"] == pytest.approx(np.mean(correct))
