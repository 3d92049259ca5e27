"""`lcr-sdk gallery sync`: exchange a device's local gallery with a fleet gallery (:mod:`lcr_sdk.gallery.sync`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from lcr_sdk.cli.gallery_cmd import JsonOpt, gallery_app


def gallery_sync(
    local: Annotated[Path, typer.Argument(help="The device's gallery folder.")],
    uri: Annotated[
        str,
        typer.Argument(
            help="Fleet gallery: http://HOST:19530 or milvus://HOST:19530 (Milvus), or a milvus-lite PATH.db."
        ),
    ],
    collection: Annotated[str, typer.Option(help="Collection in the fleet database.")] = "lcr_gallery",
    device: Annotated[
        str | None, typer.Option(help="This device's name (renamed conflicts end in @NAME); default: the host name.")
    ] = None,
    pull: Annotated[bool, typer.Option(help="Bring the fleet's items into the local gallery.")] = True,
    images: Annotated[bool, typer.Option(help="Push each item's image, so every device can explain it.")] = True,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds to wait for the server.")] = 10.0,
    as_json: JsonOpt = False,
) -> None:
    """Push local enrolments and removals to a fleet gallery and pull its own; safe to repeat after a failure.
    Example: lcr-sdk gallery sync gallery/ http://milvus.site:19530 --collection feeders"""
    from lcr_sdk.gallery.sync import sync
    from lcr_sdk.redact import redact

    report = sync(local, uri, collection, device=device, pull=pull, images=images, timeout=timeout)
    if as_json:
        typer.echo(json.dumps(dict(report.to_dict(), local=str(local), fleet=redact(uri), collection=collection)))
        return
    typer.echo(f"synced {local} with {redact(uri)} ({collection}): {report}")


def register(app: typer.Typer) -> None:
    """Add ``gallery sync`` to the gallery group (idempotent)."""
    if not any(c.name == "sync" for c in gallery_app.registered_commands):
        gallery_app.command("sync")(gallery_sync)
