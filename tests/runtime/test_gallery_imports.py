"""The gallery works without OpenCV: its modules import, an in-memory or saved gallery adds, searches, saves and
loads, and only what needs images (crops, pictures) asks for OpenCV, naming the extra to install."""

import pkgutil
import subprocess
import sys

import lcr_sdk.gallery

GALLERY_MODULES = sorted(m.name for m in pkgutil.walk_packages(lcr_sdk.gallery.__path__, "lcr_sdk.gallery."))
BLOCK_CV2 = "import sys; sys.modules['cv2'] = None\n"


def _run(code: str, cwd: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCK_CV2 + code], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def test_gallery_modules_import_and_work_without_opencv(tmp_path):
    assert {"lcr_sdk.gallery.core", "lcr_sdk.gallery.build", "lcr_sdk.gallery.explain"} <= set(GALLERY_MODULES)
    code = (
        "import importlib, numpy as np\n"
        f"for m in {GALLERY_MODULES!r} + ['lcr_sdk.cli.gallery_cmd']:\n"
        "    importlib.import_module(m)\n"
        "from lcr_sdk.gallery import Gallery\n"
        "v = np.random.default_rng(0).standard_normal((20, 8)).astype(np.float32)\n"
        "g = Gallery(8)\n"
        "g.add(v, labels=[str(i % 4) for i in range(20)])\n"
        "g.save('g')\n"
        "h = Gallery.load('g')\n"
        "h.add(v[0] + 1, ids=['new'])\n"
        "h.commit()\n"
        "print(h.search(v[3], k=1)[0].id, len(Gallery.load('g')), sys.modules.get('cv2') is not None)\n"
    )
    r = _run(code, str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["3", "21", "False"]


def test_what_needs_opencv_names_the_extra(tmp_path):
    code = (
        "import numpy as np\n"
        "from lcr_sdk.errors import MissingDependencyError\n"
        "from lcr_sdk.gallery import Gallery\n"
        "from lcr_sdk.gallery.explain import write_image\n"
        "g = Gallery(8)\n"
        "for call in (lambda: g.add(np.ones(8), crops=[np.zeros((4, 4, 3), np.uint8)]),\n"
        "             lambda: write_image('why.png', np.zeros((4, 4, 3), np.uint8))):\n"
        "    try:\n"
        "        call()\n"
        "    except MissingDependencyError as e:\n"
        "        print(str(e).splitlines()[0])\n"
        "print(len(g))\n"
    )
    r = _run(code, str(tmp_path))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 3 and lines[2] == "0"  # both refused; nothing was added
    for line in lines[:2]:
        assert "OpenCV (cv2) is not importable" in line and "pip install 'lcr-sdk[cpu]'" in line
    assert not (tmp_path / "why.png").exists()


def test_every_gallery_module_imports_where_there_is_no_fcntl(tmp_path):
    """Windows has no fcntl: the store then leaves one-writer-at-a-time to the caller, and nothing fails to import."""
    code = (
        "import sys, importlib\n"
        "sys.modules['fcntl'] = None\n"
        f"for m in {GALLERY_MODULES!r} + ['lcr_sdk.cli.gallery_cmd']:\n"
        "    importlib.import_module(m)\n"
        "print('ok')\n"
    )
    r = _run(code, str(tmp_path))
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
