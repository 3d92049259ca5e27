"""`lcr-sdk gallery build / search`: thin commands over :class:`~lcr_sdk.gallery.Gallery`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from lcr_sdk.cli.runtime_cmd import BackendOpt, DeviceOpt, ModelArg, embedder_for

gallery_app = typer.Typer(help="Galleries: embed a labelled image folder, search it.", no_args_is_help=True)


@gallery_app.command("build")
def gallery_build(
    model: ModelArg,
    folder: Annotated[Path, typer.Argument(help="Folder of images, one sub-folder per label.")],
    out: Annotated[Path, typer.Option(help="Gallery folder to write (replaced crash-safely if it is a gallery).")],
    index: Annotated[str, typer.Option(help="exact (numpy), faiss, or faiss:<factory> e.g. faiss:HNSW32.")] = "exact",
    batch: Annotated[int, typer.Option(help="Images per embed call.")] = 32,
    backend: BackendOpt = None,
    device: DeviceOpt = None,
):
    """Embed a labelled folder into a gallery. Example: lcr-sdk gallery build model.onnx data/test --out gallery/"""
    from lcr_sdk.gallery import build_from_folder

    with embedder_for(model, backend, device) as emb:
        g = build_from_folder(emb, folder, index=index, batch=batch)
    g.save(out)
    typer.echo(f"gallery {out}: {len(g)} images, {len(set(g.labels))} labels, dim {g.dim}")


@gallery_app.command("search")
def gallery_search(
    gallery: Annotated[Path, typer.Argument(help="Gallery folder written by `lcr-sdk gallery build`.")],
    model: ModelArg,
    image: Annotated[Path, typer.Argument(help="Query image.")],
    k: Annotated[int, typer.Option("-k", "--k", help="Number of hits.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print the hits as JSON.")] = False,
    force: Annotated[bool, typer.Option(help="Search even if the gallery was built with another model.")] = False,
    backend: BackendOpt = None,
    device: DeviceOpt = None,
):
    """Find the gallery images nearest to a query. Example: lcr-sdk gallery search gallery/ model.onnx bird.jpg -k 5"""
    from lcr_sdk.gallery import Gallery

    g = Gallery.load(gallery)
    with embedder_for(model, backend, device) as emb:
        hits = g.search(emb.embed(str(image)), k=k, model=emb, force=force)
    if as_json:
        typer.echo(json.dumps([h.__dict__ for h in hits], indent=2))
        return
    typer.echo(f"{'rank':>4}  {'score':>7}  {'label':<16}  id")
    for r, h in enumerate(hits, 1):
        typer.echo(f"{r:>4}  {h.score:7.4f}  {h.label:<16}  {h.id}")


def register(app: typer.Typer) -> None:
    """Add this group's commands to ``app``."""
    app.add_typer(gallery_app, name="gallery")
