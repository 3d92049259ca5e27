"""The built-in synthetic data set: deterministic, laid out as an ImageFolder, class cues in the parts only."""

import hashlib
import json

import pytest

from lcr_sdk.errors import InputError
from lcr_sdk.synth import SynthConfig, class_names, generate


def _digest(root):
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(root.rglob("*.png")))).hexdigest()


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    cfg = SynthConfig(num_classes=3, train_per_class=2, test_per_class=2, image_size=48, seed=5)
    a = generate(tmp_path / "a", cfg, progress=False)
    b = generate(tmp_path / "b", cfg, progress=False)
    c = generate(tmp_path / "c", SynthConfig(**{**cfg.__dict__, "seed": 6}), progress=False)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_layout_and_metadata(tmp_path):
    root = generate(
        tmp_path, SynthConfig(num_classes=5, train_per_class=3, test_per_class=2, image_size=40), progress=False
    )
    names = class_names(5)
    assert sorted(p.name for p in (root / "train").iterdir()) == names
    assert all(len(list((root / "test" / n).glob("*.png"))) == 2 for n in names)
    meta = json.loads((root / "synth.json").read_text())
    assert meta["classes"] == names and len(meta["boxes"]) == 5 * 5
    x0, y0, x1, y1 = next(iter(meta["boxes"].values()))
    assert 0 <= x0 < x1 <= 40 and 0 <= y0 < y1 <= 40


def test_classes_differ_in_parts_only():
    names = class_names(8)
    assert len(set(names)) == 8
    parts = [n.split("_")[1:] for n in names]
    # each part attribute takes more than one value across the classes
    assert all(len({p[i] for p in parts}) > 1 for i in range(3))


@pytest.mark.parametrize(
    "bad", [dict(num_classes=1), dict(num_classes=99), dict(image_size=8), dict(difficulty=2.0), dict(test_per_class=1)]
)
def test_bad_options_are_refused(tmp_path, bad):
    with pytest.raises(InputError):
        generate(tmp_path, SynthConfig(**bad), progress=False)
