"""Fleet galleries: one gallery shared by many devices, kept in Milvus (a server or cluster) or milvus-lite.

    g = connect("http://milvus.site:19530", collection="feeders", model=emb)  # or connect("site.db") (milvus-lite)
    g.add(emb.embed(crops), ids=names, labels=species, crops=crops); g.commit()
    hits = g.search(emb.embed(query), k=5, model=emb, threshold="auto", label=["robin", "wren"])
    hits[0].explain(query, emb).save("why.png")

The surface is the local :class:`~lcr_sdk.gallery.Gallery`'s (add / remove / commit / search / threshold /
calibrate / filters / explain / check_model); see docs/FLEET.md. What differs:

- Changes are pending until :meth:`FleetGallery.commit` (searches see them, as they do in a saved local gallery);
  a commit writes them with Milvus upserts and deletes: each is durable, but a commit is not one transaction (a
  process killed mid-commit leaves some of its items written; committing the same items again is harmless).
- Automatic ids are random (``uuid4`` hex), not counters: devices cannot share a counter. Give items ids that are
  unique across the fleet (e.g. prefixed by the camera) when they must be recognisable.
- ``k`` is at most :data:`MAX_K` (Milvus's top-k limit).

The collection's schema (:func:`schema_fields`): ``id`` (VARCHAR primary key), ``vector`` (FLOAT_VECTOR, unit
length, inner product = cosine), ``label``, ``metadata`` (JSON), ``fp`` (a fingerprint of vector, label and
metadata, used by :mod:`lcr_sdk.gallery.sync`), ``origin`` (the device that wrote the item) and ``crop`` (the
item's image as PNG, base64 in chunks). Its properties hold the manifest (model identity and embedding size, checked
on every connect) and the open-set calibration.

Index (chosen by the item count, :func:`choose_index`): FLAT (exact) under :data:`HNSW_FROM` items, HNSW up to
:data:`IVF_FROM`, IVF_SQ8 above. A commit that takes the collection into a higher tier rebuilds the index once
(the collection is reloaded meanwhile); ``index=`` at connect fixes one type instead.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import socket
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np

from lcr_sdk.errors import InputError, LcrError, ModelError, import_platform, require
from lcr_sdk.gallery import Calibration, Enrolment, Gallery, Hit
from lcr_sdk.gallery.calibrate import PARTNERS, PROBES, auto_threshold
from lcr_sdk.gallery.core import check_k, check_metadata, id_list, item_ids, item_labels, unit_rows
from lcr_sdk.gallery.explain import MAX_SPREAD, prepare_enrolment
from lcr_sdk.gallery.search import check_filter, parse_threshold
from lcr_sdk.gallery.store import check_text
from lcr_sdk.redact import redact

log = logging.getLogger("lcr_sdk.gallery.fleet")

DEFAULT_COLLECTION = "lcr_gallery"
TOKEN_ENV = "LCR_SDK_FLEET_TOKEN"  # the server's credentials, when not in the URI
LITE_GRPC = {"grpc.keepalive_time_ms": 600_000}
TIMEOUT = 10.0  # seconds to wait for the server when connecting
MAX_K = 16384  # Milvus's top-k limit
HNSW_FROM = 20_000  # items from which the automatic index is HNSW (exact below: as fast, and exact)
IVF_FROM = 2_000_000  # items from which it is IVF_SQ8 (a quarter of HNSW's memory)
INDEX_TYPES = ("FLAT", "HNSW", "IVF_FLAT", "IVF_SQ8")
ID_LEN, LABEL_LEN, ORIGIN_LEN = 4096, 1024, 256
CROP_CHUNK, CROP_CHUNKS = 65535, 64  # base64 characters per array element, elements per crop (~3 MiB of PNG)
METADATA_BYTES = 65536  # Milvus's default limit on one JSON value
BATCH_BYTES = 16 << 20  # rows per write request, by size (Milvus refuses gRPC messages over 64 MiB) ...
BATCH_ROWS = 4096  # ... and by count
RECOUNT, RECOUNT_MIN = 0.05, 64  # count the items again after this share (at least this many) of own changes
FORMAT = "1"
_PROP = {
    "format": "lcr.format",
    "model": "lcr.model_sha256",
    "dim": "lcr.dim",
    "cal": "lcr.calibration",
    "index": "lcr.index",
    "uid": "lcr.uid",  # the collection's identity: a sync's record of it does not depend on how its URI is spelt
}
_FIELDS = ("id", "vector", "label", "metadata", "fp", "origin", "crop")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")


# -- URIs ---------------------------------------------------------------------------------------------------------


def is_local(uri: str) -> bool:
    """Whether ``uri`` names a milvus-lite database (a path ending in ``.db``) rather than a server."""
    return not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", str(uri)) and str(uri).rstrip("/").endswith(".db")


def split_uri(uri: str) -> tuple[str, str]:
    """(the URI pymilvus is given, the token) for ``uri``.

    ``milvus://host:port`` means ``http://`` and ``milvuss://`` ``https://``; ``user:password@`` in the URI (or a
    ``token=`` query value) becomes the token, so the address itself carries no secret.

    Raises:
        InputError: neither a server URI nor a path ending in ``.db``.
    """
    text = str(uri)
    if is_local(text):
        return str(Path(text).expanduser().absolute()), ""
    parts = urlsplit(text)
    scheme = {"milvus": "http", "milvuss": "https", "milvus+tls": "https"}.get(parts.scheme, parts.scheme)
    if scheme not in ("http", "https", "tcp", "grpc", "unix") or not parts.netloc:
        raise InputError(
            f"fleet gallery {redact(text)!r} is neither a server URI nor a milvus-lite database; use "
            "http://HOST:19530 (or milvus://HOST:19530, https:// with TLS) or a local path ending in .db"
        )
    token = ""
    netloc = parts.netloc
    if "@" in netloc:
        token, netloc = netloc.rsplit("@", 1)
    query = parse_qsl(parts.query)
    token = next((v for k, v in query if k == "token"), token)
    rest = urlencode([(k, v) for k, v in query if k != "token"])
    return urlunsplit((scheme, netloc, parts.path, rest, "")), token


# -- index policy -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexChoice:
    """A Milvus index type with its build and search parameters."""

    type: str
    build: dict[str, int]
    search: dict[str, int]

    def search_params(self, k: int) -> dict[str, int]:
        """Search parameters for ``k`` hits (HNSW's ``ef`` must be at least ``k``)."""
        if self.type == "HNSW":
            return {"ef": min(32768, max(self.search.get("ef", 64), 2 * k))}
        return dict(self.search)


def choose_index(n: int, kind: str = "auto") -> IndexChoice:
    """The index for a collection of ``n`` items.

    ``auto``: FLAT (exact) below :data:`HNSW_FROM`; HNSW (M=16, efConstruction=200, ef=max(64, 2k)) below
    :data:`IVF_FROM`; IVF_SQ8 above (nlist = 4 * sqrt(n) rounded to a power of two in [1024, 65536], nprobe =
    nlist / 32). ``IVF_FLAT`` takes IVF_SQ8's lists with full-precision vectors.
    """
    if kind not in ("auto", *INDEX_TYPES):
        raise InputError(f"index={kind!r} is not valid; use auto or one of {', '.join(INDEX_TYPES)}")
    if kind == "auto":
        kind = "FLAT" if n < HNSW_FROM else ("HNSW" if n < IVF_FROM else "IVF_SQ8")
    if kind == "FLAT":
        return IndexChoice("FLAT", {}, {})
    if kind == "HNSW":
        return IndexChoice("HNSW", {"M": 16, "efConstruction": 200}, {"ef": 64})
    nlist = int(min(65536, max(1024, 2 ** round(math.log2(4 * math.sqrt(max(n, 1)))))))
    return IndexChoice(kind, {"nlist": nlist}, {"nprobe": max(16, nlist // 32)})


# -- rows ---------------------------------------------------------------------------------------------------------


def fingerprint(vector: np.ndarray, label: str, metadata: dict[str, Any]) -> str:
    """A hash of an item's content (float32 vector bytes, label, canonical metadata JSON), not of its id."""
    h = hashlib.sha256(np.ascontiguousarray(vector, dtype=np.float32).tobytes())
    h.update(b"\0" + label.encode("utf-8") + b"\0")
    h.update(json.dumps(metadata, sort_keys=True, separators=(",", ":")).encode("utf-8"))
    return h.hexdigest()[:32]


def crop_chunks(image: Any, what: str) -> list[str]:
    from lcr_sdk.images import to_bgr

    img = to_bgr(image)
    ok, data = import_platform("cv2").imencode(".png", img)
    if not ok:
        raise InputError(f"{what} of shape {img.shape} could not be encoded as PNG")
    text = base64.b64encode(data.tobytes()).decode("ascii")
    chunks = [text[i : i + CROP_CHUNK] for i in range(0, len(text), CROP_CHUNK)]
    if len(chunks) > CROP_CHUNKS:
        raise InputError(
            f"{what} is {len(data) >> 10} KiB as PNG; a fleet gallery stores crops up to "
            f"{CROP_CHUNK * CROP_CHUNKS * 3 / 4 / 2**20:.1f} MiB: pass a smaller crop (the region of the item)"
        )
    return chunks


def decode_crop(chunks: Sequence[str] | None) -> np.ndarray | None:
    """The BGR image stored in a row's ``crop`` chunks (None when it has none)."""
    if not chunks:
        return None
    cv2 = import_platform("cv2")
    img = cv2.imdecode(np.frombuffer(base64.b64decode("".join(chunks)), np.uint8), cv2.IMREAD_COLOR)
    return img if img is not None else None


def _check_text(value: str, what: str, limit: int) -> None:
    """The local gallery's text rule (:func:`lcr_sdk.gallery.store.check_text`), then Milvus's field size."""
    check_text(value, what)
    size = len(value.encode("utf-8"))
    if size > limit:
        raise InputError(f"{what} {value[:40]!r}... is {size} bytes; a fleet gallery keeps at most {limit}")


def _check_metadata(metadata: Any, n: int) -> list[dict[str, Any]]:
    """The local gallery's metadata rules (:func:`lcr_sdk.gallery.core.check_metadata`), then Milvus's size limit."""
    out = []
    for i, m in enumerate(check_metadata(metadata, n)):
        text = json.dumps(m)
        if len(text.encode("utf-8")) > METADATA_BYTES:
            raise InputError(f"metadata[{i}] is {len(text)} bytes of JSON; a fleet gallery keeps at most 64 KiB")
        out.append(json.loads(text))  # as the collection returns it (tuples read back as lists)
    return out


@contextlib.contextmanager
def _logs_held(level: int, *names: str) -> Iterator[None]:
    """Raise these loggers' level while the block runs (their own tracebacks and retries would precede the one
    error line the SDK gives), then put it back."""
    loggers = [logging.getLogger(n) for n in names]
    before = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(level)
    try:
        yield
    finally:
        for lg, old in zip(loggers, before, strict=True):
            lg.setLevel(old)


def _released(e: Exception) -> bool:
    """Whether a Milvus error says the collection is not loaded (the server restarted, or released it)."""
    if type(e).__name__ != "MilvusException":
        return False
    text = (getattr(e, "message", "") or str(e)).lower()
    return "released" in text or "not loaded" in text or "collection not loaded" in text


def same_json(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _literal(value: Any) -> str:
    """A Milvus expression literal (strings double-quoted with JSON escapes)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def filter_expr(labels: list[str] | None, where: dict[str, Any] | None) -> str:
    """The Milvus boolean expression for a label / metadata filter.

    Milvus compares JSON numbers by value and ``true`` equals ``1``; the local gallery matches the values' JSON
    text. The search checks every hit the local way afterwards (:func:`matches`), so results are the same.
    """
    terms = []
    if labels is not None:
        terms.append(f"label in [{', '.join(_literal(x) for x in labels)}]")
    for key, value in (where or {}).items():
        field = f"metadata[{json.dumps(key)}]"
        terms.append(f"{field} is null" if value is None else f"{field} == {_literal(value)}")
    return " and ".join(terms)


def matches(label: str, metadata: dict[str, Any], labels: list[str] | None, where: dict[str, Any] | None) -> bool:
    """The local gallery's filter semantics: label in ``labels``; each ``where`` value equal as JSON text."""
    if labels is not None and label not in labels:
        return False
    return all(k in metadata and json.dumps(metadata[k]) == json.dumps(v) for k, v in (where or {}).items())


@dataclass
class FleetRow:
    vector: np.ndarray
    label: str
    metadata: dict[str, Any]
    crop: list[str]

    def record(self, item_id: str, origin: str) -> dict[str, Any]:
        return {
            "id": item_id,
            "vector": self.vector.tolist(),
            "label": self.label,
            "metadata": self.metadata,
            "fp": fingerprint(self.vector, self.label, self.metadata),
            "origin": origin,
            "crop": self.crop,
        }


# -- the gallery --------------------------------------------------------------------------------------------------


class FleetGallery:
    """A gallery in a Milvus collection, shared by every device connected to it. Open one with :func:`connect`.

    Attributes:
        uri: the server URI (credentials redacted) or the milvus-lite database path.
        collection: the collection's name.
        dim: embedding size; model_sha256: the model's identity (both from the collection's manifest).
        device: written as each item's ``origin`` (the host name unless given).
        image_root: folder that relative ``path`` metadata points into (for items stored without a crop).
    """

    def __init__(self, client: Any, uri: str, collection: str, dim: int, model_sha256: str, index: str, device: str):
        self._client, self.uri, self.collection = client, uri, collection
        self.dim, self.model_sha256, self.index, self.device = dim, model_sha256, index, device
        self.image_root = ""
        self.uid = ""  # the collection's identity (set by connect)
        self._new: dict[str, FleetRow] = {}
        self._removed: set[str] = set()
        self._calibration: Calibration | None = None
        self._cal_stored: dict[str, Any] | None = None
        self._kind = ""  # the collection's index type, as last read (search parameters follow it)
        self._counted = 0  # committed items at the last count, plus this device's changes since
        self._drift = 0  # this device's changes since the last count

    # -- server calls ----------------------------------------------------------------------------------------------

    def _rpc(self, what: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run one client call; a server error becomes one :class:`LcrError` naming the server and the step.

        pymilvus's own error log (tracebacks, retries) is held back while the call runs: the error line says it.
        A collection the server released (it restarted since this connection loaded it) is loaded again and the
        call repeated once, so a long-running process recovers by itself."""
        try:
            with _logs_held(logging.CRITICAL, "pymilvus"):
                try:
                    return call(*args, **kwargs)
                except Exception as e:
                    if not _released(e):
                        raise
                    self._client.load_collection(self.collection)
                    return call(*args, **kwargs)
        except LcrError:
            raise
        except Exception as e:
            if type(e).__name__ not in ("MilvusException", "ConnectionConfigException") and not isinstance(e, OSError):
                raise
            msg = getattr(e, "message", "") or str(e) or type(e).__name__
            raise LcrError(
                f"fleet gallery {self.uri} (collection {self.collection!r}): {what} failed: {msg}; check that the "
                "server is up and reachable (nothing was lost: pending changes are kept; commit or sync again)"
            ) from None

    def _get(self, ids: Sequence[str], fields: Sequence[str], batch: int = 1000) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for i in range(0, len(ids), batch):
            rows = self._rpc(
                "reading items",
                self._client.get,
                self.collection,
                ids=list(ids[i : i + batch]),
                output_fields=list(fields),
            )
            out.update({str(r["id"]): r for r in rows})
        return out

    def scan(self, fields: Sequence[str] = ("id",), batch: int = MAX_K) -> Iterator[dict[str, Any]]:
        """Every committed row of the collection with ``fields``; O(N).

        One query when the collection has fewer than :data:`MAX_K` items (5x faster than an iterator on
        milvus-lite), else Milvus's query iterator, ``batch`` rows at a time."""
        rows = self._rpc(
            "listing items", self._client.query, self.collection, filter="", output_fields=list(fields), limit=MAX_K
        )
        if len(rows) < MAX_K:
            yield from rows
            return
        with _logs_held(logging.ERROR, "pymilvus"):  # the iterator warns that milvus-lite has no MVCC timestamp
            it = self._rpc(
                "listing items",
                self._client.query_iterator,
                self.collection,
                batch_size=batch,
                output_fields=list(fields),
            )
            try:
                while rows := self._rpc("listing items", it.next):
                    yield from rows
            finally:
                it.close()

    def _count(self) -> int:
        rows = self._rpc("counting items", self._client.query, self.collection, filter="", output_fields=["count(*)"])
        self._counted, self._drift = int(rows[0]["count(*)"]), 0
        return self._counted

    # -- reading ---------------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._count() - len(self._removed) + len(self._new)

    @property
    def pending(self) -> int:
        """Changes (added or removed items) not yet committed."""
        return len(self._new) + len(self._removed)

    @property
    def ids(self) -> list[str]:
        """Ids of all items (committed ones in the server's order, then pending ones); O(N)."""
        return [str(r["id"]) for r in self.scan() if r["id"] not in self._removed and r["id"] not in self._new] + list(
            self._new
        )

    def _committed(self, ids: Sequence[str]) -> set[str]:
        return set(self._get(ids, ["id"])) - self._removed

    def __contains__(self, item_id: object) -> bool:
        if not isinstance(item_id, str):
            return False
        return item_id in self._new or bool(self._committed([item_id]))

    def _item(self, item_id: str, fields: Sequence[str]) -> dict[str, Any]:
        if item_id in self._new:
            row = self._new[item_id]
            return {"id": item_id, "vector": row.vector, "label": row.label, "metadata": row.metadata, "crop": row.crop}
        found = self._get([item_id], fields) if item_id not in self._removed else {}
        if item_id not in found:
            raise InputError(f"id {item_id!r} is not in fleet gallery {self.uri} ({self.collection})")
        return found[item_id]

    def vector(self, item_id: str) -> np.ndarray | None:
        """The stored unit vector of an item (float32), or None if there is no such item."""
        try:
            return np.asarray(self._item(str(item_id), ["vector"])["vector"], np.float32)
        except InputError:
            return None

    def image(self, item_id: str) -> np.ndarray:
        """An item's image (BGR uint8): its stored crop, else the file of its ``path`` metadata.

        Raises:
            InputError: no such item, or it has neither a crop nor a readable ``path``.
        """
        from lcr_sdk.images import read_image

        row = self._item(str(item_id), ["crop", "metadata"])
        img = decode_crop(row.get("crop"))
        if img is not None:
            return img
        path = (row.get("metadata") or {}).get("path")
        if not isinstance(path, str) or not path:
            raise InputError(
                f"item {item_id!r} has no stored image: it was added without a crop or a 'path' in its metadata; "
                "add items with crops= (or enroll()) so every device can explain them"
            )
        p = Path(path)
        return read_image(p if p.is_absolute() or not self.image_root else Path(self.image_root) / p)

    # -- changing --------------------------------------------------------------------------------------------------

    def add(
        self,
        vectors: Any,
        ids: Sequence[Any] | None = None,
        labels: Sequence[Any] | None = None,
        metadata: Sequence[dict[str, Any]] | None = None,
        crops: Sequence[Any] | None = None,
    ) -> list[str]:
        """Add vectors (normalised to unit length) with ids, labels, metadata and crops, as
        :meth:`Gallery.add <lcr_sdk.gallery.Gallery.add>`; pending until :meth:`commit`.

        Everything is checked before anything changes. Ids not given are random (``uuid4`` hex).
        """
        v = unit_rows(vectors, self.dim, "vectors")
        n = len(v)
        if crops is not None and (isinstance(crops, np.ndarray) or not isinstance(crops, Sequence)):
            raise InputError(f"crops must be a list of {n} images or None; got {type(crops).__name__}")
        given = item_ids(ids, n)
        new_ids = given if given is not None else [uuid.uuid4().hex for _ in range(n)]
        labs = item_labels(labels, n)
        meta = _check_metadata(metadata, n)
        crop_list = list(crops) if crops is not None else [None] * n
        counts = (len(new_ids), len(labs), len(meta), len(crop_list))
        if counts != (n, n, n, n):
            raise InputError(
                f"got {n} vectors but {counts[0]} ids, {counts[1]} labels, {counts[2]} metadata, {counts[3]} crops"
            )
        for i, lab in zip(new_ids, labs):
            _check_text(i, "id", ID_LEN)
            _check_text(lab, "label", LABEL_LEN)
        if len(set(new_ids)) != n:
            raise InputError("the new ids repeat (ids are unique); pick other ids")
        dup = [i for i in new_ids if i in self._new] or sorted(self._committed(new_ids))
        if dup:
            raise InputError(
                f"id {dup[0]!r} is already in the gallery (ids are unique); remove the old item first or pick other ids"
            )
        enc = [crop_chunks(c, f"crops[{j}]") if c is not None else [] for j, c in enumerate(crop_list)]
        for j, item_id in enumerate(new_ids):
            self._new[item_id] = FleetRow(v[j], labs[j], meta[j], enc[j])
        self._forget_no_threshold()
        return new_ids

    def _forget_no_threshold(self) -> None:
        """After a change, drop a calibration without a threshold (it is computed again when next asked for)."""
        if self._calibration is not None and self._calibration.threshold is None:
            self._calibration = None

    def remove(self, ids: Sequence[Any] | str) -> int:
        """Remove items by id (pending until :meth:`commit`); unknown ids raise :class:`InputError` and nothing
        is removed."""
        wanted = list(dict.fromkeys(id_list(ids)))
        committed = self._committed([i for i in wanted if i not in self._new])
        unknown = [i for i in wanted if i not in self._new and i not in committed]
        if unknown:
            raise InputError(f"ids {unknown[:5]} are not in the gallery of {len(self)} items")
        for i in wanted:
            if i in self._new:
                del self._new[i]
            if i in committed:
                self._removed.add(i)
        self._forget_no_threshold()
        return len(wanted)

    def enroll(
        self,
        embedder: Any,
        image: Any,
        label: str = "",
        id: str | None = None,
        metadata: dict[str, Any] | None = None,
        quality: str = "warn",
        max_spread: float = MAX_SPREAD,
        keep_image: bool = True,
        color: str = "bgr",
    ) -> Any:
        """Embed one image and add it with its crop (pending until :meth:`commit`), checking its attention first;
        as :meth:`Gallery.enroll <lcr_sdk.gallery.Gallery.enroll>`."""
        self.check_model(embedder)
        emb, img, meta, q = prepare_enrolment(embedder, image, metadata, quality, max_spread, color)
        new = self.add(emb, None if id is None else [id], [label], [meta], [img] if keep_image else None)
        return Enrolment(new[0], q)

    def commit(self) -> None:
        """Write the pending changes: removals, then additions (upserts, in batches of at most 16 MiB).

        Raises:
            InputError: a pending id was committed by another device meanwhile (nothing is written; remove or
                rename it and commit again).
            LcrError: the server failed (the changes not yet written stay pending; commit again).
        """
        if self._new:
            taken = sorted(set(self._get(list(self._new), ["id"])) - self._removed)
            if taken:
                raise InputError(
                    f"id {taken[0]!r} was added to the fleet gallery by another device since; remove it from this "
                    "commit (remove([...])) or rename it, then commit again (nothing was written)"
                )
        delta = len(self._new) - len(self._removed)  # a removed id added again counts once each way
        if self._removed:
            self.delete(sorted(self._removed))
            self._removed.clear()
        if self._new:  # a batch written leaves the pending items at once: a retry after a failure writes the rest
            self.upsert(dict(self._new), written=lambda ids: [self._new.pop(i) for i in ids])
        self._maintain(delta)

    def upsert(self, rows: dict[str, FleetRow], written: Callable[[list[str]], Any] | None = None) -> dict[str, str]:
        """Write rows as they are (replacing any item with the same id), in batches; returns each id's fingerprint.
        ``written`` is called with the ids of each batch once the server has it.

        Raises:
            InputError: before anything is written, an item the collection cannot hold (an id or label over its
                field size, metadata over 64 KiB), named with the fix.
        """
        for item_id, row in rows.items():
            try:
                _check_text(item_id, "id", ID_LEN)
                _check_text(row.label, "label", LABEL_LEN)
                _check_metadata([row.metadata], 1)
            except InputError as e:
                raise InputError(
                    f"item {item_id[:60]!r} cannot go to the fleet: {e}. Nothing was written; change the item in "
                    "the local gallery (remove it and add it again within the limits), then sync again"
                ) from None
        batch: list[dict[str, Any]] = []
        size, fps = 0, {}
        for item_id, row in rows.items():
            rec = row.record(item_id, self.device)
            fps[item_id] = rec["fp"]
            batch.append(rec)
            size += 4 * self.dim + sum(len(c) for c in row.crop) + 256
            if size >= BATCH_BYTES or len(batch) >= BATCH_ROWS:
                self._write_batch(batch, written)
                batch, size = [], 0
        if batch:
            self._write_batch(batch, written)
        return fps

    def _write_batch(self, batch: list[dict[str, Any]], written: Callable[[list[str]], Any] | None) -> None:
        self._rpc("writing items", self._client.upsert, self.collection, batch)
        if written is not None:
            written([r["id"] for r in batch])
        write_step("fleet-batch")

    def delete(self, ids: Sequence[str]) -> None:
        """Delete items by id at once (not pending; unknown ids are ignored)."""
        for i in range(0, len(ids), BATCH_ROWS):
            self._rpc("removing items", self._client.delete, self.collection, ids=list(ids[i : i + BATCH_ROWS]))
            write_step("fleet-delete")

    def _maintain(self, delta: int = 0) -> None:
        """After a commit: move to the next index tier when due; store a calibration that is missing or stale.

        The item count they follow is this device's last count plus its own changes since, counted again once
        those reach :data:`RECOUNT` of it (a count takes seconds at 100k items on milvus-lite)."""
        self._drift += abs(delta)
        if self._drift >= max(RECOUNT_MIN, RECOUNT * self._counted):
            self._count()
        else:
            self._counted += delta
        n = self._counted
        tiers = ("FLAT", "HNSW", "IVF_SQ8")
        want = choose_index(n)
        if self.index == "auto" and self._kind in tiers and tiers.index(want.type) > tiers.index(self._kind):
            self._kind = self._index_type()  # another device may have rebuilt it already
            if self._kind in tiers and tiers.index(want.type) > tiers.index(self._kind):
                self._reindex(want)
        if self._calibration is None or self._calibration.stale(n):
            self.calibrate()
        cal = self._calibration
        assert cal is not None
        if cal.to_dict() != self._cal_stored:
            props = {_PROP["cal"]: json.dumps(cal.to_dict())}
            self._rpc("storing the calibration", self._client.alter_collection_properties, self.collection, props)
            self._cal_stored = cal.to_dict()

    def _index_type(self) -> str:
        info = self._rpc("reading the index", self._client.describe_index, self.collection, "vector")
        return str(info.get("index_type", ""))

    def _reindex(self, choice: IndexChoice) -> None:
        log.info("fleet gallery %s: rebuilding the index as %s", self.collection, choice.type)
        c = self._client
        self._rpc("releasing the collection", c.release_collection, self.collection)
        self._rpc("dropping the index", c.drop_index, self.collection, "vector")
        self._rpc("building the index", c.create_index, self.collection, _index_params(c, choice))
        self._rpc("loading the collection", c.load_collection, self.collection)
        self._kind = choice.type

    # -- search ----------------------------------------------------------------------------------------------------

    def check_model(self, model: Any, force: bool = False) -> None:
        """Refuse a query model (an Embedder or a sha256) other than the collection's, unless ``force``."""
        sha = model if isinstance(model, str) else getattr(model, "model_id", "")
        if force or not sha or not self.model_sha256 or sha == self.model_sha256:
            return
        raise ModelError(
            f"fleet collection {self.collection!r} was built with model {self.model_sha256[:12]}... but the query "
            f"model is {sha[:12]}...: their embeddings are not comparable. Use the collection's model, another "
            "collection, or pass force=True (--force) if you know they match"
        )

    def search(
        self,
        queries: Any,
        k: int = 5,
        model: Any = None,
        force: bool = False,
        threshold: float | str | None = None,
        label: str | Sequence[str] | None = None,
        where: dict[str, Any] | None = None,
    ) -> Any:
        """Nearest items by cosine similarity, committed and pending alike; arguments as
        :meth:`Gallery.search <lcr_sdk.gallery.Gallery.search>` (``k`` at most :data:`MAX_K`)."""
        if model is not None:
            self.check_model(model, force)
        k = check_k(k, MAX_K, " (Milvus's top-k limit)")
        single = np.asarray(queries).ndim == 1
        q = unit_rows(queries, self.dim, "queries")
        cut = self._resolve_threshold(threshold)
        labels = check_filter(label, where)
        rows = self._search_committed(q, k, labels, where)
        for i, row in enumerate(rows):
            row += self._search_pending(q[i], labels, where)
            row.sort(key=lambda h: -h.score)
            rows[i] = [h for h in row[:k] if cut is None or h.score >= cut]
        return rows[0] if single else rows

    def _search_committed(
        self, q: np.ndarray, k: int, labels: list[str] | None, where: dict[str, Any] | None
    ) -> list[list[Hit]]:
        expr = filter_expr(labels, where)
        limit = min(MAX_K, k + len(self._removed) + len(self._new))
        choice = choose_index(0, self._kind if self._kind in INDEX_TYPES else "FLAT")
        out: list[list[Hit]] = []
        for vec in q:
            while True:
                res = self._rpc(
                    "searching",
                    self._client.search,
                    self.collection,
                    data=[vec.tolist()],
                    limit=limit,
                    filter=expr,
                    output_fields=["label", "metadata"],
                    search_params={"metric_type": "IP", "params": choice.search_params(limit)},
                )[0]
                hits = [self._hit(r) for r in res]
                kept = [h for h in hits if h.id not in self._removed and h.id not in self._new]
                kept = [h for h in kept if matches(h.label, h.metadata, labels, where)]
                if len(kept) >= k or len(res) < limit or limit == MAX_K:
                    break
                limit = min(MAX_K, 4 * limit)  # the filter's exact check or pending changes dropped hits
            out.append(kept)
        return out

    def _hit(self, r: dict[str, Any]) -> Hit:
        ent = r.get("entity", {})
        return Hit(str(r["id"]), ent.get("label", ""), float(r["distance"]), ent.get("metadata") or {}, self._me())

    def _me(self) -> Gallery:
        return cast(Gallery, self)  # a Hit needs only image() and vector() of its gallery, which this class has

    def _search_pending(self, q: np.ndarray, labels: list[str] | None, where: dict[str, Any] | None) -> list[Hit]:
        out = []
        for item_id, row in self._new.items():
            if matches(row.label, row.metadata, labels, where):
                out.append(Hit(item_id, row.label, float(row.vector @ q), dict(row.metadata), self._me()))
        return out

    def _resolve_threshold(self, threshold: float | str | None) -> float | None:
        cut = parse_threshold(threshold)  # the local gallery's rules and messages
        if cut == "auto":
            return auto_threshold(self.calibration, stacklevel=4)  # <- search <- the caller
        return None if cut is None else float(cut)

    # -- open set --------------------------------------------------------------------------------------------------

    @property
    def threshold(self) -> float | None:
        """The calibrated open-set threshold (stored in the collection; recomputed as :attr:`calibration` says)."""
        return self.calibration.threshold

    @property
    def calibration(self) -> Calibration:
        """The collection's stored (or, when the collection changed enough since, a fresh) :class:`Calibration`."""
        n = self._counted - len(self._removed) + len(self._new)  # as of this device's last count: every commit
        if self._calibration is None or self._calibration.stale(n):
            self._calibration = self.calibrate()
        return self._calibration

    def calibrate(self, seed: int = 0) -> Calibration:
        """Compute the open-set threshold now, as the local gallery does (:mod:`lcr_sdk.gallery.calibrate`), on a
        bounded sample: up to 512 labelled items and up to 4 others of each one's label. Listing the labels reads
        every id and label once (O(N) small fields); the vectors read are the sample's only. Stored in the
        collection at the next commit."""
        rng = np.random.default_rng(seed)
        by_label: dict[str, list[str]] = {}
        total = len(self._new)
        for r in self.scan(("id", "label")):
            if r["id"] not in self._removed:
                total += 1
                if r["label"]:
                    by_label.setdefault(r["label"], []).append(str(r["id"]))
        for item_id, row in self._new.items():
            if row.label:
                by_label.setdefault(row.label, []).append(item_id)
        every = [(i, lab) for lab, ids in by_label.items() for i in ids]
        chosen = rng.permutation(len(every))[:PROBES]
        sample: dict[str, str] = {}
        for j in chosen:
            item_id, lab = every[int(j)]
            sample[item_id] = lab
            mates = by_label[lab]
            for p in rng.permutation(len(mates))[: PARTNERS + 1]:
                sample.setdefault(mates[int(p)], lab)
        ids = list(sample)
        stored = self._get([i for i in ids if i not in self._new], ["vector"])
        vecs = [self._new[i].vector if i in self._new else np.asarray(stored[i]["vector"], np.float32) for i in ids]
        probe = Gallery(self.dim)
        if ids:
            probe.add(np.stack(vecs), ids=ids, labels=[sample[i] for i in ids])
        cal = dataclasses.replace(probe.calibrate(seed), items=total)
        self._calibration = cal
        return cal

    # -- the rest ----------------------------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """A summary: where, size, model, index, open-set threshold."""
        cal = self.calibration
        self._kind = self._index_type()
        return {
            "uri": self.uri,
            "collection": self.collection,
            "items": len(self),
            "dim": self.dim,
            "model_sha256": self.model_sha256,
            "index": self._kind,
            "index_policy": self.index,
            "threshold": cal.threshold,
            "threshold_far": cal.far,
            "threshold_frr": cal.frr,
            "threshold_weak": cal.weak,
            "threshold_note": cal.reason,
            "pending": self.pending,
        }

    def close(self) -> None:
        """Close the connection (pending changes are dropped: commit first)."""
        self._client.close()

    def __enter__(self) -> FleetGallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = f"{self.uri!r}, collection={self.collection!r}"
        return f"FleetGallery({where}, dim={self.dim}, model={self.model_sha256[:12]!r})"


# -- connecting ---------------------------------------------------------------------------------------------------

# observers of write steps (the sync's fault-injection tests use them)
write_step_hooks: list[Callable[[str], None]] = []


def write_step(name: str) -> None:
    for hook in write_step_hooks:
        hook(name)


def _index_params(client: Any, choice: IndexChoice) -> Any:
    params = client.prepare_index_params()
    params.add_index(field_name="vector", index_type=choice.type, metric_type="IP", params=choice.build)
    return params


def schema_fields(dim: int) -> list[tuple[str, str, dict[str, Any]]]:
    """The collection's fields: (name, Milvus data type, parameters)."""
    return [
        ("id", "VARCHAR", {"is_primary": True, "max_length": ID_LEN}),
        ("vector", "FLOAT_VECTOR", {"dim": dim}),
        ("label", "VARCHAR", {"max_length": LABEL_LEN}),
        ("metadata", "JSON", {}),
        ("fp", "VARCHAR", {"max_length": 64}),
        ("origin", "VARCHAR", {"max_length": ORIGIN_LEN}),
        ("crop", "ARRAY", {"element_type": "VARCHAR", "max_capacity": CROP_CHUNKS, "max_length": CROP_CHUNK}),
    ]


def _create(client: Any, pm: Any, collection: str, dim: int, model_sha256: str, index: str) -> None:
    schema = pm.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False, description="lcr-sdk gallery")
    for name, dtype, params in schema_fields(dim):
        kw = dict(params)
        if "element_type" in kw:
            kw["element_type"] = getattr(pm.DataType, kw["element_type"])
        schema.add_field(name, getattr(pm.DataType, dtype), **kw)
    props = {
        _PROP["format"]: FORMAT,
        _PROP["model"]: model_sha256,
        _PROP["dim"]: str(dim),
        _PROP["index"]: index,
        _PROP["uid"]: uuid.uuid4().hex,
    }
    client.create_collection(
        collection,
        schema=schema,
        index_params=_index_params(client, choose_index(0, index)),
        consistency_level="Strong",
        properties=props,
    )


def _model_of(model: Any) -> tuple[str, int | None]:
    if model is None:
        return "", None
    if isinstance(model, str):
        return model, None
    manifest = getattr(model, "manifest", None)
    return str(getattr(model, "model_id", "")), getattr(manifest, "embedding_dim", None)


def connect(
    uri: str,
    collection: str = DEFAULT_COLLECTION,
    *,
    model: Any = None,
    dim: int | None = None,
    index: str = "auto",
    timeout: float = TIMEOUT,
    device: str | None = None,
    create: bool = True,
    token: str | None = None,
) -> FleetGallery:
    """Open (or create) a fleet gallery.

    Args:
        uri: a Milvus server (``http://HOST:19530``, ``https://...``, ``milvus://HOST:19530``; credentials as
            ``http://USER:PASSWORD@HOST:19530`` or ``?token=...``, never printed or stored) or a milvus-lite
            database (a path ending in ``.db``: a folder that one process at a time opens).
        collection: the collection's name (letters, digits, ``_``).
        model: the Embedder (or its ``model_id``) whose embeddings the gallery holds; a collection built with
            another model is refused, naming both. It gives the size of a new collection too.
        dim: embedding size, when ``model`` is a sha256 (or None) and the collection is new; checked otherwise.
        index: for a new collection, ``auto`` (by item count, see :func:`choose_index`) or one fixed type: FLAT,
            HNSW, IVF_FLAT or IVF_SQ8 (stored with the collection; an existing collection keeps its own).
        timeout: seconds to wait for the server.
        device: this device's name, stored with the items it writes (default: the host name).
        create: create the collection when it does not exist (else refuse).
        token: the server's credentials (``USER:PASSWORD`` or an API key); default: those in ``uri``, else the
            environment variable ``LCR_SDK_FLEET_TOKEN`` (which keeps them off command lines).

    Raises:
        MissingDependencyError: the ``fleet`` extra is not installed.
        LcrError: the server cannot be reached within ``timeout`` (naming the URI, credentials redacted).
        ModelError: the collection holds another model's embeddings, or another size.
        InputError: a bad argument, or a missing collection with ``create=False`` or without a size.
    """
    pm = require("pymilvus", "fleet", "a fleet gallery (Milvus)")
    if is_local(str(uri)):
        require("milvus_lite", "fleet", "a local fleet gallery (milvus-lite .db)")
    address, uri_token = split_uri(str(uri))
    token = token or uri_token or os.environ.get(TOKEN_ENV, "")
    shown = address if is_local(str(uri)) else redact(str(uri))
    sha, dim = _check_connect(str(uri), address, collection, model, dim, timeout)
    client = _client(pm, str(uri), address, token, timeout, shown)
    try:
        return _open(client, pm, shown, collection, sha, dim, index, device, create)
    except BaseException:
        client.close()
        raise


def _check_connect(
    uri: str, address: str, collection: str, model: Any, dim: int | None, timeout: float
) -> tuple[str, int | None]:
    """:func:`connect`'s arguments checked before anything is contacted: (the model's sha256, the size)."""
    if not isinstance(collection, str) or not _NAME.match(collection):
        raise InputError(f"collection {collection!r} is not valid; use letters, digits and _ (not first a digit)")
    sha, model_dim = _model_of(model)
    if dim is not None and (not isinstance(dim, int) or isinstance(dim, bool) or dim < 1):
        raise InputError(f"dim must be a positive int (the model's embedding_dim); got {dim!r}")
    if dim is not None and model_dim is not None and dim != model_dim:
        raise InputError(f"dim={dim} but the model's embeddings have {model_dim}; leave dim out")
    if not isinstance(timeout, (int, float)) or not timeout > 0:
        raise InputError(f"timeout must be a positive number of seconds; got {timeout!r}")
    if is_local(uri) and not Path(address).parent.is_dir():
        raise InputError(f"cannot open {address}: folder {Path(address).parent} does not exist; create it first")
    if is_local(uri) and Path(address).is_file():
        raise InputError(
            f"cannot open {address}: it is a file, and a milvus-lite database is a folder (made at the first "
            "connect); give a new path ending in .db, or the database folder"
        )
    return sha, dim if dim is not None else model_dim


def _client(pm: Any, uri: str, address: str, token: str, timeout: float, shown: str) -> Any:
    """A pymilvus client of the server (or milvus-lite database) at ``address``; one error line when it does not
    answer (pymilvus's and milvus-lite's own error logs held back: the error line says it)."""
    with _logs_held(logging.CRITICAL, "pymilvus", "milvus_lite"):
        return _open_client(pm, uri, address, token, timeout, shown)


def _open_client(pm: Any, uri: str, address: str, token: str, timeout: float, shown: str) -> Any:
    try:
        client = pm.MilvusClient(uri=address, token=token, timeout=timeout, dedicated=True)  # closed by close()
        if "milvus_lite" in str(client.get_server_version()):
            # milvus-lite's gRPC server refuses pymilvus's 10 s keepalive pings during a long call (an index
            # build) with GOAWAY "too many pings"; ping it no more often than its default allows (5 min), on a
            # channel of its own (pymilvus shares one channel per address and token, whatever its options)
            client.close()
            client = pm.MilvusClient(uri=address, token=token, timeout=timeout, grpc_options=LITE_GRPC, dedicated=True)
    except Exception as e:
        if type(e).__name__ not in ("MilvusException", "ConnectionConfigException") and not isinstance(e, OSError):
            raise
        why = getattr(e, "message", "") or str(e) or "no answer"
        if is_local(uri):
            raise LcrError(
                f"cannot open the milvus-lite database {shown} ({why}): another process holds it, or it is not a "
                f"milvus-lite database. Several processes share one through a server: "
                f"milvus-lite server --data-dir {shown} --port 19530, then connect to http://127.0.0.1:19530"
            ) from None
        raise LcrError(
            f"cannot reach the fleet gallery server {shown} within {timeout:g} s ({why}); check that Milvus is "
            "running there (docs/FLEET.md), the address and port, and the network; or pass a longer timeout"
        ) from None
    return client


def _open(
    client: Any,
    pm: Any,
    shown: str,
    collection: str,
    sha: str,
    dim: int | None,
    index: str,
    device: str | None,
    create: bool,
) -> FleetGallery:
    choose_index(0, index)  # validates the name
    probe = FleetGallery(client, shown, collection, dim or 0, sha, index, device or socket.gethostname())
    if not probe._rpc("listing collections", client.has_collection, collection):
        if not create:
            raise InputError(f"{shown} has no collection {collection!r}; create it (create=True) or check the name")
        if dim is None:
            raise InputError(
                f"{shown} has no collection {collection!r} yet; to create it pass model=EMBEDDER (or dim= and "
                "model=SHA256)"
            )
        probe._rpc("creating the collection", _create, client, pm, collection, dim, sha, index)
    desc = probe._rpc("reading the collection", client.describe_collection, collection)
    props = desc.get("properties", {}) or {}
    fields = {f["name"]: f for f in desc.get("fields", [])}
    if props.get(_PROP["format"]) != FORMAT or set(_FIELDS) - set(fields):
        raise InputError(
            f"collection {collection!r} in {shown} is not an lcr-sdk gallery (fields {sorted(fields)}); "
            "choose another collection name"
        )
    have_sha, have_dim = props.get(_PROP["model"], ""), int(props.get(_PROP["dim"], 0))
    if (sha and have_sha and sha != have_sha) or (dim is not None and dim != have_dim):
        raise ModelError(
            f"collection {collection!r} in {shown} was built with model {have_sha[:12] or '?'}... ({have_dim}-d "
            f"embeddings); this one is {sha[:12] + '... (' if sha else '('}{dim or have_dim}-d): their embeddings "
            "are not comparable. Use the collection's model, or another collection for this model"
        )
    policy = props.get(_PROP["index"], "auto")  # the collection's own, whatever this connection asked for
    g = FleetGallery(client, shown, collection, have_dim, have_sha, policy, probe.device)
    g.uid = props.get(_PROP["uid"], "")
    if not g.uid:  # made by an earlier lcr-sdk: give it one now (read back: another device may do it at once)
        g._rpc(
            "storing the collection's identity",
            client.alter_collection_properties,
            collection,
            {_PROP["uid"]: uuid.uuid4().hex},
        )
        again = g._rpc("reading the collection", client.describe_collection, collection)
        g.uid = (again.get("properties", {}) or {}).get(_PROP["uid"], "")
    if _PROP["cal"] in props:
        stored = json.loads(props[_PROP["cal"]])
        g._calibration, g._cal_stored = Calibration.from_dict(stored), stored
    g._rpc("loading the collection", client.load_collection, collection)
    g._kind = g._index_type()
    g._count()
    return g
