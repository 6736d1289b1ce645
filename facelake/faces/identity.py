"""Identity embedders behind one interface, and the provenance that keeps embedding spaces apart.

Every embedder returns L2-normalised float32 vectors ``[N, d]`` and carries an :class:`EmbedderProfile`:
which model, which weights (sha256), whether the weights are random test weights, and the model's own
same-identity threshold. On unit vectors cosine distance = L2² / 2, so one threshold serves both metrics.
Rows written with :func:`embedding_table` carry the profile's :meth:`~EmbedderProfile.provenance`, and
:func:`check_same_space` refuses to compare or cluster vectors from two different spaces. That space
mechanism is shared with CLIP and lives in :mod:`facelake.vectors.spaces`; its names are re-exported here.

Implementations: :class:`facelake.faces.identity_dlib.DlibEmbedder` (128-d, ships offline, the default) and
:class:`facelake.faces.identity_onnx.ArcFaceOnnxEmbedder` (512-d ArcFace from a configured ``.onnx`` file).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from facelake.faces.alignment import Images
from facelake.vectors.spaces import (
    CONFIG_COLUMN,
    PROVENANCE_COLUMNS,
    EmbedderProfile,
    EmbeddingSpaceMismatchError,
    check_same_space,
    embedding_table,
    space_label,
    table_embeddings,
    table_space,
)

__all__ = [
    "CONFIG_COLUMN",
    "PROVENANCE_COLUMNS",
    "EmbedderProfile",
    "EmbeddingSpaceMismatchError",
    "IdentityEmbedder",
    "check_same_space",
    "embedding_table",
    "l2_normalise",
    "space_label",
    "table_embeddings",
    "table_space",
]


class IdentityEmbedder(Protocol):
    """What every identity embedder offers."""

    profile: EmbedderProfile

    def embed(self, images: Images, boxes: np.ndarray, landmarks: np.ndarray | None = None) -> np.ndarray:
        """Unit float32 ``[N, d]`` for N faces given by boxes ``[N, 4]`` (x1, y1, x2, y2) and landmarks
        ``[N, 5, 2]`` in image pixels; ``images`` is one RGB uint8 image per face, or one shared image."""
        ...

    def embed_aligned(self, faces: Images) -> np.ndarray:
        """Unit float32 ``[N, d]`` for faces already aligned the way this model expects."""
        ...


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, float32; a zero or non-finite row raises ``ValueError``."""
    array = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    bad = np.flatnonzero(~np.isfinite(norms[:, 0]) | (norms[:, 0] == 0))
    if bad.size:
        raise ValueError(f"embedding row(s) {bad[:10].tolist()} are zero or not finite: cannot normalise")
    return (array / norms).astype(np.float32)
