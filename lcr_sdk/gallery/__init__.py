"""Gallery: unit embeddings with ids, labels, metadata and images, searched by cosine similarity.

    g = Gallery(emb.manifest.embedding_dim, model_sha256=emb.model_id)        # or build_from_folder(emb, "data/")
    g.add(emb.embed(images), ids=names, labels=classes, metadata=[{"path": n} for n in names])
    g.save("gallery/")                                  # crash-safe; the gallery is now attached to the folder
    g = Gallery.load("gallery/")                        # vectors memory-mapped
    g.enroll(emb, frame_crop, label="robin"); g.commit()  # one O(1) transaction, quality-checked
    hits = g.search(emb.embed(query), k=5, model=emb, threshold="auto")   # [] means "unknown"
    hits[0].explain(query, emb).save("why.png")         # attention maps and matched parts side by side

The package has one module per concern: :mod:`~lcr_sdk.gallery.core` (the :class:`Gallery` API),
:mod:`~lcr_sdk.gallery.store` (persistence: append-only format 2, locking, crash safety),
:mod:`~lcr_sdk.gallery.legacy` (format 1), :mod:`~lcr_sdk.gallery.items` (the SQLite item table, filters),
:mod:`~lcr_sdk.gallery.pending` (changes not yet committed), :mod:`~lcr_sdk.gallery.build` (galleries from images:
a labelled folder, or a re-embedding with another model),
:mod:`~lcr_sdk.gallery.search` (exact and FAISS search), :mod:`~lcr_sdk.gallery.calibrate` (the open-set
threshold) and :mod:`~lcr_sdk.gallery.explain` (explained hits, enrolment quality).
"""

from lcr_sdk.gallery.build import build_from_folder
from lcr_sdk.gallery.calibrate import Calibration
from lcr_sdk.gallery.core import Enrolment, Gallery, Hit
from lcr_sdk.gallery.explain import Explanation, PartMatch, Quality, check_quality
from lcr_sdk.gallery.search import topk

__all__ = [
    "Calibration",
    "Enrolment",
    "Explanation",
    "Gallery",
    "Hit",
    "PartMatch",
    "Quality",
    "build_from_folder",
    "check_quality",
    "topk",
]
