"""lcr-sdk runtime: fine-grained image embeddings from exported LCR models, without torch.

Heavy pieces are imported lazily, so ``import lcr_sdk`` costs little and never imports torch.
"""

from lcr_sdk._version import __version__
from lcr_sdk.errors import DataError, InputError, LcrError, MissingDependencyError, ModelError

__all__ = ["__version__", "LcrError", "InputError", "DataError", "ModelError", "MissingDependencyError"]
