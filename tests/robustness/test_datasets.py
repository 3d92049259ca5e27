"""Data sets: `data synth`, `data import` and what reads them meet kills, full disks, damaged metadata and huge
options with complete files and one error line.

A kill is injected at a fixed point (the Nth image file's bytes half written), never by timing, so every run tests
the same moment.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from lcr_sdk.cli import app

runner = CliRunner()
PNG_END = b"IEND\xaeB`\x82"  # the last 8 bytes of every complete PNG

# Run `data synth` in a fresh process that SIGKILLs itself when the Nth image file is half written, whichever call
# writes it (pathlib's write_bytes, or OpenCV's imwrite straight to the final name).
KILL_MID_WRITE = r"""
import os, pathlib, signal, sys
import cv2
from lcr_sdk.cli import app

N, calls = int(sys.argv[1]), [0]

def half_then_kill(path, data):
    calls[0] += 1
    if calls[0] == N:
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    with open(path, "wb") as f:
        f.write(data)
    return len(data)

def write_bytes(self, data):
    return half_then_kill(self, bytes(data))

def imwrite(path, img, params=()):
    ok, buf = cv2.imencode(os.path.splitext(path)[1], img)
    half_then_kill(path, buf.tobytes())
    return True

pathlib.Path.write_bytes = write_bytes
cv2.imwrite = imwrite
app(sys.argv[2:])
"""


def _synth_args(out: Path, per_class: int = 3) -> list[str]:
    return ["data", "synth", str(out), "--classes", "2", "--train-per-class", str(per_class), "--test-per-class", "2"]


def test_a_kill_while_synth_writes_an_image_leaves_no_partial_file_under_its_name(tmp_path):
    out = tmp_path / "birds"
    args = [*_synth_args(out), "--image-size", "64"]
    r = subprocess.run([sys.executable, "-c", KILL_MID_WRITE, "5", *args], capture_output=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr  # the fault fired: killed in the middle of the 5th image
    assert [p.name for p in out.iterdir() if not p.name.startswith(".")] == []  # the set is staged, hidden
    staged = sorted(p for p in out.rglob("*.png") if not p.name.startswith("."))
    assert len(staged) == 4  # the 4 images written before the kill, and no 5th under its final name
    for p in staged:
        assert p.read_bytes().endswith(PNG_END) and cv2.imread(str(p)) is not None, p
    # the next run writes the whole set and clears what the killed one left behind
    r2 = runner.invoke(app, args)
    assert r2.exit_code == 0, r2.output
    assert not list(tmp_path.rglob(".*"))  # the killed run's staging folder is gone
    assert len(list(out.rglob("*.png"))) == 2 * (3 + 2)

    # into the current folder, as `lcr-sdk data synth .` (a folder that cannot be renamed: staged inside it)
    here = tmp_path / "here"
    here.mkdir()
    cwd = os.getcwd()
    try:
        os.chdir(here)
        r3 = runner.invoke(app, _synth_args(Path(".")))
    finally:
        os.chdir(cwd)
    assert r3.exit_code == 0 and len(list(here.rglob("*.png"))) == 2 * (3 + 2), r3.output


def test_synth_never_writes_into_a_folder_of_other_files(tmp_path):
    """`data synth` into a user's own data set (the easy slip when train/ or test/ is missing) is refused, and the
    folder is left as it was; a synthetic set written earlier is kept when the options match, replaced otherwise."""
    mine = tmp_path / "photos"
    (mine / "train" / "robin").mkdir(parents=True)
    (mine / "train" / "robin" / "1.jpg").write_bytes(b"a user's photo")
    r = runner.invoke(app, _synth_args(mine))
    assert r.exit_code == 1 and r.output.startswith("Error: ") and "did not write" in r.output, r.output
    assert sorted(p.relative_to(mine).as_posix() for p in mine.rglob("*")) == [
        "train",
        "train/robin",
        "train/robin/1.jpg",
    ]

    out = tmp_path / "birds"
    assert runner.invoke(app, _synth_args(out)).exit_code == 0
    first = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    r = runner.invoke(app, _synth_args(out))
    assert r.exit_code == 0 and "nothing written" in r.output, r.output
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == first
    r = runner.invoke(app, _synth_args(out, per_class=4))  # other options: the set is replaced whole
    assert r.exit_code == 0 and len(list(out.rglob("*.png"))) == 2 * (4 + 2), r.output
    (tmp_path / "file").write_text("x")
    r = runner.invoke(app, _synth_args(tmp_path / "file"))
    assert r.exit_code == 1 and "is a file" in r.output, r.output


@pytest.mark.parametrize(
    "option, value, match",
    [
        ("--image-size", "100000", "image_size=100000 is outside 32..1024"),
        ("--image-size", "-5", "outside 32..1024"),
        ("--train-per-class", "1000000000", "must be 1..5000"),
        ("--seed", "-1", "seed=-1 is not valid"),
        ("--classes", "1", "num_classes=1 (--classes) is not valid; choose 2..36"),
    ],
)
def test_synth_size_options_are_bounded(tmp_path, option, value, match):
    r = runner.invoke(app, ["data", "synth", str(tmp_path / "d"), option, value])
    assert r.exit_code == 1 and r.output.startswith("Error: ") and r.output.count("\n") == 1, r.output
    assert match in r.output and not (tmp_path / "d").exists()


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs: a full file system without filling the real one (needs root and a kernel that allows it)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)]).returncode:
        pytest.skip("mounting a small tmpfs needs root and a kernel that allows it")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)  # lazy: never leave a mount behind


def _one_full_disk_line(output: str, user_path: Path) -> str:
    lines = [ln for ln in output.splitlines() if ln.startswith("Error: ")]
    assert len(lines) == 1 and "Traceback" not in output, output
    line = lines[0]
    assert "No space left on device" in line and "MiB free" in line, line
    assert str(user_path) in line and "staging" not in line and "/." not in line and ".tmp" not in line, line
    return line


def test_full_disk_during_synth_is_one_line_naming_the_users_path(small_disk):
    out = small_disk / "birds"
    r = runner.invoke(app, [*_synth_args(out, per_class=200), "--image-size", "128"])
    assert r.exit_code == 1, r.output
    _one_full_disk_line(r.output, out)
    for p in out.rglob("*.png"):  # every image under a final name is whole
        assert p.read_bytes().endswith(PNG_END), p


def _aircraft(root: Path, n: int = 12) -> Path:
    """The FGVC-Aircraft layout with noisy 400 x 300 images, whose banner-cropped copies do not fit 256 KiB."""
    data = root / "fgvc-aircraft-2013b" / "data"
    (data / "images").mkdir(parents=True)
    (data / "variants.txt").write_text("707-320\nA300B4\n")
    rng = np.random.default_rng(3)
    rows: dict[str, list[str]] = {"trainval": [], "test": []}
    for i in range(n):
        image_id = f"{1000000 + i:07d}"
        img = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)  # noise: JPEG cannot shrink it
        assert cv2.imwrite(str(data / "images" / f"{image_id}.jpg"), img)
        rows["test" if i % 3 == 0 else "trainval"].append(f"{image_id} {'707-320' if i % 2 else 'A300B4'}")
    for split, lines in rows.items():
        (data / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_full_disk_during_import_names_out_not_the_staging_folder(tmp_path, small_disk):
    src = _aircraft(tmp_path / "src")
    out = small_disk / "aircraft"
    r = runner.invoke(app, ["data", "import", "aircraft", str(src), str(out)])
    assert r.exit_code == 1, r.output
    _one_full_disk_line(r.output, out)
    assert sorted(p.name for p in small_disk.iterdir()) == []  # no staging folder, no half-made OUT


def _cub(root: Path, label_line: str) -> Path:
    cub = root / "CUB_200_2011"
    for n, name in ((1, "001.A"), (2, "002.B")):
        (cub / "images" / name).mkdir(parents=True)
        assert cv2.imwrite(str(cub / "images" / name / f"{n}.jpg"), np.full((30, 40, 3), 60 * n, np.uint8))
    (cub / "classes.txt").write_text("1 001.A\n2 002.B\n")
    (cub / "images.txt").write_text("1 001.A/1.jpg\n2 002.B/2.jpg\n")
    (cub / "train_test_split.txt").write_text("1 1\n2 0\n")
    (cub / "image_class_labels.txt").write_text(f"1 1\n{label_line}\n")
    return root


@pytest.mark.parametrize("line", ["2 x3", "2 2.0", "2 -1"])
def test_import_with_a_label_that_is_not_a_number_is_one_line(tmp_path, line):
    r = runner.invoke(app, ["data", "import", "cub", str(_cub(tmp_path / "src", line)), str(tmp_path / "out")])
    assert r.exit_code == 1 and r.output.startswith("Error: ") and r.output.count("\n") == 1, r.output
    assert f"image_class_labels.txt: line {line!r} is not '<image_id> <class_id>'" in r.output
    assert not (tmp_path / "out").exists()


@pytest.mark.torch
@pytest.mark.parametrize(
    "damage",
    [
        b"{not json",
        b"\xff\xfe binary",
        b"[]",
        b'{"config": {"image_size": "64"}, "boxes": {}}',
        b'{"config": {"image_size": 64}, "boxes": {"test/a/0.png": [1, 2]}}',
    ],
    ids=["not json", "not utf-8", "a list", "size a string", "a short box"],
)
def test_eval_on_a_data_folder_with_a_damaged_synth_json_is_one_line(tmp_path, synth_root, lcr_checkpoint, damage):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synth_root, data)
    assert json.loads((data / "synth.json").read_text())["boxes"]  # a real one, then damaged
    (data / "synth.json").write_bytes(damage)
    r = runner.invoke(app, ["eval", str(lcr_checkpoint), str(data)])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    lines = [ln for ln in r.output.splitlines() if ln.startswith("Error: ")]
    assert len(lines) == 1 and "synth.json" in lines[0] and "lcr-sdk data synth" in lines[0], r.output


def test_a_stop_while_a_set_moves_in_leaves_a_set_that_is_never_reused(tmp_path, monkeypatch):
    """Replacing a synthetic set with another moves folders one by one: a stop in the middle (injected at the first
    move of the new set, a fixed point, not timing) must not leave the old record over a missing or mixed set."""
    from lcr_sdk.errors import DataError
    from lcr_sdk.synth import SynthConfig, generate_set, load_meta, matches

    root = tmp_path / "birds"
    first, second = SynthConfig(2, 3, 2, 64, seed=1), SynthConfig(2, 4, 2, 64, seed=1)
    generate_set(root, first, progress=False)
    real = Path.rename

    def stop_at_the_new_set(self, target):
        if ".synth-staging-" in str(self) and f"{os.sep}set{os.sep}" in str(self):
            raise KeyboardInterrupt
        return real(self, target)

    monkeypatch.setattr(Path, "rename", stop_at_the_new_set)
    with pytest.raises(KeyboardInterrupt):
        generate_set(root, second, progress=False)
    monkeypatch.undo()
    assert not matches(root, first) and not matches(root, second)  # reused as neither
    with pytest.raises(DataError, match="regenerate the set"):
        load_meta(root)  # a reader is told, not handed a half set
    generate_set(root, first, progress=False)  # the next run replaces it whole
    assert matches(root, first) and len(list(root.rglob("*.png"))) == 2 * (3 + 2)
