"""Leakage audit: every generated embedding against one or more real embedding sets, exactly.

Per real set (the gallery, CelebA-HQ, LAION-Face parts: any table with ``embedding`` and the embedder's
provenance), :func:`facelake.curation.pair_search.cross_pairs` finds the top-K most similar generated × real
pairs of the whole product (the paper removes the top 200 per real set) and every pair with cosine at or above
a threshold. All sets and the generated embeddings must share one embedding space, or the audit is refused
naming both spaces.

:data:`PAIRS_SCHEMA`: one row per pair found (``generated_key``, ``identity_id``, ``real_set``, ``real_key``,
``cosine``, ``rank`` within its set, 1 = most similar, ``top_k``, ``above_threshold``). A generated image in
any pair *leaks* and is left out of the dataset. The worst pairs are drawn generated beside real
(:func:`leakage_sheet`) when the real images' bytes are at hand.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from facelake.clip.sheet import contact_sheet
from facelake.curation.aligned import aligned_index, source_warning
from facelake.curation.audit import audit_embeddings, combined_warning, read_aligned_crops, table_fingerprint
from facelake.curation.outputs import (
    committed_bytes,
    outcome_metadata,
    provenance_extra,
    write_file,
    write_table,
)
from facelake.curation.pair_search import cross_pairs
from facelake.faces.identity import check_same_space, space_label, table_embeddings, table_space
from facelake.lake.commit import Attempt, CommitOutcome, PartitionArtifact, Written, materialize_partition
from facelake.lake.errors import InputError
from facelake.lake.progress import Progress

PAIRS_FILE = "pairs.parquet"
SHEET_FILE = "worst_pairs.png"
KEY_COLUMNS = ("key", "image_path", "file_name", "sample_id")
"""Where a real set's row key is read from, first present wins (else the row number)."""
PAIRS_SCHEMA = pa.schema(
    [
        ("generated_key", pa.string()),
        ("identity_id", pa.string()),
        ("real_set", pa.string()),
        ("real_key", pa.string()),
        ("cosine", pa.float64()),
        ("rank", pa.int64()),
        ("top_k", pa.bool_()),
        ("above_threshold", pa.bool_()),
    ]
)
ImageSource = Mapping[str, Any] | Callable[[Sequence[str]], Mapping[str, Any]]
"""Real images by key: a mapping, or a function of the wanted keys returning one (bytes or RGB arrays)."""


@dataclass(eq=False)
class EmbeddingSet:
    """A named real embedding set: ``embedding`` + provenance columns, a key column, optionally its images."""

    name: str
    table: pa.Table
    key_column: str | None = None
    images: ImageSource | None = None

    def keys(self) -> list[str]:
        """Each row's key as a string (``key_column``, else the first of :data:`KEY_COLUMNS`, else the row)."""
        column = self.key_column or next((c for c in KEY_COLUMNS if c in self.table.column_names), None)
        if column is None:
            return [str(i) for i in range(self.table.num_rows)]
        if column not in self.table.column_names:
            raise InputError(self.name, f"no key column {column!r} (columns: {self.table.column_names})")
        return [str(value) for value in self.table.column(column).to_pylist()]

    def image_bytes(self, keys: Sequence[str]) -> dict[str, Any]:
        """The images of ``keys`` that are available."""
        if self.images is None:
            return {}
        found = self.images(list(keys)) if callable(self.images) else self.images
        return {key: found[key] for key in keys if key in found}


@dataclass(eq=False)
class Leakage:
    """The pairs found (:data:`PAIRS_SCHEMA`, best first within each set) and the summary."""

    pairs: pa.Table
    summary: dict[str, Any]

    def leaking_keys(self) -> set[str]:
        return leaking_keys(self.pairs)


def leaking_keys(pairs: pa.Table) -> set[str]:
    """The generated images in any leakage pair."""
    return set(pairs["generated_key"].to_pylist()) if pairs.num_rows else set()


def check_one_space(generated: pa.Table, real_sets: Sequence[EmbeddingSet]) -> dict[str, Any]:
    """The one embedding space of the generated embeddings and every real set (``{}`` when all are empty);
    raises :class:`~facelake.faces.identity.EmbeddingSpaceMismatchError` naming both spaces otherwise."""
    names = [s.name for s in real_sets]
    if len(set(names)) != len(names):
        raise ValueError(f"real set names must be unique, got {names}")
    spaces = [table_space(table) for table in (generated, *(s.table for s in real_sets)) if table.num_rows]
    return check_same_space(spaces) if spaces else {}


def find_leaks(
    generated: pa.Table,
    real_sets: Sequence[EmbeddingSet],
    *,
    top_k: int = 200,
    threshold: float | None = None,
    screen: str = "auto",
    block: int | None = None,
    device: str | None = None,
    log: Callable[[str], None] | None = None,
) -> Leakage:
    """Generated embeddings (``key``, ``identity_id``, ``embedding`` + provenance) against each real set: the
    exact top-``top_k`` pairs and every pair with cosine ``>= threshold`` per set (see the module doc)."""
    space = check_one_space(generated, real_sets)
    keys = generated["key"].to_pylist()
    identity = (
        generated["identity_id"].to_pylist()
        if "identity_id" in generated.column_names
        else [None] * len(keys)
    )
    vectors = table_embeddings(generated) if generated.num_rows else None
    tables, per_set = [PAIRS_SCHEMA.empty_table()], {}
    for real in real_sets:
        real_keys = real.keys()
        if vectors is None or not real_keys:
            per_set[real.name] = {"real_rows": len(real_keys), "pairs": 0, "top_k": 0, "above_threshold": 0}
            continue
        progress = Progress(f"leakage vs {real.name}", len(keys) * len(real_keys), log, unit="pairs")
        found = cross_pairs(
            vectors,
            table_embeddings(real.table),
            top_k=top_k,
            threshold=threshold,
            screen=screen,
            block=block,
            device=device,
            progress=progress,
        )
        progress.finish()
        tables.append(
            pa.table(
                {
                    "generated_key": pa.array([keys[i] for i in found.rows], pa.string()),
                    "identity_id": pa.array([identity[i] for i in found.rows], pa.string()),
                    "real_set": pa.array([real.name] * len(found), pa.string()),
                    "real_key": pa.array([real_keys[j] for j in found.cols], pa.string()),
                    "cosine": pa.array(found.cosine, pa.float64()),
                    "rank": pa.array(np.arange(1, len(found) + 1), pa.int64()),
                    "top_k": pa.array(found.top),
                    "above_threshold": pa.array(found.above),
                },
                schema=PAIRS_SCHEMA,
            )
        )
        per_set[real.name] = {
            "real_rows": len(real_keys),
            "pairs": len(found),
            "top_k": int(found.top.sum()),
            "above_threshold": int(found.above.sum()),
            "max_cosine": round(float(found.cosine[0]), 6) if len(found) else None,
            "leaking_images": len(set(found.rows.tolist())),
            "search": found.stats,
        }
    pairs = pa.concat_tables(tables)
    summary = {
        "generated_images": len(keys),
        "real_sets": per_set,
        "top_k": top_k,
        "threshold": threshold,
        "pairs": pairs.num_rows,
        "leaking_images": len(leaking_keys(pairs)),
        "embedder": space_label(space) if space else None,
        "random_init": bool(space.get("embedder_random_init")),
    }
    return Leakage(pairs, summary)


def worst_pairs(pairs: pa.Table, count: int) -> pa.Table:
    """The ``count`` most similar pairs over all sets (ties: set, then rank)."""
    ordered = pairs.sort_by([("cosine", "descending"), ("real_set", "ascending"), ("rank", "ascending")])
    return ordered.slice(0, max(count, 0))


def leakage_sheet(
    pairs: pa.Table,
    generated_images: Mapping[str, Any],
    real_sets: Sequence[EmbeddingSet],
    *,
    count: int = 16,
    title: str = "",
    warning: str | None = None,
) -> bytes:
    """PNG: the ``count`` worst pairs, each generated image beside its real one (grey when the real image's
    bytes are not available), labelled with set, rank and cosine."""
    chosen = worst_pairs(pairs, count)
    by_name = {s.name: s for s in real_sets}
    wanted: dict[str, list[str]] = {}
    for name, key in zip(chosen["real_set"].to_pylist(), chosen["real_key"].to_pylist(), strict=True):
        wanted.setdefault(name, []).append(key)
    real = {name: by_name[name].image_bytes(keys) for name, keys in wanted.items()}
    images, labels = [], []
    for row in chosen.to_pylist():
        images += [generated_images.get(row["generated_key"]), real[row["real_set"]].get(row["real_key"])]
        labels += [
            f"#{row['rank']} {row['cosine']:.3f} {row['generated_key']}",
            f"{row['real_set']}: {row['real_key']}",
        ]
    return contact_sheet(
        images, labels, columns=4, thumb=128, title=title or "worst leakage pairs", warning=warning
    )


# --- the committed leakage audit -----------------------------------------------------------------------


@dataclass(frozen=True)
class LeakageOptions:
    """Top-K pairs per real set (the paper: 200), the threshold (None: off), and pairs on the sheet."""

    top_k: int = 200
    threshold: float | None = None
    sheet_pairs: int = 16
    screen: str = "auto"

    def config(self) -> dict[str, Any]:
        return {"top_k": self.top_k, "threshold": self.threshold, "sheet_pairs": self.sheet_pairs}


@dataclass
class LeakageResult:
    """The commit's outcome, the leakage (None when the partition was reused) and the sheet."""

    outcome: CommitOutcome
    leakage: Leakage | None
    sheet: bytes | None = None
    warnings: list[str] = field(default_factory=list)

    def metadata(self) -> dict[str, Any]:
        """The summary, reuse and the random-weights warning, for the asset."""
        return outcome_metadata(self.outcome, self.outcome.manifest.extra.get("summary", {}))


def commit_leakage(
    artifact: PartitionArtifact,
    audit_artifact: PartitionArtifact,
    aligned_artifact: PartitionArtifact,
    real_sets: Sequence[EmbeddingSet],
    options: LeakageOptions = LeakageOptions(),
    *,
    code_version: str,
    owner: str,
    run_config: Mapping[str, Any] | None = None,
    force: bool = False,
    lease_ttl_s: float = 900.0,
    device: str | None = None,
    log: Callable[[str], None] | None = None,
) -> LeakageResult:
    """Search the audit's image embeddings against ``real_sets`` and commit ``pairs.parquet`` and
    ``worst_pairs.png`` manifest-last; ``extra["summary"]`` holds :attr:`Leakage.summary`. Refuses real sets
    in another space than the generated embeddings before searching."""
    generated = audit_embeddings(audit_artifact)
    space = check_one_space(generated, real_sets)
    upstream_random, upstream_warning = source_warning(audit_artifact)
    real_random = [s.name for s in real_sets if table_space(s.table).get("embedder_random_init")]
    warning = combined_warning(
        upstream_warning,
        f"RANDOM TEST WEIGHTS: real sets {real_random} were embedded by a random model"
        if real_random
        else None,
    )
    config = {
        **options.config(),
        "audit": audit_artifact.require_manifest().content_hash,
        "real_sets": {s.name: table_fingerprint(s.table) for s in real_sets},
        **dict(run_config or {}),
    }
    found: dict[str, Any] = {}

    def write(attempt: Attempt) -> Written:
        leakage = find_leaks(
            generated,
            real_sets,
            top_k=options.top_k,
            threshold=options.threshold,
            screen=options.screen,
            device=device,
            log=log,
        )
        chosen = worst_pairs(leakage.pairs, options.sheet_pairs)["generated_key"].to_pylist()
        index = aligned_index(aligned_artifact.storage, aligned_artifact)
        crops = read_aligned_crops(aligned_artifact, index, chosen)
        title = f"leakage {artifact.partition}: worst pairs (generated | real), {leakage.summary['embedder'] or ''}"
        sheet = leakage_sheet(
            leakage.pairs, crops, real_sets, count=options.sheet_pairs, title=title, warning=warning
        )
        files = [write_table(attempt, PAIRS_FILE, leakage.pairs), write_file(attempt, SHEET_FILE, sheet)]
        found.update(leakage=leakage, sheet=sheet)
        random_init = upstream_random or bool(real_random) or bool(space.get("embedder_random_init"))
        extra = {"summary": leakage.summary, **provenance_extra(random_init, warning)}
        return Written(files, rows=leakage.pairs.num_rows, extra=extra)

    outcome = materialize_partition(
        artifact, config, code_version, owner, write, force=force, lease_ttl_s=lease_ttl_s
    )
    sheet = found.get("sheet") or committed_bytes(artifact, SHEET_FILE)
    return LeakageResult(outcome, found.get("leakage"), sheet, [warning] if warning else [])
