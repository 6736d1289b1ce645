"""Embedding spaces: what makes two embeddings comparable, recorded with every embedding and checked before
any comparison (DESIGN §6).

One mechanism for every embedder, face identity models and CLIP alike. An :class:`EmbedderProfile` names
the model, its output dimension, the sha256 of its weights, whether those weights are random test weights,
and the model's own "same thing" threshold (cosine distance on unit vectors; cosine distance = L2² / 2).
An embedder whose name does not fix its architecture (open_clip: one family, many configurations, and
``quick_gelu`` changes the function without changing the weights) also records ``config``, the canonical
JSON of its resolved configuration. The space is (name, dimension, weights sha256, config): rows written with
:func:`embedding_table` carry the profile's :meth:`~EmbedderProfile.provenance`, and :func:`check_same_space`
refuses to compare, search, cluster or join vectors of two different spaces, naming both.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from facelake.lake.errors import FacelakeError

PROVENANCE_FIELDS = [
    ("embedder_name", pa.string()),
    ("embedder_dimension", pa.int64()),
    ("embedder_weights_sha256", pa.string()),
    ("embedder_random_init", pa.bool_()),
    ("embedder_same_identity_cosine_distance", pa.float64()),
]
"""The provenance columns every embedding row carries, with their Arrow types."""
PROVENANCE_COLUMNS = tuple(name for name, _ in PROVENANCE_FIELDS)
"""Their names."""
CONFIG_COLUMN = "embedder_config"
"""The optional provenance column of embedders whose space depends on a configuration (canonical JSON)."""
_SPACE_KEYS = ("embedder_name", "embedder_dimension", "embedder_weights_sha256")


class EmbeddingSpaceMismatchError(FacelakeError):
    """Embeddings from two different models (or weights, or configurations) were about to be compared."""


@dataclass(frozen=True)
class EmbedderProfile:
    """What defines an embedding space, and its same-identity threshold (cosine distance on unit vectors).

    ``config``: canonical JSON of the model's resolved configuration, for embedders whose ``name`` does not
    fix the function they compute (open_clip); ``None`` for the others, whose provenance keeps its five
    columns.
    """

    name: str
    dimension: int
    weights_sha256: str
    random_init: bool
    same_identity_cosine_distance: float
    note: str = ""
    config: str | None = None

    @classmethod
    def from_provenance(cls, space: Mapping[str, Any]) -> EmbedderProfile:
        """The profile a provenance dict (the ``embedder_*`` columns of :data:`PROVENANCE_COLUMNS`) describes."""
        config = space.get(CONFIG_COLUMN)
        return cls(
            name=str(space["embedder_name"]),
            dimension=int(space["embedder_dimension"]),
            weights_sha256=str(space["embedder_weights_sha256"]),
            random_init=bool(space["embedder_random_init"]),
            same_identity_cosine_distance=float(space["embedder_same_identity_cosine_distance"]),
            config=None if config is None else str(config),
        )

    @property
    def same_identity_l2(self) -> float:
        """The threshold as an L2 distance between unit vectors: ``sqrt(2 * cosine distance)``."""
        return math.sqrt(2.0 * self.same_identity_cosine_distance)

    def provenance(self) -> dict[str, Any]:
        """The columns every embedding row carries (see :data:`PROVENANCE_COLUMNS`, plus
        :data:`CONFIG_COLUMN` when the profile has a config)."""
        values = (
            self.name,
            self.dimension,
            self.weights_sha256,
            self.random_init,
            self.same_identity_cosine_distance,
        )
        columns = dict(zip(PROVENANCE_COLUMNS, values, strict=True))
        if self.config is not None:
            columns[CONFIG_COLUMN] = self.config
        return columns

    def describe(self) -> str:
        """One line for logs and asset metadata; random test weights say so loudly."""
        weights = "RANDOM TEST WEIGHTS" if self.random_init else "trained weights"
        config = f", config {config_digest(self.config)}" if self.config is not None else ""
        return (
            f"{self.name} ({self.dimension}-d, {weights}, sha256 {self.weights_sha256[:12]}{config}, "
            f"same identity if cosine distance < {self.same_identity_cosine_distance:.3f})"
        )


def config_digest(config: str) -> str:
    """A short stable digest of a canonical config JSON, for labels."""
    return hashlib.sha256(config.encode()).hexdigest()[:12]


def _space(item: EmbedderProfile | Mapping[str, Any]) -> dict[str, Any]:
    values = item.provenance() if isinstance(item, EmbedderProfile) else dict(item)
    missing = [key for key in _SPACE_KEYS if key not in values]
    if missing:
        raise ValueError(f"provenance lacks {missing}: expected the keys of EmbedderProfile.provenance()")
    return values


def space_label(values: EmbedderProfile | Mapping[str, Any]) -> str:
    """A short human label of a space: name, dimension, weights (and config) digest, random weights flagged."""
    values = _space(values)
    random = ", RANDOM TEST WEIGHTS" if values.get("embedder_random_init") else ""
    config = values.get(CONFIG_COLUMN)
    config_part = f", config {config_digest(str(config))}" if config is not None else ""
    return (
        f"{values['embedder_name']} ({values['embedder_dimension']}-d, "
        f"sha256 {str(values['embedder_weights_sha256'])[:12]}{config_part}{random})"
    )


def _differs(first: Mapping[str, Any], other: Mapping[str, Any]) -> bool:
    if any(other[key] != first[key] for key in _SPACE_KEYS):
        return True
    return other.get(CONFIG_COLUMN) != first.get(CONFIG_COLUMN)


def check_same_space(profiles: Iterable[EmbedderProfile | Mapping[str, Any]]) -> dict[str, Any]:
    """The one shared provenance of ``profiles`` (profiles or provenance dicts); raises if spaces differ.

    Two embeddings share a space when model name, dimension, weights sha256 and (where recorded) the
    resolved configuration all agree. The error names both spaces.
    """
    spaces = [_space(item) for item in profiles]
    if not spaces:
        raise ValueError("check_same_space needs at least one profile")
    first = spaces[0]
    for other in spaces[1:]:
        if _differs(first, other):
            raise EmbeddingSpaceMismatchError(
                f"refusing to mix embedding spaces: {space_label(first)} vs {space_label(other)}; "
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
    data.update(provenance_columns(profile, len(array)))
    return pa.table(data)


def embedding_schema(columns: Iterable[tuple[str, pa.DataType]] = ()) -> pa.Schema:
    """The schema of :func:`embedding_table` rows as a reader declares it without knowing the dimension:
    ``columns``, ``embedding`` (a list of float32) and the provenance columns (e.g. a catalog view's columns
    while nothing is committed)."""
    return pa.schema([*columns, ("embedding", pa.list_(pa.float32())), *PROVENANCE_FIELDS])


def provenance_columns(profile: EmbedderProfile, rows: int) -> dict[str, pa.Array]:
    """The provenance of ``profile`` repeated for ``rows`` rows, as arrow arrays by column name."""
    return {key: pa.repeat(value, rows) for key, value in profile.provenance().items()}


def table_space(table: pa.Table) -> dict[str, Any]:
    """The single embedding space of a table's rows; raises if its rows mix spaces or lack provenance."""
    missing = [key for key in PROVENANCE_COLUMNS if key not in table.column_names]
    if missing:
        raise ValueError(f"table lacks provenance columns {missing}")
    columns = list(PROVENANCE_COLUMNS)
    if CONFIG_COLUMN in table.column_names:
        columns.append(CONFIG_COLUMN)
    distinct = table.select(columns).group_by(columns).aggregate([])
    return check_same_space(distinct.to_pylist())


def table_embeddings(table: pa.Table) -> np.ndarray:
    """The ``embedding`` column as float32 ``[N, d]``."""
    column = table.column("embedding").combine_chunks()
    dimension = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dimension).astype(np.float32)
