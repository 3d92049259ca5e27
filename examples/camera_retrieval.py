#!/usr/bin/env python3
"""Live retrieval: the top-k gallery labels for each frame (or "unknown"), with the attention overlay; enrol live.

    python examples/camera_retrieval.py lcr.onnx gallery/                        # USB camera 0 -> window
    python examples/camera_retrieval.py lcr.engine gallery/ csi://0 --crop center
    python examples/camera_retrieval.py lcr.onnx gallery/ clip.mp4 out.mp4 --headless --log hits.jsonl

Drag a box with the mouse to query just that region (right click clears it).
Keys in the window: e = enrol the current query region (type a label, Enter saves; an empty label becomes item-N;
Esc cancels), q or Esc = quit. A GALLERY folder that does not exist (or an empty one) starts a new gallery, saved
at the first enrolment; any other path must hold a gallery (`lcr-sdk gallery info GALLERY` reads it), else the demo
stops before it opens the model.

A frame whose best score is below the gallery's calibrated threshold (--threshold) is shown as "unknown". An
enrolment is one small append to the gallery (the crop is stored with it), checked first: an image on which the
model's attention is diffuse is enrolled with a warning on screen (--quality warn, the default) or refused (refuse).
Ctrl+C or SIGTERM stops the demo cleanly: the output video is finished and the exit code is 130.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from lcr_sdk.errors import MissingDependencyError

try:  # OpenCV, or a system library it loads (libGL), may be missing: one line naming the fix, no traceback
    from lcr_sdk import Embedder, Gallery, LcrError
    from lcr_sdk.errors import InputError, ModelError
    from lcr_sdk.fileio import atomic_path
    from lcr_sdk.gallery.explain import MAX_SPREAD, check_quality_options
    from lcr_sdk.gallery.search import parse_threshold
    from lcr_sdk.gallery.store import VERSION_DIR, is_gallery
    from lcr_sdk.images import MIN_SIDE
    from lcr_sdk.redact import redact
    from lcr_sdk.video import (
        FpsMeter,
        add_frame_options,
        check_writable,
        draw_text,
        interrupt_on_sigterm,
        open_sink,
        open_source,
        refuse_input,
    )
except MissingDependencyError as e:
    sys.exit(f"error: {e}")
import cv2  # noqa: E402 (loaded above, through lcr_sdk)

MAX_TOP_K = 100  # hits drawn on screen and logged per frame


def threshold_arg(text: str) -> float | str | None:
    """--threshold: auto | none | a cosine in [-1, 1] (the library's own check)."""
    try:
        return parse_threshold(text, "--threshold")
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def positive_int(text: str) -> int:
    """--top-k: 1..MAX_TOP_K."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= MAX_TOP_K:
        raise argparse.ArgumentTypeError(f"{text} is outside 1..{MAX_TOP_K}")
    return value


def frame_count(text: str) -> int:
    """--max-frames: 0 (end of stream) or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is below 0 (0: until the end of the stream)")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model file: .onnx (ONNX Runtime), .engine (TensorRT) or .pt (PyTorch)")
    p.add_argument(
        "gallery",
        help="gallery folder (from examples/build_gallery.py or `lcr-sdk gallery build`), or a fleet gallery: "
        "http://HOST:19530 (a Milvus server) or site.db (milvus-lite), docs/FLEET.md",
    )
    p.add_argument("--collection", default="lcr_gallery", help="collection of a fleet gallery")
    p.add_argument("input", nargs="?", default="0", help="0 | /dev/video0 | csi://0 | rtsp://... | clip.mp4 | images/")
    p.add_argument("output", nargs="?", default="display://0", help="display://0 | out.mp4 | frames/ | last.png")
    p.add_argument("--headless", action="store_true", help="never open a window")
    p.add_argument("--backend", help="override the backend chosen by the model suffix")
    p.add_argument("--top-k", type=positive_int, default=3, help="hits shown per frame (default 3)")
    p.add_argument("--crop", choices=["none", "center"], default="none", help="query the centre square only")
    p.add_argument("--enroll", metavar="LABEL", help="enrol the first frame's query region under LABEL (no key needed)")
    p.add_argument(
        "--threshold",
        type=threshold_arg,
        default="auto",
        help="below this score a frame is 'unknown': auto (the gallery's calibrated one; default), none or a cosine",
    )
    p.add_argument(
        "--quality",
        default="warn",
        help="enrolment check of the model's attention (LCR models): refuse or warn (default) on diffuse attention, "
        "or off",
    )
    p.add_argument(
        "--max-spread",
        type=float,
        default=MAX_SPREAD,
        help=f"largest attention spread --quality accepts, 0..1 (default {MAX_SPREAD})",
    )
    p.add_argument("--log", type=Path, help="write one JSON line per frame: index, hits, unknown")
    add_frame_options(p)
    p.add_argument("--loop", action="store_true", help="loop a video file or image folder")
    p.add_argument("--max-frames", type=frame_count, default=0, help="stop after this many frames (0: end of stream)")
    args = p.parse_args(argv)
    try:  # the library's one check of the quality options
        check_quality_options(args.quality, args.max_spread, ("--quality", "--max-spread"))
    except InputError as e:
        p.error(str(e))
    if args.enroll is not None and not args.enroll.strip():
        p.error(
            f"--enroll {args.enroll!r} is an empty label; give the label to enrol the first frame under, e.g. "
            "--enroll robin (leave --enroll out to enrol nothing)"
        )
    return args


def check_log(args: argparse.Namespace) -> None:
    """Refuse a --log path that cannot be written, or that is an input or the output, before anything is opened."""
    path = args.log
    if path is None:
        return
    if path.is_dir():
        raise InputError(f"--log {path} is a folder; give a file name such as hits.jsonl")
    if not path.parent.is_dir():
        raise InputError(f"--log {path}: folder {path.parent} does not exist; create it or choose another path")
    refuse_input(path, [args.input, args.gallery, args.model], "--log")
    if path.resolve() == Path(args.output).resolve():
        raise InputError(f"--log {path} is also the output {args.output!r}; give the log another name")
    check_writable(path.parent, f"--log {path}")


def is_fleet(gallery: str) -> bool:
    """A Milvus URI (scheme://...) or a milvus-lite database (a path ending in .db) rather than a gallery folder."""
    return "://" in gallery or gallery.endswith(".db")


def is_new_gallery(where: str) -> bool:
    """Whether ``where`` starts a new local gallery: a folder that does not exist, or an empty one (leftovers of an
    interrupted save, ``.tmp-*`` and ``.lock``, aside), as ``lcr-sdk gallery build --out`` accepts."""
    path = Path(where)
    if not path.exists():
        return True
    return path.is_dir() and all(p.name.startswith((".tmp-", ".lock")) for p in path.iterdir())


def load_gallery(where: str) -> Gallery | None:
    """The saved local gallery in ``where``, or None where a new one starts (:func:`is_new_gallery`).

    Raises:
        InputError: ``where`` is a file, a folder that holds something else (images, a gallery whose CURRENT is
            gone), or a damaged gallery: refused before the model and the camera open, and left as it was.
    """
    path = Path(where)
    if is_new_gallery(where):
        return None
    if not is_gallery(path):  # refused here, not by Gallery.load, which would leave its lock file in the folder
        if not path.is_dir():
            what = "a file, not a gallery folder"
        elif any(VERSION_DIR.match(p.name) for p in path.iterdir()):
            what = "its CURRENT file is gone, so the gallery is damaged: restore it from a backup"
        else:
            what = "a folder with no CURRENT file"
        raise InputError(
            f"{where} is not a saved gallery ({what}); give the folder `lcr-sdk gallery build --out` wrote, or a "
            "folder that does not exist (or an empty one) to start a new gallery there"
        )
    return Gallery.load(where)


def open_gallery(where: str, collection: str, emb: Embedder, saved: Gallery | None = None) -> Any:
    """The fleet gallery ``where`` names, the local gallery ``saved`` (from :func:`load_gallery`), or a new one."""
    if is_fleet(where):
        return Gallery.connect(where, collection, model=emb)
    if saved is not None:
        return saved
    return Gallery(emb.manifest.embedding_dim, emb.model_id)


def check_gallery_model(gallery: Any, emb: Embedder, where: str, model: str) -> None:
    """Refuse a gallery built with another model, saying how to re-embed it (this demo never compares them)."""
    try:
        gallery.check_model(emb)
    except ModelError:
        if is_fleet(where):
            raise
        raise ModelError(
            f"gallery {where} was built with model {gallery.model_sha256[:12]}... but {model} is model "
            f"{emb.model_id[:12]}...: their embeddings are not comparable, so every score would be meaningless. "
            f"Re-embed the gallery with this model (lcr-sdk gallery rebuild {where} --model {model}), or run the "
            "demo with the model the gallery was built with"
        ) from None


def check_enrolment(args: argparse.Namespace) -> None:
    """With --enroll, refuse a gallery folder that cannot be written before anything is opened."""
    if args.enroll is None or is_fleet(args.gallery):  # a fleet gallery's writes are the server's to refuse
        return
    folder = Path(args.gallery)
    if folder.exists():
        check_writable(folder, f"--enroll into gallery {folder}")
    elif folder.parent.is_dir():
        check_writable(folder.parent, f"--enroll into a new gallery {folder}")
    else:
        raise InputError(f"--enroll: the folder of gallery {folder} ({folder.parent}) does not exist; create it first")


def query_box(drawn: Any, crop: str, h: int, w: int) -> tuple[int, int, int, int]:
    """The region to query: a box drawn in the window (clipped), else the centre square (--crop center), else all."""
    if drawn is not None:
        x0, y0, x1, y1 = max(0, drawn[0]), max(0, drawn[1]), min(w, drawn[2]), min(h, drawn[3])
        if x1 - x0 >= 16 and y1 - y0 >= 16:
            return x0, y0, x1, y1
    if crop == "center":
        s = max(int(min(h, w) * 0.6), min(h, w, MIN_SIDE))  # never smaller than the model embeds
        return (w - s) // 2, (h - s) // 2, (w + s) // 2, (h + s) // 2
    return 0, 0, w, h


def type_key(text: str, key: int) -> tuple[str | None, str | None]:
    """One key typed into the label prompt -> (prompt text, None once closed; the finished label on Enter)."""
    if key in (13, 10):
        return None, text
    if key == 27:  # Esc cancels
        return None, None
    return (text[:-1] if key in (8, 127) else text + chr(key) if 32 <= key < 127 else text), None


def enroll(
    gallery: Gallery,
    folder: str,
    emb: Embedder,
    image: Any,
    label: str,
    source: str,
    index: int,
    quality: str = "warn",
    max_spread: float = MAX_SPREAD,
) -> str:
    """Enrol one image crop under ``label`` (empty: ``item-N``) and commit it: one append, not a rewrite.

    Returns the note shown on screen: the label, or why the image was refused (diffuse attention).
    """
    label = label.strip() or f"item-{len(gallery) + 1}"
    meta = {"source": redact(source), "frame": index}  # stored without credentials: a stream URL's password
    try:
        done = gallery.enroll(emb, image, label, metadata=meta, quality=quality, max_spread=max_spread)
    except InputError as e:  # refused (--quality refuse): the reason is the note
        print(str(e), file=sys.stderr)
        return str(e).split(";")[0]
    if isinstance(gallery, Gallery) and gallery.path is None:
        gallery.save(folder)  # a new gallery: created with this first item
    else:
        gallery.commit()
    q = done.quality
    if q.ok:
        return f"enrolled as {label}"
    print(f"warning: {label}: {q.reason}", file=sys.stderr)
    return f"enrolled as {label} (warning: attention is diffuse, {q.spread:.1%} of the view > {max_spread:.0%})"


def answer(hits: list[Any], threshold: float | None) -> tuple[str, bool]:
    """The first overlay line: the best label, or "unknown" when it scores below the threshold."""
    if not hits:
        return "(empty gallery)", False
    best = hits[0]
    if threshold is not None and best.score < threshold:
        return f"unknown  (nearest {best.label} {best.score:.3f} < threshold {threshold:.3f})", True
    return f"{best.label}  {best.score:.3f}", False


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with interrupt_on_sigterm():
            return run(args)
    except LcrError as e:
        print(f"error: {redact(str(e))}", file=sys.stderr)
        return 1
    except OSError as e:  # a disk that fills up or goes read-only while the output, log or gallery is written
        from lcr_sdk.cli import os_error_line

        print(f"error: {redact(os_error_line(e))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def run(args: argparse.Namespace) -> int:
    check_log(args)
    with contextlib.ExitStack() as stack:
        saved = None if is_fleet(args.gallery) else load_gallery(args.gallery)  # before the model and the camera
        if saved is not None:
            stack.enter_context(contextlib.closing(saved))
        check_enrolment(args)
        emb = stack.enter_context(Embedder(args.model, backend=args.backend))
        gallery = open_gallery(args.gallery, args.collection, emb, saved)
        if gallery is not saved:
            stack.enter_context(contextlib.closing(gallery))
        check_gallery_model(gallery, emb, args.gallery, args.model)
        source = stack.enter_context(open_source(args.input, args.width, args.height, args.fps, args.loop))
        sink = stack.enter_context(
            open_sink(
                args.output, args.headless, source.fps or 30, "lcr retrieval", [args.input, args.gallery, args.model]
            )
        )
        log = None
        if args.log is not None:  # written under a temporary name, renamed when the demo ends (Ctrl+C included)
            log = stack.enter_context(open(stack.enter_context(atomic_path(args.log, fsync=False)), "w"))
        cut = gallery.threshold if args.threshold == "auto" else args.threshold
        shown = "none" if cut is None else f"{cut:.4f}"
        print(f"{emb}\ngallery: {len(gallery)} items in {redact(args.gallery)}, threshold {shown}", file=sys.stderr)
        prompt, pending, note, meter, auto = None, None, "", FpsMeter(), args.enroll
        interrupted = False
        try:
            for frame in source:  # capture
                if not frame.ok:  # live source down: show why
                    sink.render(frame.image)
                    continue
                h, w = frame.image.shape[:2]
                x0, y0, x1, y1 = query_box(sink.box, args.crop, h, w)
                region = frame.image[y0:y1, x0:x1]
                att = emb.attend(region)  # preprocess + infer
                hits = gallery.search(att.embedding, k=args.top_k, model=emb)  # retrieve
                view = frame.image.copy()  # overlay
                view[y0:y1, x0:x1] = att.overlay(region)
                if (x1 - x0, y1 - y0) != (w, h):
                    cv2.rectangle(view, (x0, y0), (x1 - 1, y1 - 1), (255, 255, 255), 2)
                if auto:  # --enroll LABEL: first frame
                    note = enroll(
                        gallery, args.gallery, emb, region, auto, args.input, frame.index, args.quality, args.max_spread
                    )
                    print(note, file=sys.stderr)
                    cut, auto = (gallery.threshold if args.threshold == "auto" else cut), None
                headline, unknown = answer(hits, cut)
                lines = [f"{meter.tick():5.1f} FPS  {emb.backend_name} ({emb.provider})  gallery: {len(gallery)}"]
                lines += [headline] + [f"{i + 1}. {hit.label}  {hit.score:.3f}" for i, hit in enumerate(hits[1:], 1)]
                typing = prompt is not None
                lines.append(
                    f"label: {prompt}_  (Enter saves, Esc cancels)"
                    if typing
                    else f"[e] enrol  [q] quit  source: {source.status}"
                )
                if note:
                    lines.append(note)  # the last enrolment: its label, or why it was refused or warned about
                draw_text(view, lines, color=(80, 80, 255) if unknown else (255, 255, 255))
                row = {"frame": frame.index, "hits": [[x.label, x.score] for x in hits], "unknown": unknown}
                if log is not None:
                    log.write(json.dumps(row) + "\n")
                key = sink.render(view)  # render
                if typing and key >= 0:
                    assert prompt is not None and pending is not None
                    prompt, label = type_key(prompt, key)
                    if label is not None:
                        note = enroll(
                            gallery,
                            args.gallery,
                            emb,
                            pending[0],
                            label,
                            args.input,
                            pending[1],
                            args.quality,
                            args.max_spread,
                        )
                        print(note, file=sys.stderr)
                elif key == ord("e"):
                    prompt, pending = "", (region.copy(), frame.index)
                elif key in (ord("q"), 27) or not sink.is_open:
                    break
                if args.max_frames and sink.count >= args.max_frames:
                    break
        except KeyboardInterrupt:  # Ctrl+C or SIGTERM: leave the loop, finish the video and the log
            interrupted = True
        print(f"{sink.count} frames, {meter.fps:.1f} FPS, gallery {len(gallery)} items", file=sys.stderr)
    if interrupted:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
