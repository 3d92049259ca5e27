#!/usr/bin/env python3
"""Live retrieval: the top-k gallery labels for each frame, with the attention overlay; enrol new items live.

    python examples/camera_retrieval.py lcr.onnx gallery/                        # USB camera 0 -> window
    python examples/camera_retrieval.py lcr.engine gallery/ csi://0 --crop center
    python examples/camera_retrieval.py lcr.onnx gallery/ clip.mp4 out.mp4 --headless --log hits.jsonl

Drag a box with the mouse to query just that region (right click clears it).
Keys in the window: e = enrol the current frame (type a label, Enter saves; an empty label becomes item-N;
Esc cancels), q or Esc = quit. A GALLERY folder that does not exist starts empty and is created on enrolment.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import cv2

from lcr_sdk import Embedder, Gallery, LcrError
from lcr_sdk.video import FpsMeter, draw_text, open_sink, open_source


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model file: .onnx (ONNX Runtime), .engine (TensorRT) or .pt (PyTorch)")
    p.add_argument("gallery", help="gallery folder (from examples/build_gallery.py or `lcr-sdk gallery build`)")
    p.add_argument("input", nargs="?", default="0", help="0 | /dev/video0 | csi://0 | rtsp://... | clip.mp4 | images/")
    p.add_argument("output", nargs="?", default="display://0", help="display://0 | out.mp4 | frames/ | last.png")
    p.add_argument("--headless", action="store_true", help="never open a window")
    p.add_argument("--backend", help="override the backend chosen by the model suffix")
    p.add_argument("--top-k", type=int, default=3, help="hits shown per frame")
    p.add_argument("--crop", choices=["none", "center"], default="none", help="query the centre square only")
    p.add_argument("--enroll", metavar="LABEL", help="enrol the first frame under LABEL (no key needed)")
    p.add_argument("--log", type=Path, help="write one JSON line per frame: index and hits")
    p.add_argument("--loop", action="store_true", help="loop a video file or image folder")
    p.add_argument("--max-frames", type=int, default=0, help="stop after this many frames (0: end of stream)")
    return p.parse_args(argv)


def query_box(drawn, crop: str, h: int, w: int) -> tuple[int, int, int, int]:
    """The region to query: a box drawn in the window (clipped), else the centre square (--crop center), else all."""
    if drawn is not None:
        x0, y0, x1, y1 = max(0, drawn[0]), max(0, drawn[1]), min(w, drawn[2]), min(h, drawn[3])
        if x1 - x0 >= 16 and y1 - y0 >= 16:
            return x0, y0, x1, y1
    if crop == "center":
        s = int(min(h, w) * 0.6)
        return (w - s) // 2, (h - s) // 2, (w + s) // 2, (h + s) // 2
    return 0, 0, w, h


def type_key(text: str, key: int) -> tuple[str | None, str | None]:
    """One key typed into the label prompt -> (prompt text, None once closed; the finished label on Enter)."""
    if key in (13, 10):
        return None, text
    if key == 27:  # Esc cancels
        return None, None
    return (text[:-1] if key in (8, 127) else text + chr(key) if 32 <= key < 127 else text), None


def enroll(gallery: Gallery, folder: str, vector, label: str, source: str, index: int) -> str:
    """Add one embedding under ``label`` (empty: ``item-N``) and save the gallery; returns the label."""
    label = label.strip() or f"item-{len(gallery) + 1}"
    gallery.add(vector[None], labels=[label], metadata=[{"source": source, "frame": index}])
    gallery.save(folder)
    return label


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with (
            Embedder(args.model, backend=args.backend) as emb,
            open_source(args.input, loop=args.loop) as source,
            open_sink(args.output, headless=args.headless, fps=source.fps or 30, title="lcr retrieval") as sink,
            open(args.log or os.devnull, "w", encoding="utf-8") as log,
        ):
            exists = (Path(args.gallery) / "CURRENT").exists()
            gallery = Gallery.load(args.gallery) if exists else Gallery(emb.manifest.embedding_dim, emb.model_id)
            print(f"{emb}\ngallery: {len(gallery)} items in {args.gallery}", file=sys.stderr)
            prompt, pending, note, meter, auto = None, None, "", FpsMeter(), args.enroll
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
                    note = "enrolled as " + enroll(gallery, args.gallery, att.embedding, auto, args.input, frame.index)
                    auto = None
                lines = [f"{meter.tick():5.1f} FPS  {emb.backend_name} ({emb.provider})  gallery: {len(gallery)}"]
                lines += [f"{i + 1}. {hit.label}  {hit.score:.3f}" for i, hit in enumerate(hits)] or ["(empty gallery)"]
                typing = prompt is not None
                lines.append(
                    f"label: {prompt}_  (Enter saves, Esc cancels)"
                    if typing
                    else f"[e] enrol  [q] quit  {note}  source: {source.status}"
                )
                draw_text(view, lines)
                log.write(json.dumps({"frame": frame.index, "hits": [[x.label, x.score] for x in hits]}) + "\n")
                key = sink.render(view)  # render
                if typing and key >= 0:
                    prompt, label = type_key(prompt, key)
                    if label is not None:
                        note = "enrolled as " + enroll(gallery, args.gallery, pending[0], label, args.input, pending[1])
                elif key == ord("e"):
                    prompt, pending = "", (att.embedding, frame.index)
                elif key in (ord("q"), 27) or not sink.is_open:
                    break
                if args.max_frames and sink.count >= args.max_frames:
                    break
            print(f"{sink.count} frames, {meter.fps:.1f} FPS, gallery {len(gallery)} items", file=sys.stderr)
    except LcrError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
