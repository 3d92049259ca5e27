"""`lcr-sdk data import`: the official CUB-200-2011, Stanford Cars and FGVC-Aircraft layouts, written here in small
fake trees (real JPEG files, real .mat files), become the ImageFolder layout training reads."""

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from lcr_sdk.cli import app
from lcr_sdk.errors import DataError, InputError

runner = CliRunner()


def _jpg(path: Path, h: int = 30, w: int = 40, value: int = 120, banner: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((h, w, 3), value, np.uint8)
    if banner:
        img[h - banner :] = (0, 0, 255)  # a red copyright banner at the bottom
    assert cv2.imwrite(str(path), img)
    return path


def write_cub(root: Path) -> Path:
    """CUB_200_2011/ with 3 classes x 2 images (one train, one test each), as the official tgz extracts."""
    cub = root / "CUB_200_2011"
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    images, split, labels = [], [], []
    n = 0
    for c, name in enumerate(classes, start=1):
        for k in range(2):
            n += 1
            rel = f"{name}/{name.split('.')[1]}_{k:04d}_{n}.jpg"
            _jpg(cub / "images" / rel, value=40 * c)
            images.append(f"{n} {rel}")
            split.append(f"{n} {1 - k}")
            labels.append(f"{n} {c}")
    (cub / "classes.txt").write_text("".join(f"{i} {c}\n" for i, c in enumerate(classes, start=1)))
    (cub / "images.txt").write_text("\n".join(images) + "\n")
    (cub / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (cub / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    return cub


CAR_CLASSES = ["AM General Hummer SUV 2000", "Ram C/V Cargo Van Minivan 2012", "smart fortwo Convertible 2012"]


def write_cars(root: Path) -> Path:
    """devkit/cars_meta.mat, devkit/cars_train_annos.mat, cars_test_annos_withlabels.mat, cars_train/, cars_test/."""
    import scipy.io

    names = np.empty((1, len(CAR_CLASSES)), dtype=object)
    names[0, :] = CAR_CLASSES
    (root / "devkit").mkdir(parents=True)
    scipy.io.savemat(root / "devkit" / "cars_meta.mat", {"class_names": names})
    fields = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"), ("class", "O"), ("fname", "O")]
    for split, per_class, target in (
        ("train", 2, "devkit/cars_train_annos.mat"),
        ("test", 1, "cars_test_annos_withlabels.mat"),
    ):
        annos = np.zeros((1, len(CAR_CLASSES) * per_class), dtype=fields)
        for i in range(annos.shape[1]):
            fname = f"{i + 1:05d}.jpg"
            _jpg(root / f"cars_{split}" / fname, h=30, w=60, value=30 + 20 * i)  # wide, like real car photos
            box = [np.array([[v]], np.uint16) for v in (2, 3, 50, 25)]
            annos[0, i] = (*box, np.array([[i % len(CAR_CLASSES) + 1]], np.uint8), np.array([fname]))
        scipy.io.savemat(root / target, {"annotations": annos})
    return root


AIRCRAFT_VARIANTS = ["707-320", "F/A-18", "Cessna 172"]


def write_aircraft(root: Path) -> Path:
    """fgvc-aircraft-2013b/data/ with variants.txt, the variant trainval/test lists and banner-carrying images."""
    data = root / "fgvc-aircraft-2013b" / "data"
    data.mkdir(parents=True)
    (data / "variants.txt").write_text("\n".join(AIRCRAFT_VARIANTS) + "\n")
    lines = {"trainval": [], "test": []}
    for i in range(9):
        image_id = f"{1000000 + i:07d}"
        _jpg(data / "images" / f"{image_id}.jpg", h=60, w=80, value=100, banner=20)
        lines["trainval" if i % 3 else "test"].append(f"{image_id} {AIRCRAFT_VARIANTS[i % 3]}")
    for split, rows in lines.items():
        (data / f"images_variant_{split}.txt").write_text("\n".join(rows) + "\n")
    return root


WRITERS = {"cub": write_cub, "cars": write_cars, "aircraft": write_aircraft}


def _files(out: Path, split: str) -> list[Path]:
    return sorted(p for p in (out / split).rglob("*") if p.is_file() or p.is_symlink())


def test_cub_becomes_an_image_folder_of_hard_links(tmp_path):
    from lcr_sdk.train.data import scan_split
    from lcr_sdk.train.importers import import_dataset

    src = write_cub(tmp_path / "src")
    summary = import_dataset("cub", tmp_path / "src", tmp_path / "cub")
    out = tmp_path / "cub"
    assert (summary["classes"], summary["train"], summary["test"]) == (3, 3, 3)
    assert sorted(p.name for p in (out / "train").iterdir()) == [
        "001.Black_footed_Albatross",
        "002.Laysan_Albatross",
        "003.Sooty_Albatross",
    ]
    for f in _files(out, "train") + _files(out, "test"):
        original = src / "images" / f.parent.name / f.name
        assert not f.is_symlink() and os.path.samefile(f, original)  # a hard link: no copy
    assert json.loads((out / "lcr-import.json").read_text())["images"] == "hardlinks to the source files"
    train = scan_split(out, "train")
    assert train.labels == [0, 1, 2] and train.classes == scan_split(out, "test").classes
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".lcr-import-")]  # staging folder gone


def test_cars_devkit_annotations_and_safe_class_names(tmp_path):
    from lcr_sdk.train.data import scan_split
    from lcr_sdk.train.importers import import_dataset

    write_cars(tmp_path / "src")
    summary = import_dataset("cars", tmp_path / "src", tmp_path / "cars")
    assert (summary["train"], summary["test"]) == (6, 3)
    out = tmp_path / "cars"
    assert sorted(p.name for p in (out / "test").iterdir()) == [
        "001.AM_General_Hummer_SUV_2000",
        "002.Ram_C_V_Cargo_Van_Minivan_2012",  # '/' and spaces made safe
        "003.smart_fortwo_Convertible_2012",
    ]
    assert sorted(f.name for f in _files(out, "train") if f.parent.name.startswith("002")) == ["00002.jpg", "00005.jpg"]
    assert os.path.samefile(
        out / "train" / "002.Ram_C_V_Cargo_Van_Minivan_2012" / "00005.jpg",
        tmp_path / "src" / "cars_train" / "00005.jpg",
    )
    assert cv2.imread(str(_files(out, "train")[0])).shape == (30, 60, 3)  # whole, wide image
    assert len(scan_split(out, "train").classes) == 3


def test_aircraft_banner_is_cropped_into_new_files(tmp_path):
    from lcr_sdk.train.importers import import_dataset

    write_aircraft(tmp_path / "src")
    summary = import_dataset("aircraft", tmp_path / "src", tmp_path / "air")
    assert (summary["classes"], summary["train"], summary["test"]) == (3, 6, 3)
    out = tmp_path / "air"
    assert sorted(p.name for p in (out / "train").iterdir()) == ["001.707-320", "002.F_A-18", "003.Cessna_172"]
    for f in _files(out, "train") + _files(out, "test"):
        img = cv2.imread(str(f))
        assert img.shape == (40, 80, 3)  # 60 px high minus the 20 px banner
        assert img[:, :, 2].max() < 160  # no red banner left
        assert os.stat(f).st_nlink == 1  # a new file, not a link to the original
    assert not list(out.rglob(".*.tmp"))
    kept = import_dataset("aircraft", tmp_path / "src", tmp_path / "raw", crop_banner=False)
    assert kept["images"] == "hardlinks to the source files"
    assert cv2.imread(str(_files(tmp_path / "raw", "test")[0])).shape == (60, 80, 3)


def test_cli_import_json(tmp_path):
    write_cub(tmp_path / "src")
    r = runner.invoke(
        app, ["data", "import", "cub", str(tmp_path / "src" / "CUB_200_2011"), str(tmp_path / "out"), "--json"]
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["train"] == 3  # the progress bar goes to stderr
    r = runner.invoke(app, ["data", "import", "inat", str(tmp_path / "src"), str(tmp_path / "o2")])
    assert r.exit_code == 1 and "'inat' is not one of cub, cars, aircraft" in r.output


@pytest.mark.parametrize(
    "dataset, remove, named",
    [
        ("cub", "CUB_200_2011/train_test_split.txt", "train_test_split.txt is missing"),
        ("cub", "CUB_200_2011/images", "images is missing"),
        ("cars", "devkit/cars_meta.mat", "cars_meta.mat is missing"),
        ("cars", "cars_test_annos_withlabels.mat", "cars_test_annos_withlabels.mat is missing"),
        ("aircraft", "fgvc-aircraft-2013b/data/images_variant_test.txt", "images_variant_test.txt is missing"),
        ("aircraft", "fgvc-aircraft-2013b/data/variants.txt", "variants.txt is missing"),
    ],
)
def test_a_missing_metadata_file_is_named(tmp_path, dataset, remove, named):
    from lcr_sdk.train.importers import import_dataset

    src = tmp_path / "src"
    WRITERS[dataset](src)
    target = src / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(DataError, match=rf"{named}: not the official"):
        import_dataset(dataset, src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("dataset", ["cub", "cars", "aircraft"])
def test_a_listed_image_that_does_not_exist_is_an_error_not_a_skip(tmp_path, dataset):
    from lcr_sdk.train.importers import import_dataset

    src = tmp_path / "src"
    WRITERS[dataset](src)
    victim = sorted(p for p in src.rglob("*.jpg"))[1]
    victim.unlink()
    with pytest.raises(
        DataError, match=rf"1 image\(s\) listed by the {dataset} metadata do not exist, e.g. .*{victim.name}"
    ):
        import_dataset(dataset, src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_existing_output_is_never_overwritten(tmp_path):
    from lcr_sdk.train.importers import import_dataset

    write_cub(tmp_path / "src")
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(InputError, match="is not empty; give a new folder"):
        import_dataset("cub", tmp_path / "src", out)
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    (out / "mine.txt").unlink()
    assert import_dataset("cub", tmp_path / "src", out)["train"] == 3  # an empty folder is fine


def test_damaged_metadata_is_named(tmp_path):
    from lcr_sdk.train.importers import import_dataset

    src = write_cub(tmp_path / "src")
    (src / "image_class_labels.txt").write_text("1 1\n2\n")
    with pytest.raises(DataError, match=r"image_class_labels.txt: line '2' is not '<image_id> <class_id>'"):
        import_dataset("cub", tmp_path / "src", tmp_path / "out")
    write_cars(tmp_path / "cars")
    (tmp_path / "cars" / "devkit" / "cars_meta.mat").write_bytes(b"not a mat file")
    with pytest.raises(DataError, match="cars_meta.mat is not a readable MATLAB file"):
        import_dataset("cars", tmp_path / "cars", tmp_path / "out")


def test_other_file_system_gets_symlinks_that_resolve(tmp_path):
    """/dev/shm is a tmpfs here: hard links to it from tmp_path fail (EXDEV), so the import makes symlinks."""
    from lcr_sdk.train.importers import import_dataset

    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second file system to import across")
    src = Path(os.path.realpath(shm)) / f"lcr-import-test-{os.getpid()}"
    try:
        write_cub(src)
        summary = import_dataset("cub", src, tmp_path / "out")
        assert summary["images"] == "symlinks to the source files"
        files = _files(tmp_path / "out", "train")
        assert files and all(
            f.is_symlink() and f.resolve().is_file() and Path(os.readlink(f)).is_absolute() for f in files
        )
    finally:
        shutil.rmtree(src, ignore_errors=True)
