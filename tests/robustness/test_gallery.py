"""Bad input for galleries: every case a real input (arguments, files on disk, CLI options) and its outcome: the
error class, a message that names the fix, the exit code, and nothing lost (the gallery in memory and on disk is
exactly as it was)."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lcr_sdk.cli import app
from lcr_sdk.errors import InputError
from lcr_sdk.gallery import Gallery

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


def _unit(n: int, d: int = 8, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _state(g: Gallery) -> tuple:
    return (len(g), g.ids, g.labels, g.metadata, np.asarray(g.vectors).tobytes(), g.pending)


# -- every mutation is all-or-nothing ----------------------------------------------------------------------------

BAD_ADDS = {
    "metadata not a dict": (dict(metadata=["abc"]), "must be a dict"),
    "metadata a dict, not a list": (dict(metadata={"a": 1}), "list of 1 dicts"),
    "metadata key not a string": (dict(metadata=[{1: "x"}]), "keys must be strings"),
    "metadata NaN": (dict(metadata=[{"x": float("nan")}]), "JSON-serialisable"),
    "metadata object": (dict(metadata=[{"x": object()}]), "JSON-serialisable"),
    "id not UTF-8 (lone surrogate)": (dict(ids=["photo\udcff.jpg"]), "not valid UTF-8"),
    "label with NUL": (dict(labels=["ro\x00bin"]), "NUL"),
    "duplicate id": (dict(ids=["a"]), "already in the gallery"),
    "id None": (dict(ids=[None]), "id None is not valid: an id names one item"),
    "id empty": (dict(ids=["  "]), "must be a non-empty string"),
    "ids a string": (dict(ids="abc"), "list of 1 ids"),
    "count mismatch": (dict(ids=["x", "y"]), "1 vectors but 2 ids"),
    "crop not an image": (dict(crops=[np.zeros((2, 2), np.uint8)]), "too small"),
    "crop of wrong type": (dict(crops=["/nonexistent/crop.png"]), "does not exist"),
}


@pytest.mark.parametrize("case", sorted(BAD_ADDS))
def test_bad_add_changes_nothing_in_memory_or_on_disk(case, tmp_path):
    kwargs, match = BAD_ADDS[case]
    g = Gallery(8)
    g.add(_unit(3), ids=["a", "b", "c"], labels=["x", "y", "z"], metadata=[{"n": i} for i in range(3)])
    g.save(tmp_path / "g")
    g.add(_unit(1, seed=1), ids=["pending"])
    before = _state(g)
    with pytest.raises(InputError, match=match):
        g.add(_unit(1, seed=2), **kwargs)
    assert _state(g) == before
    assert [h.id for h in g.search(_unit(1, seed=1)[0], k=1)] == ["pending"]  # search works as before
    g.commit()
    assert Gallery.load(tmp_path / "g").ids == ["a", "b", "c", "pending"]


@pytest.mark.parametrize(
    "vectors, match",
    [
        (np.zeros((1, 7), np.float32), r"\(N, 8\).*vectors of 7 dimensions come from another model.*gallery rebuild"),
        (np.full((1, 8), np.nan, np.float32), "NaN"),
        (np.zeros((0, 8), np.float32), r"\(N, 8\)"),
        ([["a"] * 8], "float array"),
    ],
    ids=["wrong dim", "NaN", "empty", "strings"],
)
def test_bad_vectors_change_nothing(vectors, match):
    g = Gallery(8)
    g.add(_unit(2))
    before = _state(g)
    with pytest.raises(InputError, match=match):
        g.add(vectors)
    assert _state(g) == before


def test_remove_with_an_unknown_id_removes_nothing(tmp_path):
    g = Gallery(8)
    g.add(_unit(3), ids=["a", "b", "c"])
    g.save(tmp_path / "g")
    before = _state(g)
    with pytest.raises(InputError, match="not in the gallery"):
        g.remove(["a", "nope"])
    assert _state(g) == before and g.pending == 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dim=0), "positive int"),
        (dict(dim=8, index="annoy"), "faiss:HNSW32"),
        (dict(dim=8, dtype="int8"), "float32, float16"),
        (dict(dim=8, model_sha256=5), "model_sha256"),
    ],
    ids=["dim 0", "unknown index", "dtype", "model id not str"],
)
def test_bad_gallery_arguments(kwargs, match):
    with pytest.raises(InputError, match=match):
        Gallery(**kwargs)


@pytest.mark.parametrize(
    "spec, match",
    [("faiss:Bogus42", "not valid for dimension 8"), ("faiss:HNSW8;nprobe=x", "do not apply")],
    ids=["factory", "search parameter"],
)
def test_invalid_faiss_spec_is_refused_when_the_gallery_is_made(spec, match):
    pytest.importorskip("faiss")
    with pytest.raises(InputError, match=match):
        Gallery(8, index=spec)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(k=0), "k must"),
        (dict(threshold=1.5), r"outside \[-1, 1\]"),
        (dict(threshold="high"), "threshold="),
        (dict(where={"a": [1]}), "indexed"),
        (dict(where="shop=1"), "dict"),
        (dict(label=[]), "selects nothing"),
    ],
    ids=["k 0", "threshold > 1", "threshold word", "where list value", "where string", "empty label list"],
)
def test_bad_search_options(kwargs, match):
    g = Gallery(8)
    g.add(_unit(3), labels=["a", "b", "a"])
    with pytest.raises(InputError, match=match):
        g.search(_unit(1)[0], **kwargs)


# -- what load trusts: nothing ----------------------------------------------------------------------------------


def _saved(tmp_path: Path, n: int = 6) -> tuple[Path, Path]:
    g = Gallery(8, model_sha256="m" * 64)
    g.add(_unit(n), ids=[f"i{i}" for i in range(n)], labels=["a", "b"] * (n // 2))
    version = g.save(tmp_path / "g")
    g.close()
    return tmp_path / "g", version


def _set_meta(version: Path, key: str, value: object | None) -> None:
    db = sqlite3.connect(version / "gallery.db")
    if value is None:
        db.execute("DELETE FROM meta WHERE key = ?", (key,))
    else:
        db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))
    db.commit()
    db.close()


def _sql(version: Path, statement: str, *params: object) -> None:
    db = sqlite3.connect(version / "gallery.db")
    db.execute(statement, params)
    db.commit()
    db.close()


def _set_calibration(version: Path, **fields: object) -> None:
    db = sqlite3.connect(version / "gallery.db")
    cal = json.loads(db.execute("SELECT value FROM meta WHERE key = 'calibration'").fetchone()[0])
    db.close()
    _set_meta(version, "calibration", {**cal, **fields})


def _scale_vectors(version: Path, factor: float) -> None:
    path = version / "vectors.f32"
    v = np.fromfile(path, np.float32) * factor
    v.tofile(path)


CORRUPT = {
    "CURRENT is an absolute path": (lambda r, v: (r / "CURRENT").write_text(str(v.resolve())), "must name a version"),
    "CURRENT climbs out": (lambda r, v: (r / "CURRENT").write_text("../elsewhere/v000001"), "must name a version"),
    "CURRENT names a missing version": (lambda r, v: (r / "CURRENT").write_text("v000099"), "does not exist"),
    "meta without model_sha256": (lambda r, v: _set_meta(v, "model_sha256", None), "model_sha256"),
    "meta model_sha256 not a string": (lambda r, v: _set_meta(v, "model_sha256", 7), "model_sha256"),
    "meta without count": (lambda r, v: _set_meta(v, "count", None), "'count'"),
    "meta dim a string": (lambda r, v: _set_meta(v, "dim", "8"), "'dim'"),
    "meta index spec invalid": (lambda r, v: _set_meta(v, "index", "annoy:16"), "index spec"),
    "meta index file escapes": (lambda r, v: (_set_meta(v, "index_file", "../../x.faiss"),), "index file"),
    "newer format": (lambda r, v: _set_meta(v, "format_version", 9), "upgrade lcr-sdk"),
    "scaled vectors": (lambda r, v: _scale_vectors(v, 3.0), "norm"),
    "NaN vectors": (lambda r, v: _scale_vectors(v, np.nan), "norm"),
    "0-byte vectors file": (lambda r, v: (v / "vectors.f32").write_bytes(b""), "bytes, less than"),
    "truncated vectors file": (
        lambda r, v: (v / "vectors.f32").write_bytes((v / "vectors.f32").read_bytes()[:100]),
        "less than",
    ),
    "vectors file missing": (lambda r, v: (v / "vectors.f32").unlink(), "vectors.f32"),
    "database is junk": (lambda r, v: (v / "gallery.db").write_bytes(b"junk" * 300), "damaged"),
    "an item row lost": (lambda r, v: _sql(v, "DELETE FROM items WHERE id = 'i2'"), "5 item rows"),
    "a removed slot of -1": (lambda r, v: _sql(v, "INSERT INTO dead (row) VALUES (-1)"), "removed slot -1"),
    "a removed slot past the end": (lambda r, v: _sql(v, "INSERT INTO dead (row) VALUES (6)"), "removed slot 6"),
    "calibration threshold a string": (lambda r, v: _set_calibration(v, threshold="0.5"), "calibration"),
    "calibration threshold NaN": (lambda r, v: _set_calibration(v, threshold=float("nan")), "calibration"),
    "calibration threshold infinite": (lambda r, v: _set_calibration(v, threshold=float("inf")), "calibration"),
    "calibration not an object": (lambda r, v: _set_meta(v, "calibration", [0.5]), "calibration"),
    "meta value NaN": (lambda r, v: _set_meta(v, "next_id", float("nan")), "next_id"),
    "database missing": (lambda r, v: (v / "gallery.db").unlink(), "gallery.db is missing"),
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_gallery_is_refused_on_load_with_the_fix(case, tmp_path):
    make, match = CORRUPT[case]
    root, version = _saved(tmp_path)
    for extra in ("gallery.db-wal", "gallery.db-shm"):  # a cleanly closed gallery: the edits below are the truth
        (version / extra).unlink(missing_ok=True)
    make(root, version)
    with pytest.raises(InputError, match=match) as e:
        Gallery.load(root)
    assert any(fix in str(e.value) for fix in ("rebuild", "restore", "upgrade")), str(e.value)
    # `gallery rebuild` loads the gallery first, so it is never the way out of a gallery that does not load
    assert "gallery rebuild" not in str(e.value), str(e.value)


def _tail_nan(tmp_path: Path) -> Path:
    root, _ = _saved(tmp_path)
    g = Gallery.load(root)
    g.add(_unit(1, seed=5), ids=["late"])
    g.commit()
    version = root / (root / "CURRENT").read_text().strip()
    g.close()
    db = sqlite3.connect(version / "gallery.db")
    db.execute("UPDATE tail SET vector = ?", (np.full(8, np.nan, np.float32).tobytes(),))
    db.commit()
    db.close()
    return root


def test_nan_vector_in_the_committed_tail_is_refused(tmp_path):
    with pytest.raises(InputError, match="norm"):
        Gallery.load(_tail_nan(tmp_path))


def _v1(root: Path, header: object, vectors: bytes | None = None, metadata: str = "{}") -> None:
    folder = root / "v000001"
    folder.mkdir(parents=True)
    if vectors is None:
        np.save(folder / "vectors.npy", _unit(2))
    else:
        (folder / "vectors.npy").write_bytes(vectors)
    db = sqlite3.connect(folder / "items.sqlite")
    db.execute("CREATE TABLE items (row INTEGER PRIMARY KEY, id TEXT UNIQUE NOT NULL, label TEXT, metadata TEXT)")
    db.executemany("INSERT INTO items VALUES (?, ?, ?, ?)", [(0, "a", "x", metadata), (1, "b", "y", "{}")])
    db.commit()
    db.close()
    (folder / "header.json").write_text(json.dumps(header))
    (root / "CURRENT").write_text("v000001\n")


V1_HEADER = {"format": "lcr-sdk-gallery", "format_version": 1, "dim": 8, "count": 2, "model_sha256": "m"}
V1_CORRUPT = {
    "header without count": (dict(header={k: v for k, v in V1_HEADER.items() if k != "count"}), "'count'"),
    "header without model_sha256": (
        dict(header={k: v for k, v in V1_HEADER.items() if k != "model_sha256"}),
        "'model_sha256'",
    ),
    "header not an object": (dict(header=[1, 2, 3]), "not a JSON object"),
    "0-byte vectors.npy": (dict(header=V1_HEADER, vectors=b""), "damaged"),
    "metadata not JSON": (dict(header=V1_HEADER, metadata="{broken"), "not JSON"),
    "metadata not an object": (dict(header=V1_HEADER, metadata="[1, 2]"), "not a JSON object"),
    "count disagrees": (dict(header={**V1_HEADER, "count": 5}), "header says 5"),
}


@pytest.mark.parametrize("case", sorted(V1_CORRUPT))
def test_corrupt_format_1_gallery_is_refused(case, tmp_path):
    kwargs, match = V1_CORRUPT[case]
    _v1(tmp_path / "g", **kwargs)
    with pytest.raises(InputError, match=match):
        Gallery.load(tmp_path / "g")


def test_scaled_format_1_vectors_are_refused(tmp_path):
    import io

    buf = io.BytesIO()
    np.save(buf, _unit(2) * 2)
    _v1(tmp_path / "g", V1_HEADER, vectors=buf.getvalue())
    with pytest.raises(InputError, match="norm"):
        Gallery.load(tmp_path / "g")


# -- what another process or another hand left in the folder ------------------------------------------------------


def test_two_processes_committing_to_one_format_1_gallery_lose_nothing(tmp_path):
    from lcr_sdk.gallery.legacy import write_v1

    root = tmp_path / "g"
    write_v1(root, _unit(3), ["a", "b", "c"], ["x", "y", "z"], [{}, {}, {}])
    first, second = Gallery.load(root), Gallery.load(root)  # two processes that loaded the same format-1 folder
    first.add(_unit(1, seed=1), ids=["from-first"])
    first.commit()  # migrates the folder to the current format
    second.add(_unit(1, seed=2), ids=["from-second"])
    with pytest.raises(InputError, match="changed by another process"):
        second.commit()
    assert sorted(Gallery.load(root).ids) == ["a", "b", "c", "from-first"]  # the first commit stands
    assert "from-second" in second  # and the refused changes are still there to repeat


LINKS = {
    "vectors file": lambda root, version: version / "vectors.f32",
    "database": lambda root, version: version / "gallery.db",
    "version folder": lambda root, version: version,
    "lock file": lambda root, version: root / ".lock",
}


@pytest.mark.parametrize("case", sorted(LINKS))
def test_a_gallery_never_follows_a_link_out_of_its_folder(case, tmp_path):
    root, version = _saved(tmp_path)
    for extra in ("gallery.db-wal", "gallery.db-shm"):
        (version / extra).unlink(missing_ok=True)
    inside = LINKS[case](root, version)
    outside = tmp_path / "outside" / inside.name
    outside.parent.mkdir()
    if case == "lock file":
        inside.unlink()  # a link to a file that does not exist yet: following it would create it
    else:
        os.rename(inside, outside)
    before = outside.read_bytes() if outside.is_file() else None
    inside.symlink_to(outside)
    with pytest.raises(InputError, match="link") as e:
        Gallery.load(root)
    assert "restore" in str(e.value) or "remove the link" in str(e.value)
    assert (outside.read_bytes() if outside.is_file() else None) == before  # nothing written, nothing created


def test_a_vector_file_linked_after_load_is_not_written_through(tmp_path, monkeypatch):
    from lcr_sdk.gallery import store

    monkeypatch.setattr(store, "TAIL_ROWS", 2)  # the next commits append the tail to the vector file
    root, version = _saved(tmp_path)
    g = Gallery.load(root)
    outside = tmp_path / "outside.f32"
    os.rename(version / "vectors.f32", outside)
    (version / "vectors.f32").symlink_to(outside)
    before = outside.read_bytes()
    g.add(_unit(2, seed=3), ids=["n1", "n2"])
    with pytest.raises(InputError, match="vectors.f32 is a symbolic link"):
        g.commit()
    assert outside.read_bytes() == before


def test_a_format_1_gallery_never_follows_a_link_out_of_its_folder(tmp_path):
    _v1(tmp_path / "g", V1_HEADER)
    vectors = tmp_path / "g" / "v000001" / "vectors.npy"
    os.rename(vectors, tmp_path / "elsewhere.npy")
    vectors.symlink_to(tmp_path / "elsewhere.npy")
    with pytest.raises(InputError, match="link"):
        Gallery.load(tmp_path / "g")


@pytest.mark.parametrize("stored", ["../outside.png", "sub/../../outside.png", "ABSOLUTE"])
def test_stored_image_paths_that_leave_the_image_root_are_refused(stored, tmp_path):
    import cv2

    (tmp_path / "images" / "sub").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "outside.png"), np.full((32, 32, 3), 200, np.uint8))  # a readable image, outside
    path = str(tmp_path / "outside.png") if stored == "ABSOLUTE" else stored
    g = Gallery(8)
    g.add(_unit(1), ids=["x"], metadata=[{"path": path}])
    g.image_root = str(tmp_path / "images")
    g.save(tmp_path / "g")
    h = Gallery.load(tmp_path / "g")
    for read in (lambda: h.image("x"), lambda: h.image_path("x"), lambda: h.search(_unit(1)[0])[0].image()):
        with pytest.raises(InputError, match="leaves the gallery's image root"):
            read()
    with pytest.raises(InputError, match="leaves the gallery's image root"):
        h.rebuild(None)  # refused while locating the images, before any model is used


STORED_ITEMS = {
    "metadata not an object": ("UPDATE items SET metadata = '[1, 2]' WHERE id = 'i0'", "not a JSON object"),
    "metadata not JSON": ("UPDATE items SET metadata = '{broken' WHERE id = 'i0'", "not JSON"),
    "metadata NaN": ("""UPDATE items SET metadata = '{"x": NaN}' WHERE id = 'i0'""", "not JSON"),
    "metadata nested 200k deep": (
        "UPDATE items SET metadata = ? WHERE id = 'i0'",
        "nested",
    ),
    "label a BLOB": ("UPDATE items SET label = X'68690a' WHERE id = 'i0'", "label"),
    "id a BLOB": ("UPDATE items SET id = X'6930' WHERE id = 'i0'", "id"),
}


@pytest.mark.parametrize("case", sorted(STORED_ITEMS))
def test_a_damaged_stored_item_is_one_error_naming_it(case, tmp_path):
    statement, match = STORED_ITEMS[case]
    root, version = _saved(tmp_path)
    params = ("[" * 200_000 + "]" * 200_000,) if "?" in statement else ()
    _sql(version, statement, *params)
    g = Gallery.load(root)  # items are checked as they are read, not all at load
    for read in (lambda: g.metadata, lambda: g.search(_unit(6)[0], k=6), lambda: g.verify()):
        with pytest.raises(InputError, match=match) as e:
            read()
        assert "damaged" in str(e.value) and "rebuild" in str(e.value)


def _huge_png_header(side: int = 50_000) -> bytes:
    """A 57-byte PNG whose header declares side x side pixels (a decoder would allocate them all)."""
    import struct
    import zlib

    ihdr = b"IHDR" + struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    idat = b"IDAT" + zlib.compress(b"")
    return b"\x89PNG\r\n\x1a\n" + b"".join(
        struct.pack(">I", len(c) - 4) + c + struct.pack(">I", zlib.crc32(c)) for c in (ihdr, idat, b"IEND")
    )


def _gallery_with_a_huge_crop(tmp_path: Path) -> Path:
    g = Gallery(8)
    g.add(_unit(1), ids=["live"], crops=[np.full((32, 32, 3), 128, np.uint8)])
    version = g.save(tmp_path / "g")
    g.close()
    _sql(version, "UPDATE crops SET image = ?", _huge_png_header())
    return tmp_path / "g"


def test_a_stored_crop_declaring_a_huge_size_is_one_error_not_a_decode(tmp_path):
    g = Gallery.load(_gallery_with_a_huge_crop(tmp_path))
    with pytest.raises(InputError, match=r"stored crop of gallery item 'live' is a PNG of 50000 x 50000 pixels"):
        g.image("live")


@pytest.mark.torch
def test_rebuilding_from_a_stored_crop_declaring_a_huge_size_is_one_error_and_keeps_the_gallery(model, tmp_path):
    root = _gallery_with_a_huge_crop(tmp_path)
    before = sorted(p.name for p in root.iterdir())  # no new version folder is written
    r = runner.invoke(app, ["gallery", "rebuild", str(root), "--model", str(model)])
    assert r.exit_code == 1 and "50000 x 50000" in r.output and "Traceback" not in r.output, r.output
    assert len([ln for ln in r.output.splitlines() if ln.startswith("Error:")]) == 1
    assert sorted(p.name for p in root.iterdir()) == before and Gallery.load(root).ids == ["live"]


def test_metadata_nested_too_deep_is_refused_by_add(tmp_path):
    deep: list = []
    for _ in range(200_000):
        deep = [deep]
    g = Gallery(8)
    with pytest.raises(InputError, match="nested"):
        g.add(_unit(1), metadata=[{"x": deep}])
    assert len(g) == 0


@pytest.mark.parametrize(
    "content, match",
    [
        (("[" * 200_000 + "]" * 200_000).encode(), "nested"),
        (b'{"arch": "resnet18", "method": "caf\xe9"}', "UTF-8"),  # Latin-1, not UTF-8
    ],
    ids=["nested 200k deep", "not UTF-8"],
)
def test_a_damaged_model_sidecar_is_one_error(content, match, tmp_path):
    from lcr_sdk.errors import ModelError
    from lcr_sdk.manifest import read_manifest

    (tmp_path / "m.onnx").write_bytes(b"not read: the sidecar is")
    (tmp_path / "m.onnx.json").write_bytes(content)
    with pytest.raises(ModelError, match=match):
        read_manifest(tmp_path / "m.onnx")


def test_gallery_info_json_never_prints_a_stored_nan(tmp_path):
    root, version = _saved(tmp_path)
    _set_calibration(version, threshold=float("nan"))
    r = runner.invoke(app, ["gallery", "info", str(root), "--json"])
    assert r.exit_code == 1 and "NaN" not in r.stdout and "calibration" in r.output
    assert len([ln for ln in r.output.splitlines() if ln.startswith("Error:")]) == 1


# -- save targets, locks, permissions ------------------------------------------------------------------------------


def test_save_refuses_a_file_a_foreign_folder_and_an_unasked_replace(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        Gallery(8).save(tmp_path / "file")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "keep.txt").write_text("x")
    with pytest.raises(InputError, match="not a gallery"):
        Gallery(8).save(tmp_path / "docs")
    root, _ = _saved(tmp_path)
    small = Gallery(8)
    small.add(_unit(1))
    with pytest.raises(InputError, match="replace=True"):
        small.save(root, replace=False)
    assert len(Gallery.load(root)) == 6 and (tmp_path / "docs" / "keep.txt").exists()


def test_commit_without_a_saved_gallery_says_to_save():
    g = Gallery(8)
    g.add(_unit(1))
    with pytest.raises(InputError, match="save"):
        g.commit()


@pytest.mark.skipif(not hasattr(os, "umask"), reason="POSIX permissions")
def test_gallery_files_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        g = Gallery(8)
        g.add(_unit(4), labels=["a", "a", "b", "b"])
        g.save(tmp_path / "g")
        g.add(_unit(1, seed=3), labels=["a"])
        g.commit()
    finally:
        os.umask(old)
    paths = [p for p in (tmp_path / "g").rglob("*")] + [tmp_path / "g"]
    assert any(p.name == "gallery.db" for p in paths) and any(p.name == "CURRENT" for p in paths)
    for p in paths:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode & 0o044 == 0o044, (p, oct(mode))  # group and others may read
        if p.is_dir():
            assert mode & 0o011 == 0o011, (p, oct(mode))  # ... and enter folders


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to run as another user")
def test_another_user_can_read_and_search_a_gallery_it_cannot_write(tmp_path):
    """The service-user case: a gallery made by one user (umask 022) is loaded and searched by another."""
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="lcr-gallery-share-"))
    try:
        os.chmod(base, 0o755)
        old = os.umask(0o022)
        try:
            g = Gallery(8)
            g.add(_unit(5), ids=[f"i{i}" for i in range(5)], labels=["a", "b", "a", "b", "a"])
            g.save(base / "g")
            g.close()
        finally:
            os.umask(old)
        # everything is imported as root (the interpreter lives in root's home), then the process becomes nobody
        code = (
            "import os, fcntl, mmap, numpy as np; from lcr_sdk.gallery import Gallery; "
            "os.setgid(65534); os.setuid(65534); g = Gallery.load({!r}); "
            "v = np.asarray(g.vectors[2], np.float32); print(g.search(v, k=1)[0].id, len(g), os.getuid())"
        ).format(str(base / "g"))
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/tmp")
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["i2", "5", "65534"]
    finally:
        import shutil

        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_full_disk_during_commit_is_one_error_and_keeps_everything(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs is not allowed here")
    try:
        g = Gallery(256)
        g.add(_unit(200, 256), labels=["a", "b"] * 100)
        g.save(mnt / "g")
        g.add(_unit(4000, 256, seed=1), labels=["c"] * 4000)  # 4 MB of vectors: more than the disk holds
        with pytest.raises(InputError, match=r"disk is full \(.* MiB free\)") as e:
            g.commit()
        assert "\n" not in str(e.value)
        assert g.pending == 4000 and len(Gallery.load(mnt / "g")) == 200  # committed state and pending both kept
        big = Gallery(256)
        big.add(_unit(5000, 256, seed=2))
        with pytest.raises(InputError, match=r"disk is full \(.* MiB free\)"):
            big.save(mnt / "g")  # a whole new version that does not fit: the old one stays
        assert len(Gallery.load(mnt / "g")) == 200 and sorted(p.name for p in (mnt / "g").iterdir())[1:] == [
            "CURRENT",
            (mnt / "g" / "CURRENT").read_text().strip(),
        ]
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _mount_small_disk(mnt: Path, size: str) -> None:
    """A real small file system at ``mnt`` (a tmpfs of ``size``); the test is skipped where it cannot be mounted."""
    mnt.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True
    ).returncode:
        pytest.skip("mounting a tmpfs is not allowed here")


def _save_six(root: Path) -> None:
    """Save a gallery of six items (ids i0..i5, labels a and b) at ``root`` and close it."""
    g = Gallery(8)
    g.add(_unit(6), ids=[f"i{i}" for i in range(6)], labels=["a", "b"] * 3)
    g.save(root)
    g.close()


def _fill_disk(mnt: Path) -> Path:
    """Fill the file system at ``mnt`` to the last byte; returns the file that holds the space."""
    filler = mnt / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_gallery_on_a_full_disk_loads_and_searches_and_a_write_is_the_full_disk_error(tmp_path):
    """SQLite cannot create a WAL database's shared-memory file on a full disk: reading still works (as for
    read-only media), a write is the full-disk error, and once space is freed the same gallery commits."""
    mnt = tmp_path / "small"
    _mount_small_disk(mnt, "1m")
    try:
        _save_six(mnt / "g")
        filler = _fill_disk(mnt)
        g = Gallery.load(mnt / "g")
        assert len(g) == 6 and g.search(_unit(6)[2], k=1)[0].id == "i2" and g.info()["items"] == 6
        r = runner.invoke(app, ["gallery", "info", str(mnt / "g"), "--json"])
        assert r.exit_code == 0 and json.loads(r.stdout)["items"] == 6, r.output
        with pytest.raises(InputError, match=r"without ids .* the disk is full .* pass ids=\[\.\.\.\]"):
            g.add(_unit(1, seed=8))  # automatic ids are reserved in the gallery's files
        assert g.pending == 0
        g.add(_unit(1, seed=7), ids=["new"])
        with pytest.raises(InputError, match=r"disk is full \(.* MiB free\); free space and try again") as e:
            g.commit()
        assert "\n" not in str(e.value) and "access" not in str(e.value) and g.pending == 1
        filler.unlink()  # space freed: the gallery loaded on the full disk now commits
        g.commit()
        assert sorted(Gallery.load(mnt / "g").ids) == sorted([f"i{i}" for i in range(6)] + ["new"])
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_gallery_without_its_lock_file_loads_where_no_file_can_be_created(tmp_path):
    """A gallery copied without its hidden lock file onto a disk with no free inode: no file can be created (neither
    the lock nor SQLite's shared-memory file), yet it loads and searches; a write is the full-disk error."""
    mnt = tmp_path / "small"
    _mount_small_disk(mnt, "1m,nr_inodes=32")
    try:
        _save_six(mnt / "g")
        (mnt / "g" / ".lock").unlink()
        n = 0
        with pytest.raises(OSError, match="No space left"):
            while True:  # every inode taken: the next file cannot be created
                (mnt / f"f{n}").touch()
                n += 1
        g = Gallery.load(mnt / "g")
        assert len(g) == 6 and g.search(_unit(6)[4], k=1)[0].id == "i4"
        g.add(_unit(1, seed=7), ids=["new"])
        with pytest.raises(InputError, match=r"the disk is full \(.* MiB free\).*free space and try again") as e:
            g.commit()
        assert "writable by this user" not in str(e.value) and g.pending == 1
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_gallery_that_cannot_be_read_on_a_full_disk_says_the_disk_is_full(tmp_path):
    """Commits still in the WAL (a writer that stopped without closing) need SQLite's shared-memory file to be read:
    on a full disk without one the error says the disk is full, not that permissions are missing."""
    mnt = tmp_path / "small"
    _mount_small_disk(mnt, "1m")
    try:
        _save_six(mnt / "g")
        code = (
            "import os, numpy as np; from lcr_sdk.gallery import Gallery; g = Gallery.load({!r}); "
            "g.add(np.eye(8, dtype=np.float32)[0], ids=['late']); g.commit(); os._exit(0)"  # no close: WAL kept
        ).format(str(mnt / "g"))
        subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
        version = mnt / "g" / (mnt / "g" / "CURRENT").read_text().strip()
        assert (version / "gallery.db-wal").stat().st_size > 0
        (version / "gallery.db-shm").unlink()  # as in a copy made while the writer ran
        _fill_disk(mnt)
        with pytest.raises(InputError, match=r"the disk is full \(.* MiB free\).*free some space") as e:
            Gallery.load(mnt / "g")
        assert "access" not in str(e.value) and "\n" not in str(e.value)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_first_save_that_fails_at_its_last_step_can_be_retried(tmp_path, monkeypatch):
    # the disk fills exactly when CURRENT (the commit point) is written: the version folder written before it must
    # not stay in the way of the retry the error asks for
    import errno

    from lcr_sdk.gallery import store

    real = store.atomic_write_text

    def full(path, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    g = Gallery(8)
    g.add(_unit(3))
    monkeypatch.setattr(store, "atomic_write_text", full)
    with pytest.raises(InputError, match="disk is full.*try again"):
        g.save(tmp_path / "g")
    assert [p.name for p in (tmp_path / "g").iterdir() if not p.name.startswith(".")] == []
    monkeypatch.setattr(store, "atomic_write_text", real)
    g.save(tmp_path / "g")
    assert len(Gallery.load(tmp_path / "g")) == 3


def test_a_full_disk_quota_during_commit_is_the_full_disk_error(tmp_path, monkeypatch):
    # no quota can be set up here: the vector file's append (os.pwrite, the lowest-level write of a commit) fails
    # with EDQUOT as it does on a filesystem whose user quota is used up
    import errno

    from lcr_sdk.gallery import store

    monkeypatch.setattr(store, "TAIL_ROWS", 2)  # the next commit appends the tail to the vector file
    root, _ = _saved(tmp_path)
    g = Gallery.load(root)
    g.add(_unit(2, seed=3), ids=["n1", "n2"])
    real = os.pwrite

    def over_quota(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    monkeypatch.setattr(os, "pwrite", over_quota)
    # the items' commit (SQLite) went through; only the move into the vector file after it failed: a warning that
    # says so, not an error saying nothing was written
    with pytest.warns(UserWarning, match=r"disk is full \(.* MiB free.*quota.*the changes are committed") as w:
        g.commit()
    assert "\n" not in str(w[0].message) and g.pending == 0
    monkeypatch.setattr(os, "pwrite", real)
    assert sorted(Gallery.load(root).ids) == sorted([f"i{i}" for i in range(6)] + ["n1", "n2"])  # nothing lost
    g.add(_unit(1, seed=4), ids=["n3"])
    g.commit()  # the next commit does the upkeep: the tail reaches the vector file
    again = Gallery.load(root)
    assert len(again) == 9 and again._contents.saved.meta.synced == again._contents.saved.meta.count


# -- the CLI and the build example ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(lcr_checkpoint, tmp_path_factory) -> Path:
    from model_helpers import export_onnx

    return export_onnx(lcr_checkpoint, tmp_path_factory.mktemp("rob_gallery") / "lcr.onnx")


@pytest.fixture
def built(model, synth_root, tmp_path) -> Path:
    out = tmp_path / "g"
    r = runner.invoke(app, ["gallery", "build", str(model), str(synth_root / "test"), "--out", str(out)])
    assert r.exit_code == 0, r.output
    return out


def _intact(gallery: Path, n: int = 16) -> None:
    g = Gallery.load(gallery)
    assert len(g) == n and g.labels.count(g.labels[0]) == 4


@pytest.mark.torch
@pytest.mark.parametrize(
    "extra, code, match",
    [
        (["--batch", "-1"], 2, "--batch"),
        (["--batch", "0"], 2, "--batch"),
        ([], 1, "--replace"),
        (["--replace", "--index", "faiss:Bogus"], 1, "FAISS factory"),
        (["--replace", "--dtype", "int8"], 1, "--dtype"),
        (["--replace", "--quality", "maybe"], 1, "--quality"),
        (["--replace", "--max-spread", "0"], 1, "--max-spread"),
    ],
    ids=["batch -1", "batch 0", "existing without --replace", "bad factory", "dtype", "quality", "max-spread"],
)
def test_gallery_build_refuses_bad_options_before_touching_the_gallery(built, model, synth_root, extra, code, match):
    r = runner.invoke(app, ["gallery", "build", str(model), str(synth_root / "train"), "--out", str(built), *extra])
    assert r.exit_code == code, r.output
    assert match in r.output and "Traceback" not in r.output
    _intact(built)


@pytest.mark.torch
def test_gallery_build_with_a_non_utf8_file_name_fails_before_embedding(model, synth_root, tmp_path, monkeypatch):
    import shutil

    from lcr_sdk.embedder import Embedder

    data = tmp_path / "data"
    shutil.copytree(synth_root / "test", data)
    src = (
        next((data / "c00_spike_single-bar_fan").glob("*.png"))
        if (data / "c00_spike_single-bar_fan").is_dir()
        else (next(data.glob("*/*.png")))
    )
    os.rename(bytes(src), bytes(src.parent) + b"/caf\xe9.png")  # a Latin-1 name, not UTF-8
    calls = []
    monkeypatch.setattr(Embedder, "embed", lambda self, *a, **k: calls.append(1))
    monkeypatch.setattr(Embedder, "infer", lambda self, *a, **k: calls.append(1))
    r = runner.invoke(app, ["gallery", "build", str(model), str(data), "--out", str(tmp_path / "g")])
    assert r.exit_code == 1 and "not valid UTF-8" in r.output and "convmv" in r.output, r.output
    assert "--on-bad skip" in r.output and "another id" not in r.output  # a way out a command-line user has
    assert calls == [] and not (tmp_path / "g").exists()  # refused before any image was embedded
    monkeypatch.undo()
    r = runner.invoke(
        app, ["gallery", "build", str(model), str(data), "--out", str(tmp_path / "g"), "--on-bad", "skip"]
    )
    assert r.exit_code == 0 and "1 unreadable image(s) left out" in r.output and "not valid UTF-8" in r.output
    assert "caf\\\\udce9.png" in r.output and "--on-bad skip (" not in r.output.split("left out")[1]


@pytest.mark.torch
def test_unreadable_images_stop_a_build_or_are_left_out_and_listed(model, synth_root, tmp_path):
    import shutil

    data = Path(shutil.copytree(synth_root / "test", tmp_path / "data"))
    label = sorted(p.name for p in data.iterdir())[0]
    (data / label / "empty.png").write_bytes(b"")
    (data / label / "text.jpg").write_text("not an image")
    r = runner.invoke(app, ["gallery", "build", str(model), str(data), "--out", str(tmp_path / "g")])
    assert r.exit_code == 1 and "--on-bad skip" in r.output and "Traceback" not in r.output, r.output
    assert "empty.png" in r.output and not (tmp_path / "g").exists()
    r = runner.invoke(
        app, ["gallery", "build", str(model), str(data), "--out", str(tmp_path / "g"), "--on-bad", "skip"]
    )
    assert r.exit_code == 0, r.output
    assert "2 unreadable image(s) left out (--on-bad skip): " in r.stderr
    assert f"{label}/empty.png" in r.stderr and f"{label}/text.jpg" in r.stderr
    g = Gallery.load(tmp_path / "g")
    assert len(g) == 16 and not any(i.endswith(("empty.png", "text.jpg")) for i in g.ids)
    r = runner.invoke(app, ["gallery", "build", str(model), str(data), "--out", str(tmp_path / "h"), "--on-bad", "x"])
    assert r.exit_code == 1 and "--on-bad 'x' is not valid; choose one of fail, skip" in r.output


@pytest.mark.torch
def test_a_gallery_that_cannot_be_written_is_refused_before_any_image_is_embedded(
    built, model, synth_root, readonly, monkeypatch
):
    from lcr_sdk.embedder import Embedder

    calls = []
    monkeypatch.setattr(Embedder, "embed", lambda self, *a, **k: calls.append(1))  # must never be reached
    r = runner.invoke(app, ["gallery", "build", str(model), str(synth_root / "test"), "--out", str(readonly / "g")])
    assert r.exit_code == 1 and f"cannot write the gallery {readonly / 'g'}" in r.output, r.output
    assert "not writable" in r.output and calls == []
    r = runner.invoke(app, ["gallery", "rebuild", str(built), "--model", str(model), "--out", str(readonly / "g2")])
    assert r.exit_code == 1 and "not writable" in r.output and calls == [], r.output


@pytest.mark.torch
@pytest.mark.parametrize(
    "extra, code, match",
    [
        (["--threshold", "5"], 1, "--threshold"),
        (["--where", "shop"], 1, "KEY=VALUE"),
        (["--where", "shop=[1,2]"], 1, "only str, number"),
        (["--explain", "why.txt"], 1, ".png or .jpg"),
        (["--explain", "/nonexistent/dir/why.png"], 1, "does not exist"),
        (["-k", "0"], 2, "-k"),
    ],
    ids=["threshold", "where no =", "where list", "explain suffix", "explain folder", "k 0"],
)
def test_gallery_search_refuses_bad_options(built, model, synth_root, extra, code, match):
    query = next((synth_root / "test").glob("*/*.png"))
    r = runner.invoke(app, ["gallery", "search", str(built), str(model), str(query), *extra])
    assert r.exit_code == code and match in r.output and "Traceback" not in r.output, r.output


@pytest.mark.torch
def test_gallery_search_on_a_damaged_gallery_is_one_line(built, model, synth_root):
    version = built / (built / "CURRENT").read_text().strip()
    _scale_vectors(version, 2.0)
    query = next((synth_root / "test").glob("*/*.png"))
    r = runner.invoke(app, ["gallery", "search", str(built), str(model), str(query)])
    assert r.exit_code == 1 and "damaged" in r.output and "Traceback" not in r.output
    assert len([ln for ln in r.output.splitlines() if ln.startswith("Error:")]) == 1


@pytest.mark.torch
def test_a_faiss_index_without_faiss_is_refused_before_any_image_is_embedded(model, synth_root, tmp_path):
    """Where FAISS is not installed (blocked in a process of its own, as a missing package), a FAISS build stops at
    once naming the extra: no image is read or embedded and no folder is made."""
    out = tmp_path / "g"
    block = "import sys; sys.modules['faiss'] = None\n"
    cli = block + "from lcr_sdk.cli import main; sys.argv = ['lcr-sdk', *sys.argv[1:]]; main()"
    args = ["gallery", "build", str(model), str(synth_root / "test"), "--out", str(out), "--index", "faiss:HNSW32"]
    r = subprocess.run([sys.executable, "-c", cli, *args], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and r.stderr.startswith("Error: ") and r.stderr.count("\n") == 1, r.stderr
    assert "--index 'faiss:HNSW32' needs 'faiss'" in r.stderr and "pip install 'lcr-sdk[faiss]'" in r.stderr
    assert "--index exact" in r.stderr and "embedding" not in r.stderr and not out.exists()
    library = block + (
        "from lcr_sdk.embedder import Embedder\n"
        "from lcr_sdk.errors import MissingDependencyError\n"
        "from lcr_sdk.gallery import build_from_folder\n"
        "read = []\n"
        "with Embedder(sys.argv[1]) as emb:\n"
        "    prepare = emb.prepare\n"
        "    emb.prepare = lambda *a, **k: read.append(1) or prepare(*a, **k)\n"
        "    try:\n"
        "        build_from_folder(emb, sys.argv[2], index='faiss', progress=False)\n"
        "    except MissingDependencyError as e:\n"
        "        print(len(read), e)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", library, str(model), str(synth_root / "test")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0 and r.stdout.startswith("0 index 'faiss' needs 'faiss'"), r.stdout + r.stderr


@pytest.mark.torch
def test_an_explanation_is_never_written_over_the_gallerys_images(model, synth_root, tmp_path):
    """--explain naming an item's own image (or any path under the image root, or in the gallery folder) is refused
    before the model runs: the composite would stand in for the item's image at every later explanation and
    rebuild."""
    import shutil

    data = Path(shutil.copytree(synth_root / "test", tmp_path / "data"))
    out = tmp_path / "g"
    assert runner.invoke(app, ["gallery", "build", str(model), str(data), "--out", str(out)]).exit_code == 0
    images = sorted(data.glob("*/*.png"))
    query, item = images[0], images[-1]
    before = item.read_bytes()
    for target, where in (
        (item, "inside the gallery's image root"),
        (data / "why.png", "inside the gallery's image root"),
        (out / "why.png", "inside the gallery folder"),
    ):
        r = runner.invoke(
            app, ["gallery", "search", str(out), str(model), str(query), "-k", "1", "--explain", str(target)]
        )
        assert r.exit_code == 1 and where in r.output and "write the picture elsewhere" in r.output, r.output
    assert item.read_bytes() == before and not (data / "why.png").exists() and not (out / "why.png").exists()
    moved = Path(shutil.copytree(data, tmp_path / "moved"))  # the root given with --image-root counts as well
    r = runner.invoke(
        app,
        [
            "gallery",
            "search",
            str(out),
            str(model),
            str(query),
            "--explain",
            str(moved / "why.png"),
            "--image-root",
            str(moved),
        ],
    )
    assert r.exit_code == 1 and "inside the gallery's image root" in r.output, r.output
    r = runner.invoke(
        app, ["gallery", "search", str(out), str(model), str(query), "--explain", str(tmp_path / "w.png")]
    )
    assert r.exit_code == 0 and (tmp_path / "w.png").is_file(), r.output


@pytest.mark.torch
def test_a_gallery_copied_with_its_images_to_another_place_finds_them_with_image_root(model, synth_root, tmp_path):
    """A gallery records where it was built from; copied to a device with its images, --image-root points search
    --explain and rebuild at the images' new place, and a missing item image names the item and that option."""
    import shutil

    data = Path(shutil.copytree(synth_root / "test", tmp_path / "data"))
    assert runner.invoke(app, ["gallery", "build", str(model), str(data), "--out", str(tmp_path / "g")]).exit_code == 0
    device = tmp_path / "device"
    gallery = Path(shutil.copytree(tmp_path / "g", device / "g"))
    images = Path(shutil.copytree(data, device / "images"))
    shutil.rmtree(data)  # the build machine's folder is not on the device
    query = sorted(images.glob("*/*.png"))[0]
    search = [
        "gallery",
        "search",
        str(gallery),
        str(model),
        str(query),
        "-k",
        "2",
        "--explain",
        str(tmp_path / "w.png"),
    ]
    r = runner.invoke(app, search)
    assert r.exit_code == 1 and "--image-root DIR" in r.output and "gallery item '" in r.output, r.output
    assert "pass the path of a readable image" not in r.output and not (tmp_path / "w.png").exists()
    r = runner.invoke(app, [*search, "--image-root", str(tmp_path / "nowhere")])
    assert r.exit_code == 1 and "--image-root" in r.output and "does not exist" in r.output, r.output
    r = runner.invoke(app, [*search, "--image-root", str(images)])
    assert r.exit_code == 0 and (tmp_path / "w.png").is_file(), r.output
    assert Gallery.load(gallery).image_root == str(data.resolve())  # a search records nothing
    rebuild = ["gallery", "rebuild", str(gallery), "--model", str(model)]
    for extra in ([], ["--skip-missing"]):  # skipping would leave out every item: refused as well
        r = runner.invoke(app, [*rebuild, *extra])
        assert r.exit_code == 1 and "--image-root DIR" in r.output and "gallery item '" in r.output, r.output
        assert len(Gallery.load(gallery)) == 16
    r = runner.invoke(app, [*rebuild, "--image-root", str(images), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["items"] == 16, r.output
    assert Gallery.load(gallery).image_root == str(images.resolve())  # a rebuild records where the images are
    assert runner.invoke(app, search).exit_code == 0


@pytest.mark.torch
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_build_or_rebuild_on_a_full_disk_says_what_it_left_and_what_to_run(model, synth_root, tmp_path):
    """A command has no pending changes to keep: its full-disk line says that nothing was written (and no folder is
    left), or that the gallery there is unchanged, and to run the command again once there is space."""
    mnt = tmp_path / "small"
    _mount_small_disk(mnt, "1m")
    try:
        build = ["gallery", "build", str(model), str(synth_root / "test")]
        assert runner.invoke(app, [*build, "--out", str(mnt / "g")]).exit_code == 0
        (mnt / "empty").mkdir()
        _fill_disk(mnt)
        r = runner.invoke(app, [*build, "--out", str(mnt / "new" / "g")])
        lines = [ln for ln in r.output.splitlines() if ln.startswith("Error: ")]
        assert r.exit_code == 1 and len(lines) == 1 and "disk is full" in lines[0], r.output
        assert f"nothing was written to {mnt / 'new' / 'g'}: free space and run the build again" in lines[0]
        assert "pending" not in r.output and not (mnt / "new").exists()
        r = runner.invoke(app, [*build, "--out", str(mnt / "empty")])  # an empty folder is left as it was
        assert r.exit_code == 1 and f"nothing was written to {mnt / 'empty'}: free space" in r.output, r.output
        assert list((mnt / "empty").iterdir()) == []
        r = runner.invoke(app, [*build, "--out", str(mnt / "g"), "--replace"])
        assert r.exit_code == 1 and f"the gallery at {mnt / 'g'} is unchanged: free space and run the build" in r.output
        r = runner.invoke(app, ["gallery", "rebuild", str(mnt / "g"), "--model", str(model)])
        assert r.exit_code == 1 and "is unchanged: free space and run the rebuild again" in r.output, r.output
        assert "pending" not in r.output and len(Gallery.load(mnt / "g")) == 16
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.torch
def test_gallery_rebuild_with_missing_images_refuses_before_work_then_skips_when_asked(model, synth_root, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synth_root / "test", data)
    out = tmp_path / "g"
    assert runner.invoke(app, ["gallery", "build", str(model), str(data), "--out", str(out)]).exit_code == 0
    gone = sorted(data.glob("*/*.png"))[:3]
    for p in gone:
        p.unlink()
    r = runner.invoke(app, ["gallery", "rebuild", str(out), "--model", str(model)])
    assert r.exit_code == 1 and "3 of 16 items have no image" in r.output and "--skip-missing" in r.output
    assert len(Gallery.load(out)) == 16
    r = runner.invoke(app, ["gallery", "rebuild", str(out), "--model", str(model), "--skip-missing", "--json"])
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.output)["skipped"]) == 3 and len(Gallery.load(out)) == 13


@pytest.mark.torch
def test_rebuilding_a_format_1_gallery_in_place_while_another_process_commits_loses_nothing(
    model, synth_root, tmp_path
):
    from lcr_sdk.embedder import Embedder
    from lcr_sdk.gallery.legacy import write_v1

    folder = synth_root / "test"
    images = sorted(folder.glob("*/*.png"))[:4]
    rel = [p.relative_to(folder).as_posix() for p in images]
    root = tmp_path / "g"
    labels = [p.parent.name for p in images]
    write_v1(root, _unit(4), rel, labels, [{"path": r} for r in rel], image_root=str(folder))
    g = Gallery.load(root)

    class CommitsMeanwhile:
        """The real embedder; while its first batch is embedded, another process commits to the gallery."""

        def __init__(self, emb: Embedder):
            self.emb, self.manifest, self.model_id, self.done = emb, emb.manifest, emb.model_id, False

        def embed(self, imgs: list) -> np.ndarray:
            if not self.done:
                other = Gallery.load(root)
                other.add(_unit(1, seed=9), ids=["meanwhile"])
                other.commit()
                self.done = True
            return self.emb.embed(imgs)

    with Embedder(model) as emb:
        with pytest.raises(InputError, match="changed while it was re-embedded"):
            g.rebuild(CommitsMeanwhile(emb), progress=False)
    assert sorted(Gallery.load(root).ids) == sorted([*rel, "meanwhile"])  # the other commit stands


@pytest.mark.torch
@pytest.mark.parametrize(
    "extra, code, match",
    [(["--batch", "0"], 2, "--batch"), (["--batch", "x"], 2, "--batch"), ([], 1, "--replace")],
    ids=["batch 0", "batch not a number", "existing without --replace"],
)
def test_build_example_refuses_bad_options(built, model, synth_root, extra, code, match):
    script = ROOT / "examples" / "build_gallery.py"
    r = subprocess.run(
        [sys.executable, str(script), str(model), str(synth_root / "train"), "--out", str(built), *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == code and match in r.stderr and "Traceback" not in r.stderr, r.stderr
    _intact(built)
