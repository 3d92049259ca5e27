"""Sync a device's local gallery with a fleet gallery: devices keep working offline, then exchange their changes.

    report = sync("gallery/", "http://milvus.site:19530", collection="feeders")   # or sync(g, connect(...))

A sync is a three-way merge. Beside the local gallery (``gallery.sync.json`` for a gallery in ``gallery/``) it keeps,
per fleet collection, the *base*: every item both sides held after the last sync, with a fingerprint of its content
(vector, label, metadata) on each side. An item present on one side and not in the base was added there; one in the
base and missing on a side was removed there; one whose fingerprint differs from the base was changed there (removed
and added again under the same id). Changes on one side are applied to the other:

- local additions and changes are pushed (with their images, unless ``images=False``); local removals are deleted
  from the fleet;
- the fleet's additions and changes are pulled into the local gallery (unless ``pull=False``); its removals are
  removed locally.

Conflict rules (the same id changed on both sides since the last sync):

1. same content on both sides (an identical enrolment, or a sync that was interrupted): nothing to do;
2. removed on both: gone;
3. removed on one side, changed on the other: the changed item wins (a removal never destroys newer work);
4. added or changed on both, with different content: the fleet's item keeps the id (the first device to reach the
   fleet wins); the local item is kept too, renamed ``ID@DEVICE`` (``ID@DEVICE.2``... if that is taken), on both
   sides, and listed in the report's ``renamed``.

Nothing is lost or duplicated when a sync is killed at any moment and run again: the fleet is written first with
upserts and deletes keyed by id (repeating them changes nothing), then the local gallery in one commit (atomic), then
the base (atomic rename). A rerun after a kill finds items that already reached a side with the same content there,
which rule 1 settles. Listing costs O(N) ids and fingerprints on each side; only changed items' vectors and images
travel.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

try:
    import fcntl
except ImportError:  # Windows: one sync at a time is then the caller's job, as for a gallery's writes (store.py)
    fcntl = None  # type: ignore[assignment]

from lcr_sdk.errors import InputError, ModelError
from lcr_sdk.fileio import atomic_write_text
from lcr_sdk.gallery import Gallery
from lcr_sdk.gallery.fleet import (
    DEFAULT_COLLECTION,
    TIMEOUT,
    FleetGallery,
    FleetRow,
    connect,
    crop_chunks,
    decode_crop,
    fingerprint,
    same_json,
    write_step,
)

STATE_FORMAT = 1
SAME_VECTOR = 1e-3  # largest coordinate difference of one item's vector on two sides (float16 storage: ~5e-4)


@dataclass
class SyncReport:
    """What a sync did (counts of items) and how long it took."""

    pushed: int = 0  # local additions and changes written to the fleet
    deleted: int = 0  # local removals deleted from the fleet
    pulled: int = 0  # fleet additions and changes added to the local gallery
    removed: int = 0  # fleet removals removed from the local gallery
    renamed: list[tuple[str, str]] = field(default_factory=list)  # (id, new id of the local item): rule 4
    unchanged: int = 0  # items both sides agree on
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        text = (
            f"pushed {self.pushed}, deleted {self.deleted} from the fleet; pulled {self.pulled}, removed "
            f"{self.removed} locally; {self.unchanged} unchanged ({self.seconds:.1f} s)"
        )
        if self.renamed:
            shown = ", ".join(f"{a} -> {b}" for a, b in self.renamed[:5])
            text += f"; {len(self.renamed)} conflicting local items renamed: {shown}"
        return text


def state_path(local_root: str | os.PathLike[str]) -> Path:
    """Where a sync keeps its base for the local gallery in ``local_root``: a file beside the folder."""
    root = Path(local_root).absolute()
    return root.parent / f"{root.name}.sync.json"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    lock = path.with_name(path.name + ".lock")
    if fcntl is None:  # Windows: no flock; one sync at a time is then the caller's job, as for a gallery's writes
        yield
        return
    with open(lock, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"another sync of this gallery is running (it holds {lock}); wait for it") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read_state(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"format": STATE_FORMAT, "device": "", "links": {}}
    try:
        state = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(
            f"sync state {path} is unreadable ({e}); delete it to sync from scratch (items on both sides are then "
            "matched by id and content: nothing is lost)"
        ) from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT or not isinstance(state.get("links"), dict):
        raise InputError(f"sync state {path} is not a format-{STATE_FORMAT} sync state; delete it to sync from scratch")
    return state


def _local_items(g: Gallery) -> dict[str, tuple[str, int]]:
    """id -> (fingerprint, position in the gallery's lists)."""
    vecs = g.vectors
    out = {}
    for j, (i, lab, meta) in enumerate(zip(g.ids, g.labels, g.metadata, strict=True)):
        out[i] = (fingerprint(np.asarray(vecs[j], np.float32), lab, meta), j)
    return out


@dataclass
class _Plan:
    push: list[str] = field(default_factory=list)  # local ids to write to the fleet (under the same id)
    delete: list[str] = field(default_factory=list)  # fleet ids to delete
    pull: list[str] = field(default_factory=list)  # fleet ids to bring in (replacing a local item of that id)
    remove: list[str] = field(default_factory=list)  # local ids to remove
    conflict: list[str] = field(default_factory=list)  # changed on both sides: rule 1 or rule 4
    agreed: list[str] = field(default_factory=list)  # unchanged since the base
    later: list[str] = field(default_factory=list)  # fleet changes left for a sync that pulls: base kept as it was


def _plan(local: dict[str, str], fleet: dict[str, str], base: dict[str, list[str]], pull: bool) -> _Plan:
    p = _Plan()
    for i in local.keys() | fleet.keys() | base.keys():
        in_l, in_f = i in local, i in fleet
        if i in base:
            b_l, b_f = base[i]
            l_chg, f_chg = local.get(i) != b_l, fleet.get(i) != b_f
        else:
            l_chg, f_chg = in_l, in_f
        if not l_chg and not f_chg:
            p.agreed.append(i)
        elif l_chg and not f_chg:
            (p.push if in_l else p.delete).append(i)
        elif f_chg and not l_chg:  # a push-only sync (pull=False) changes nothing locally, removals included
            (p.later if not pull else p.remove if not in_f else p.pull).append(i)
        elif in_l and in_f:
            p.conflict.append(i)
        elif in_l:  # removed from the fleet, changed here: rule 3
            p.push.append(i)
        elif in_f:  # removed here, changed in the fleet: rule 3
            (p.pull if pull else p.later).append(i)
    return p


def _same(vec: np.ndarray, label: str, meta: dict[str, Any], row: dict[str, Any]) -> bool:
    other = np.asarray(row["vector"], np.float32)
    close = vec.shape == other.shape and float(np.max(np.abs(vec - other))) <= SAME_VECTOR
    return close and label == row.get("label", "") and same_json(meta, row.get("metadata") or {})


def _image(g: Gallery, i: str) -> np.ndarray | None:
    try:
        return g.image(i)
    except InputError:
        return None


class _Local:
    """The local gallery's items as lists, read once."""

    def __init__(self, g: Gallery):
        self.g = g
        self.items = _local_items(g)
        self.labels, self.meta, self.vecs = g.labels, g.metadata, g.vectors

    def fps(self) -> dict[str, str]:
        return {i: fp for i, (fp, _) in self.items.items()}

    def content(self, i: str) -> tuple[np.ndarray, str, dict[str, Any]]:
        j = self.items[i][1]
        return np.asarray(self.vecs[j], np.float32), self.labels[j], self.meta[j]

    def row(self, i: str, images: bool) -> FleetRow:
        vec, lab, meta = self.content(i)
        img = _image(self.g, i) if images else None  # None: no stored image (nor a readable file)
        crop = crop_chunks(img, f"the image of item {i!r}") if img is not None else []
        return FleetRow(vec / np.linalg.norm(vec), lab, meta, crop)


def _stored_fp(g: Gallery, i: str, label: str, meta: dict[str, Any]) -> str:
    """The fingerprint of item ``i`` as the gallery stores it after the commit (its vector normalised and, in a
    float16 gallery, rounded), which the next sync's listing reads."""
    vec = g.vector(i)
    assert vec is not None
    return fingerprint(vec, label, meta)


def _renamed(i: str, device: str, n: int) -> str:
    stem = f"{i}@{re.sub(r'[^A-Za-z0-9_.-]', '_', device) or 'device'}"
    return stem if n == 1 else f"{stem}.{n}"


def _resolve(
    plan: _Plan, loc: _Local, fleet: FleetGallery, fleet_fps: dict[str, str], device: str
) -> tuple[list[str], dict[str, str]]:
    """Settle conflicts: identical content agrees (rule 1); otherwise the fleet keeps the id and the local item is
    renamed (rule 4). Returns the agreed ids and {id: new id of the local item}."""
    rows = fleet._get(plan.conflict, ["vector", "label", "metadata"])
    same: list[str] = []
    renamed: dict[str, str] = {}
    taken = set(loc.items) | set(fleet_fps)
    for i in sorted(plan.conflict):
        if i not in rows:  # removed from the fleet since it was listed: rule 3
            plan.push.append(i)
            continue
        if _same(*loc.content(i), rows[i]):
            same.append(i)
            continue
        n = 1
        while True:
            new = _renamed(i, device, n)
            if new not in taken and new not in renamed.values():
                break
            if new in fleet_fps and new not in loc.items:  # a rerun: the fleet may hold this item under it already
                found = fleet._get([new], ["vector", "label", "metadata"])
                if new in found and _same(*loc.content(i), found[new]):
                    break
            n += 1
        renamed[i] = new
    return same, renamed


def _recheck(plan: _Plan, fleet: FleetGallery, fleet_fps: dict[str, str], pull: bool) -> None:
    """Another device may have written the fleet since it was listed. Read again, just before writing, the ids this
    sync is about to overwrite or delete there; one that changed meanwhile is treated as changed on both sides
    (a push becomes a conflict, rule 4; a deletion gives way to the change, rule 3), so a concurrent sync's work is
    not overwritten. ``fleet_fps`` is brought up to date for those ids. What remains is the moment between this read
    and the write (Milvus has no compare-and-set), not the whole sync."""
    ids = plan.push + plan.delete
    if not ids:
        return
    now = {i: str(r["fp"]) for i, r in fleet._get(ids, ["fp"]).items()}
    moved = {i for i in ids if now.get(i) != fleet_fps.get(i)}
    if not moved:
        return
    for i in moved:
        if i in now:
            fleet_fps[i] = now[i]
        else:
            fleet_fps.pop(i, None)
    plan.conflict += [i for i in plan.push if i in moved and i in now]  # changed there too: rule 4 (or 1)
    plan.push = [i for i in plan.push if i not in moved or i not in now]  # removed there: the change wins (rule 3)
    changed = [i for i in plan.delete if i in moved and i in now]  # changed there: it wins over this removal
    (plan.pull if pull else plan.later).extend(changed)
    plan.delete = [i for i in plan.delete if i not in moved]


def sync(
    local: Gallery | str | os.PathLike[str],
    fleet: FleetGallery | str,
    collection: str = DEFAULT_COLLECTION,
    *,
    device: str | None = None,
    pull: bool = True,
    images: bool = True,
    timeout: float = TIMEOUT,
) -> SyncReport:
    """Exchange changes between a saved local gallery and a fleet gallery (see the module's rules).

    Args:
        local: a saved :class:`~lcr_sdk.gallery.Gallery` (no pending changes) or its folder.
        fleet: a :class:`FleetGallery` or its URI (then ``collection``, created from the local gallery's model and
            size if missing).
        device: this device's name, used for renamed conflicts and as the items' origin (default: the name kept
            in the sync state, else the host name).
        pull: bring the fleet's items into the local gallery (False: push only, for a device that searches the
            fleet directly).
        images: push each item's image (its stored crop, or the file its ``path`` names) so every device can
            explain it.

    Raises:
        InputError: the local gallery is not saved, has pending changes, or another sync of it is running.
        ModelError: the two galleries hold different models' embeddings or sizes (naming both).
        LcrError: the server failed or cannot be reached (run the sync again: nothing is lost).
    """
    t0 = time.perf_counter()
    with contextlib.ExitStack() as opened:  # what this call opens (a gallery by folder, a fleet by URI) it closes
        g = local if isinstance(local, Gallery) else opened.enter_context(contextlib.closing(Gallery.load(local)))
        report = _sync_opened(g, fleet, collection, device, pull, images, timeout, opened)
    out = SyncReport(**report)
    out.seconds = time.perf_counter() - t0
    return out


def _sync_opened(
    g: Gallery,
    fleet: FleetGallery | str,
    collection: str,
    device: str | None,
    pull: bool,
    images: bool,
    timeout: float,
    opened: contextlib.ExitStack,
) -> dict[str, Any]:
    if g.path is None:
        raise InputError("the local gallery is not saved anywhere; save(folder) it first, then sync")
    if g.pending:
        raise InputError(f"the local gallery has {g.pending} uncommitted changes; commit() them first, then sync")
    path = state_path(g.path)
    with _locked(path):
        state = _read_state(path)
        name = device or state.get("device") or ""
        if isinstance(fleet, FleetGallery):
            f = fleet
        else:
            f = opened.enter_context(_connect(fleet, collection, g, name, timeout))
        _check_models(g, f)
        name = name or f.device
        f.device = name
        g.refresh()
        # the record of this collection, by its identity (not the URI as typed: localhost and 127.0.0.1, or a moved
        # .db folder, are one collection; keyed by spelling, a removal would come back); by URI for older records
        spelt = f"{f.uri}#{f.collection}"
        key = f"uid:{f.uid}" if f.uid else spelt
        link = state["links"].get(key) or state["links"].get(spelt, {})
        base = link.get("base", {})
        report: dict[str, Any] = _sync(g, f, base, name, pull, images)
        state["device"] = name
        if key != spelt:
            state["links"].pop(spelt, None)
        state["links"][key] = {"base": report.pop("base"), "synced_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        atomic_write_text(path, json.dumps(state, separators=(",", ":")))
        write_step("state-written")
    return report


def _connect(uri: str, collection: str, g: Gallery, device: str, timeout: float) -> FleetGallery:
    return connect(uri, collection, model=g.model_sha256 or None, dim=g.dim, timeout=timeout, device=device or None)


def _check_models(g: Gallery, f: FleetGallery) -> None:
    if g.dim != f.dim or (g.model_sha256 and f.model_sha256 and g.model_sha256 != f.model_sha256):
        raise ModelError(
            f"local gallery {g.path} holds model {g.model_sha256[:12] or '?'}... ({g.dim}-d) but fleet collection "
            f"{f.collection!r} in {f.uri} holds model {f.model_sha256[:12] or '?'}... ({f.dim}-d): they cannot be "
            "synced. Sync with a collection of this model (--collection), or rebuild the local gallery"
        )


def _sync(g: Gallery, f: FleetGallery, base: dict[str, list[str]], device: str, pull: bool, images: bool) -> Any:
    loc = _Local(g)
    fleet_fps = {str(r["id"]): str(r["fp"]) for r in f.scan(("id", "fp"))}
    write_step("scanned")
    plan = _plan(loc.fps(), fleet_fps, base, pull)
    _recheck(plan, f, fleet_fps, pull)
    same, renamed = _resolve(plan, loc, f, fleet_fps, device)
    plan.pull = [i for i in plan.pull if i not in renamed.values()]  # a rerun finds a renamed item in the fleet
    # 1. the fleet: pushes and renamed local items (upserts), then deletions
    rows = {i: loc.row(i, images) for i in plan.push}
    rows.update({new: loc.row(i, images) for i, new in renamed.items()})
    pushed = f.upsert(rows) if rows else {}
    if plan.delete:
        f.delete(plan.delete)
    # 2. the local gallery, in one commit: removals, then pulled items (replacing local ones of the same id)
    take = plan.pull + list(renamed)
    fetched = f._get(take, ["vector", "label", "metadata", "crop"], batch=64) if take else {}
    kept = {i: _image(g, i) for i in renamed}  # the renamed local items keep their images
    gone = [i for i in plan.pull + list(renamed) + plan.remove if i in loc.items]
    if gone:
        g.remove(gone)
    got = [i for i in take if i in fetched]
    if got:
        g.add(
            np.stack([np.asarray(fetched[i]["vector"], np.float32) for i in got]),
            ids=got,
            labels=[fetched[i]["label"] for i in got],
            metadata=[fetched[i]["metadata"] or {} for i in got],
            crops=[decode_crop(fetched[i].get("crop")) for i in got],
        )
    if renamed:
        vecs, labs, metas = zip(*(loc.content(i) for i in renamed))
        g.add(
            np.stack(vecs),
            ids=list(renamed.values()),
            labels=list(labs),
            metadata=list(metas),
            crops=list(kept.values()),
        )
    if g.pending:
        g.commit()
    write_step("local-committed")
    # 3. the new base: what both sides hold now, with each side's fingerprint
    lfp = loc.fps()
    new_base = {i: base[i] for i in plan.agreed + plan.later if i in base}
    new_base.update({i: [lfp[i], fleet_fps[i]] for i in same})
    new_base.update({i: [lfp[i], pushed[i]] for i in plan.push})
    for i, new in renamed.items():  # re-added under the new id
        new_base[new] = [_stored_fp(g, new, *loc.content(i)[1:]), pushed[new]]
    for i in got:
        new_base[i] = [_stored_fp(g, i, fetched[i]["label"], fetched[i]["metadata"] or {}), fleet_fps[i]]
    return {
        "base": new_base,
        "pushed": len(plan.push) + len(renamed),
        "deleted": len(plan.delete),
        "pulled": len(got),
        "removed": len(plan.remove),
        "renamed": sorted(renamed.items()),
        "unchanged": len(plan.agreed) + len(same),
    }
