"""Bad input for the video sources, sinks and demos: real files written with OpenCV, a real HTTP server, real demo
processes stopped with real signals. Each case asserts the outcome: the error and its fix, the exit code, and that
no input or output is lost."""

from __future__ import annotations

import functools
import http.server
import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from lcr_sdk.errors import InputError
from lcr_sdk.video import open_sink, open_source

ROOT = Path(__file__).resolve().parents[2]


def _clip(path: Path, n: int = 6, size: tuple[int, int] = (160, 120)) -> Path:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 10, size)
    for i in range(n):
        w.write(np.full((size[1], size[0], 3), (20 + 23 * i) % 256, np.uint8))
    w.release()
    return path


def _example(name: str):
    spec = importlib.util.spec_from_file_location(f"rob_{name}", ROOT / "examples" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- sinks never destroy inputs ----------------------------------------------------------------------------------


def test_output_folder_named_like_the_input_image_does_not_overwrite_it(tmp_path):
    img = tmp_path / "x.jpg"
    cv2.imwrite(str(img), np.full((48, 64, 3), 90, np.uint8))
    before = img.read_bytes()
    with pytest.raises(InputError, match="is the input"):
        open_sink(f"{img}/", inputs=[img])
    with pytest.raises(InputError, match="is a file"):
        open_sink(f"{img}/")  # a trailing slash means a folder, and x.jpg is a file
    assert img.read_bytes() == before


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: (_clip(p / "in.mp4"), p / "in.mp4")[1], "is the input"),
        (lambda p: (p / "imgs").mkdir() or p / "imgs", "is the input"),
    ],
    ids=["output is the input video", "output is the input folder"],
)
def test_output_that_is_the_input_is_refused(tmp_path, make, match):
    src = make(tmp_path)
    with pytest.raises(InputError, match=match):
        open_sink(src, inputs=[src])
    if src.is_file():
        with open_source(src) as s:
            assert len(list(s)) == 6  # the input video is intact


@pytest.mark.parametrize(
    "make, uri, match",
    [
        (lambda p: (p / "frames").write_text("x"), "frames/", "is a file"),
        (lambda p: (p / "out.mp4").mkdir(), "out.mp4", "is a folder"),
        (lambda p: None, "out.txt", "valid outputs"),
    ],
    ids=["folder sink onto a file", "video sink onto a folder", "unknown suffix"],
)
def test_unusable_outputs_are_refused(tmp_path, make, uri, match):
    make(tmp_path)
    with pytest.raises(InputError, match=match):
        open_sink(tmp_path / uri if not uri.endswith("/") else f"{tmp_path / uri[:-1]}/")


# -- a finite HTTP video is played once -------------------------------------------------------------------------------


@pytest.fixture
def http_root(tmp_path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_finite_http_video_ends_instead_of_replaying(http_root):
    folder, url = http_root
    _clip(folder / "clip.mp4", n=7)
    with open_source(f"{url}/clip.mp4") as src:
        assert not src.live
        frames = []
        for f in src:
            frames.append(f)
            assert len(frames) <= 7, "replayed"
    assert [f.index for f in frames] == list(range(7)) and src.ended


def test_missing_http_video_is_a_clear_error(http_root):
    _, url = http_root
    with pytest.raises(InputError, match="could not open stream"):
        open_source(f"{url}/missing.mp4")


# -- the demos ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(lcr_checkpoint, tmp_path_factory) -> Path:
    from model_helpers import export_onnx

    return export_onnx(lcr_checkpoint, tmp_path_factory.mktemp("rob_video") / "lcr.onnx")


@pytest.fixture(scope="module")
def gallery(model, synth_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rob_video_gallery") / "g"
    assert _example("build_gallery").main([str(model), str(synth_root / "test"), "--out", str(out)]) == 0
    return out


def _demo(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.torch
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl+C"])
@pytest.mark.parametrize("demo", ["camera_attention", "camera_retrieval"])
def test_a_stopped_demo_finishes_its_video_and_exits_130(model, gallery, tmp_path, sig, demo):
    clip = _clip(tmp_path / "in.mp4", n=10, size=(320, 240))
    out, log = tmp_path / "out.mp4", tmp_path / "hits.jsonl"
    args = [str(ROOT / "examples" / f"{demo}.py"), str(model)]
    args += [str(gallery)] if demo == "camera_retrieval" else []
    args += [str(clip), str(out), "--headless", "--loop"]
    args += ["--log", str(log)] if demo == "camera_retrieval" else []
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(p.name.endswith(".partial.mp4") and p.stat().st_size > 20_000 for p in tmp_path.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    assert not any(".partial" in p.name for p in tmp_path.iterdir())  # the hidden temporary file became out.mp4
    with open_source(out) as s:
        assert len(list(s)) >= 5  # a playable video with every frame written before the stop
    if demo == "camera_retrieval":
        rows = log.read_text().splitlines()
        assert len(rows) >= 5 and rows[0].startswith('{"frame": 0')


@pytest.mark.torch
@pytest.mark.parametrize(
    "extra, code, match",
    [
        (["--log", "/nonexistent/dir/hits.jsonl"], 1, "does not exist"),
        (["--log", "{tmp}"], 1, "is a folder"),
        (["--top-k", "0"], 2, "--top-k"),
        (["--threshold", "7"], 2, "--threshold"),
        (["--threshold", "high"], 2, "--threshold"),
        (["--quality", "maybe"], 2, "--quality"),
    ],
    ids=["log in a missing folder", "log is a folder", "top-k 0", "threshold 7", "threshold word", "quality"],
)
def test_retrieval_demo_refuses_bad_options_in_one_line(model, gallery, tmp_path, extra, code, match):
    clip = _clip(tmp_path / "in.mp4")
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    r = _demo(
        str(ROOT / "examples" / "camera_retrieval.py"),
        str(model),
        str(gallery),
        str(clip),
        str(tmp_path / "o"),
        "--headless",
        *extra,
    )
    assert r.returncode == code and match in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()  # refused before any frame was written


@pytest.mark.torch
@pytest.mark.parametrize("demo", ["camera_attention", "camera_retrieval"])
def test_demo_refuses_to_overwrite_its_input(model, gallery, tmp_path, demo):
    clip = _clip(tmp_path / "in.mp4")
    before = clip.read_bytes()
    args = [str(ROOT / "examples" / f"{demo}.py"), str(model)]
    args += [str(gallery)] if demo == "camera_retrieval" else []
    for output in (str(clip), f"{clip}/"):
        r = _demo(*args, str(clip), output, "--headless")
        assert r.returncode == 1 and "is the input" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert clip.read_bytes() == before


@pytest.mark.torch
def test_retrieval_demo_with_a_gallery_of_another_model_says_rebuild(gallery, moco_checkpoint, tmp_path):
    from model_helpers import export_onnx

    other = export_onnx(moco_checkpoint, tmp_path / "moco.onnx")
    clip = _clip(tmp_path / "in.mp4")
    r = _demo(
        str(ROOT / "examples" / "camera_retrieval.py"),
        str(other),
        str(gallery),
        str(clip),
        str(tmp_path / "o"),
        "--headless",
    )
    assert r.returncode == 1 and "not comparable" in r.stderr and "rebuild" in r.stderr, r.stderr


@pytest.mark.torch
def test_retrieval_demo_with_a_damaged_gallery_is_one_line(model, gallery, tmp_path):
    import shutil

    broken = tmp_path / "g"
    shutil.copytree(gallery, broken)
    version = broken / (broken / "CURRENT").read_text().strip()
    (version / "vectors.f32").write_bytes(b"")
    clip = _clip(tmp_path / "in.mp4")
    r = _demo(
        str(ROOT / "examples" / "camera_retrieval.py"),
        str(model),
        str(broken),
        str(clip),
        str(tmp_path / "o"),
        "--headless",
    )
    err = r.stderr.strip().splitlines()
    assert r.returncode == 1 and "damaged" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert err[-1].startswith("error: ")


@pytest.mark.torch
def test_demo_with_a_missing_input_is_one_line(model, tmp_path):
    r = _demo(str(ROOT / "examples" / "camera_attention.py"), str(model), str(tmp_path / "missing.mp4"), "--headless")
    assert r.returncode == 1 and "missing.mp4" in r.stderr and "Traceback" not in r.stderr


def test_sigterm_handler_is_only_installed_inside_the_block():
    from lcr_sdk.video import interrupt_on_sigterm

    before = signal.getsignal(signal.SIGTERM)
    with interrupt_on_sigterm(), pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)
    assert signal.getsignal(signal.SIGTERM) == before
