"""Frame sinks: a window, a video file, a folder of PNG frames or one image; every file is written under a
temporary name and renamed into place (:mod:`lcr_sdk.fileio`). See :func:`open_sink` for the URI forms.
"""

from __future__ import annotations

import errno
import fnmatch
import glob
import os
import re
import shutil
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import cv2
import numpy as np

from lcr_sdk.errors import InputError
from lcr_sdk.fileio import atomic_path, check_writable
from lcr_sdk.images import IMAGE_SUFFIXES
from lcr_sdk.video.draw import fit_frame
from lcr_sdk.video.sources import STREAM_SCHEMES, VIDEO_SUFFIXES, quiet_opencv

_FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "FFV1"}  # .mkv: lossless
SINK_FORMS = "display://0 (window), out.mp4 | out.avi | out.mkv (video), frames/ (PNG folder), last.png (image)"
# image suffixes a colour frame cannot be written as (OpenCV has no .jfif encoder; .pgm is grey), with the one to use
NOT_FRAME_SUFFIXES = {".jfif": ".jpg (the same JPEG format)", ".pgm": ".ppm or .png (.pgm holds grey only)"}
FRAME_IMAGE_SUFFIXES = tuple(s for s in IMAGE_SUFFIXES if s not in NOT_FRAME_SUFFIXES)  # what an image sink writes


class _Discard(Exception):
    """Thrown into a sink's atomic_path to drop its temporary file."""


class Sink:
    """Where rendered frames go. :meth:`render` returns the key pressed in a window (or -1)."""

    def __init__(self, uri: str):
        self.uri = uri
        self.count = 0  # frames rendered
        self.is_open = True  # False once closed, or a window was closed by the user
        self.box: tuple[int, int, int, int] | None = None  # (x0, y0, x1, y1) drawn with the mouse in a window

    def render(self, image: np.ndarray) -> int:
        self.count += 1
        return -1

    def close(self) -> None:
        self.is_open = False

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: object, tb: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r}, frames={self.count})"


class WindowSink(Sink):
    """An OpenCV window; closing it (or pressing q / Esc, which the demos handle) ends the demo.

    Dragging with the left mouse button draws :attr:`box` (in frame pixels); a right click clears it.
    """

    MIN_BOX = 16  # px; a smaller drag is a click, not a box

    def __init__(self, uri: str, title: str = "lcr-sdk"):
        super().__init__(uri)
        self.title = title
        self._drag: tuple[int, int] | None = None
        cv2.namedWindow(title, cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO)
        cv2.setMouseCallback(title, self.on_mouse)

    def on_mouse(self, event: int, x: int, y: int, flags: int = 0, param: object = None) -> None:
        """OpenCV mouse callback: left drag sets :attr:`box`, right click clears it."""
        if event == cv2.EVENT_LBUTTONDOWN:
            self._drag = (x, y)
        elif event == cv2.EVENT_LBUTTONUP and self._drag is not None:
            (x0, y0), self._drag = self._drag, None
            box = (min(x0, x), min(y0, y), max(x0, x), max(y0, y))
            if box[2] - box[0] >= self.MIN_BOX and box[3] - box[1] >= self.MIN_BOX:
                self.box = box
        elif event == cv2.EVENT_RBUTTONDOWN:
            self.box = None

    def render(self, image: np.ndarray) -> int:
        super().render(image)
        cv2.imshow(self.title, image)
        key = cv2.waitKey(1)
        if cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1:
            self.is_open = False
        return key & 0xFF if key >= 0 else -1

    def close(self) -> None:
        if self.is_open or self.count:
            cv2.destroyWindow(self.title)
        super().close()


class VideoFileSink(Sink):
    """A video file written to a hidden temporary name and renamed to the final name on :meth:`close`.

    A killed process leaves only a hidden ``.NAME.XXXX.partial.EXT``; an exception inside ``with`` discards it.
    The writer opens at the first frame (its size fixes the video's); later frames of another size are resized.

    OpenCV's writer reports no failed write, so the sink checks for itself: after each frame, that the disk still
    has room (:data:`MIN_FREE`), and on :meth:`close`, that the finished file opens as a video with frames before
    it is renamed into place. Either failure removes the temporary file, leaves a file already at the final name as
    it was, and raises ``OSError`` naming the final name: ENOSPC for a full disk (the error every writer of the SDK
    gives, :func:`lcr_sdk.fileio.is_disk_full`), EIO for a file that does not play back.
    """

    MIN_FREE = 64 * 1024  # bytes: below this the writer's next flush (32 KiB) and the index written at close fail

    def __init__(self, uri: str, path: Path, fps: float = 30.0):
        super().__init__(uri)
        self.path, self.fps = path, fps
        self._commit = atomic_path(path, suffix=f".partial{path.suffix}")  # the extension picks the container
        self.tmp = self._commit.__enter__()
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None

    def render(self, image: np.ndarray) -> int:
        if self._writer is None:
            self._size = (image.shape[1], image.shape[0])
            fourcc = _FOURCC.get(self.path.suffix.lower(), "mp4v")
            self._writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter.fourcc(*fourcc), self.fps, self._size)
            if not self._writer.isOpened():
                self._writer = None
                raise InputError(
                    f"OpenCV could not write {self.path} with codec {fourcc}; use .mp4, .avi or a "
                    "folder of PNG frames (frames/)"
                )
        with quiet_opencv():  # a failed write is the one error below, not OpenCV's warning per frame
            self._writer.write(fit_frame(image, self._size))
        if self._disk_full():
            raise self._full_error()
        return super().render(image)

    def close(self, keep: bool = True) -> None:
        """Finish the file and rename it into place (``keep=False``, or no frame written: remove it).

        Raises:
            OSError: the finished file does not play back (ENOSPC when the disk is full, else EIO); the temporary
                file is removed and the final name left as it was.
        """
        if self.is_open:
            self.is_open = False
            wrote = self._writer is not None
            if self._writer is not None:
                with quiet_opencv():
                    self._writer.release()
                self._writer = None
            failure = self._check_playable() if keep and wrote else None
            if keep and wrote and failure is None:
                self._commit.__exit__(None, None, None)
            else:  # the temporary file is removed, the final name never appears (or keeps its old file)
                self._commit.__exit__(_Discard, _Discard(), None)
            if failure is not None:
                raise failure
        super().close()

    def _free_bytes(self) -> int | None:
        """Bytes this process may still write on the disk of the video (root may use the reserved blocks)."""
        try:
            if hasattr(os, "statvfs"):
                st = os.statvfs(self.tmp.parent)
                root = hasattr(os, "geteuid") and os.geteuid() == 0
                return (st.f_bfree if root else st.f_bavail) * st.f_frsize
            return shutil.disk_usage(self.tmp.parent).free
        except OSError:  # a disk that cannot be asked: judged by the check at close alone
            return None

    def _disk_full(self) -> bool:
        free = self._free_bytes()
        return free is not None and free < self.MIN_FREE

    def _full_error(self) -> OSError:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))

    def _check_playable(self) -> OSError | None:
        """None if the finished temporary file opens as a video with a frame; else the error to raise."""
        with quiet_opencv():
            cap = cv2.VideoCapture(str(self.tmp), cv2.CAP_ANY)
            try:
                ok = cap.isOpened() and cap.get(cv2.CAP_PROP_FRAME_COUNT) > 0 and cap.read()[0]
            finally:
                cap.release()
        if ok:
            return None
        if self._disk_full():
            return self._full_error()
        return OSError(
            errno.EIO,
            f"the video OpenCV wrote does not play back ({self.count} frames given; a disk quota reached, or a "
            "write error); nothing was renamed into place, a file already there is as it was: check the disk "
            "(df, quota), then write elsewhere or as frames/",
            str(self.path),
        )

    def __exit__(self, exc_type: type[BaseException] | None, exc: object, tb: object) -> None:
        self.close(keep=exc_type is None or issubclass(exc_type, KeyboardInterrupt))  # Ctrl+C keeps the video


class FolderSink(Sink):
    """PNG frames ``frame_000000.png`` ... in a folder (each written under a temporary name, then renamed)."""

    def __init__(self, uri: str, folder: Path):
        super().__init__(uri)
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def render(self, image: np.ndarray) -> int:
        _write_png(self.folder / f"frame_{self.count:06d}.png", image)
        return super().render(image)


class ImageFileSink(Sink):
    """One image file, replaced by each frame (so it ends as the last frame)."""

    def __init__(self, uri: str, path: Path):
        super().__init__(uri)
        self.path = path

    def render(self, image: np.ndarray) -> int:
        _write_png(self.path, image)
        return super().render(image)


def _write_png(path: Path, image: np.ndarray) -> None:
    ok, data = cv2.imencode(path.suffix or ".png", image)
    if not ok:
        raise InputError(f"could not encode a frame of shape {image.shape} as {path.suffix}")
    with atomic_path(path, fsync=False) as tmp:  # no fsync per frame: not worth one disk flush each
        tmp.write_bytes(data.tobytes())


def has_display() -> bool:
    """Whether a window can open: a GUI-enabled OpenCV and, on Linux, an X11/Wayland display."""
    gui = re.search(r"GUI:\s*(\S+)", cv2.getBuildInformation())
    if gui and gui.group(1).upper() == "NONE":
        return False
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


_FRAME_NAME = re.compile(r"frame_\d{6}\.png")


def _is_live(uri: str) -> bool:
    return uri.isdigit() or uri.startswith(("/dev/video", "v4l2://", "csi://", "display", *STREAM_SCHEMES))


def refuse_input(
    output: str | os.PathLike[str], inputs: Sequence[str | os.PathLike[str]], what: str = "output"
) -> None:
    """Refuse writing ``output`` where it would destroy or change what a demo reads.

    Refused: an output that is one of ``inputs`` (a file or folder), a path inside an input folder (it would
    overwrite an input image, or add one that a looping source then reads), a file that an input glob matches,
    and a frames folder that holds an input under a frame name it would write (``frame_000000.png``).

    Args:
        output: the path to be written (a sink URI: a trailing ``/`` means a folder).
        inputs: what the caller reads: files, folders, globs; cameras and stream URLs are skipped.
        what: how the message names ``output`` (``"output"``, ``"--log"``).

    Raises:
        InputError: naming the output, the input it would touch and how to fix it.
    """
    text = str(os.fspath(output))
    if not text or _is_live(text):
        return
    out = Path(text).resolve()  # "x.jpg/" is the same path as x.jpg
    as_folder = text.endswith(("/", os.sep)) or out.is_dir() or not out.suffix
    for source in inputs:
        src_text = str(os.fspath(source))
        if not src_text or _is_live(src_text):
            continue
        src = Path(src_text)
        if any(c in src_text for c in "*?[") and not src.exists():  # a glob: its matches are the inputs
            matched = {Path(p).resolve() for p in glob.glob(src_text)}
            folders = {p.parent for p in matched} | {Path(src_text).parent.resolve()}
            if out in matched or (out.parent in folders and fnmatch.fnmatch(out.name, Path(src_text).name)):
                raise InputError(
                    f"{what} {text!r} is a file the input pattern {src_text!r} matches: writing it would overwrite "
                    f"or add an input image; choose an {what} outside {out.parent} or a name the pattern does not match"
                )
            continue
        if not src.exists():
            continue
        real = src.resolve()
        kind = "folder" if src.is_dir() else "file"
        if out == real:
            raise InputError(
                f"{what} {text!r} is the input {kind} {src}: writing it would destroy the input; choose another {what}"
            )
        if src.is_dir() and out.is_relative_to(real):
            raise InputError(
                f"{what} {text!r} is inside the input folder {src}: writing there would overwrite or add input "
                f"images; choose an {what} outside it"
            )
        if as_folder and src.is_file() and real.parent == out and _FRAME_NAME.fullmatch(real.name):
            raise InputError(
                f"{what} {text!r} is the folder of the input {src}, which has the name of a frame it would write; "
                f"choose another {what} folder"
            )


def open_sink(
    uri: str | os.PathLike[str] | None = "display://0",
    headless: bool = False,
    fps: float = 30.0,
    title: str = "lcr-sdk",
    inputs: Sequence[str | os.PathLike[str]] = (),
) -> Sink:
    """Open a frame sink by URI (see the module docstring for the forms).

    Args:
        uri: ``display://0``, a video file, a folder (trailing ``/`` or no suffix), an image file; None or ``""``
            means the display.
        headless: never open a window: a display URI becomes a sink that only counts frames.
        fps: frame rate written into a video file.
        title: window title.
        inputs: paths the caller reads (a demo's input): an output that is one of them is refused.

    Raises:
        InputError: a window was asked for where none can open, the URI is not a valid sink, or it is an input.
    """
    uri = str(os.fspath(uri)) if uri else "display://0"
    refuse_input(uri, inputs)
    if uri == "display" or uri.startswith("display://"):
        if headless:
            return Sink(uri)
        if not has_display():
            raise InputError(
                f"cannot open a window for {uri}: no display here (DISPLAY is not set, or this OpenCV has no GUI, "
                "e.g. opencv-python-headless). Pass --headless and an output such as out.mp4 or frames/, or run on "
                "the device's desktop (export DISPLAY=:0) / with ssh -X."
            )
        return WindowSink(uri, title)
    path = Path(uri)
    try:
        return _open_file_sink(uri, path, fps)
    except OSError as e:  # a folder that cannot be created or written
        raise InputError(
            f"cannot write output {uri!r} ({e.strerror or e}{f': {e.filename}' if e.filename else ''}); choose a "
            "folder you may write, or fix its permissions"
        ) from e


def _open_file_sink(uri: str, path: Path, fps: float) -> Sink:
    suffix = path.suffix.lower()
    if uri.endswith(("/", os.sep)):  # a trailing slash always means a folder, whatever the name looks like
        if path.exists() and not path.is_dir():
            raise InputError(f"output {uri!r} names a folder, but {path} is a file; choose another output folder")
        return _folder_sink(uri, path)
    if path.is_dir() and suffix in VIDEO_SUFFIXES + IMAGE_SUFFIXES:
        raise InputError(f"output {uri!r} is a folder; give a file name, or end it with / to write PNG frames into it")
    if suffix in VIDEO_SUFFIXES:
        path.parent.mkdir(parents=True, exist_ok=True)
        check_writable(path.parent, f"output {uri!r}")
        return VideoFileSink(uri, path, fps)
    if suffix in NOT_FRAME_SUFFIXES:
        instead = NOT_FRAME_SUFFIXES[suffix]
        raise InputError(f"output {uri!r}: a colour frame cannot be written as {suffix}; name it {instead}")
    if suffix in FRAME_IMAGE_SUFFIXES:
        path.parent.mkdir(parents=True, exist_ok=True)
        check_writable(path.parent, f"output {uri!r}")
        return ImageFileSink(uri, path)
    if path.is_dir() or not suffix:
        return _folder_sink(uri, path)
    raise InputError(f"output {uri!r} has suffix {suffix!r}, which is not a sink; valid outputs: {SINK_FORMS}")


def _folder_sink(uri: str, path: Path) -> FolderSink:
    sink = FolderSink(uri, path)  # creates the folder
    check_writable(path, f"frames into {uri!r}")
    return sink


@contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """Within this block SIGTERM (a service stop, ``kill PID``) raises :class:`KeyboardInterrupt` like Ctrl+C, so a
    demo finishes its output files the same way. Only in the main thread; elsewhere it does nothing."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous: Any = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
