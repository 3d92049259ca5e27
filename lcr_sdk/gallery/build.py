"""Galleries from images: embed a labelled folder (:func:`build_from_folder`), or re-embed a gallery's stored images
with another model (:func:`rebuild`). The one way the CLI, the examples and the quickstart build galleries.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lcr_sdk.errors import InputError
from lcr_sdk.gallery import items, store
from lcr_sdk.gallery.core import Gallery
from lcr_sdk.gallery.explain import MAX_SPREAD, Quality, check_quality

log = logging.getLogger("lcr_sdk.gallery")


def rebuild(
    gallery: Gallery,
    embedder: Any,
    out: str | os.PathLike[str] | None = None,
    batch: int = 32,
    progress: bool = True,
    skip_missing: bool = False,
) -> tuple[Gallery, list[str]]:
    """Re-embed every item of ``gallery`` from its stored image with ``embedder`` (see :meth:`Gallery.rebuild`)."""
    from tqdm import tqdm  # type: ignore[import-untyped]

    from lcr_sdk.images import read_image

    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise InputError(f"batch={batch!r} is not valid; pass a positive number of images per embed call")
    with gallery._mutex:
        version = (gallery._saved.ver.name, gallery._saved.gen) if gallery._saved is not None else None
        rows = list(gallery._iter_rows(with_crops=True))
        missing: list[str] = []
        sources: list[bytes | Path | None] = []
        for _, item_id, _, _, crop in rows:
            if crop is not None:
                sources.append(crop)
                continue
            path = gallery.image_path(item_id)
            if path is None or not path.is_file():
                missing.append(item_id)
            sources.append(path)
        if missing and not skip_missing:
            where = f" under {gallery.image_root}" if gallery.image_root else ""
            raise InputError(
                f"{len(missing)} of {len(rows)} items have no image to re-embed (e.g. {missing[0]!r}: no crop and "
                f"no file{where}); restore the images, or pass --skip-missing (skip_missing=True) to leave them out"
            )
        dim = embedder.manifest.embedding_dim
        new = Gallery(dim, embedder.model_id, gallery.index, gallery.dtype)
        new.image_root = gallery.image_root
        keep = [i for i, (r, src) in enumerate(zip(rows, sources, strict=True)) if r[1] not in set(missing)]
        with tqdm(total=len(keep), desc="re-embedding", unit="img", disable=not progress) as bar:
            for i in range(0, len(keep), batch):
                part = [rows[j] for j in keep[i : i + batch]]
                imgs = []
                for j in keep[i : i + batch]:
                    src = sources[j]
                    if isinstance(src, bytes):
                        imgs.append(cv2.imdecode(np.frombuffer(src, np.uint8), cv2.IMREAD_COLOR))
                    else:
                        assert src is not None
                        imgs.append(read_image(src))
                new.add(
                    embedder.embed(imgs),
                    ids=[r[1] for r in part],
                    labels=[r[2] for r in part],
                    metadata=[json.loads(r[3]) for r in part],
                    crops=[imgs[n] if r[4] is not None else None for n, r in enumerate(part)],
                )
                bar.update(len(part))
        target = Path(out) if out is not None else gallery._root
        if target is None:
            return new, missing
        if gallery._root is not None and target.resolve() == gallery._root.resolve():
            with store.GalleryLock(target).hold(True):
                now = store.open_version(target)
                changed = now is None or version is None or (now.name, now.meta.generation) != version
                if now is not None:
                    now.close()
                if changed and not gallery._legacy:
                    raise InputError(
                        f"gallery {target} changed while it was re-embedded (another process committed to it); "
                        "nothing was replaced: run the rebuild again"
                    )
                new._write_all(target, progress)
        else:
            new.save(target, replace=True, progress=progress)
        return new, missing


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

    Raises:
        InputError: a bad option, or a file name that is not UTF-8 (before any image is embedded).
        DataError: no images in ``folder``, or unlabelled ones with ``require_labels``.
    """
    from tqdm import tqdm  # type: ignore[import-untyped]

    from lcr_sdk.errors import DataError
    from lcr_sdk.images import labelled_images

    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise InputError(f"batch={batch!r} is not valid; pass a positive number of images per embed call, e.g. 32")
    if quality not in ("off", "warn", "refuse"):
        raise InputError(f"quality={quality!r} is not valid; use 'off', 'warn' or 'refuse'")
    gallery = Gallery(embedder.manifest.embedding_dim, model_sha256=embedder.model_id, index=index, dtype=dtype)
    folder = Path(folder)
    paths, labels = labelled_images(folder)
    if require_labels and "" in labels:
        raise DataError(
            f"{folder} holds {labels.count('')} image(s) outside a label sub-folder (e.g. {paths[labels.index('')]}); "
            f"expected {folder}/<label>/<image>.jpg: move each image into the folder named after its label"
        )
    rel_all = [p.relative_to(folder).as_posix() for p in paths]
    for r in rel_all:  # before the slow part: SQLite cannot store names that are not UTF-8
        items.check_text(r, f"file name in {folder}:")
    gallery.image_root = str(folder.resolve())
    method = embedder.manifest.method
    gate = quality != "off" and method == "lcr"
    if quality != "off" and not gate:
        log.info("enrolment quality not checked: a %s model has no attention mask", method)
    with tqdm(total=len(paths), desc="embedding", unit="img", disable=not progress) as bar:
        for i in range(0, len(paths), batch):
            chunk, rel, labs = paths[i : i + batch], rel_all[i : i + batch], labels[i : i + batch]
            if gate:
                out = embedder.infer(np.stack([embedder.prepare(str(p)) for p in chunk]))
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
                vecs, rel, labs = vecs[sel], [rel[j] for j in sel], [labs[j] for j in sel]
            else:
                vecs = embedder.embed([str(p) for p in chunk])
            if len(rel):
                gallery.add(vecs, ids=rel, labels=labs, metadata=[{"path": r} for r in rel])
            bar.update(len(chunk))
    return gallery
