#!/usr/bin/env python3
"""Live part-attention: where an LCR model looks, on a camera, a stream or a video.

    python examples/camera_attention.py lcr.onnx                          # USB camera 0 -> window
    python examples/camera_attention.py lcr.engine csi://0                # Jetson CSI camera, TensorRT
    python examples/camera_attention.py lcr.onnx clip.mp4 out.mp4 --headless

Keys in the window: p = next part map (mask -> part 0 .. K-1 -> mask), q or Esc = quit.
The mask view marks each part's peak with its number; a part view marks that part's peak with a cross.
Ctrl+C or SIGTERM stops the demo cleanly: the output video is finished and the exit code is 130.
"""

from __future__ import annotations

import argparse
import sys

from lcr_sdk.errors import MissingDependencyError

try:  # OpenCV, or a system library it loads (libGL), may be missing: one line naming the fix, no traceback
    from lcr_sdk import Embedder, LcrError
    from lcr_sdk.errors import InputError
    from lcr_sdk.redact import redact
    from lcr_sdk.video import (
        FpsMeter,
        add_frame_options,
        bounded_arg,
        draw_text,
        interrupt_on_sigterm,
        open_sink,
        open_source,
    )
except MissingDependencyError as e:
    sys.exit(f"error: {e}")
import cv2  # noqa: E402 (loaded above, through lcr_sdk)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model file: .onnx (ONNX Runtime), .engine (TensorRT) or .pt (PyTorch)")
    p.add_argument(
        "input",
        nargs="?",
        default="0",
        help="0 | /dev/video0 | csi://0 | rtsp://... | clip.mp4 | images/ (default: camera 0)",
    )
    p.add_argument(
        "output",
        nargs="?",
        default="display://0",
        help="display://0 | out.mp4 | frames/ | last.png (default: a window)",
    )
    p.add_argument("--headless", action="store_true", help="never open a window")
    p.add_argument("--backend", help="override the backend chosen by the model suffix (onnxruntime, tensorrt, torch)")
    add_frame_options(p)
    p.add_argument("--loop", action="store_true", help="loop a video file or image folder")
    p.add_argument("--part", type=bounded_arg(int, 0, 1023, "parts"), help="start on part map K instead of the mask")
    p.add_argument(
        "--max-frames",
        type=bounded_arg(int, 0, 2**62, "frames"),
        default=0,
        help="stop after this many frames (0: end of stream)",
    )
    return p.parse_args(argv)


def mark_peaks(view, peaks: list[tuple[int, int, int, float]], min_rel: float = 0.5):
    """Number each part's peak whose score is at least ``min_rel`` of the strongest one."""
    top = max((s for *_, s in peaks), default=0.0)
    spots: dict[tuple[int, int], list[str]] = {}  # parts peaking at the same place share one mark
    for k, x, y, s in peaks:
        if top > 0 and s >= min_rel * top:
            spots.setdefault((x, y), []).append(str(k))
    for (x, y), parts in spots.items():
        cv2.circle(view, (x, y), 4, (255, 255, 255), -1, cv2.LINE_AA)
        cv2.putText(
            view, ",".join(parts), (x + 5, y - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA
        )
    return view


def next_part(part: int | None, num_parts: int) -> int | None:
    """The key 'p' cycles: mask (None) -> 0 -> 1 ... -> K-1 -> mask."""
    if num_parts == 0:
        return None
    return 0 if part is None else (part + 1 if part + 1 < num_parts else None)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with interrupt_on_sigterm():
            return run(args)
    except LcrError as e:
        print(f"error: {redact(str(e))}", file=sys.stderr)
        return 1
    except OSError as e:  # a disk that fills up or goes read-only while frames are written
        from lcr_sdk.cli import os_error_line

        print(f"error: {redact(os_error_line(e))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def run(args: argparse.Namespace) -> int:
    interrupted = False
    with (
        Embedder(args.model, backend=args.backend) as emb,
        open_source(args.input, args.width, args.height, args.fps, args.loop) as source,
        open_sink(args.output, args.headless, source.fps or 30, "lcr attention", [args.input, args.model]) as sink,
    ):
        num_parts, part, meter = emb.manifest.num_parts, args.part, FpsMeter()
        if part is not None and part >= num_parts:
            has = f"parts 0..{num_parts - 1}" if num_parts else "no part maps (a MoCo model)"
            raise InputError(f"--part {part} is not a part of this model; it has {has}")
        print(f"{emb}\nsource: {source.uri} -> {args.output}", file=sys.stderr)
        try:
            for frame in source:  # capture
                if not frame.ok:  # a live source is down: say so, keep going
                    sink.render(frame.image)
                    continue
                att = emb.attend(frame.image)  # preprocess + infer
                view = att.overlay(frame.image, part=part)  # overlay
                if part is None:
                    mark_peaks(view, att.peaks)
                shown = "mask" if part is None else f"part {part} of {num_parts}"
                draw_text(
                    view,
                    [
                        f"{meter.tick():5.1f} FPS  {emb.backend_name} ({emb.provider})",
                        f"{shown}   [p] next part  [q] quit   source: {source.status}",
                    ],
                )
                key = sink.render(view)  # render
                if key in (ord("q"), 27) or not sink.is_open:
                    break
                if key == ord("p"):
                    part = next_part(part, num_parts)
                if args.max_frames and sink.count >= args.max_frames:
                    break
        except KeyboardInterrupt:  # Ctrl+C or SIGTERM: leave the loop, finish the output
            interrupted = True
        print(f"{sink.count} frames, {meter.fps:.1f} FPS, source {source.status}", file=sys.stderr)
    if interrupted:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
