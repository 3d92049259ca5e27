"""Gallery: unit embeddings with ids, labels, metadata and images, searched by cosine similarity.

    g = Gallery(emb.manifest.embedding_dim, model_sha256=emb.model_id)        # or build_from_folder(emb, "data/")
    g.add(emb.embed(images), ids=names, labels=classes, metadata=[{"path": n} for n in names])
    g.save("gallery/")                                  # crash-safe; the gallery is now attached to the folder
    g = Gallery.load("gallery/")                        # vectors memory-mapped
    g.enroll(emb, frame_crop, label="robin"); g.commit()  # one O(1) transaction, quality-checked
    hits = g.search(emb.embed(query), k=5, model=emb, threshold="auto")   # [] means "unknown"
    hits[0].explain(query, emb).save("why.png")         # attention maps and matched parts side by side

The package has one module per job. :mod:`~lcr_sdk.gallery.core` is the :class:`Gallery` API: it checks arguments
and hands each job on: what a gallery holds to :mod:`~lcr_sdk.gallery.contents` (committed and pending slots),
how it commits to :mod:`~lcr_sdk.gallery.persist` (save, commit, load), how it searches to
:mod:`~lcr_sdk.gallery.search` (exact and FAISS top-k, threshold, filters), how it is rebuilt with another model to
:mod:`~lcr_sdk.gallery.rebuild`. Below them: :mod:`~lcr_sdk.gallery.store` (format 2 on disk: the SQLite item
tables and their filters, append-only vectors, locking, crash safety), :mod:`~lcr_sdk.gallery.legacy` (format 1),
:mod:`~lcr_sdk.gallery.calibrate` (the open-set threshold) and :mod:`~lcr_sdk.gallery.explain` (explained hits,
enrolment quality). :mod:`~lcr_sdk.gallery.build` embeds a labelled image folder into a new gallery.
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
