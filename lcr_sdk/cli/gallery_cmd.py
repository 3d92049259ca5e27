"""`lcr-sdk gallery build / search / rebuild / info`: thin commands over :class:`~lcr_sdk.gallery.Gallery`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from lcr_sdk.cli.runtime_cmd import BackendOpt, DeviceOpt, ModelArg, embedder_for
from lcr_sdk.errors import InputError

gallery_app = typer.Typer(
    help="Galleries: embed a labelled image folder, search it (with 'unknown' and explanations), re-embed it.",
    no_args_is_help=True,
)

BatchOpt = Annotated[int, typer.Option(min=1, help="Images per embed call (>= 1).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout instead of text.")]


def _check_out_gallery(out: Path, replace: bool) -> None:
    from lcr_sdk.fileio import check_can_create
    from lcr_sdk.gallery.store import check_target, is_gallery

    check_target(out)
    check_can_create(out, "the gallery")  # before any image is embedded
    if is_gallery(out) and not replace:
        from lcr_sdk.gallery import Gallery

        try:
            n = f"{len(Gallery.load(out))} items"
        except InputError:
            n = "a damaged gallery"
        raise InputError(f"{out} already holds a gallery ({n}); pass --replace to replace it, or choose another --out")


def _parse_where(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise InputError(f"--where {pair!r} is not KEY=VALUE; e.g. --where shop=3 or --where camera=gate")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw  # a bare word is a string
        if isinstance(value, (list, dict)):
            raise InputError(f"--where {pair!r}: only str, number, true/false or null values can be matched")
        out[key] = value
    return out


ImageRootOpt = Annotated[
    Path | None,
    typer.Option(
        help="Where the gallery's images are now, if not where it was built from (a gallery copied to another "
        "machine with its images): the folder with one sub-folder per label."
    ),
]


def _use_image_root(g: Any, image_root: Path | None) -> None:
    """Point a loaded gallery at ``--image-root`` (in memory: a search records nothing; a rebuild records it)."""
    if image_root is None:
        return
    if not image_root.is_dir():
        what = "is a file" if image_root.exists() else "does not exist"
        raise InputError(
            f"--image-root {image_root} {what}; pass the folder that now holds the gallery's images (the one it was "
            "built from, moved or copied: one sub-folder per label)"
        )
    g.image_root = str(image_root.resolve())


def _moved_images(g: Any, item_id: str, path: Path) -> InputError:
    """The error for an item whose image file is not where the gallery records it."""
    return InputError(
        f"gallery item {item_id!r}: its image {path} does not exist (the gallery records its images under "
        f"{g.image_root or g.path}); if the images were moved or the gallery copied to another machine, pass "
        "--image-root DIR, the folder that now holds them (one sub-folder per label)"
    )


def _check_hit_images(g: Any, hits: list[Any]) -> None:
    """Every hit to explain has its image: its stored crop, or its file under the image root (else one error naming
    the item and --image-root, not the image reader's, which would seem to be about the query)."""
    for h in hits:
        path = g.image_path(h.id)  # refuses a stored path that leaves the image root
        if path is None or path.exists():
            continue
        try:
            g.image(h.id)  # a stored crop serves as well
        except InputError:
            raise _moved_images(g, h.id, path) from None


def _check_explain_target(path: Path, g: Any, recorded_root: str) -> None:
    """An --explain picture never goes where the gallery's images are (it would replace an item's image for every
    later explanation and rebuild) or into the gallery's folder."""
    target = path.parent.resolve() / path.name
    why = "where the gallery keeps its items' images: writing there could replace one of them"
    places = [(Path(r), "the gallery's image root", why) for r in dict.fromkeys((recorded_root, g.image_root)) if r]
    places.append((g.path, "the gallery folder", "which holds the gallery's own files only"))
    for folder, what, why in places:
        if folder is not None and target.is_relative_to(folder.resolve()):
            raise InputError(
                f"--explain {path} is inside {what} {folder}, {why}; write the picture elsewhere, e.g. why.png"
            )


def _new_folders(out: Path) -> list[Path]:
    """The folders a save to ``out`` creates: ``out`` and its missing parents, deepest first."""
    made, p = [], out
    while not p.exists() and p != p.parent:
        made.append(p)
        p = p.parent
    return made


def _save_or_explain(out: Path, write: Any, again: str) -> Any:
    """Run ``write`` (a save of a whole gallery to ``out``); where it fails, nothing it made is left behind (a new
    folder, the lock file of a folder that had none) and the error says what a command's failure leaves (the
    library's speaks of pending changes, which a command has none of): ``again`` is what to run once the cause is
    fixed, e.g. "run the build again"."""
    from lcr_sdk.gallery.persist import UNCHANGED
    from lcr_sdk.gallery.store import is_gallery

    made, existed, had_lock = _new_folders(out), is_gallery(out), (out / ".lock").exists()
    try:
        return write()
    except InputError as e:
        if not had_lock and out.is_dir() and [p.name for p in out.iterdir()] == [".lock"]:
            (out / ".lock").unlink()  # a folder holding nothing else: no other writer is at work there
        for folder in made:
            try:
                folder.rmdir()  # only empty ones: nothing but the lock was ever there
            except OSError:
                break
        kept = f"the gallery at {out} is unchanged" if existed else f"nothing was written to {out}"
        text = str(e).replace(f"free space and try again ({UNCHANGED})", f"{kept}: free space and {again}")
        raise InputError(text.replace(UNCHANGED, f"{kept}: {again}")) from None


def _check_picture_out(path: Path, image: Path) -> None:
    if path.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise InputError(f"--explain {path}: use a .png or .jpg file name")
    if path.is_dir():
        raise InputError(f"--explain {path} is a folder; give a file name such as why.png")
    if not path.parent.is_dir():
        raise InputError(f"--explain {path}: folder {path.parent} does not exist; create it first")
    if path.exists() and path.resolve() == image.resolve():
        raise InputError(f"--explain {path} is the query image; choose another file name")


@gallery_app.command("build")
def gallery_build(
    model: ModelArg,
    folder: Annotated[Path, typer.Argument(help="Folder of images, one sub-folder per label.")],
    out: Annotated[Path, typer.Option(help="Gallery folder to write (a new or empty folder, or --replace).")],
    index: Annotated[
        str, typer.Option(help="exact (numpy), faiss, or faiss:<factory>[;params], e.g. 'faiss:IVF1024,SQ8;nprobe=16'.")
    ] = "exact",
    dtype: Annotated[str, typer.Option(help="Vector storage: float32 or float16 (half the size).")] = "float32",
    batch: BatchOpt = 32,
    replace: Annotated[bool, typer.Option(help="Replace an existing gallery at --out (crash-safely).")] = False,
    quality: Annotated[
        str, typer.Option(help="LCR attention check per image: off, warn (report diffuse ones) or refuse (leave out).")
    ] = "warn",
    max_spread: Annotated[
        float | None,
        typer.Option(
            help="Largest attention spread --quality accepts, (0..1]: the share of the view covered "
            "(default: the gallery's, 0.9)."
        ),
    ] = None,
    on_bad: Annotated[
        str, typer.Option(help="An unreadable image: fail (stop, naming it) or skip (leave it out, list it).")
    ] = "fail",
    as_json: JsonOpt = False,
    backend: BackendOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Embed a labelled folder into a gallery. Example: lcr-sdk gallery build model.onnx data/test --out gallery/"""
    from lcr_sdk.gallery import Gallery, Quality, build_from_folder
    from lcr_sdk.gallery.build import check_on_bad, not_images
    from lcr_sdk.gallery.explain import MAX_SPREAD, check_quality_options
    from lcr_sdk.gallery.search import parse_index, require_index
    from lcr_sdk.gallery.store import check_dtype

    max_spread = MAX_SPREAD if max_spread is None else max_spread
    check_dtype(dtype, "--dtype")  # the library's checks, before the model is loaded
    check_quality_options(quality, max_spread, ("--quality", "--max-spread"))
    require_index(index, "--index")  # a valid spec whose library is installed: the index is built at the save
    check_on_bad(on_bad, "--on-bad")  # before the model is loaded
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder; pass a folder with one sub-folder of images per label")
    _check_out_gallery(out, replace)
    others = not_images(folder)
    flagged: list[tuple[str, Quality]] = []
    unreadable: list[tuple[str, str]] = []
    with embedder_for(model, backend, device) as emb:
        parse_index(index, emb.manifest.embedding_dim)
        g: Gallery = build_from_folder(
            emb,
            folder,
            index=index,
            batch=batch,
            dtype=dtype,
            quality=quality,
            max_spread=max_spread,
            on_quality=lambda p, q: flagged.append((p, q)),
            on_bad=on_bad,
            on_unreadable=lambda p, why: unreadable.append((p, why)),
            progress=not as_json,
        )
    if len(g) == 0:
        why = "was readable" if len(unreadable) and not flagged else "passed --quality refuse"
        raise InputError(f"no image of {folder} {why}; nothing was written to {out}")
    _save_or_explain(out, lambda: g.save(out, replace=True, progress=not as_json), "run the build again")
    cal = g.calibration
    summary = {
        "gallery": str(out),
        "items": len(g),
        "labels": len({lab for lab in g.labels if lab}),
        "unlabelled": sum(1 for lab in g.labels if not lab),
        "dim": g.dim,
        "dtype": g.dtype,
        "index": g.index,
        "threshold": cal.threshold if cal else None,
        "diffuse": [{"path": p, "spread": q.spread} for p, q in flagged],
        "quality": quality,
        "unreadable": [{"path": p, "reason": why} for p, why in unreadable],
        "not_images": others,
    }
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    typer.echo(f"gallery {out}: {len(g)} images, {summary['labels']} labels, dim {g.dim}, {g.dtype}, index {g.index}")
    if unreadable:
        from lcr_sdk.images import skip_list

        shown = skip_list(unreadable) + (" (--json lists all)" if len(unreadable) > 5 else "")
        typer.echo(f"{len(unreadable)} unreadable image(s) left out (--on-bad skip): {shown}", err=True)
    if others:
        from lcr_sdk.images import IMAGE_SUFFIXES

        names = ", ".join(o.encode("utf-8", "backslashreplace").decode("utf-8") for o in others[:5])  # any name
        typer.echo(
            f"{len(others)} file(s) left out, not of an image format the build reads ({' '.join(IMAGE_SUFFIXES)}): "
            f"{names}" + (f" and {len(others) - 5} more (--json lists all)" if len(others) > 5 else ""),
            err=True,
        )
    if summary["unlabelled"]:
        typer.echo(
            f"warning: {summary['unlabelled']} image(s) directly in {folder} have no label (a label is the name of "
            f"the sub-folder an image is in: {folder}/<label>/<image>); search finds them, without a label, and the "
            f"open-set threshold is calibrated without them",
            err=True,
        )
    if flagged:
        what = "left out" if quality == "refuse" else "kept"
        shown = ", ".join(f"{p} ({q.spread:.0%})" for p, q in flagged[:5]) + (" ..." if len(flagged) > 5 else "")
        typer.echo(f"{len(flagged)} image(s) with diffuse attention {what} (spread > {max_spread:.0%}): {shown}")
    if cal is not None:
        typer.echo(
            f"open-set threshold: {cal.threshold:.4f} (false accepts {cal.far:.0%}, false rejects {cal.frr:.0%} on "
            f"the sample)"
            if cal.threshold is not None
            else f"open-set threshold: none ({cal.reason})"
        )
        if cal.weak:
            typer.echo(
                "warning: this model barely separates the gallery's labels, so 'unknown' decisions are little better "
                "than chance; retrieval still ranks by similarity. A model trained on this kind of data separates "
                "them (docs/RUNTIME.md, open-set threshold)",
                err=True,
            )


def _print_hits(
    g: Any, hits: list[Any], rows: list[dict[str, Any]], t: float | None, label: list[str] | None, filters: Any
) -> None:
    """The text form of a search: "unknown" or why there are no hits, then the table."""
    if hits and t is not None and hits[0].score < t:
        typer.echo(
            f"unknown: no gallery item reaches the threshold {t:.4f} (nearest: {rows[0]['label'] or rows[0]['id']!r} "
            f"at {hits[0].score:.4f})"
        )
    elif not hits and label and not set(label) & set(g.labels):
        known = sorted({lab for lab in g.labels if lab})
        shown = ", ".join(known[:10]) + (f" ... ({len(known)} in all)" if len(known) > 10 else "")
        asked = " or ".join(repr(x) for x in label)
        typer.echo(f"no items: the gallery has no label {asked} (its labels: {shown or 'none'})")
    elif not hits:
        typer.echo("no items" + (" match the filter" if label or filters else " in the gallery"))
    # match: at or above the threshold (a known label); no: below it, the nearest item of what counts as "unknown"
    typer.echo(f"{'rank':>4}  {'score':>7}  {'match':<5}  {'label':<16}  id")
    for r, row in enumerate(rows, 1):
        match = "-" if t is None else ("yes" if row["match"] else "no")
        typer.echo(f"{r:>4}  {row['score']:7.4f}  {match:<5}  {row['label']:<16}  {row['id']}")


@gallery_app.command("search")
def gallery_search(
    gallery: Annotated[Path, typer.Argument(help="Gallery folder written by `lcr-sdk gallery build`.")],
    model: ModelArg,
    image: Annotated[Path, typer.Argument(help="Query image.")],
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="Number of hits.")] = 5,
    threshold: Annotated[
        str, typer.Option(help="auto (the gallery's calibrated threshold), none, or a cosine: below it is 'unknown'.")
    ] = "auto",
    label: Annotated[list[str] | None, typer.Option(help="Only items with this label (repeatable).")] = None,
    where: Annotated[
        list[str] | None, typer.Option(help="Only items whose metadata has KEY=VALUE (repeatable; JSON values).")
    ] = None,
    explain: Annotated[
        Path | None, typer.Option(help="Write a picture: query vs each hit, attention maps and matched parts.")
    ] = None,
    image_root: ImageRootOpt = None,
    as_json: JsonOpt = False,
    force: Annotated[bool, typer.Option(help="Search even if the gallery was built with another model.")] = False,
    backend: BackendOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Find the gallery images nearest to a query. Example: lcr-sdk gallery search gallery/ model.onnx bird.jpg -k 5"""
    from lcr_sdk.gallery import Gallery
    from lcr_sdk.gallery.explain import stack, write_image
    from lcr_sdk.gallery.search import parse_threshold
    from lcr_sdk.gallery.store import redact_values
    from lcr_sdk.images import read_image

    cut = parse_threshold(threshold, "--threshold")
    filters = _parse_where(where or [])
    if explain is not None:
        _check_picture_out(explain, image)
    query = read_image(image)
    g = Gallery.load(gallery)
    recorded_root = g.image_root
    _use_image_root(g, image_root)
    if explain is not None:
        _check_explain_target(explain, g, recorded_root)  # before the model loads
    with embedder_for(model, backend, device) as emb:
        hits = g.search(emb.embed(query), k=k, model=emb, force=force, label=label or None, where=filters or None)
        t = g.threshold if cut == "auto" else cut
        assert not isinstance(t, str)
        if explain is not None and hits:
            _check_hit_images(g, hits[:5])
            write_image(explain, stack([h.explain(query, emb).image for h in hits[:5]]))
    cal = g.calibration
    if cut == "auto" and t is None and cal is not None:  # as Gallery.search(threshold="auto") warns, in CLI terms
        typer.echo(
            f"warning: --threshold auto: the gallery has no calibrated threshold ({cal.reason}), so every "
            "hit is kept and no query is unknown; enrol items of two or more labels, or pass a cosine "
            "(e.g. --threshold 0.7)",
            err=True,
        )
    rows = redact_values([dict(h.to_dict(), match=t is None or h.score >= t) for h in hits])  # older galleries
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    _print_hits(g, hits, rows, t, label, filters)
    if explain is not None and hits:
        typer.echo(f"wrote {explain}", err=True)


@gallery_app.command("rebuild")
def gallery_rebuild(
    gallery: Annotated[Path, typer.Argument(help="Gallery folder to re-embed.")],
    model: Annotated[Path, typer.Option("--model", help="The new model (.onnx, .engine or .pt).")],
    out: Annotated[Path | None, typer.Option(help="Write the new gallery here instead of replacing GALLERY.")] = None,
    batch: BatchOpt = 32,
    skip_missing: Annotated[
        bool, typer.Option(help="Leave out items whose image is gone (default: refuse before any work).")
    ] = False,
    replace: Annotated[bool, typer.Option(help="Replace an existing gallery at --out.")] = False,
    image_root: ImageRootOpt = None,
    as_json: JsonOpt = False,
    backend: BackendOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Re-embed the stored images with another model. Example: lcr-sdk gallery rebuild gallery/ --model new.onnx"""
    from lcr_sdk.gallery import Gallery
    from lcr_sdk.gallery.search import require_index

    if out is not None:
        _check_out_gallery(out, replace)
    else:
        from lcr_sdk.fileio import check_can_create

        check_can_create(gallery, "the rebuilt gallery")  # replaced in place: before any image is embedded
    g = Gallery.load(gallery)
    require_index(g.index, None)  # the rebuilt gallery's index is built when it is saved
    _use_image_root(g, image_root)  # the rebuilt gallery records it
    _check_image_root(g)
    target = out or gallery
    with embedder_for(model, backend, device) as emb:
        new, skipped = _save_or_explain(
            target,
            lambda: g.rebuild(emb, out=out, batch=batch, progress=not as_json, skip_missing=skip_missing),
            "run the rebuild again",
        )
    if as_json:
        typer.echo(
            json.dumps({"gallery": str(target), "items": len(new), "skipped": skipped, "model": new.model_sha256})
        )
        return
    typer.echo(
        f"gallery {target}: {len(new)} items re-embedded with {model.name} (model {new.model_sha256[:12]})"
        + (f"; {len(skipped)} left out (image missing): {', '.join(skipped[:5])}" if skipped else "")
    )


def _check_image_root(g: Any) -> None:
    """Before a rebuild embeds anything: a gallery whose image root is not here (copied to another machine without
    --image-root) is refused naming an item and --image-root; --skip-missing would leave out every such item."""
    root = g.image_root
    if not root or Path(root).is_dir():
        return
    for item_id, meta in zip(g.ids, g.metadata, strict=True):
        if isinstance(meta.get("path"), str) and meta["path"]:
            path = g.image_path(item_id)
            raise _moved_images(g, item_id, path)


@gallery_app.command("info")
def gallery_info(
    gallery: Annotated[Path, typer.Argument(help="Gallery folder.")],
    as_json: JsonOpt = False,
) -> None:
    """Size, labels, storage, index and open-set threshold of a gallery. Example: lcr-sdk gallery info gallery/"""
    from lcr_sdk.gallery import Gallery
    from lcr_sdk.gallery.store import redact_values

    g = Gallery.load(gallery)
    info = redact_values(g.info())
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    for key, value in info.items():
        typer.echo(f"{key:>16}: {value}")


def register(app: typer.Typer) -> None:
    """Add this group's commands to ``app``."""
    app.add_typer(gallery_app, name="gallery")
