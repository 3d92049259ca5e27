"""Gallery: exact search order, add/remove, persistence in SQLite + .npy, model check, FAISS, crash-safe save."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

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


def test_numpy_ids_labels_and_k_and_none_labels_are_taken_as_python_ones():
    g = Gallery(8)
    added = g.add(_unit(3, 8), ids=np.array([10, 11, 12]), labels=np.array(["a", "b", "a"]))
    assert added == ["10", "11", "12"] and g.search(_unit(1, 8)[0], k=np.int64(2))[0].id in added
    g.add(_unit(2, 8, seed=3), ids=["n1", "n2"], labels=[None, "c"])  # None is no label, never the label 'None'
    assert dict(zip(g.ids, g.labels, strict=True))["n1"] == "" and "None" not in g.labels
    assert g.remove(10) == 1 and "10" not in g  # one id given as a number
    assert g.remove(np.array([11])) == 1
    with pytest.raises(InputError, match="ids must be an id or a list of ids"):
        g.remove(object())
    with pytest.raises(InputError, match="k must be a positive int; got 2.5"):
        g.search(_unit(1, 8)[0], k=2.5)


def test_save_load_roundtrip(tmp_path):
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
    rows = sqlite3.connect(version / "gallery.db").execute("SELECT COUNT(*) FROM items").fetchone()
    assert rows == (19,)
    assert (version / "vectors.f32").stat().st_size == 19 * 12 * 4  # raw rows, nothing else
    h = Gallery.load(tmp_path / "g")
    assert isinstance(h.vectors, np.memmap)  # memory-mapped, not read into RAM
    assert len(h) == 19 and h.ids == g.ids and h.labels == g.labels and h.model_sha256 == "f" * 64
    np.testing.assert_array_equal(h.vectors, g.vectors)
    assert h.search(v[7], k=1)[0].metadata == {"path": "/data/7.jpg", "tags": ["a", 7]}
    h.add(_unit(1, 12, seed=9), ids=["new"])  # a loaded gallery grows and saves again
    h.save(tmp_path / "g")
    assert len(Gallery.load(tmp_path / "g")) == 20
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == [".lock", "CURRENT", "v000001"]  # no rewrite


def _wchar() -> int:
    """Bytes this process has passed to write calls so far (Linux /proc/self/io)."""
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("wchar:"))


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs Linux /proc/self/io to count written bytes")
@pytest.mark.parametrize("n", [2_000, 40_000])
def test_enrolment_writes_the_same_few_bytes_whatever_the_gallery_size(tmp_path, n):
    """One add + commit appends: the bytes written do not grow with the gallery, old files stay untouched."""
    g = Gallery(64)
    g.add(_unit(n, 64), labels=[str(i % 50) for i in range(n)])
    version = g.save(tmp_path / "g")
    vec_file = version / "vectors.f32"
    before = (vec_file.stat().st_mtime_ns, vec_file.read_bytes())
    h = Gallery.load(tmp_path / "g")
    written = []
    for i in range(20):
        start = _wchar()
        h.add(_unit(1, 64, seed=100 + i), labels=["new"], metadata=[{"frame": i}])
        h.commit()
        written.append(_wchar() - start)
    assert (vec_file.stat().st_mtime_ns, vec_file.read_bytes()) == before  # the vectors file was not rewritten
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == [".lock", "CURRENT", version.name]
    assert np.median(written) < 40_000, written  # a few WAL pages, not n x 256 bytes of vectors
    assert len(Gallery.load(tmp_path / "g")) == n + 20


def test_tail_moves_to_the_vector_file_by_appending(tmp_path, monkeypatch):
    from lcr_sdk.gallery import store

    monkeypatch.setattr(store, "TAIL_ROWS", 8)
    v = _unit(30, 16)
    g = Gallery(16)
    g.add(v[:10])
    version = g.save(tmp_path / "g")
    head = (version / "vectors.f32").read_bytes()
    for i in range(10, 30):
        g.add(v[i])
        g.commit()
    grown = (version / "vectors.f32").read_bytes()
    assert grown[: len(head)] == head and len(grown) > len(head)  # appended, the old rows untouched
    h = Gallery.load(tmp_path / "g")
    np.testing.assert_allclose(h.vectors, v, atol=1e-6)
    assert [hit.id for hit in h.search(v[25], k=1)] == ["25"]


def test_removals_are_pending_until_commit_and_compaction_reclaims_them(tmp_path, monkeypatch):
    from lcr_sdk.gallery import store

    monkeypatch.setattr(store, "COMPACT_MIN_DEAD", 10)
    v = _unit(40, 16)
    g = Gallery(16)
    g.add(v, labels=[str(i % 4) for i in range(40)])
    first = g.save(tmp_path / "g")
    h = Gallery.load(tmp_path / "g")
    h.remove([str(i) for i in range(5)])
    assert len(h) == 35 and len(Gallery.load(tmp_path / "g")) == 40  # not yet committed
    assert all(hit.id not in {"0", "1", "2", "3", "4"} for hit in h.search(v[0], k=10))
    h.commit()
    assert len(Gallery.load(tmp_path / "g")) == 35 and h.info()["removed_slots"] == 5
    assert (tmp_path / "g" / "CURRENT").read_text().strip() == first.name  # 5 of 40 dead: no compaction yet
    h.remove([str(i) for i in range(5, 12)])
    h.commit()  # 12 of 40 slots dead (>= 10 and >= 25%): rewritten without them
    assert (tmp_path / "g" / "CURRENT").read_text().strip() != first.name and not first.exists()
    k = Gallery.load(tmp_path / "g")
    assert len(k) == 28 and k.info()["removed_slots"] == 0 and k.ids == [str(i) for i in range(12, 40)]
    np.testing.assert_allclose(k.vectors, v[12:], atol=1e-6)
    assert k.search(v[20], k=1)[0].id == "20"


def test_commits_from_two_gallery_objects_merge(tmp_path):
    v = _unit(10, 8)
    Gallery(8).save(tmp_path / "g")
    a, b = Gallery.load(tmp_path / "g"), Gallery.load(tmp_path / "g")
    a.add(v[:3], ids=["a0", "a1", "a2"])
    a.commit()
    b.add(v[3:5], ids=["b0", "b1"])
    b.commit()  # b did not see a's items when it was loaded: they are kept, not overwritten
    assert sorted(Gallery.load(tmp_path / "g").ids) == ["a0", "a1", "a2", "b0", "b1"]
    assert sorted(b.ids) == ["a0", "a1", "a2", "b0", "b1"] and a.refresh() and len(a) == 5
    auto_a, auto_b = a.add(v[5]), b.add(v[6])  # automatic ids are reserved in the store: never the same
    assert auto_a != auto_b
    a.commit()
    b.commit()
    b.add(v[7], ids=["c"])
    a.add(v[8], ids=["c"])
    b.commit()
    with pytest.raises(InputError, match="another process"):
        a.commit()  # same new id from two writers: the second is refused, nothing half-written
    assert len(Gallery.load(tmp_path / "g")) == 8 and a.pending == 1


def test_an_id_removed_and_added_again_before_commit_is_the_new_item(tmp_path):
    v = _unit(3, 8)
    g = Gallery(8)
    g.add(v[:2], ids=["a", "b"], labels=["x", "y"])
    g.save(tmp_path / "g")
    g.remove("a")
    g.add(v[2], ids=["a"], labels=["z"])  # what a sync does with an item changed elsewhere
    assert "a" in g and len(g) == 2 and sorted(g.ids) == ["a", "b"]
    np.testing.assert_allclose(g.vector("a"), v[2], atol=1e-6)
    g.commit()
    again = Gallery.load(tmp_path / "g")
    assert again.labels[again.ids.index("a")] == "z"
    np.testing.assert_allclose(again.vector("a"), v[2], atol=1e-6)


def test_views_of_one_gallery_stay_consistent_with_each_others_commits(tmp_path):
    v = _unit(60, 8)
    g = Gallery(8)
    g.add(v[:6], labels=["x", "x", "x", "y", "y", "y"])
    g.save(tmp_path / "g")
    a, b = Gallery.load(tmp_path / "g"), Gallery.load(tmp_path / "g")
    # rows b commits share the SQLite file a reads: a's calibration must not index them into its older view
    b.add(v[6:46], labels=["x"] * 20 + ["y"] * 20)
    b.commit()
    a.add(v[46:50], labels=["x", "x", "y", "y"])
    assert a.calibrate(0).genuine > 0 and a.search(v[0], k=3, threshold="auto") is not None
    # both remove the same item; b commits first: a's count counts the removal once
    a.remove("0")
    b.remove("0")
    b.commit()
    assert a.refresh() and len(a) == len(b) + 4 and a.pending == 4
    a.commit()
    assert len(a) == len(Gallery.load(tmp_path / "g")) == 49


def test_automatic_ids_stay_unique_after_another_process_compacts(tmp_path):
    g = Gallery(8)
    g.add(_unit(4, 8))
    g.save(tmp_path / "g")
    a, b = Gallery.load(tmp_path / "g"), Gallery.load(tmp_path / "g")
    b.remove("0")
    b.commit()
    b.compact()  # a new version folder replaces the one a loaded
    ids_a, ids_b = a.add(_unit(2, 8, seed=1)), b.add(_unit(2, 8, seed=2))
    assert not set(ids_a) & set(ids_b)
    b.commit()
    a.commit()  # no clash
    assert len(Gallery.load(tmp_path / "g")) == 7


def test_a_gallery_loaded_into_memory_stays_in_memory_after_commits_and_compaction(tmp_path, monkeypatch):
    from lcr_sdk.gallery import store

    monkeypatch.setattr(store, "TAIL_ROWS", 4)  # the next commit moves the tail into the vector file
    g = Gallery(8)
    g.add(_unit(6, 8))
    g.save(tmp_path / "g")
    g = Gallery.load(tmp_path / "g", mmap=False)
    assert not isinstance(g.vectors, np.memmap)
    g.add(_unit(4, 8, seed=1))
    g.commit()
    assert not isinstance(g._contents.saved.raw, np.memmap) and len(g._contents.saved.raw) == 10
    g.remove(["0"])
    g.commit()
    g.compact()
    assert not isinstance(g.vectors, np.memmap) and len(g) == 9


def test_loading_a_folder_that_is_no_gallery_leaves_nothing_in_it(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes(b"x")
    with pytest.raises(InputError, match="not a saved gallery"):
        Gallery.load(tmp_path / "photos")
    assert [p.name for p in (tmp_path / "photos").iterdir()] == ["a.png"]  # no .lock left in the user's folder


def test_an_item_image_that_moved_names_the_item_and_how_to_point_the_gallery_at_it(tmp_path):
    import cv2

    (tmp_path / "imgs" / "x").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "imgs" / "x" / "a.png"), np.full((16, 16, 3), 90, np.uint8))
    g = Gallery(8)
    g.add(_unit(1, 8), ids=["a"], labels=["x"], metadata=[{"path": "x/a.png"}])
    g.image_root = str(tmp_path / "imgs")
    assert g.image("a").shape == (16, 16, 3)
    (tmp_path / "imgs").rename(tmp_path / "moved")
    with pytest.raises(InputError, match=r"gallery item 'a': its image .* does not exist .* gallery.image_root"):
        g.image("a")
    g.image_root = str(tmp_path / "moved")  # the fix the message names
    assert g.image("a").shape == (16, 16, 3)


def test_a_closed_gallery_releases_its_files_and_says_so_when_used(tmp_path):
    g = Gallery(8)
    g.add(_unit(3, 8))
    g.save(tmp_path / "g")
    with Gallery.load(tmp_path / "g") as opened:
        assert len(opened) == 3
    for closed in (g, opened):
        closed.close()
        closed.close()  # twice is harmless
        assert repr(closed) == "Gallery(closed)"
        with pytest.raises(InputError, match="closed; load it again"):
            closed.search(_unit(1, 8)[0], k=1)
        with pytest.raises(InputError, match="closed"):
            len(closed)
    open_files = [os.readlink(f) for f in Path("/proc/self/fd").iterdir() if f.exists()]
    assert not [f for f in open_files if f.startswith(str(tmp_path))]


def test_membership_and_size_can_be_asked_while_another_thread_commits(tmp_path):
    import threading

    g = Gallery(8)
    g.add(_unit(50, 8))
    g.save(tmp_path / "g")
    errors: list[str] = []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            try:
                assert ("7" in g) and len(g) == 50 and g.pending == 0
            except Exception as e:  # a closed connection under it, or a half-swapped state
                errors.append(repr(e))

    t = threading.Thread(target=reader)
    t.start()
    try:
        for _ in range(40):
            g.compact()  # closes the old version's SQLite connection each time
    finally:
        stop.set()
        t.join()
    assert errors == []


def _write_v1(root, vectors, ids, labels, metadata, **header):
    """A gallery laid out exactly as lcr-sdk 0.1 saved it (format 1), built by hand."""
    import json
    import sqlite3

    folder = root / "v000003"
    folder.mkdir(parents=True)
    np.save(folder / "vectors.npy", vectors.astype(np.float32))
    db = sqlite3.connect(folder / "items.sqlite")
    db.execute("CREATE TABLE items (row INTEGER PRIMARY KEY, id TEXT UNIQUE NOT NULL, label TEXT, metadata TEXT)")
    db.executemany(
        "INSERT INTO items VALUES (?, ?, ?, ?)",
        [(r, i, lab, json.dumps(m)) for r, (i, lab, m) in enumerate(zip(ids, labels, metadata))],
    )
    db.commit()
    db.close()
    h = {"format": "lcr-sdk-gallery", "format_version": 1, "dim": vectors.shape[1], "count": len(ids)}
    h.update({"model_sha256": "e" * 64, "index": "exact", "next_id": len(ids), "image_root": "/data/birds"})
    h.update(header)
    (folder / "header.json").write_text(json.dumps(h, indent=2) + "\n")
    (root / "CURRENT").write_text("v000003\n")
    return folder


def test_format_1_gallery_loads_as_it_is_and_the_first_commit_migrates_it(tmp_path):
    v = _unit(12, 16)
    ids = [f"robin/{i}.jpg" for i in range(6)] + [f"wren/{i}.jpg" for i in range(6)]
    labels = ["robin"] * 6 + ["wren"] * 6
    old = _write_v1(tmp_path / "g", v, ids, labels, [{"path": i} for i in ids])
    g = Gallery.load(tmp_path / "g")
    assert g.ids == ids and g.labels == labels and g.model_sha256 == "e" * 64 and g.image_root == "/data/birds"
    np.testing.assert_array_equal(g.vectors, v)  # format 1's own file, memory-mapped
    assert [h.id for h in g.search(v[7], k=2)][0] == "wren/1.jpg"
    assert g.image_path("wren/1.jpg") == Path("/data/birds/wren/1.jpg")
    assert old.exists() and g.info()["format"] == 1  # reading changes nothing on disk
    g.add(_unit(1, 16, seed=4), ids=["new"], labels=["robin"])
    g.commit()  # rewrites the gallery in format 2 (once), then appends
    assert not old.exists() and g.info()["format"] == 2
    h = Gallery.load(tmp_path / "g")
    assert h.ids == [*ids, "new"] and h.image_root == "/data/birds" and h.info()["format"] == 2
    np.testing.assert_allclose(h.vectors[:12], v)
    assert h.add(_unit(1, 16, seed=5)) == ["13"]  # automatic ids continue after format 1's next_id


def test_a_format_1_gallery_in_a_folder_named_with_uri_characters_loads(tmp_path):
    root = tmp_path / "cams #1 ?50%25 off"
    _write_v1(root, _unit(3, 8), ["a", "b", "c"], ["x", "y", "z"], [{}, {}, {}])
    before = sorted(p.name for p in tmp_path.iterdir())
    g = Gallery.load(root)
    assert g.ids == ["a", "b", "c"] and g.labels == ["x", "y", "z"]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no stray database files beside it


def test_float16_storage_halves_the_file_and_keeps_the_ranking(tmp_path):
    centres = _unit(50, 128, seed=1)
    rng = np.random.default_rng(2)
    v = np.repeat(centres, 20, axis=0) + 0.05 * rng.standard_normal((1000, 128)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    q = v[::37] + 0.02 * rng.standard_normal((28, 128)).astype(np.float32)
    full, half = Gallery(128), Gallery(128, dtype="float16")
    full.add(v)
    half.add(v)
    f_ver, h_ver = full.save(tmp_path / "f32"), half.save(tmp_path / "f16")
    assert (h_ver / "vectors.f16").stat().st_size * 2 == (f_ver / "vectors.f32").stat().st_size
    half = Gallery.load(tmp_path / "f16")
    assert half.vectors.dtype == np.float16 and half.dtype == "float16"
    a, b = full.search(q, k=5), half.search(q, k=5)
    diffs = [abs(x.score - y.score) for ra, rb in zip(a, b) for x, y in zip(ra, rb)]
    assert max(diffs) < 2e-3
    assert np.mean([ra[0].id == rb[0].id for ra, rb in zip(a, b)]) == 1.0


def test_filters_by_label_and_metadata_use_the_sqlite_indexes(tmp_path):
    import sqlite3

    from lcr_sdk.gallery import store

    v = _unit(60, 16)
    g = Gallery(16)
    g.add(v[:40], labels=[f"c{i % 4}" for i in range(40)], metadata=[{"shop": i % 3, "cam": "gate"} for i in range(40)])
    g.save(tmp_path / "g")
    g.add(v[40:], labels=[f"c{i % 4}" for i in range(40, 60)], metadata=[{"shop": i % 3} for i in range(40, 60)])
    q = v[41]  # a pending item: filters see committed and pending items alike
    hits = g.search(q, k=60, label="c1")
    assert {h.label for h in hits} == {"c1"} and len(hits) == 15 and hits[0].id == "41"
    hits = g.search(q, k=60, label=["c1", "c2"], where={"shop": 2})
    expect = {str(i) for i in range(60) if i % 4 in (1, 2) and i % 3 == 2}
    assert {h.id for h in hits} == expect
    assert g.search(q, k=5, where={"cam": "gate", "shop": 0})[0].metadata == {"shop": 0, "cam": "gate"}
    assert g.search(q, k=5, where={"shop": "0"}) == []  # JSON text: 0 and "0" differ
    assert g.search(q, k=5, label="nobody") == []
    with pytest.raises(InputError, match="indexed"):
        g.search(q, where={"shop": [1, 2]})
    g.remove(["41"])
    assert "41" not in {h.id for h in g.search(q, k=60, label="c1")}
    # the filters are index lookups in SQLite, not scans of every row's metadata
    conn = sqlite3.connect(tmp_path / "g" / (tmp_path / "g" / "CURRENT").read_text().strip() / "gallery.db")
    plan = " ".join(
        str(r) for r in conn.execute("EXPLAIN QUERY PLAN SELECT row FROM kv WHERE key = ? AND value = ?", ("shop", "1"))
    )
    assert "USING PRIMARY KEY" in plan or "USING INDEX" in plan, plan
    plan = " ".join(str(r) for r in conn.execute("EXPLAIN QUERY PLAN SELECT row FROM items WHERE label IN (?)", ("a",)))
    assert "items_label" in plan, plan
    expect = {i for i in range(40) if i % 4 == 1 and i % 3 == 1}
    assert set(store.filter_rows(conn, ["c1"], {"shop": 1}).tolist()) == expect


def _clustered(labels: int, per: int, d: int = 64, spread: float = 0.25, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = _unit(labels, d, seed=seed + 1)
    noise = rng.standard_normal((labels * per, d)).astype(np.float32) / np.sqrt(d)
    v = np.repeat(centres, per, axis=0) + spread * noise
    return v / np.linalg.norm(v, axis=1, keepdims=True), [f"L{i}" for i in range(labels) for _ in range(per)], centres


def test_open_set_threshold_says_unknown_for_labels_not_in_the_gallery(tmp_path):
    v, labels, centres = _clustered(12, 10)
    g = Gallery(64)
    g.add(v[:100], labels=labels[:100])  # labels L0..L9 enrolled; L10, L11 are not
    cal = g.calibration
    assert cal is not None and cal.threshold is not None and cal.genuine > 50 and cal.impostor > 50
    known, unknown = v[:100:10], v[100:]
    assert all(hits for hits in g.search(known + 0.0, k=3, threshold="auto"))  # gallery members: accepted
    assert all(row == [] for row in g.search(unknown, k=3, threshold="auto"))  # other labels: "unknown"
    assert all(row for row in g.search(unknown, k=3))  # without a threshold: the nearest wrong label
    assert g.search(unknown[0], k=3, threshold=0.999) == [] and g.search(unknown[0], k=3, threshold=-1.0)
    with pytest.raises(InputError, match="threshold"):
        g.search(known, threshold=2.0)


def test_calibration_is_stored_and_refreshed_only_when_the_gallery_changed_enough(tmp_path, monkeypatch):
    from lcr_sdk.gallery import calibrate as cal_mod

    v, labels, _ = _clustered(10, 10)
    g = Gallery(64)
    g.add(v[:50], labels=labels[:50])
    g.save(tmp_path / "g")
    first = g.calibration
    calls = []
    real = cal_mod.calibrate
    monkeypatch.setattr(cal_mod, "calibrate", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    h = Gallery.load(tmp_path / "g")
    assert h.calibration == first and not calls  # read from the gallery, not recomputed
    for i in range(50, 55):  # a few enrolments: the stored calibration stands
        h.add(v[i], labels=[labels[i]])
        h.commit()
    assert not calls and h.threshold == first.threshold
    for i in range(55, 70):  # +40%: refreshed once, at a commit
        h.add(v[i], labels=[labels[i]])
        h.commit()
    assert len(calls) == 1 and Gallery.load(tmp_path / "g").calibration.items >= 60


def test_calibration_with_single_item_labels_uses_impostor_scores_only():
    v, labels, _ = _clustered(40, 1)
    g = Gallery(64)
    g.add(v, labels=labels)
    cal = g.calibration
    assert cal.genuine == 0 and cal.impostor == 40 and "no label has two items" in cal.reason
    g2 = Gallery(64)
    g2.add(v[:5], labels=["same"] * 5)
    assert g2.threshold is None and "fewer than two labels" in g2.calibration.reason
    with pytest.warns(UserWarning, match="no calibrated threshold .*fewer than two labels.*every hit is kept") as w:
        assert g2.search(v[0], k=2, threshold="auto")  # no threshold: nothing is called unknown, and it says so
    assert w[0].filename == __file__  # pointed at the caller's search line
    # a second label arriving: calibrated at once (a gallery without a threshold is recalibrated at any change)
    g2.add(v[5:8], labels=["other"] * 3)
    assert g2.threshold is not None and g2.calibration.items == 8
    g3 = Gallery(64)  # the same count after a change (one removed, one of a new label added) counts as a change
    first = g3.add(v[:5], labels=["same"] * 5)
    assert g3.threshold is None
    g3.remove(first[:1])
    g3.add(v[6:7], labels=["other"])
    assert g3.threshold is not None and g3.calibration.items == 5


def test_a_model_that_does_not_separate_the_labels_gets_a_strict_threshold_and_is_called_weak():
    from lcr_sdk.gallery.calibrate import choose_threshold

    # scores that tell nothing: genuine and impostor the same; every threshold has error 0.5, and the tie goes
    # to the highest (nothing accepted) instead of the lowest (everything accepted)
    scores = np.linspace(0.2, 0.9, 50)
    t, far, frr, _ = choose_threshold(scores, scores.copy())
    assert t > scores.max() and far == 0.0 and frr == 1.0
    # separable scores: the threshold lies between them, no error either way
    t, far, frr, _ = choose_threshold(np.array([0.8, 0.85, 0.9]), np.array([0.3, 0.4, 0.5]))
    assert 0.5 < t <= 0.8 and far == frr == 0.0
    rng = np.random.default_rng(3)
    v = _unit(200, 16)
    random_labels = [f"c{i}" for i in rng.integers(0, 4, 200)]  # labels unrelated to the vectors
    g = Gallery(16)
    g.add(v, labels=random_labels)
    assert g.calibration.weak and g.info()["threshold_weak"]
    clustered, labels, _ = _clustered(10, 4)
    h = Gallery(64)
    h.add(clustered, labels=labels)
    assert h.threshold is not None and not h.calibration.weak and not h.info()["threshold_weak"]


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


def test_an_approximate_index_still_returns_k_hits_when_the_gallery_has_them():
    """HNSW returns fewer candidates than asked for a large k, or with removed items filtered out: such rows are
    answered exactly, so k hits (or every live item) come back, as with an exact search."""
    pytest.importorskip("faiss")
    v = _unit(3000, 64, seed=2)
    g = Gallery(64, index="faiss:HNSW32;efSearch=64")
    g.add(v)
    assert len(g.search(v[0], k=2000)) == 2000
    g.remove([str(i) for i in range(1500)])
    hits = g.search(v[1600], k=len(g))
    assert len(hits) == 1500 and len({h.id for h in hits}) == 1500 and all(int(h.id) >= 1500 for h in hits)
    assert [h.id for h in hits] == [h.id for h in g.search(v[1600], k=len(g), exact=True)]


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


# A child that enrols one item per commit and removes every third one, with a tiny tail and compaction limit so that
# kills land in commits, tail moves and compactions alike; it prints each item number once its commit returned.
_ENROLLER = textwrap.dedent("""
    import sys, zlib, numpy as np
    from lcr_sdk.gallery import Gallery, store
    store.TAIL_ROWS, store.COMPACT_MIN_DEAD = 16, 8
    def vec(name):
        v = np.random.default_rng(zlib.crc32(name.encode())).standard_normal(32).astype(np.float32)
        return v / np.linalg.norm(v)
    root, i = sys.argv[1], int(sys.argv[2])
    g = Gallery.load(root)
    while True:
        g.add(vec(f"e{i}"), ids=[f"e{i}"], labels=[str(i % 5)])
        if i % 3 == 2:
            g.remove([f"e{i - 1}"])
        g.commit()
        print(i, flush=True)
        i += 1
""")


def _vec(name: str, d: int = 32) -> np.ndarray:
    import zlib

    v = np.random.default_rng(zlib.crc32(name.encode())).standard_normal(d).astype(np.float32)
    return v / np.linalg.norm(v)


@pytest.mark.slow
def test_commit_is_crash_safe(tmp_path):
    """kill -9 at random moments of a process committing one item at a time: the gallery always loads and holds
    every item whose commit had returned (and the removals), each with its own vector."""
    root = tmp_path / "g"
    Gallery(32).save(root)
    rng = np.random.default_rng(3)
    start, committed, leftovers = 0, -1, 0
    for _ in range(12):
        proc = subprocess.Popen(
            [sys.executable, "-c", _ENROLLER, str(root), str(start)], stdout=subprocess.PIPE, text=True
        )
        time.sleep(float(rng.uniform(0.6, 1.5)))
        os.kill(proc.pid, signal.SIGKILL)
        out = proc.communicate()[0].split()
        committed = max([committed, *map(int, out)])
        leftovers += any(p.name.startswith(".tmp-") for p in root.iterdir())
        g = Gallery.load(root)
        ids = set(g.ids)
        removed = {f"e{i - 1}" for i in range(committed + 2) if i % 3 == 2}
        must = {f"e{i}" for i in range(committed + 1)} - removed
        assert must <= ids, sorted(must - ids)[:5]  # nothing committed is lost
        assert ids - must <= {f"e{committed + 1}", f"e{committed}"}  # at most the commit in flight
        assert not (ids & (removed - {f"e{committed}"}))
        for i in sorted(ids)[:: max(1, len(ids) // 25)]:
            np.testing.assert_allclose(g.vector(i), _vec(i), atol=1e-6)
        g.verify()
        start = max(int(i[1:]) for i in ids) + 1 if ids else 0
        g.close()
    assert committed > 36  # the kills hit processes that were busy committing (3+ commits each on average)
    print(f"{committed + 1} commits, {leftovers} kills left a compaction's staging folder")


_WRITER = textwrap.dedent("""
    import sys, zlib, numpy as np
    from lcr_sdk.gallery import Gallery
    def vec(name):
        v = np.random.default_rng(zlib.crc32(name.encode())).standard_normal(32).astype(np.float32)
        return v / np.linalg.norm(v)
    root, who = sys.argv[1], sys.argv[2]
    for i in range(25):
        g = Gallery.load(root)  # load, add, save: the pattern that used to lose the other writer's items
        g.add(vec(f"{who}-{i}"), ids=[f"{who}-{i}"], labels=[who])
        g.save(root)
        g.close()
""")
_READER = textwrap.dedent("""
    import sys, zlib, numpy as np
    from lcr_sdk.gallery import Gallery
    def vec(name):
        v = np.random.default_rng(zlib.crc32(name.encode())).standard_normal(32).astype(np.float32)
        return v / np.linalg.norm(v)
    root, seen = sys.argv[1], 0
    while seen < 50:
        g = Gallery.load(root)
        ids = g.ids
        assert len(ids) == len(set(ids)) == len(g) == len(g.vectors), "half-switched"
        for i in ids:
            assert np.allclose(g.vector(i), vec(i), atol=1e-6), i
        assert len(ids) >= seen, "went back"
        seen = len(ids)
        g.close()
    print("reads ok", flush=True)
""")


@pytest.mark.slow
def test_two_processes_saving_one_gallery_lose_nothing(tmp_path):
    root = tmp_path / "g"
    Gallery(32).save(root)
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(root), who], stderr=subprocess.PIPE, text=True)
        for who in ("a", "b")
    ]
    reader = subprocess.Popen(
        [sys.executable, "-c", _READER, str(root)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    out, err = reader.communicate(timeout=300)
    assert reader.returncode == 0 and "reads ok" in out, err
    g = Gallery.load(root)
    assert sorted(g.ids) == sorted(f"{w}-{i}" for w in "ab" for i in range(25))  # 50 saves, none lost
    assert g.labels.count("a") == g.labels.count("b") == 25


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


# -- features on real small galleries built by the CLI ---------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_models(lcr_checkpoint, moco_checkpoint, tmp_path_factory):
    from model_helpers import export_onnx

    folder = tmp_path_factory.mktemp("gallery_models")
    return export_onnx(lcr_checkpoint, folder / "lcr.onnx"), export_onnx(moco_checkpoint, folder / "moco.onnx")


def _cli(*args: object):
    from typer.testing import CliRunner

    from lcr_sdk.cli import app

    r = CliRunner().invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r.output


SOURCE = "rtsp://admin:hunter2@cam/stream"


def test_source_credentials_are_never_stored(tmp_path):
    g = Gallery(8)
    meta = {"source": SOURCE, "seen": ["http://u:hunter2@cam/snap?token=hunter2"], "path": "a/b.png"}
    g.add(_unit(1, 8), ids=["a"], metadata=[meta])
    assert g.metadata == [
        {"source": "rtsp://admin:***@cam/stream", "seen": ["http://u:***@cam/snap?token=***"], "path": "a/b.png"}
    ]
    g.save(tmp_path / "g")
    g.add(_unit(1, 8, seed=1), ids=["b"], metadata=[{"source": SOURCE}])
    g.commit()  # a commit into the saved gallery (SQLite's write-ahead log) as well as the first save
    g.close()
    stored = b"".join(p.read_bytes() for p in (tmp_path / "g").rglob("*") if p.is_file())
    assert b"hunter2" not in stored and b"admin:***@cam" in stored


@pytest.mark.torch
def test_cli_float16_gallery_matches_float32(cli_models, synth_root, tmp_path):
    lcr, _ = cli_models
    _cli("gallery", "build", lcr, synth_root / "train", "--out", tmp_path / "f32", "--quality", "off")
    out = _cli("gallery", "build", lcr, synth_root / "train", "--out", tmp_path / "f16", "--dtype", "float16", "--json")
    assert json.loads(out)["dtype"] == "float16"
    assert json.loads(_cli("gallery", "info", tmp_path / "f16", "--json"))["dtype"] == "float16"
    for query in sorted((synth_root / "test").glob("*/*.png"))[::4]:
        a = json.loads(_cli("gallery", "search", tmp_path / "f32", lcr, query, "--json", "--threshold", "none"))
        b = json.loads(_cli("gallery", "search", tmp_path / "f16", lcr, query, "--json", "--threshold", "none"))
        assert a[0]["id"] == b[0]["id"]
        assert max(abs(x["score"] - y["score"]) for x, y in zip(a, b)) < 2e-3


@pytest.mark.torch
def test_cli_never_prints_credentials_a_gallery_stored_before_they_were_redacted(cli_models, synth_root, tmp_path):
    import sqlite3

    lcr, _ = cli_models
    _cli("gallery", "build", lcr, synth_root / "train", "--out", tmp_path / "g", "--quality", "off")
    version = next(p for p in (tmp_path / "g").iterdir() if p.is_dir())
    db = sqlite3.connect(version / "gallery.db")  # as an older SDK stored it: the source as given
    db.execute("UPDATE items SET metadata = ?", (json.dumps({"source": SOURCE}),))
    db.commit()
    db.close()
    query = sorted((synth_root / "train").glob("*/*.png"))[0]
    out = _cli("gallery", "search", tmp_path / "g", lcr, query, "--json", "-k", "3")
    assert [h["metadata"]["source"] for h in json.loads(out)] == ["rtsp://admin:***@cam/stream"] * 3
    assert "hunter2" not in out + _cli("gallery", "search", tmp_path / "g", lcr, query)


@pytest.mark.torch
def test_cli_filters_and_unknown(cli_models, synth_root, tmp_path):
    lcr, _ = cli_models
    _cli("gallery", "build", lcr, synth_root / "train", "--out", tmp_path / "g")
    member = sorted((synth_root / "train").glob("*/*.png"))[3]
    label = member.parent.name
    other = sorted(p for p in (synth_root / "train").iterdir() if p.name != label)[0].name
    hits = json.loads(_cli("gallery", "search", tmp_path / "g", lcr, member, "--json", "--label", other, "-k", "10"))
    assert len(hits) == 6 and {h["label"] for h in hits} == {other}
    rel = member.relative_to(synth_root / "train").as_posix()
    hits = json.loads(_cli("gallery", "search", tmp_path / "g", lcr, member, "--json", "--where", f"path={rel}"))
    assert [h["id"] for h in hits] == [rel] and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    # a member scores 1.0: known at any threshold below 1; a test image is "unknown" against a strict threshold
    assert "unknown" not in _cli("gallery", "search", tmp_path / "g", lcr, member, "--threshold", "0.999")
    query = sorted((synth_root / "test").glob("*/*.png"))[0]
    text = _cli("gallery", "search", tmp_path / "g", lcr, query, "--threshold", "0.999")
    assert text.startswith("unknown: no gallery item reaches the threshold 0.9990 (nearest: ")
    rows = json.loads(_cli("gallery", "search", tmp_path / "g", lcr, query, "--threshold", "0.999", "--json"))
    assert rows and not any(r["match"] for r in rows)
    auto = json.loads(_cli("gallery", "search", tmp_path / "g", lcr, query, "--json"))  # the calibrated default
    t = Gallery.load(tmp_path / "g").threshold
    assert t is not None and [r["match"] for r in auto] == [r["score"] >= t for r in auto]


@pytest.mark.torch
def test_explained_hits_compare_parts_honestly(cli_models, synth_root, tmp_path):
    import cv2

    from lcr_sdk import Embedder

    lcr, moco = cli_models
    _cli("gallery", "build", lcr, synth_root / "train", "--out", tmp_path / "g")
    member = sorted((synth_root / "train").glob("*/*.png"))[7]
    out = tmp_path / "why.png"
    _cli("gallery", "search", tmp_path / "g", lcr, member, "-k", "3", "--explain", out)
    pic = cv2.imread(str(out))
    assert pic is not None and pic.shape[0] >= 3 * 200  # one row per hit
    g = Gallery.load(tmp_path / "g")
    with Embedder(lcr) as emb:
        hits = g.search(emb.embed(str(member)), k=2, model=emb)
        same = hits[0].explain(str(member), emb)  # the query is the gallery image itself
        assert same.score == pytest.approx(1.0, abs=1e-5) and len(same.parts) == emb.manifest.num_parts
        assert all(p.similarity == pytest.approx(1.0, abs=1e-6) for p in same.parts if p.hit_strength > 0)
        assert same.matched_parts and all(p.query_peak == p.hit_peak for p in same.parts)
        diff = hits[1].explain(str(member), emb)
        assert diff.score == pytest.approx(hits[1].score, abs=1e-4)
        assert all(0 <= p.similarity <= 1 for p in diff.parts) and any(p.similarity < 0.99 for p in diff.parts)
        assert diff.image.shape[1] > diff.image.shape[0] and diff.to_dict()["parts"][0].keys() >= {"similarity"}
    _cli("gallery", "rebuild", tmp_path / "g", "--model", moco)
    g = Gallery.load(tmp_path / "g")
    with Embedder(moco) as emb:
        why = g.search(emb.embed(str(member)), k=1, model=emb)[0].explain(str(member), emb)
    assert why.parts == [] and why.image.ndim == 3  # MoCo: no part maps to compare


@pytest.mark.torch
def test_quality_gate_refuses_diffuse_images_when_building(cli_models, synth_root, tmp_path):
    import numpy as np

    from lcr_sdk import Embedder
    from lcr_sdk.gallery.explain import spread_of
    from lcr_sdk.images import labelled_images

    lcr, moco = cli_models
    paths, _ = labelled_images(synth_root / "train")
    with Embedder(lcr) as emb:
        spreads = {p.relative_to(synth_root / "train").as_posix(): spread_of(emb.attend(p).part_grid) for p in paths}
    limit = float(np.median(list(spreads.values())))
    out = _cli(
        "gallery",
        "build",
        lcr,
        synth_root / "train",
        "--out",
        tmp_path / "g",
        "--quality",
        "refuse",
        "--max-spread",
        f"{limit:.6f}",
        "--json",
    )
    refused = {d["path"] for d in json.loads(out)["diffuse"]}
    assert refused == {p for p, s in spreads.items() if s > float(f"{limit:.6f}")} and refused
    assert set(Gallery.load(tmp_path / "g").ids) == set(spreads) - refused
    out = _cli(
        "gallery",
        "build",
        moco,
        synth_root / "train",
        "--out",
        tmp_path / "m",
        "--quality",
        "refuse",
        "--max-spread",
        "0.01",
        "--json",
    )
    assert json.loads(out)["items"] == len(paths)  # MoCo: nothing to check, nothing refused


@pytest.mark.torch
def test_rebuild_reembeds_from_paths_and_crops(cli_models, synth_root, tmp_path):
    import cv2

    from lcr_sdk import Embedder

    lcr, moco = cli_models
    _cli("gallery", "build", lcr, synth_root / "train", "--out", tmp_path / "g")
    frame = cv2.imread(str(sorted((synth_root / "test").glob("*/*.png"))[0]))
    g = Gallery.load(tmp_path / "g")
    with Embedder(lcr) as emb:
        g.enroll(emb, frame, label="live", quality="off")  # a live enrolment: only the crop is stored
        g.commit()
    before = Gallery.load(tmp_path / "g")
    _cli("gallery", "rebuild", tmp_path / "g", "--model", moco)
    after = Gallery.load(tmp_path / "g")
    assert after.ids == before.ids and after.labels == before.labels and after.metadata == before.metadata
    with Embedder(moco) as emb:
        assert after.model_sha256 == emb.model_id != before.model_sha256
        np.testing.assert_allclose(after.vector(after.ids[-1]), emb.embed(frame), atol=1e-5)  # from the stored crop
        p = synth_root / "train" / after.ids[0]
        np.testing.assert_allclose(after.vector(after.ids[0]), emb.embed(str(p)), atol=1e-5)  # from the file
    with pytest.raises(ModelError, match="rebuild"):
        after.check_model(before.model_sha256)
