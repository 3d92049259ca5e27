"""What a non-editable install ships: every sub-package of the source tree, and the type marker."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11; the check needs to run on one interpreter only

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_folder_is_listed_for_installation():
    """A sub-package missing from pyproject's list works in an editable install and is absent from the wheel."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    mapped = {name: ROOT / folder for name, folder in config["package-dir"].items()}  # lcr_sdk.train -> train/
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "lcr_sdk").rglob("__init__.py")}
    for name, folder in mapped.items():
        found |= {".".join((name, *p.parent.relative_to(folder).parts)) for p in folder.rglob("__init__.py")}
    assert found == listed, f"pyproject lists {sorted(listed)}, the tree has {sorted(found)}"
    assert "py.typed" in config["package-data"]["lcr_sdk"] and (ROOT / "lcr_sdk" / "py.typed").is_file()
