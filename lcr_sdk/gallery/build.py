"""Galleries from images: embed a labelled folder (:func:`build_from_folder`), the one way the CLI, the examples and
the quickstart build galleries (re-embedding a gallery with another model is :meth:`Gallery.rebuild`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lcr_sdk.errors import InputError
from lcr_sdk.gallery import store
from lcr_sdk.gallery.core import Gallery
from lcr_sdk.gallery.explain import MAX_SPREAD, Quality, check_quality, check_quality_options
from lcr_sdk.gallery.search import require_index

log = logging.getLogger("lcr_sdk.gallery")
ON_BAD = ("fail", "skip")  # what an unreadable image does to a build


def check_on_bad(on_bad: str, option: str = "on_bad") -> None:
    """Refuse an ``on_bad`` that is not one of :data:`ON_BAD` (``option``: how the caller names it)."""
    if on_bad not in ON_BAD:
        raise InputError(f"{option} {on_bad!r} is not valid; choose one of {', '.join(ON_BAD)}")


def build_from_folder(
    embedder: Any,
    folder: str | os.PathLike[str],
    index: str = "exact",
    batch: int = 32,
    progress: bool = True,
    require_labels: bool = False,
    dtype: str = "float32",
    quality: str = "off",
    max_spread: float = MAX_SPREAD,
    on_quality: Callable[[str, Quality], None] | None = None,
    on_bad: str = "fail",
    on_unreadable: Callable[[str, str], None] | None = None,
) -> Gallery:
    """Embed every image of a labelled folder (``folder/<label>/*.jpg``, see :func:`lcr_sdk.images.labelled_images`)
    into a new gallery: the one way the CLI, the examples and the quickstart build galleries.

    Each item's id is its path relative to ``folder`` (POSIX form), its label the sub-folder name, and its metadata
    ``{"path": <that relative path>}``; ``folder`` itself is kept as :attr:`Gallery.image_root`, so
    ``lcr-sdk gallery rebuild`` can re-embed the images with another model.

    Args:
        embedder: an :class:`~lcr_sdk.embedder.Embedder`.
        folder: the labelled image folder.
        index: the gallery's search index (see :class:`Gallery`).
        batch: images per embed call.
        progress: show a progress bar.
        require_labels: refuse images directly in ``folder`` (no label sub-folder), for apps that show labels.
        dtype: vector storage, ``"float32"`` or ``"float16"``.
        quality: enrolment check of LCR models' attention (:func:`~lcr_sdk.gallery.explain.check_quality`):
            ``"off"``, ``"warn"`` (keep diffuse images, report them) or ``"refuse"`` (leave them out).
        on_quality: called with (relative path, :class:`Quality`) for each image that fails the check.
        on_bad: an image that cannot be read (empty, truncated, not an image): ``"fail"`` stops with its error,
            ``"skip"`` leaves it out and goes on.
        on_unreadable: with ``on_bad="skip"``, called with (relative path, the reason) for each image left out.

    Files whose suffix is not an image format (:data:`lcr_sdk.images.IMAGE_SUFFIXES`) are not part of the
    gallery; :func:`not_images` lists them.

    Raises:
        InputError: a bad option, or a file name that is not UTF-8 (before any image is embedded); an unreadable
            image with ``on_bad="fail"``.
        MissingDependencyError: a FAISS ``index`` where FAISS is not installed (before any image is embedded).
        DataError: no images in ``folder``, or unlabelled ones with ``require_labels``.
    """
    from tqdm import tqdm  # type: ignore[import-untyped]

    from lcr_sdk.errors import DataError
    from lcr_sdk.images import labelled_images

    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise InputError(f"batch={batch!r} is not valid; pass a positive number of images per embed call, e.g. 32")
    check_quality_options(quality, max_spread)
    check_on_bad(on_bad)
    require_index(index)  # the index is built when the gallery is saved: refuse a missing FAISS before embedding
    gallery = Gallery(embedder.manifest.embedding_dim, model_sha256=embedder.model_id, index=index, dtype=dtype)
    folder = Path(folder)
    paths, labels = labelled_images(folder)
    if require_labels and "" in labels:
        raise DataError(
            f"{folder} holds {labels.count('')} image(s) outside a label sub-folder (e.g. {paths[labels.index('')]}); "
            f"expected {folder}/<label>/<image>.jpg: move each image into the folder named after its label"
        )
    paths, rel_all, labels = _storable(folder, paths, labels, on_bad, on_unreadable)  # before the slow part
    gallery.image_root = str(folder.resolve())
    method = embedder.manifest.method
    gate = quality != "off" and method == "lcr"
    if quality != "off" and not gate:
        log.info("enrolment quality not checked: a %s model has no attention mask", method)
    with tqdm(total=len(paths), desc="embedding", unit="img", disable=not progress) as bar:
        for i in range(0, len(paths), batch):
            chunk, rel, labs = paths[i : i + batch], rel_all[i : i + batch], labels[i : i + batch]
            images, rel, labs = _readable(embedder, chunk, rel, labs, on_bad, on_unreadable)
            if not images:
                vecs = np.zeros((0, embedder.manifest.embedding_dim), np.float32)
            elif gate:
                vecs, rel, labs = _embed_checked(embedder, images, rel, labs, quality, max_spread, on_quality)
            else:
                vecs = embedder.embed(images)
            if len(rel):
                gallery.add(vecs, ids=rel, labels=labs, metadata=[{"path": r} for r in rel])
            bar.update(len(chunk))
    return gallery


def not_images(folder: str | os.PathLike[str]) -> list[str]:
    """The files of a labelled folder that a build leaves out because their suffix is not an image format
    (:data:`lcr_sdk.images.IMAGE_SUFFIXES`, e.g. ``.gif``, ``.txt``): paths relative to ``folder``, sorted. The
    files looked at are the ones :func:`lcr_sdk.images.labelled_images` looks at (``folder/*`` and everything under
    its sub-folders), hidden ones (a leading ``.``) left out as there."""
    from lcr_sdk.images import IMAGE_SUFFIXES

    folder = Path(folder)
    found: list[str] = []
    for top in folder.iterdir():
        if top.name.startswith("."):
            continue
        files = top.rglob("*") if top.is_dir() else [top]
        for p in files:
            rel = p.relative_to(folder)
            if p.suffix.lower() not in IMAGE_SUFFIXES and not any(x.startswith(".") for x in rel.parts) and p.is_file():
                found.append(rel.as_posix())
    return sorted(found)


def _storable(
    folder: Path,
    paths: list[Path],
    labels: list[str],
    on_bad: str,
    on_unreadable: Callable[[str, str], None] | None,
) -> tuple[list[Path], list[str], list[str]]:
    """The images whose names SQLite can store (UTF-8: a name in another encoding cannot be an id), with their ids
    (paths relative to ``folder``) and labels; another name stops the build or is reported and left out."""
    kept_paths: list[Path] = []
    kept_rel: list[str] = []
    kept_labels: list[str] = []
    for p, lab in zip(paths, labels, strict=True):
        r = p.relative_to(folder).as_posix()
        try:
            fix = "or pass --on-bad skip (on_bad='skip') to leave it out" if on_bad == "fail" else ""
            store.check_text(r, f"file name in {folder}:", fix)
        except InputError as e:
            if on_bad == "fail":
                raise
            _left_out(r, e, on_unreadable)
            continue
        kept_paths.append(p)
        kept_rel.append(r)
        kept_labels.append(lab)
    return kept_paths, kept_rel, kept_labels


def _left_out(rel: str, why: Exception, on_unreadable: Callable[[str, str], None] | None) -> None:
    """Report an image left out (``on_bad="skip"``): to the caller's callback, else as a log warning."""
    if on_unreadable is not None:
        on_unreadable(rel, str(why))
    else:
        log.warning("%s left out: %s", rel.encode("utf-8", "backslashreplace").decode("utf-8"), why)  # any name


def _readable(
    embedder: Any,
    chunk: list[Path],
    rel: list[str],
    labs: list[str],
    on_bad: str,
    on_unreadable: Callable[[str, str], None] | None,
) -> tuple[list[np.ndarray], list[str], list[str]]:
    """The chunk's images read and brought to the model's input size, with the paths and labels that go with them;
    an unreadable one stops the build (``on_bad="fail"``) or is reported and left out (``"skip"``)."""
    images, kept_rel, kept_labs = [], [], []
    for path, r, lab in zip(chunk, rel, labs, strict=True):
        try:
            images.append(embedder.prepare(str(path)))
        except InputError as e:
            if on_bad == "fail":
                raise InputError(f"{e}; or pass --on-bad skip (on_bad='skip') to leave unreadable images out") from e
            _left_out(r, e, on_unreadable)
            continue
        kept_rel.append(r)
        kept_labs.append(lab)
    return images, kept_rel, kept_labs


def _embed_checked(
    embedder: Any,
    images: list[np.ndarray],
    rel: list[str],
    labs: list[str],
    quality: str,
    max_spread: float,
    on_quality: Callable[[str, Quality], None] | None,
) -> tuple[np.ndarray, list[str], list[str]]:
    """Embed a batch of an LCR model and check each image's attention: the vectors, paths and labels to keep
    (diffuse ones are reported, and left out with ``quality="refuse"``)."""
    method = embedder.manifest.method
    out = embedder.infer(np.stack(images))
    vecs, parts = np.asarray(out["embedding"], np.float32), np.asarray(out["parts"], np.float32)
    keep = []
    for j, m in enumerate(parts):
        q = check_quality(m, method, max_spread)
        if not q.ok:
            if on_quality is not None:
                on_quality(rel[j], q)
            else:
                log.warning("%s: %s", rel[j], q.reason)
        keep.append(q.ok or quality == "warn")
    sel = [j for j, ok in enumerate(keep) if ok]
    return vecs[sel], [rel[j] for j in sel], [labs[j] for j in sel]
