"""Frame sources and sinks for the demos: cameras, streams, files and image folders in; windows and files out.

    from lcr_sdk.video import open_source, open_sink
    with open_source("csi://0") as source, open_sink("display://0") as sink:
        for frame in source:                  # Frame: .image (BGR uint8), .index, .timestamp, .ok
            sink.render(frame.image)          # returns the key pressed in the window, or -1

Source URIs: ``0`` or ``/dev/video0`` (USB/V4L2 camera), ``csi://0`` (Jetson CSI camera, GStreamer), ``rtsp://...``
(also ``rtmp://``, ``http(s)://``), a video file (``clip.mp4``), an image file, a folder of images or a glob
(``"imgs/*.jpg"``). Live sources (cameras, streams) are read on a background thread that keeps only the newest
frame, so a slow consumer always gets current frames, and a dropped source is reopened with exponential backoff;
meanwhile iteration yields placeholder frames (``ok=False``) that show the status. A file ends the iteration (a
video file served over ``http(s)://`` too: it is played once, not reconnected to). A requested frame size is
``MIN_FRAME_SIDE`` .. ``MAX_FRAME_SIDE`` a side and at most ``MAX_FRAME_PIXELS`` in all (:func:`check_frame_options`);
a source's messages and status show its URI without credentials (:func:`lcr_sdk.redact.redact`). OpenCV's own
warnings are silenced while a source opens (:func:`quiet_opencv`): a failure is the SDK's one error line.

Sink URIs: ``display://0`` (a window), ``out.mp4`` / ``.avi`` / ``.mkv`` (a video, finalised on close under a
temporary name first and checked to play back; a disk that fills up is an ``OSError`` (ENOSPC) that leaves the
previous file in place), ``frames/`` (a folder of PNG frames; a trailing ``/`` always means a folder), ``last.png`` (one
image, overwritten each frame). ``open_sink(..., inputs=[...])`` refuses an output that is one of the inputs, lies
inside an input folder or matches an input glob (:func:`refuse_input`, also for the other files a demo writes); an
output folder that cannot be written is one error before any frame (:func:`check_writable`).
:func:`interrupt_on_sigterm` makes a service stop (SIGTERM) finish the outputs as Ctrl+C does.

The package has three parts: :mod:`~lcr_sdk.video.sources` (frames in), :mod:`~lcr_sdk.video.sinks` (frames out)
and :mod:`~lcr_sdk.video.draw` (text, frame rate, resizing for the demos' overlays).

Tests inject failures through ``opener``: a callable returning a :class:`Reader` (``read() -> image | None``,
``close()``), called again to reconnect.
"""

from lcr_sdk.fileio import check_writable
from lcr_sdk.video.draw import FpsMeter, draw_text, fit_frame
from lcr_sdk.video.sinks import (
    SINK_FORMS,
    FolderSink,
    ImageFileSink,
    Sink,
    VideoFileSink,
    WindowSink,
    has_display,
    interrupt_on_sigterm,
    open_sink,
    refuse_input,
)
from lcr_sdk.video.sources import (
    MAX_FPS,
    MAX_FRAME_PIXELS,
    MAX_FRAME_SIDE,
    MIN_FRAME_SIDE,
    SOURCE_FORMS,
    STREAM_SCHEMES,
    VIDEO_SUFFIXES,
    CaptureReader,
    FileSource,
    Frame,
    ImageListReader,
    LiveSource,
    Opener,
    Reader,
    Source,
    add_frame_options,
    bounded_arg,
    check_frame_options,
    csi_pipeline,
    has_gstreamer,
    open_source,
    quiet_opencv,
)

__all__ = [
    "MAX_FPS",
    "MAX_FRAME_PIXELS",
    "MAX_FRAME_SIDE",
    "MIN_FRAME_SIDE",
    "SINK_FORMS",
    "SOURCE_FORMS",
    "STREAM_SCHEMES",
    "VIDEO_SUFFIXES",
    "CaptureReader",
    "FileSource",
    "FolderSink",
    "FpsMeter",
    "Frame",
    "ImageFileSink",
    "ImageListReader",
    "LiveSource",
    "Opener",
    "Reader",
    "Sink",
    "Source",
    "VideoFileSink",
    "WindowSink",
    "add_frame_options",
    "bounded_arg",
    "check_frame_options",
    "check_writable",
    "csi_pipeline",
    "draw_text",
    "fit_frame",
    "has_display",
    "has_gstreamer",
    "interrupt_on_sigterm",
    "open_sink",
    "open_source",
    "quiet_opencv",
    "refuse_input",
]
