"""How a gallery is rebuilt: every item re-embedded from its stored image (its crop, or its file under the image
root) with another model, keeping ids, labels, metadata and crops (:meth:`~lcr_sdk.gallery.Gallery.rebuild`).

Every image is located before any is embedded, so a gallery whose images are gone is refused before the slow part.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from lcr_sdk.errors import InputError
from lcr_sdk.gallery import store
from lcr_sdk.gallery.contents import Contents, Row

Source = tuple[Row, bytes | Path]  # an item and where its image is: its stored crop, or its file


def locate(c: Contents, skip_missing: bool) -> tuple[list[Source], list[str]]:
    """Every live item with its image, and the ids of those without one.

    Raises:
        InputError: items without an image (unless ``skip_missing``), or a stored path that leaves the image root.
    """
    found: list[Source] = []
    missing: list[str] = []
    rows = list(c.rows(with_crops=True))
    for r in rows:
        if r[4] is not None:
            found.append((r, r[4]))
            continue
        path = c.image_path(r[1], store.parse_metadata(r[1], r[3]))
        if path is None or not path.is_file():
            missing.append(r[1])
        else:
            found.append((r, path))
    if missing and not skip_missing:
        where = f" under {c.image_root}" if c.image_root else ""
        raise InputError(
            f"{len(missing)} of {len(rows)} items have no image to re-embed (e.g. {missing[0]!r}: no crop and "
            f"no file{where}); restore the images, or pass --skip-missing (skip_missing=True) to leave them out"
        )
    return found, missing


def reembed(add: Callable[..., list[str]], found: list[Source], embedder: Any, batch: int, progress: bool) -> None:
    """Embed the located images ``batch`` at a time and ``add`` them (a new gallery's :meth:`Gallery.add`)."""
    from tqdm import tqdm  # type: ignore[import-untyped]

    from lcr_sdk.images import read_image

    with tqdm(total=len(found), desc="re-embedding", unit="img", disable=not progress) as bar:
        for i in range(0, len(found), batch):
            part = found[i : i + batch]
            imgs = []
            for r, src in part:
                imgs.append(store.decode_crop(r[1], src) if isinstance(src, bytes) else read_image(src))
            add(
                embedder.embed(imgs),
                ids=[r[1] for r, _ in part],
                labels=[r[2] for r, _ in part],
                metadata=[store.parse_metadata(r[1], r[3]) for r, _ in part],
                crops=[imgs[n] if r[4] is not None else None for n, (r, _) in enumerate(part)],
            )
            bar.update(len(part))
