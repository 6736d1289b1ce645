"""Identity embedders behind one interface, and the provenance that keeps embedding spaces apart.

Every embedder returns L2-normalised float32 vectors ``[N, d]`` and carries an :class:`EmbedderProfile`:
which model, which weights (sha256), whether the weights are random test weights, and the model's own
same-identity threshold. On unit vectors cosine distance = L2² / 2, so one threshold serves both metrics.
Rows written with :func:`embedding_table` carry the profile's :meth:`~EmbedderProfile.provenance`, and
:func:`check_same_space` refuses to compare or cluster vectors from two different spaces.

Implementations: :class:`facelake.faces.identity_dlib.DlibEmbedder` (128-d, ships offline, the default) and
:class:`facelake.faces.identity_onnx.ArcFaceOnnxEmbedder` (512-d ArcFace from a configured ``.onnx`` file).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from facelake.faces.alignment import Images
from facelake.lake.errors import FacelakeError

PROVENANCE_COLUMNS = (
    "embedder_name",
    "embedder_dimension",
    "embedder_weights_sha256",
    "embedder_random_init",
    "embedder_same_identity_cosine_distance",
)
_SPACE_KEYS = ("embedder_name", "embedder_dimension", "embedder_weights_sha256")


class EmbeddingSpaceMismatchError(FacelakeError):
    """Embeddings from two different models (or weights) were about to be compared."""


@dataclass(frozen=True)
class EmbedderProfile:
    """What defines an embedding space, and its same-identity threshold (cosine distance on unit vectors)."""

    name: str
    dimension: int
    weights_sha256: str
    random_init: bool
    same_identity_cosine_distance: float
    note: str = ""

    @classmethod
    def from_provenance(cls, space: Mapping[str, Any]) -> EmbedderProfile:
        """The profile a provenance dict (the ``embedder_*`` columns of :data:`PROVENANCE_COLUMNS`) describes."""
        return cls(
            name=str(space["embedder_name"]),
            dimension=int(space["embedder_dimension"]),
            weights_sha256=str(space["embedder_weights_sha256"]),
            random_init=bool(space["embedder_random_init"]),
            same_identity_cosine_distance=float(space["embedder_same_identity_cosine_distance"]),
        )

    @property
    def same_identity_l2(self) -> float:
        """The threshold as an L2 distance between unit vectors: ``sqrt(2 * cosine distance)``."""
        return math.sqrt(2.0 * self.same_identity_cosine_distance)

    def provenance(self) -> dict[str, Any]:
        """The columns every embedding row carries (see :data:`PROVENANCE_COLUMNS`)."""
        values = (
            self.name,
            self.dimension,
            self.weights_sha256,
            self.random_init,
            self.same_identity_cosine_distance,
        )
        return dict(zip(PROVENANCE_COLUMNS, values, strict=True))

    def describe(self) -> str:
        """One line for logs and asset metadata; random test weights say so loudly."""
        weights = "RANDOM TEST WEIGHTS" if self.random_init else "trained weights"
        return (
            f"{self.name} ({self.dimension}-d, {weights}, sha256 {self.weights_sha256[:12]}, "
            f"same identity if cosine distance < {self.same_identity_cosine_distance:.3f})"
        )


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


def _space(item: EmbedderProfile | Mapping[str, Any]) -> dict[str, Any]:
    values = item.provenance() if isinstance(item, EmbedderProfile) else dict(item)
    missing = [key for key in _SPACE_KEYS if key not in values]
    if missing:
        raise ValueError(f"provenance lacks {missing}: expected the keys of EmbedderProfile.provenance()")
    return values


def _label(values: Mapping[str, Any]) -> str:
    random = ", RANDOM TEST WEIGHTS" if values.get("embedder_random_init") else ""
    return (
        f"{values['embedder_name']} ({values['embedder_dimension']}-d, "
        f"sha256 {str(values['embedder_weights_sha256'])[:12]}{random})"
    )


def check_same_space(profiles: Iterable[EmbedderProfile | Mapping[str, Any]]) -> dict[str, Any]:
    """The one shared provenance of ``profiles`` (profiles or provenance dicts); raises if spaces differ.

    Two embeddings share a space when model name, dimension and weights sha256 all agree.
    """
    spaces = [_space(item) for item in profiles]
    if not spaces:
        raise ValueError("check_same_space needs at least one profile")
    first = spaces[0]
    for other in spaces[1:]:
        if any(other[key] != first[key] for key in _SPACE_KEYS):
            raise EmbeddingSpaceMismatchError(
                f"refusing to mix embedding spaces: {_label(first)} vs {_label(other)}; "
                "re-embed both sides with the same model"
            )
    return first


def embedding_table(
    vectors: np.ndarray, profile: EmbedderProfile, columns: Mapping[str, Any] | None = None
) -> pa.Table:
    """A table of ``columns`` (e.g. ids), an ``embedding`` fixed-size float32 list and the provenance columns."""
    array = np.ascontiguousarray(vectors, dtype=np.float32)
    if array.ndim != 2 or array.shape[1] != profile.dimension:
        raise ValueError(f"{profile.name} embeddings must be [N, {profile.dimension}], got {array.shape}")
    flat = pa.array(array.reshape(-1), type=pa.float32())
    data: dict[str, Any] = dict(columns or {})
    data["embedding"] = pa.FixedSizeListArray.from_arrays(flat, profile.dimension)
    for key, value in profile.provenance().items():
        data[key] = pa.repeat(value, len(array))
    return pa.table(data)


def table_space(table: pa.Table) -> dict[str, Any]:
    """The single embedding space of a table's rows; raises if its rows mix spaces or lack provenance."""
    missing = [key for key in PROVENANCE_COLUMNS if key not in table.column_names]
    if missing:
        raise ValueError(f"table lacks provenance columns {missing}")
    distinct = table.select(list(PROVENANCE_COLUMNS)).group_by(list(PROVENANCE_COLUMNS)).aggregate([])
    return check_same_space(distinct.to_pylist())


def table_embeddings(table: pa.Table) -> np.ndarray:
    """The ``embedding`` column as float32 ``[N, d]``."""
    column = table.column("embedding").combine_chunks()
    dimension = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dimension).astype(np.float32)
