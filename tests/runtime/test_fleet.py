"""Fleet galleries against a real Milvus-protocol server (milvus-lite, started here on 127.0.0.1), beside the local
gallery: the same behaviour on both backends; the manifest check; offline devices and their sync (conflict rules,
and a sync killed at every step then run again)."""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from lcr_sdk.errors import InputError, LcrError, ModelError
from lcr_sdk.gallery import Gallery

if importlib.util.find_spec("pymilvus") is None or importlib.util.find_spec("milvus_lite") is None:
    pytest.skip("pymilvus / milvus-lite not installed (pip install 'lcr-sdk[fleet]')", allow_module_level=True)

from lcr_sdk.gallery import fleet as fleet_mod  # noqa: E402
from lcr_sdk.gallery.fleet import connect  # noqa: E402
from lcr_sdk.gallery.sync import state_path, sync  # noqa: E402

MODEL = "a" * 64


def _unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _die_with_parent() -> None:
    """The server gets SIGTERM when the test process dies (Linux), so it never outlives the tests."""
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serving(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`milvus-lite server` on a free loopback port, stopped after the module's tests (at most 60 s to start)."""
    data = tmp_path_factory.mktemp("milvus")
    log = open(data.parent / f"{data.name}.log", "w")  # noqa: SIM115 (open for the server's lifetime)
    for _ in range(3):  # a port taken between choosing and binding it: try another
        port = _free_port()
        cmd = [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(data), "--host", "127.0.0.1"]
        proc = subprocess.Popen(
            [*cmd, "--port", str(port), "--max-workers", "4"],
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + 60
        while proc.poll() is None and not _serving(port) and time.monotonic() < deadline:
            time.sleep(0.1)
        if proc.poll() is None and _serving(port):
            break
        proc.kill()
        proc.wait()
    else:
        pytest.fail(f"milvus-lite server did not start: {Path(log.name).read_text()[-2000:]}")
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


_names = iter(range(10**6))


def _collection() -> str:
    return f"t{next(_names)}_{int(time.time() * 1000) % 10**8}"


class Backend:
    """Makes galleries of one kind: ``local`` (a saved Gallery folder) or ``fleet`` (a collection on the server)."""

    def __init__(self, kind: str, server: str, tmp_path: Path):
        self.kind, self.server, self.tmp = kind, server, tmp_path
        self.where = ""

    def new(self, dim: int, model: str = ""):
        if self.kind == "local":
            g = Gallery(dim, model_sha256=model)
            self.where = str(self.tmp / f"g{next(_names)}")
            g.save(self.where)
            return g
        self.where = _collection()
        return connect(self.server, self.where, model=model or None, dim=dim)

    def reopen(self):
        """Another view of the same gallery (another process, another device)."""
        return Gallery.load(self.where) if self.kind == "local" else connect(self.server, self.where)


@pytest.fixture(params=["local", "fleet"])
def backend(request, server, tmp_path):
    return Backend(request.param, server, tmp_path)


# -- the same behaviour on both backends ----------------------------------------------------------------------------


def test_search_returns_nearest_by_cosine(backend):
    v = _unit(50, 16)
    g = backend.new(16, MODEL)
    g.add(
        v,
        ids=[str(i) for i in range(50)],
        labels=[f"c{i % 5}" for i in range(50)],
        metadata=[{"n": i} for i in range(50)],
    )
    g.commit()
    hits = g.search(v[7], k=3)
    assert hits[0].id == "7" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[0].label == "c2" and hits[0].metadata == {"n": 7}
    assert [h.id for h in hits] == [str(i) for i in np.argsort(-(v @ v[7]))[:3]]
    assert [h.score for h in hits] == pytest.approx(sorted(v @ v[7], reverse=True)[:3], abs=1e-5)
    many = g.search(v[:4] * 3.0, k=2)  # queries are normalised
    assert [row[0].id for row in many] == ["0", "1", "2", "3"]


def test_add_remove_and_ids(backend):
    g = backend.new(8)
    g.add(_unit(3, 8), ids=["x", "y", "z"], labels=["A", "B", "C"])
    g.commit()
    with pytest.raises(InputError, match="already in the gallery"):
        g.add(_unit(1, 8), ids=["y"])
    with pytest.raises(InputError, match="repeat"):
        g.add(_unit(2, 8), ids=["q", "q"])
    assert g.remove(["y"]) == 1 and sorted(g.ids) == ["x", "z"] and len(g) == 2
    assert [h.id for h in g.search(g.vector("z"), k=1)] == ["z"]
    with pytest.raises(InputError, match="not in the gallery"):
        g.remove("nope")
    new = g.add(_unit(2, 8, seed=3))  # automatic ids: new ones, never an id in use
    assert len(set(new)) == 2 and not set(new) & {"x", "y", "z"}
    g.commit()
    assert sorted(backend.reopen().ids) == sorted(["x", "z", *new])


def test_changes_are_pending_until_commit_and_searched_meanwhile(backend):
    v = _unit(6, 8, seed=1)
    g = backend.new(8)
    g.add(v[:3], ids=["a", "b", "c"])
    g.commit()
    g.add(v[3:], ids=["d", "e", "f"])
    g.remove(["a"])
    assert g.pending == 4 and len(g) == 5
    assert g.search(v[4], k=1)[0].id == "e" and "a" not in {h.id for h in g.search(v[0], k=6)}  # seen here ...
    other = backend.reopen()
    assert sorted(other.ids) == ["a", "b", "c"]  # ... not elsewhere
    g.commit()
    other = backend.reopen()
    assert sorted(other.ids) == ["b", "c", "d", "e", "f"] and other.search(v[5], k=1)[0].id == "f"


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((2, 7), np.float32), r"\(N, 8\)"),
        (np.zeros((2, 8), np.float32), "zero, NaN"),
        (np.full((1, 8), np.nan, np.float32), "zero, NaN"),
    ],
)
def test_bad_input_changes_nothing(backend, bad, match):
    g = backend.new(8)
    with pytest.raises(InputError, match=match):
        g.add(bad)
    g.add(_unit(2, 8), ids=["a", "b"])
    with pytest.raises(InputError, match=match):
        g.search(bad)
    with pytest.raises(InputError, match="k must"):
        g.search(_unit(1, 8)[0], k=0)
    with pytest.raises(InputError, match="JSON"):
        g.add(_unit(1, 8), ids=["c"], metadata=[{"f": object()}])
    with pytest.raises(InputError, match="1 vectors but 2 ids"):
        g.add(_unit(1, 8), ids=["c", "d"])
    with pytest.raises(InputError, match="1 vectors but 0 ids"):  # an empty list is a count, not "make ids"
        g.add(_unit(1, 8), ids=[])
    assert sorted(g.ids) == ["a", "b"] and g.pending == 2


def test_filters_by_label_and_metadata(backend):
    v = _unit(60, 16)
    g = backend.new(16)
    ids = [str(i) for i in range(60)]
    labels = [f"c{i % 4}" for i in range(60)]
    g.add(v[:40], ids=ids[:40], labels=labels[:40], metadata=[{"shop": i % 3, "cam": "gate"} for i in range(40)])
    g.commit()
    g.add(v[40:], ids=ids[40:], labels=labels[40:], metadata=[{"shop": i % 3} for i in range(40, 60)])
    q = v[41]  # a pending item: filters see committed and pending items alike
    hits = g.search(q, k=60, label="c1")
    assert {h.label for h in hits} == {"c1"} and len(hits) == 15 and hits[0].id == "41"
    hits = g.search(q, k=60, label=["c1", "c2"], where={"shop": 2})
    assert {h.id for h in hits} == {str(i) for i in range(60) if i % 4 in (1, 2) and i % 3 == 2}
    assert g.search(q, k=5, where={"cam": "gate", "shop": 0})[0].metadata == {"shop": 0, "cam": "gate"}
    assert g.search(q, k=5, where={"shop": "0"}) == []  # values match as JSON text: 0 and "0" differ
    assert g.search(q, k=5, label="nobody") == []
    with pytest.raises(InputError, match="indexed"):
        g.search(q, where={"shop": [1, 2]})
    g.remove(["41"])
    assert "41" not in {h.id for h in g.search(q, k=60, label="c1")}


def test_filter_values_match_as_json_text(backend):
    """Milvus compares JSON numbers by value and true == 1; both backends keep the local gallery's rule."""
    v = _unit(4, 8, seed=2)
    g = backend.new(8)
    meta = [{"x": 1}, {"x": 1.0}, {"x": True}, {"x": None}]
    g.add(v, ids=["int", "float", "bool", "null"], metadata=meta)
    g.commit()
    assert [h.id for h in g.search(v[0], k=4, where={"x": 1})] == ["int"]
    assert [h.id for h in g.search(v[0], k=4, where={"x": 1.0})] == ["float"]
    assert [h.id for h in g.search(v[0], k=4, where={"x": True})] == ["bool"]
    assert [h.id for h in g.search(v[0], k=4, where={"x": None})] == ["null"]


def _clustered(labels: int, per: int, d: int = 32, spread: float = 0.25, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = _unit(labels, d, seed=seed + 1)
    noise = rng.standard_normal((labels * per, d)).astype(np.float32) / np.sqrt(d)
    v = np.repeat(centres, per, axis=0) + spread * noise
    return v / np.linalg.norm(v, axis=1, keepdims=True), [f"L{i}" for i in range(labels) for _ in range(per)]


def test_open_set_threshold_says_unknown_for_labels_not_in_the_gallery(backend):
    v, labels = _clustered(12, 10)
    g = backend.new(32)
    g.add(v[:100], ids=[str(i) for i in range(100)], labels=labels[:100])  # L0..L9 enrolled; L10, L11 are not
    g.commit()
    cal = g.calibration
    assert cal is not None and cal.threshold is not None and cal.genuine > 50 and cal.impostor > 50
    known, unknown = v[:100:10], v[100:]
    assert all(hits for hits in g.search(known, k=3, threshold="auto"))
    assert all(row == [] for row in g.search(unknown, k=3, threshold="auto"))
    assert all(row for row in g.search(unknown, k=3))  # without a threshold: the nearest wrong label
    assert g.search(unknown[0], k=3, threshold=0.999) == [] and g.search(unknown[0], k=3, threshold=-1.0)
    assert g.search(unknown[0], k=3, threshold="0.999") == [] and g.search(unknown[0], k=3, threshold="-1")  # as text
    with pytest.raises(InputError, match="threshold"):
        g.search(known, threshold=2.0)


def test_a_one_label_collection_warns_under_auto_and_calibrates_when_a_second_label_comes(backend):
    v, labels = _clustered(2, 4)
    g = backend.new(32)
    g.add(v[:4], ids=[str(i) for i in range(4)], labels=labels[:4])
    g.commit()
    with pytest.warns(UserWarning, match="no calibrated threshold") as w:
        assert g.search(v[5], k=2, threshold="auto")
    assert w[0].filename == __file__
    g.add(v[4:], ids=[str(i) for i in range(4, 8)], labels=labels[4:])
    g.commit()
    assert g.threshold is not None


def test_calibration_is_stored_with_the_gallery(backend):
    v, labels = _clustered(10, 10)
    g = backend.new(32)
    g.add(v[:60], ids=[str(i) for i in range(60)], labels=labels[:60])
    g.commit()
    first = g.calibration
    again = backend.reopen().calibration
    assert again == first  # read back, not recomputed (a recomputation would differ in its `seconds`)
    h = backend.reopen()
    h.add(v[60:100], ids=[str(i) for i in range(60, 100)], labels=labels[60:100])  # +67%: recalibrated at commit
    h.commit()
    assert backend.reopen().calibration.items == 100


def test_other_model_refused_unless_forced(backend):
    g = backend.new(8, MODEL)
    g.add(_unit(3, 8), ids=["a", "b", "c"])
    g.commit()
    with pytest.raises(ModelError, match="not comparable"):
        g.search(_unit(1, 8)[0], model="b" * 64)
    assert len(g.search(_unit(1, 8)[0], k=2, model="b" * 64, force=True)) == 2
    assert len(g.search(_unit(1, 8)[0], model=MODEL)) == 3


@pytest.fixture(scope="module")
def lcr_onnx(lcr_checkpoint, tmp_path_factory):
    from model_helpers import export_onnx

    return export_onnx(lcr_checkpoint, tmp_path_factory.mktemp("fleet_model") / "lcr.onnx")


@pytest.mark.torch
def test_explained_hits_from_stored_crops(backend, lcr_onnx, synth_root):
    """Enrolments keep their crops: a hit is explained on any device from the stored image alone."""
    from lcr_sdk import Embedder
    from lcr_sdk.images import read_image

    paths = sorted((synth_root / "train").glob("*/*.png"))[:6]
    with Embedder(lcr_onnx) as emb:
        g = backend.new(emb.manifest.embedding_dim, emb.model_id)
        for p in paths:
            g.enroll(emb, read_image(p), label=p.parent.name, id=p.name, quality="off")
        g.commit()
        other = backend.reopen()
        query = read_image(paths[2])
        hits = other.search(emb.embed(query), k=2, model=emb)
        assert hits[0].id == paths[2].name
        same = hits[0].explain(query, emb)
        assert same.score == pytest.approx(1.0, abs=1e-5) and len(same.parts) == emb.manifest.num_parts
        assert same.note == "" and all(p.query_peak == p.hit_peak for p in same.parts)
        diff = hits[1].explain(query, emb)
        assert diff.score == pytest.approx(hits[1].score, abs=1e-4)
        np.testing.assert_array_equal(other.image(paths[0].name), read_image(paths[0]))


# -- fleet only: the manifest, the server, the index -------------------------------------------------------------------


def test_collection_refuses_another_model_or_size_naming_both(server):
    name = _collection()
    connect(server, name, model=MODEL, dim=8).close()
    with pytest.raises(ModelError, match=r"built with model aaaaaaaaaaaa\.\.\. \(8-d.*this one is bbbbbbbbbbbb"):
        connect(server, name, model="b" * 64)
    with pytest.raises(ModelError, match=r"\(8-d embeddings\); this one is aaaaaaaaaaaa\.\.\. \(16-d\)"):
        connect(server, name, model=MODEL, dim=16)
    with pytest.raises(ModelError, match=r"\(8-d embeddings\); this one is \(16-d\)"):  # a size, no model given
        connect(server, name, dim=16)
    g = connect(server, name)  # no model given: the collection's own
    assert (g.dim, g.model_sha256) == (8, MODEL)
    with pytest.raises(InputError, match="pass model="):
        connect(server, _collection())
    with pytest.raises(InputError, match="has no collection"):
        connect(server, _collection(), dim=8, create=False)


def test_a_collection_that_is_not_a_gallery_is_refused(server):
    from pymilvus import MilvusClient

    name = _collection()
    client = MilvusClient(server)
    client.create_collection(name, dimension=8)
    client.close()
    with pytest.raises(InputError, match="not an lcr-sdk gallery"):
        connect(server, name, dim=8)


def test_unreachable_server_is_one_error_naming_uri_and_timeout():
    port = _free_port()  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(LcrError) as e:
        connect(f"http://user:s3cret@127.0.0.1:{port}", "g", dim=8, timeout=1.5)
    assert time.monotonic() - t0 < 30
    text = str(e.value)
    assert f"http://user:***@127.0.0.1:{port}" in text and "within 1.5 s" in text and "s3cret" not in text
    assert "\n" not in text


def test_cli_sync_with_an_unreachable_server_is_one_line_and_exit_1(tmp_path):
    from typer.testing import CliRunner

    from lcr_sdk.cli import app, fleet_cmd

    Gallery(8).save(tmp_path / "loc")
    fleet_cmd.register(app)
    uri = f"milvus://robot:s3cret@127.0.0.1:{_free_port()}"
    r = CliRunner().invoke(app, ["gallery", "sync", str(tmp_path / "loc"), uri, "--timeout", "1"])
    assert r.exit_code == 1 and r.output.count("\n") == 1, r.output
    assert r.output.startswith("Error: cannot reach the fleet gallery server milvus://robot:***@127.0.0.1:")
    assert "within 1 s" in r.output and "s3cret" not in r.output


def test_credentials_never_printed_or_stored(server, tmp_path):
    from typer.testing import CliRunner

    from lcr_sdk.cli import app, fleet_cmd

    uri = server.replace("http://", "http://robot:s3cret@")
    g = connect(uri, _collection(), model=MODEL, dim=8)
    assert "s3cret" not in repr(g) and "s3cret" not in json.dumps(g.info()) and "***@" in g.uri
    local = Gallery(8, MODEL)
    local.add(_unit(2, 8), ids=["a", "b"])
    local.save(tmp_path / "loc")
    fleet_cmd.register(app)
    r = CliRunner().invoke(app, ["gallery", "sync", str(tmp_path / "loc"), uri, "--collection", g.collection, "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["pushed"] == 2 and "s3cret" not in r.output
    assert "s3cret" not in state_path(tmp_path / "loc").read_text()


@pytest.mark.parametrize(
    "item_id, message", [("a\x00b", "contains a NUL character"), ("cam\udcff.jpg", "is not valid UTF-8")]
)
def test_an_id_no_store_can_hold_is_one_error_and_adds_nothing(tmp_path, item_id, message):
    """The local gallery's text rule holds for a fleet gallery too: refused before anything is pending."""
    g = connect(str(tmp_path / "site.db"), "g", model=MODEL, dim=8)
    with pytest.raises(InputError, match=message):
        g.add(_unit(1, 8), ids=[item_id])
    assert g.pending == 0


def test_a_source_password_in_metadata_is_stored_redacted(tmp_path):
    """As in a local gallery, a camera URI's password never reaches the collection (every device reads it)."""
    g = connect(str(tmp_path / "site.db"), "g", model=MODEL, dim=8)
    g.add(_unit(1, 8), ids=["a"], metadata=[{"source": "rtsp://admin:pw1234@10.0.0.7/live", "n": 3}])
    g.commit()
    g.close()
    again = connect(str(tmp_path / "site.db"), "g")
    hit = again.search(_unit(1, 8)[0], k=1)[0]
    assert hit.metadata == {"source": "rtsp://admin:***@10.0.0.7/live", "n": 3}


def test_embedded_milvus_lite_database(tmp_path):
    v = _unit(5, 8, seed=4)
    g = connect(str(tmp_path / "site.db"), "g", model=MODEL, dim=8)
    g.add(v, ids=list("abcde"), labels=list("xxyyz"))
    g.commit()
    assert g.search(v[3], k=1)[0].id == "d" and g.uri == str(tmp_path / "site.db")
    g.close()
    assert sorted(connect(str(tmp_path / "site.db"), "g").ids) == list("abcde")
    with pytest.raises(InputError, match="does not exist"):
        connect(str(tmp_path / "nowhere" / "x.db"), "g", dim=8)


def test_an_embedded_database_is_held_by_one_process(tmp_path):
    g = connect(str(tmp_path / "site.db"), "g", dim=8)
    script = textwrap.dedent(
        f"""
        from lcr_sdk.errors import LcrError
        from lcr_sdk.gallery.fleet import connect
        try:
            connect({str(tmp_path / "site.db")!r}, "g", timeout=2)
        except LcrError as e:
            print(e)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600).stdout
    assert "another process holds it" in out and "milvus-lite server --data-dir" in out, out
    g.close()


def test_two_syncs_of_one_gallery_do_not_run_at_once(server, tmp_path):
    import fcntl

    local = Gallery(8, MODEL)
    local.add(_unit(1, 8), ids=["a"])
    local.save(tmp_path / "loc")
    lock = state_path(tmp_path / "loc").with_suffix(".json.lock")
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # another sync holds it
        with pytest.raises(InputError, match="another sync of this gallery is running"):
            sync(local, server, _collection())
    assert sync(local, server, _collection()).pushed == 1


def test_index_follows_the_item_count(server, monkeypatch):
    assert [fleet_mod.choose_index(n).type for n in (0, 19_999, 20_000, 1_999_999, 2_000_000)] == [
        "FLAT",
        "FLAT",
        "HNSW",
        "HNSW",
        "IVF_SQ8",
    ]
    big = fleet_mod.choose_index(10_000_000)
    assert big.build == {"nlist": 16384} and big.search == {"nprobe": 512}
    assert fleet_mod.choose_index(50_000).search_params(100) == {"ef": 200}
    monkeypatch.setattr(fleet_mod, "HNSW_FROM", 40)
    v = _unit(60, 16, seed=5)
    g = connect(server, _collection(), dim=16)
    g.add(v[:30], ids=[str(i) for i in range(30)])
    g.commit()
    assert g.info()["index"] == "FLAT"
    g.add(v[30:], ids=[str(i) for i in range(30, 60)])
    g.commit()  # crosses into the HNSW tier: rebuilt once
    assert g.info()["index"] == "HNSW"
    assert [h.id for h in g.search(v[45], k=3)] == [str(i) for i in np.argsort(-(v @ v[45]))[:3]]
    with pytest.raises(InputError, match="index="):
        connect(server, _collection(), dim=16, index="ANNOY")
    fixed = connect(server, _collection(), dim=16, index="IVF_FLAT")  # one type, kept by every device
    again = connect(server, fixed.collection)
    assert again.index == "IVF_FLAT" and again.info()["index"] == "IVF_FLAT"


def test_listing_a_collection_past_one_query_pages_through_it(server, monkeypatch):
    g = connect(server, _collection(), dim=8)
    g.add(_unit(12, 8), ids=[f"i{j}" for j in range(12)])
    g.commit()
    monkeypatch.setattr(fleet_mod, "MAX_K", 5)  # one query holds at most 5 rows: the iterator takes over
    assert sorted(r["id"] for r in g.scan(("id", "fp"), batch=4)) == sorted(f"i{j}" for j in range(12))


def test_two_processes_share_one_collection(server):
    name = _collection()
    g = connect(server, name, model=MODEL, dim=8)
    script = textwrap.dedent(
        f"""
        import numpy as np
        from lcr_sdk.gallery.fleet import connect
        g = connect({server!r}, {name!r}, device="cam-2")
        g.add(np.eye(8, dtype=np.float32)[:2], ids=["from-2a", "from-2b"], labels=["robin", "wren"])
        g.commit()
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=600)
    hits = g.search(np.eye(8, dtype=np.float32)[1], k=1)
    assert [(h.id, h.label) for h in hits] == [("from-2b", "wren")] and len(g) == 2
    assert {r["origin"] for r in g.scan(("id", "origin"))} == {"cam-2"}


# -- sync: offline devices ---------------------------------------------------------------------------------------------


def _snapshot(g) -> tuple[dict[str, tuple[str, str]], dict[str, np.ndarray]]:
    """Every item's (label, metadata JSON) and its vector, by id."""
    if isinstance(g, Gallery):
        rows = zip(g.ids, g.labels, g.metadata, np.asarray(g.vectors, np.float32))
    else:
        fields = ("id", "label", "metadata", "vector")
        rows = ((r["id"], r["label"], r["metadata"], np.asarray(r["vector"], np.float32)) for r in g.scan(fields))
    items, vectors = {}, {}
    for i, lab, meta, vec in rows:
        items[i], vectors[i] = (lab, json.dumps(meta, sort_keys=True)), vec
    return items, vectors


V = _unit(30, 16, seed=7)
CROP = np.full((8, 8, 3), 200, np.uint8)


def _scenario(server: str, folder: Path):
    """Device A (a local gallery) and the fleet, synced once, then changed on both sides while A was offline."""
    local = Gallery(16, MODEL)
    local.add(V[:6], ids=[f"a{i}" for i in range(6)], labels=["a"] * 6, crops=[CROP] * 6)
    local.save(folder)
    fleet = connect(server, _collection(), model=MODEL, dim=16, device="cam-b")
    fleet.add(V[6:10], ids=[f"b{i}" for i in range(4)], labels=["b"] * 4)
    fleet.commit()
    first = sync(local, fleet, device="cam-a")
    assert (first.pushed, first.pulled) == (6, 4)
    # on the device, offline: a0 removed; a1, a3, a5 changed (removed and enrolled again); a2, a4 removed
    local.remove(["a0", "a1", "a2", "a3", "a4", "a5"])
    local.add(V[10:13], ids=["a10", "a11", "a12"], labels=["a"] * 3)
    local.add(V[13:16], ids=["a1", "a3", "a5"], labels=["a-new", "a3-here", "a5-same"])
    local.add(V[16], ids=["same"], labels=["s"])
    local.commit()
    # meanwhile in the fleet: b0, b2 removed; b1, a2, a3, a5 changed; a4 removed; "same" enrolled alike
    fleet.remove(["b0", "b1", "b2", "a2", "a3", "a4", "a5"])
    fleet.add(
        np.stack([V[20], V[21], V[22], V[23], V[24], V[15], V[16]]),
        ids=["b10", "b11", "b1", "a2", "a3", "a5", "same"],
        labels=["b", "b", "b-new", "a2-fleet", "a3-fleet", "a5-same", "s"],
        crops=[None, None, None, CROP, None, None, None],
    )
    fleet.commit()
    return local, fleet


EXPECTED = {
    "a1": "a-new",  # changed here: pushed
    "a2": "a2-fleet",  # removed here, changed in the fleet: the change wins (rule 3)
    "a3": "a3-fleet",  # changed on both sides: the fleet keeps the id ...
    "a3@cam-a": "a3-here",  # ... and this device's item is kept, renamed (rule 4)
    "a5": "a5-same",  # changed alike on both sides (rule 1); a4, removed on both, is gone (rule 2)
    "a10": "a",
    "a11": "a",
    "a12": "a",
    "b1": "b-new",
    "b3": "b",
    "b10": "b",
    "b11": "b",
    "same": "s",
}
# every write step of that sync, in order, with rows written 2 at a time: 5 pushed in 3 batches, 1 deletion
STEPS = [
    ("scanned", 1),
    ("fleet-batch", 1),
    ("fleet-batch", 2),
    ("fleet-batch", 3),
    ("fleet-delete", 1),
    ("local-committed", 1),
    ("state-written", 1),
]


def _both_sides(folder: Path, fleet) -> dict[str, str]:
    """Labels by id of the local gallery as a new process reads it, checked equal to the fleet's collection."""
    (mine, mine_v), (theirs, theirs_v) = (
        _snapshot(Gallery.load(folder)),
        _snapshot(connect(fleet.uri, fleet.collection)),
    )
    assert mine == theirs
    for i, vec in mine_v.items():
        np.testing.assert_allclose(vec, theirs_v[i], atol=1e-6)
    return {i: lab for i, (lab, _) in mine.items()}


def test_sync_merges_offline_changes_by_the_conflict_rules(server, tmp_path, monkeypatch):
    monkeypatch.setattr(fleet_mod, "BATCH_ROWS", 2)
    local, fleet = _scenario(server, tmp_path / "loc")
    seen: list[str] = []
    monkeypatch.setattr(fleet_mod, "write_step_hooks", [seen.append])
    report = sync(local, fleet)
    assert [(s, seen[: j + 1].count(s)) for j, s in enumerate(seen)] == STEPS  # the kill test covers each step
    assert report.renamed == [("a3", "a3@cam-a")]
    assert (report.pushed, report.deleted, report.pulled, report.removed) == (5, 1, 5, 2)
    assert _both_sides(tmp_path / "loc", fleet) == EXPECTED
    g = Gallery.load(tmp_path / "loc")
    np.testing.assert_allclose(g.vector("a3@cam-a"), V[14], atol=1e-6)  # this device's item, renamed
    np.testing.assert_allclose(g.vector("a3"), V[24], atol=1e-6)  # the fleet's
    np.testing.assert_array_equal(Gallery.load(tmp_path / "loc").image("a2"), CROP)  # pulled with its crop
    again = sync(tmp_path / "loc", fleet.uri, fleet.collection)
    assert (again.pushed, again.deleted, again.pulled, again.removed, again.renamed) == (0, 0, 0, 0, [])
    assert again.unchanged == len(EXPECTED)


def test_a_push_only_sync_leaves_fleet_changes_for_a_later_pull(server, tmp_path):
    local = Gallery(8, MODEL)
    local.add(_unit(2, 8), ids=["a", "b"], labels=["x", "x"])
    local.save(tmp_path / "loc")
    fleet = connect(server, _collection(), model=MODEL, dim=8)
    sync(local, fleet, device="cam-a")
    fleet.remove(["a", "b"])
    fleet.add(_unit(1, 8, seed=9), ids=["a"], labels=["changed"])
    fleet.add(_unit(1, 8, seed=10), ids=["c"])
    fleet.commit()
    local.add(_unit(1, 8, seed=11), ids=["d"])
    local.commit()
    push = sync(local, fleet, pull=False)
    assert (push.pushed, push.pulled, push.removed) == (1, 0, 0)
    kept = Gallery.load(tmp_path / "loc")
    assert kept.labels[0] == "x" and "b" in kept.ids  # nothing changes locally, not even the fleet's removal
    pull = sync(local, fleet)
    assert (pull.pushed, pull.pulled, pull.removed, pull.renamed) == (0, 2, 1, [])
    assert _both_sides(tmp_path / "loc", fleet) == {"a": "changed", "c": "", "d": ""}


def test_a_sync_running_while_another_device_syncs_keeps_both_devices_work(server, tmp_path, monkeypatch):
    """Device Q lists the fleet; device P then syncs whole (its edit of y reaches the fleet); then Q writes. Q must
    not overwrite P's y: the fleet keeps P's (it got there first) and Q's is kept as y@cam-q (rule 4)."""
    name = _collection()
    fleet = connect(server, name, model=MODEL, dim=8)
    p, q = Gallery(8, MODEL), Gallery(8, MODEL)
    for g, folder, dev in ((p, tmp_path / "p", "cam-p"), (q, tmp_path / "q", "cam-q")):
        g.add(_unit(2, 8), ids=["x", "y"], labels=["old", "old"])
        g.save(folder)
        sync(g, fleet, device=dev)
    p.remove(["y"])
    p.add(_unit(1, 8, seed=3), ids=["y"], labels=["P-edit"])
    p.commit()
    q.remove(["x", "y"])
    q.add(_unit(2, 8, seed=4), ids=["x", "y"], labels=["Q-edit", "Q-edit"])
    q.commit()
    ran: list[str] = []

    def p_syncs_meanwhile(step: str) -> None:
        if step == "scanned" and not ran:
            ran.append(step)
            sync(tmp_path / "p", connect(server, name), device="cam-p")

    monkeypatch.setattr(fleet_mod, "write_step_hooks", [p_syncs_meanwhile])
    report = sync(q, fleet, device="cam-q")
    monkeypatch.setattr(fleet_mod, "write_step_hooks", [])
    assert ran and report.renamed == [("y", "y@cam-q")]
    sync(tmp_path / "p", connect(server, name), device="cam-p")  # P brings in what Q wrote
    expected = {"x": "Q-edit", "y": "P-edit", "y@cam-q": "Q-edit"}
    assert _both_sides(tmp_path / "p", fleet) == expected and _both_sides(tmp_path / "q", fleet) == expected
    for folder, dev in ((tmp_path / "q", "cam-q"), (tmp_path / "p", "cam-p")):  # settled: nothing left to do
        again = sync(folder, connect(server, name), device=dev)
        assert (again.pushed, again.deleted, again.pulled, again.removed) == (0, 0, 0, 0), (dev, again)


class _Killed(BaseException):
    """Stands for the process being killed: nothing after it runs, nothing catches it."""


@pytest.mark.parametrize("step", STEPS, ids=[f"{s}-{n}" for s, n in STEPS])
def test_sync_killed_at_any_step_then_repeated_neither_loses_nor_duplicates(server, tmp_path, monkeypatch, step):
    monkeypatch.setattr(fleet_mod, "BATCH_ROWS", 2)
    local, fleet = _scenario(server, tmp_path / "loc")
    seen: list[str] = []

    def kill_at(name: str) -> None:
        seen.append(name)
        if (name, seen.count(name)) == step:
            raise _Killed

    monkeypatch.setattr(fleet_mod, "write_step_hooks", [kill_at])
    with pytest.raises(_Killed):
        sync(local, fleet)
    monkeypatch.setattr(fleet_mod, "write_step_hooks", [])
    # a new process: the gallery read from disk, a new connection
    report = sync(Gallery.load(tmp_path / "loc"), connect(fleet.uri, fleet.collection, device="cam-a"))
    assert set(dict(report.renamed).values()) <= {"a3@cam-a"}
    assert _both_sides(tmp_path / "loc", fleet) == EXPECTED
    again = sync(tmp_path / "loc", fleet.uri, fleet.collection)
    assert (again.pushed, again.deleted, again.pulled, again.removed, again.renamed) == (0, 0, 0, 0, [])


def test_sync_refuses_another_model_naming_both(server, tmp_path):
    local = Gallery(8, "c" * 64)
    local.add(_unit(1, 8), ids=["a"])
    local.save(tmp_path / "loc")
    name = _collection()
    connect(server, name, model=MODEL, dim=8).close()
    with pytest.raises(ModelError, match=r"aaaaaaaaaaaa\.\.\..*cccccccccccc\.\.\."):
        sync(tmp_path / "loc", server, name)  # by URI: the connection refuses it
    with pytest.raises(ModelError, match=r"holds model cccccccccccc\.\.\..*holds model aaaaaaaaaaaa\.\.\."):
        sync(tmp_path / "loc", connect(server, name))  # an open fleet gallery: the sync refuses it
    local.add(_unit(1, 8, seed=1), ids=["b"])
    with pytest.raises(InputError, match="uncommitted"):
        sync(local, server, name)


def test_the_gallery_api_opens_and_syncs_a_fleet_gallery(server, tmp_path):
    """`Gallery.connect` opens a fleet gallery with the local gallery's surface, and `Gallery.sync` exchanges a saved
    local gallery with it (both ways, then nothing left to do)."""
    v = _unit(3, 8, seed=21)
    name = _collection()
    fleet = Gallery.connect(server, name, model=MODEL, dim=8)
    fleet.add(v[:1], ids=["f"], labels=["from-fleet"])
    fleet.commit()
    local = Gallery(8, MODEL)
    local.add(v[1:], ids=["a", "b"], labels=["x", "y"])
    local.save(tmp_path / "loc")
    report = local.sync(server, name, device="cam-a")
    assert (report.pushed, report.pulled) == (2, 1)
    assert sorted(Gallery.connect(server, name).ids) == ["a", "b", "f"]
    assert sorted(Gallery.load(tmp_path / "loc").ids) == ["a", "b", "f"]
    again = Gallery.load(tmp_path / "loc").sync(server, name, device="cam-a")
    assert (again.pushed, again.pulled) == (0, 0)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="lists open files through /proc")
def test_a_sync_by_folder_and_uri_leaves_nothing_open(server, tmp_path):
    """A periodic `gallery sync` must not pin the gallery's files (a removed version folder stays on disk while a
    file in it is open) or keep a connection per run."""
    local = Gallery(8, MODEL)
    local.add(_unit(3, 8, seed=23), ids=["a", "b", "c"], labels=["x", "y", "z"])
    local.save(tmp_path / "loc")
    local.close()
    del local  # its memory-mapped vectors hold the file while the object lives

    def open_in_gallery() -> list[str]:
        found = []
        for fd in Path("/proc/self/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith(str(tmp_path / "loc")):
                    found.append(target)
        return found

    assert open_in_gallery() == []
    for _ in range(2):
        sync(tmp_path / "loc", server, _collection(), device="cam-a")
        assert open_in_gallery() == []


def test_a_commit_that_fails_part_way_is_finished_by_committing_again(server, monkeypatch):
    """The server drops the second of three batches: the first batch is in, the rest stays pending, and the
    retry the error asks for writes it (the first batch's items are this device's own, not another device's)."""
    from pymilvus.exceptions import MilvusException

    name = _collection()
    g = connect(server, name, model=MODEL, dim=8)
    monkeypatch.setattr(fleet_mod, "BATCH_ROWS", 2)
    real, calls = g._client.upsert, []

    def drops_the_second(*args, **kwargs):  # fault injection on the real server's client
        calls.append(1)
        if len(calls) == 2:
            raise MilvusException(message="connection reset by peer")
        return real(*args, **kwargs)

    monkeypatch.setattr(g._client, "upsert", drops_the_second)
    g.add(_unit(5, 8, seed=31), ids=list("abcde"), labels=list("xxyyz"))
    with pytest.raises(LcrError, match="connection reset"):
        g.commit()
    assert g.pending == 3
    g.commit()
    assert g.pending == 0 and sorted(connect(server, name).ids) == list("abcde")


def test_a_collection_the_server_released_is_loaded_again_and_the_call_repeated(server):
    """What a server restart leaves behind: the collection released under an open connection. Commits and searches
    go on (loaded again, the call repeated once), with no pymilvus log in front of anything."""
    import pymilvus

    name = _collection()
    g = connect(server, name, model=MODEL, dim=8)
    g.add(_unit(2, 8), ids=["a", "b"], labels=["x", "y"])
    g.commit()
    other = pymilvus.MilvusClient(uri=server)
    other.release_collection(name)
    other.close()
    g.add(_unit(1, 8, seed=2), ids=["c"], labels=["z"])
    g.commit()
    assert [h.id for h in g.search(_unit(1, 8, seed=2)[0], k=1)] == ["c"] and len(g) == 3


def test_the_sync_record_follows_the_collection_not_the_spelling_of_its_address(server, tmp_path):
    """Synced through 127.0.0.1, then through localhost: the same collection, so items removed here in between are
    removed from the fleet, not pulled back as the fleet's."""
    name = _collection()
    local = Gallery(8, MODEL)
    local.add(_unit(4, 8), ids=["a", "b", "c", "d"], labels=["x"] * 4)
    local.save(tmp_path / "loc")
    sync(local, server, name, device="cam-a")
    local.remove(["a", "b"])
    local.commit()
    other = server.replace("127.0.0.1", "localhost")
    report = sync(tmp_path / "loc", other, name, device="cam-a")
    assert (report.pulled, report.deleted) == (0, 2), report
    assert sorted(Gallery.load(tmp_path / "loc").ids) == ["c", "d"] and len(connect(server, name)) == 2
    state = json.loads(state_path(tmp_path / "loc").read_text())
    assert list(state["links"]) == [f"uid:{connect(server, name).uid}"]  # one record, by identity


def test_an_item_the_fleet_cannot_hold_is_named_before_anything_is_written(server, tmp_path):
    name = _collection()
    local = Gallery(8, MODEL)
    local.add(_unit(2, 8), ids=["ok", "long"], labels=["x", "y" * 2000])
    local.save(tmp_path / "loc")
    with pytest.raises(InputError, match=r"item 'long' cannot go to the fleet: label .* is 2000 bytes.*at most 1024"):
        sync(local, server, name, device="cam-a")
    assert len(connect(server, name)) == 0  # refused before any write, the item that fits included
