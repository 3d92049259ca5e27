"""The built-in synthetic data set: deterministic, laid out as an ImageFolder, class cues in the parts only."""

import hashlib
import json

import pytest

from lcr_sdk.errors import DataError, InputError
from lcr_sdk.synth import (
    GENERATOR_VERSION,
    MAX_CLASSES,
    ProtocolConfig,
    SynthConfig,
    class_names,
    generate,
    generate_protocol,
    matches,
)


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


def test_class_order_is_fixed_and_offsets_are_disjoint():
    everything = class_names(MAX_CLASSES)
    assert len({n.split("_", 1)[1] for n in everything}) == MAX_CLASSES  # every index a different part combination
    assert class_names(5, first_class=8) == everything[8:13]
    with pytest.raises(InputError, match="first_class"):
        class_names(4, first_class=MAX_CLASSES)
    with pytest.raises(InputError, match="choose 2..6"):
        class_names(7, first_class=MAX_CLASSES - 6)


def test_offset_set_has_the_same_images_as_the_full_set(tmp_path):
    small = dict(train_per_class=2, test_per_class=2, image_size=40, seed=3)
    full = generate(tmp_path / "full", SynthConfig(num_classes=5, **small), progress=False)
    part = generate(tmp_path / "part", SynthConfig(num_classes=2, first_class=3, **small), progress=False)
    names = class_names(2, first_class=3)
    assert sorted(p.name for p in (part / "train").iterdir()) == names
    for rel in [f"{s}/{n}/{i:05d}.png" for s in ("train", "test") for n in names for i in range(2)]:
        assert (part / rel).read_bytes() == (full / rel).read_bytes()


def _protocol(**kw):
    base = dict(
        target_classes=3,
        source_classes=4,
        target_train_per_class=3,
        target_test_per_class=2,
        source_train_per_class=2,
        source_test_per_class=2,
        image_size=40,
        seed=9,
    )
    return ProtocolConfig(**{**base, **kw})


def test_protocol_source_and_target_share_no_class(tmp_path):
    source, target = generate_protocol(tmp_path, _protocol(), progress=False)
    src = {p.name for p in (source / "train").iterdir()}
    tgt = {p.name for p in (target / "train").iterdir()}
    assert len(src) == 4 and len(tgt) == 3
    assert {p.name for p in (target / "test").iterdir()} == tgt
    combos = lambda names: {n.split("_", 1)[1] for n in names}  # noqa: E731  (crest_wing_tail)
    assert not combos(src) & combos(tgt)  # no class in common, not even under another index
    assert json.loads((target / "synth.json").read_text())["classes"] == sorted(tgt)


def test_default_protocol_source_shows_every_part_the_target_uses():
    cfg = ProtocolConfig()
    target = class_names(cfg.target_classes)
    source = class_names(cfg.source_classes, first_class=cfg.target_classes)
    assert not {n.split("_", 1)[1] for n in target} & {n.split("_", 1)[1] for n in source}
    for i in (1, 2, 3):  # crest, wing, tail: what the source teaches transfers, the combinations are new
        assert {n.split("_")[i] for n in target} <= {n.split("_")[i] for n in source}


def test_protocol_is_deterministic_reused_and_replaced_whole(tmp_path):
    a = generate_protocol(tmp_path / "a", _protocol(), progress=False)
    b = generate_protocol(tmp_path / "b", _protocol(), progress=False)
    assert [_digest(r) for r in a] == [_digest(r) for r in b]
    stamp = (a[1] / "synth.json").stat().st_mtime_ns
    generate_protocol(tmp_path / "a", _protocol(), progress=False)  # same options: kept as it is
    assert (a[1] / "synth.json").stat().st_mtime_ns == stamp
    generate_protocol(tmp_path / "a", _protocol(target_train_per_class=2), progress=False)
    assert sorted(p.name for p in (a[1] / "train" / class_names(3)[0]).iterdir()) == ["00000.png", "00001.png"]
    assert not list(tmp_path.glob("a/.*staging*"))  # nothing left behind


def test_protocol_leaves_a_foreign_folder_alone(tmp_path):
    mine = tmp_path / "target" / "train" / "cat"
    mine.mkdir(parents=True)
    (mine / "1.jpg").write_bytes(b"not generated here")
    with pytest.raises(DataError, match="did not write"):
        generate_protocol(tmp_path, _protocol(), progress=False)
    assert [p.name for p in (tmp_path / "target" / "train").iterdir()] == ["cat"]
    assert (mine / "1.jpg").read_bytes() == b"not generated here"


def test_protocol_refuses_more_classes_than_the_generator_has(tmp_path):
    with pytest.raises(InputError, match="part combinations"):
        generate_protocol(tmp_path, _protocol(target_classes=20, source_classes=20), progress=False)
    assert not list(tmp_path.iterdir())


def test_a_set_from_an_older_generator_is_written_again(tmp_path):
    cfg = _protocol()
    _, target = generate_protocol(tmp_path, cfg, progress=False)
    assert matches(target, cfg.target())
    meta = json.loads((target / "synth.json").read_text())
    meta["generator_version"] -= 1  # same options, drawn by an earlier generator: other images
    (target / "synth.json").write_text(json.dumps(meta))
    assert not matches(target, cfg.target())
    generate_protocol(tmp_path, cfg, progress=False)
    assert json.loads((target / "synth.json").read_text())["generator_version"] == GENERATOR_VERSION
