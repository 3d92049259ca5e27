"""lcr-sdk runtime: fine-grained image embeddings from exported LCR models, without torch.

    from lcr_sdk import Embedder, Gallery
    emb = Embedder("model.onnx")            # or .engine (TensorRT), .pt (PyTorch reference)
    vec = emb.embed(cv2.imread("bird.jpg"))  # float32 (D,), unit length

Heavy pieces are imported lazily on first use, so ``import lcr_sdk`` is cheap and never imports torch.
"""

from __future__ import annotations

import importlib

from lcr_sdk._version import __version__
from lcr_sdk.errors import DataError, InputError, LcrError, MissingDependencyError, ModelError

_LAZY = {
    "Embedder": "lcr_sdk.embedder",
    "Attention": "lcr_sdk.embedder",
    "Gallery": "lcr_sdk.gallery",
    "Hit": "lcr_sdk.gallery",
    "Manifest": "lcr_sdk.manifest",
    "read_manifest": "lcr_sdk.manifest",
    "open_source": "lcr_sdk.video",
    "open_sink": "lcr_sdk.video",
}

__all__ = ["__version__", "LcrError", "InputError", "DataError", "ModelError", "MissingDependencyError", *_LAZY]


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lcr_sdk' has no attribute {name!r}")
