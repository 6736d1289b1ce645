"""The packed identities a generation run works on, and their split into generation shards.

:class:`ReferenceIdentities` holds unit identity vectors of ONE embedding space with their stable ids, read
from a reference-embeddings table (``facelake.hyperface.references``: ``identity_id``, ``identity_index``,
``variant``, ``embedding`` and the embedder provenance). Generation shard ``s`` holds the identities with
``identity_index // shard_identities == s``: ids stay the same whatever subset (a whole variant, or one of its
reference shards) a partition generates, and each shard's fingerprint covers exactly its input.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from facelake.faces.identity import PROVENANCE_COLUMNS, table_embeddings, table_space
from facelake.lake.errors import InputError
from facelake.lake.hashing import combine_hashes

_ID_INDEX = re.compile(r"(\d+)$")


@dataclass(frozen=True)
class IdentityShard:
    """One generation shard: rows of a :class:`ReferenceIdentities`, and a fingerprint of their input."""

    shard_id: int
    rows: np.ndarray
    fingerprint: str


@dataclass(frozen=True, eq=False)
class ReferenceIdentities:
    """Unit identity vectors of one variant, with their ids and embedding space (one space only)."""

    variant: str
    identity_ids: tuple[str, ...]
    identity_index: np.ndarray  # int64 [N]
    embeddings: np.ndarray  # float32 [N, d], unit rows
    space: dict[str, Any]

    def __len__(self) -> int:
        return len(self.identity_ids)

    @classmethod
    def from_table(
        cls, table: pa.Table, variant: str | None = None, name: str = "reference embeddings"
    ) -> ReferenceIdentities:
        """From a reference-embeddings table (``identity_id``, ``embedding``, provenance; ``identity_index``
        and ``variant`` used when present). Rows are sorted by identity index."""
        missing = [
            c for c in ("identity_id", "embedding", *PROVENANCE_COLUMNS) if c not in table.column_names
        ]
        if missing:
            raise InputError(name, f"reference embeddings lack columns {missing}")
        if not table.num_rows:
            raise InputError(name, "no reference identities to generate")
        space = table_space(table)
        ids = [str(v) for v in table["identity_id"].to_pylist()]
        if "identity_index" in table.column_names:
            index = np.asarray(table["identity_index"].to_pylist(), np.int64)
        else:
            index = np.asarray([_index_of(i, name) for i in ids], np.int64)
        if "variant" in table.column_names:
            variants = set(table["variant"].to_pylist())
            if len(variants) != 1 or (variant is not None and variants != {variant}):
                raise InputError(name, f"rows of variants {sorted(map(str, variants))}, expected {variant!r}")
            variant = variant or str(variants.pop())
        if variant is None:
            raise InputError(name, "no variant column: pass the variant name")
        if len(set(ids)) != len(ids) or len(set(index.tolist())) != len(index):
            raise InputError(name, "identity ids and indices must be unique")
        vectors = table_embeddings(table)
        norms = np.linalg.norm(vectors, axis=1)
        if not np.all(np.isfinite(norms)) or np.any(np.abs(norms - 1.0) > 1e-3):
            raise InputError(name, "reference embeddings must be unit vectors")
        order = np.argsort(index, kind="stable")
        return cls(
            variant,
            tuple(ids[i] for i in order),
            index[order],
            np.ascontiguousarray(vectors[order], np.float32),
            space,
        )

    def shards(self, shard_identities: int) -> dict[int, IdentityShard]:
        """Generation shards: identity index // ``shard_identities`` -> rows, with input fingerprints."""
        shard_of = self.identity_index // int(shard_identities)
        shards = {}
        for shard_id in np.unique(shard_of).tolist():
            rows = np.flatnonzero(shard_of == shard_id)
            shards[int(shard_id)] = IdentityShard(int(shard_id), rows, self.fingerprint(rows))
        return shards

    def fingerprint(self, rows: np.ndarray | None = None) -> str:
        """sha256 over the variant, the ids, indices and exact embedding bytes of ``rows`` (default all)."""
        rows = np.arange(len(self)) if rows is None else rows
        digest = hashlib.sha256(np.ascontiguousarray(self.embeddings[rows]).tobytes()).hexdigest()
        parts = [
            self.variant,
            *(self.identity_ids[r] for r in rows.tolist()),
            self.identity_index[rows].tobytes().hex(),
        ]
        return combine_hashes([*parts, digest])


def _index_of(identity_id: str, name: str) -> int:
    match = _ID_INDEX.search(identity_id)
    if not match:
        raise InputError(name, f"identity id {identity_id!r} ends in no index and there is no identity_index")
    return int(match.group(1))
