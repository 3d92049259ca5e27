"""ImageFolder data sets: clear errors for a missing split, an empty class, unreadable images."""

import shutil

import pytest

from lcr_sdk.errors import DataError, InputError

pytestmark = pytest.mark.torch


@pytest.fixture()
def data_copy(synth_root, tmp_path):
    return shutil.copytree(synth_root, tmp_path / "data")


def test_scan_reads_every_class(synth_root):
    from lcr_sdk.train.data import scan_split

    s = scan_split(synth_root, "train", size=64)
    assert len(s.classes) == 4 and len(s) == 24 and len(s.images) == 24
    assert sorted(set(s.labels)) == [0, 1, 2, 3]


def test_missing_split_names_the_layout(data_copy):
    from lcr_sdk.train.data import scan_split

    shutil.rmtree(data_copy / "test")
    with pytest.raises(DataError, match=r"has train/ but no test/ folder.*ROOT/train/<class>.*move a share"):
        scan_split(data_copy, "test")
    # a split folder given as the data set (its sub-folders hold images): said so, and never "make synthetic data"
    with pytest.raises(DataError, match=r"like a split folder itself.*pass the folder that holds train/") as e:
        scan_split(data_copy / "train", "train")
    assert "synth" not in str(e.value)


def test_empty_class_is_an_error(data_copy):
    from lcr_sdk.train.data import scan_split

    (data_copy / "train" / "empty_class").mkdir()
    with pytest.raises(DataError, match="empty_class has no images"):
        scan_split(data_copy, "train")


def test_unreadable_image_is_skipped_and_reported_or_fails(data_copy):
    from lcr_sdk.train.data import scan_split

    cls = sorted((data_copy / "train").iterdir())[0]
    bad = cls / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    empty = cls / "empty.png"
    empty.write_bytes(b"")
    with pytest.warns(UserWarning, match="2 unreadable image") as w:
        s = scan_split(data_copy, "train", on_bad="skip")
    assert len(s) == 24 and [p for p, _ in s.skipped] == [bad, empty]
    assert f"{bad} (" in str(w[0].message) and f"{empty} is empty" in str(w[0].message)  # each file and why
    # fail: every bad file in one error, not one per run
    with pytest.raises(DataError, match=r"2 unreadable image\(s\).*broken\.png.*empty\.png is empty"):
        scan_split(data_copy, "train", on_bad="fail")


def test_validation_split_is_per_class_disjoint_and_seeded(synth_root):
    from lcr_sdk.train.data import scan_split, split_validation

    full = scan_split(synth_root, "train", size=64)
    tr, val = split_validation(full, 0.25, seed=0)
    assert len(val) == 4 * 2 and len(tr) == 4 * 4  # round(0.25 * 6) = 2 of each class's 6
    assert sorted(val.labels) == [0, 0, 1, 1, 2, 2, 3, 3] and tr.classes == val.classes == full.classes
    assert not set(tr.paths) & set(val.paths) and set(tr.paths) | set(val.paths) == set(full.paths)
    assert [p for p in full.paths if p in set(val.paths)] == val.paths  # original order kept
    for part in (tr, val):  # cached images travel with their paths
        assert all(img is full.images[full.paths.index(p)] for p, img in zip(part.paths, part.images))
    again = split_validation(scan_split(synth_root, "train", size=64), 0.25, seed=0)[1]
    assert again.paths == val.paths
    others = {tuple(split_validation(full, 0.25, seed=s)[1].paths) for s in range(1, 6)}
    assert len(others | {tuple(val.paths)}) > 1  # the seed matters


def test_validation_split_keeps_one_image_each_side(synth_root):
    from lcr_sdk.train.data import scan_split, split_validation

    full = scan_split(synth_root, "train", size=64)
    tr, val = split_validation(full, 0.01, seed=0)  # rounds to 0: still one per class
    assert sorted(val.labels) == [0, 1, 2, 3]
    tr, val = split_validation(full, 0.99, seed=0)  # rounds to all: still one per class to train on
    assert sorted(tr.labels) == [0, 1, 2, 3]
    tr, val = split_validation(full, 0.0, seed=0)
    assert tr is full and len(val) == 0


def test_validation_split_of_a_class_ignores_other_classes(data_copy):
    """Adding images to one class does not move another class's validation images."""
    import cv2
    import numpy as np

    from lcr_sdk.train.data import scan_split, split_validation

    before = split_validation(scan_split(data_copy, "train"), 0.3, seed=7)[1]
    first = sorted((data_copy / "train").iterdir())[0]
    for i in range(5):
        cv2.imwrite(str(first / f"extra{i}.png"), np.full((64, 64, 3), 40 * i, np.uint8))
    after = split_validation(scan_split(data_copy, "train"), 0.3, seed=7)[1]
    keep = [p for p in before.paths if p.parent != first]
    assert keep == [p for p in after.paths if p.parent != first]


def test_validation_split_needs_two_images_per_class(data_copy):
    from lcr_sdk.train.data import scan_split, split_validation

    lonely = data_copy / "train" / "lonely"
    lonely.mkdir()
    src = next((data_copy / "train").glob("*/*.png"))
    shutil.copy(src, lonely / "only.png")
    full = scan_split(data_copy, "train")
    with pytest.raises(DataError, match=r"class 'lonely' has 1 training image.*--val-fraction 0"):
        split_validation(full, 0.2, seed=0)
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(InputError, match="--val-fraction"):
            split_validation(full, bad, seed=0)


def test_class_sub_folders_are_read_and_loose_images_are_named(data_copy):
    """A class folder's own sub-folders count (as torchvision's ImageFolder reads them), in training and in the data
    set's fingerprint alike; an image directly in train/ belongs to no class: left out with a warning naming it."""
    import warnings

    from lcr_sdk.train.data import scan_split
    from lcr_sdk.train.guards import data_identity

    cls = sorted((data_copy / "train").iterdir())[0]
    before = data_identity(data_copy)
    nested = cls / "batch 2" / "deeper"
    nested.mkdir(parents=True)
    shutil.copy(next(cls.glob("*.png")), nested / "extra.jfif")  # a JPEG-family suffix phones write; content PNG
    shutil.copy(next(cls.glob("*.png")), data_copy / "train" / "loose.png")
    with pytest.warns(
        UserWarning, match=r"1 image\(s\) directly in .*train, outside any class folder, left out \(e\.g\. loose\.png\)"
    ):
        s = scan_split(data_copy, "train")
    assert len(s) == 25 and nested / "extra.jfif" in s.paths and s.labels[s.paths.index(nested / "extra.jfif")] == 0
    assert data_identity(data_copy)["train_images"] == before["train_images"] + 1
    (data_copy / "train" / "loose.png").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to say without loose images
        scan_split(data_copy, "train")
