#!/usr/bin/env python3
"""Which lcr_sdk modules one enrolment and one search pass through (docs/DESIGN.md section 4).

    python benchmarks/gallery_call_path.py                  # this checkout
    PYTHONPATH=OTHER python benchmarks/gallery_call_path.py  # another checkout of the SDK, e.g. an older commit

A gallery of 200 random 64-d vectors is saved and loaded; then, under a profiler (``sys.setprofile``), one
enrolment (one vector added, then committed), one search (k=5) and one search with ``threshold="auto"``. For each
it prints the lcr_sdk modules in the order they are first called, how many belong to the gallery package, and
every module entered again while one of its own calls was still running (a circle in the call path; none is
wanted). Nothing is timed: the figures do not depend on the machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable

import numpy as np

from lcr_sdk.gallery import Gallery


def modules_called(fn: Callable[[], object]) -> tuple[list[str], set[str]]:
    """(lcr_sdk modules in first-call order, the call chains in which a module was re-entered) while ``fn`` runs."""
    stack: list[str] = []
    seen: list[str] = []
    again: set[str] = set()

    def profile(frame, event, arg):
        if event == "call":
            mod = frame.f_globals.get("__name__", "")
            stack.append(mod)
            if mod.startswith("lcr_sdk"):
                if mod not in seen:
                    seen.append(mod)
                chain = [m for m in stack if m.startswith("lcr_sdk")]
                runs = [m for i, m in enumerate(chain) if i == 0 or chain[i - 1] != m]
                if runs.count(mod) > 1:
                    again.add(" > ".join(runs))
        elif event == "return" and stack:
            stack.pop()

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return seen, again


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # --help; no options
    rng = np.random.default_rng(0)
    folder = tempfile.mkdtemp(prefix="gallery-path-")
    g = Gallery(64, model_sha256="0" * 64)
    g.add(rng.standard_normal((200, 64)).astype("float32"), labels=[str(i % 10) for i in range(200)])
    g.save(folder)
    g = Gallery.load(folder)
    g.search(rng.standard_normal(64).astype("float32"), k=5)  # first-use work (opening the version) not counted
    v = rng.standard_normal((1, 64)).astype("float32")
    paths: dict[str, Callable[[], object]] = {
        "enrolment (add + commit)": lambda: (g.add(v, labels=["3"]), g.commit()),
        "search": lambda: g.search(v[0], k=5),
        'search, threshold="auto"': lambda: g.search(v[0], k=5, threshold="auto"),
    }
    for name, fn in paths.items():
        mods, again = modules_called(fn)
        gallery = [m for m in mods if m.startswith("lcr_sdk.gallery")]
        shown = ", ".join(m.removeprefix("lcr_sdk.") for m in mods)
        print(f"{name}: {len(mods)} modules ({len(gallery)} of the gallery): {shown}")
        print(f"  re-entered: {'; '.join(sorted(again)) or 'none'}")


if __name__ == "__main__":
    main()
