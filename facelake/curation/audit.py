"""Identity audit of the aligned faces: is every generated identity consistent with itself and apart from the others?

The aligned crops are embedded by an :class:`~facelake.faces.identity.IdentityEmbedder` (by default the
generator's identity space, the one the reference embeddings live in); embedder and references must share one
space (:func:`facelake.faces.identity.check_same_space`), or nothing is embedded. A crop is embedded from its
``aligned_box`` and the template landmarks, so a landmark embedder (ArcFace) and a box embedder (dlib) both see
the aligned face.

Per image: ``own_cosine`` to its identity's reference embedding; the nearest OTHER identity's reference
(``other_identity_id``, ``other_cosine``); ``inconsistent`` when ``own_cosine < consistency``.
Per identity: images, mean and min ``own_cosine``, inconsistent images, the intra-identity ``spread`` (mean
pairwise cosine distance of its images, from the sum of its unit vectors: ``1 − (‖Σx‖² − n) / (n(n − 1))``),
and the nearest other identity BY IMAGE CENTROID: the reference (other than its own) closest to the
normalised mean of its images, with that cosine, ``centroid_cosine`` (the centroid to its own reference) and
``margin = centroid_cosine − nearest_cosine`` (``separated`` when > 0). Nearest searches use the exact blocked
engine of :mod:`facelake.vectors.neighbours`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from facelake.curation.aligned import aligned_index, iter_aligned_tar, options_of, source_warning
from facelake.curation.outputs import (
    committed_bytes,
    outcome_metadata,
    provenance_extra,
    write_file,
    write_table,
)
from facelake.faces.alignment import arcface_template
from facelake.faces.identity import (
    EmbeddingSpaceMismatchError,
    IdentityEmbedder,
    check_same_space,
    embedding_table,
    space_label,
    table_embeddings,
    table_space,
)
from facelake.generation.contact_sheet import contact_sheet_png
from facelake.generation.shards import committed_tars
from facelake.lake.commit import Attempt, CommitOutcome, PartitionArtifact, Written, materialize_partition
from facelake.lake.errors import InputError
from facelake.lake.hashing import combine_hashes
from facelake.lake.plots import figure_png, new_figure
from facelake.lake.progress import Progress
from facelake.lake.shard_stage import read_stage_table, run_shard_stage
from facelake.lake.storage import Storage
from facelake.lake.tables import read_parquet
from facelake.vectors.gram import default_device, select_backend
from facelake.vectors.neighbours import cross_search, search_block, unit_rows

EMBEDDINGS_DIR = "embeddings"
IMAGES_FILE = "images.parquet"
IDENTITIES_FILE = "identities.parquet"
PLOT_FILE = "cosines.png"
SHEET_FILE = "worst_identities.png"
IMAGES_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("identity_id", pa.string()),
        ("index", pa.int32()),
        ("own_cosine", pa.float64()),
        ("other_identity_id", pa.string()),
        ("other_cosine", pa.float64()),
        ("inconsistent", pa.bool_()),
        ("closer_to_other", pa.bool_()),
    ]
)
"""``images.parquet``: one row per audited crop (see the module doc)."""
IDENTITIES_SCHEMA = pa.schema(
    [
        ("identity_id", pa.string()),
        ("images", pa.int64()),
        ("mean_cosine", pa.float64()),
        ("min_cosine", pa.float64()),
        ("inconsistent_images", pa.int64()),
        ("spread", pa.float64()),
        ("centroid_cosine", pa.float64()),
        ("nearest_identity_id", pa.string()),
        ("nearest_cosine", pa.float64()),
        ("margin", pa.float64()),
        ("separated", pa.bool_()),
    ]
)
"""``identities.parquet``: one row per audited identity (see the module doc)."""
RANDOM_EMBEDDER_WARNING = (
    "RANDOM TEST WEIGHTS: the audit's embedder is randomly initialised; cosines mean nothing"
)


@dataclass(frozen=True)
class AuditOptions:
    """The consistency threshold (cosine to the own reference; None: the embedder's own same-identity
    threshold, ``1 − same_identity_cosine_distance``), the identities on the contact sheet and the crops per
    identity there, and crops per embedder batch."""

    consistency: float | None = None
    worst_identities: int = 8
    sheet_images: int = 6
    batch_size: int = 64

    def config(self) -> dict[str, Any]:
        return {"consistency": self.consistency, "worst_identities": self.worst_identities}


@dataclass(eq=False)
class IdentityAudit:
    """Per-image and per-identity tables and the summary (see the module doc)."""

    images: pa.Table
    identities: pa.Table
    summary: dict[str, Any]


def _reference_vectors(references: pa.Table) -> tuple[list[str], np.ndarray]:
    if "identity_id" not in references.column_names:
        raise InputError("references", f"no identity_id column (columns: {references.column_names})")
    ids = references["identity_id"].to_pylist()
    if len(set(ids)) != len(ids):
        raise InputError("references", "identity_id is not unique")
    return ids, unit_rows(table_embeddings(references), "reference embeddings")


def _nearest_other(
    queries: np.ndarray, base: np.ndarray, own: np.ndarray, device: str | None
) -> tuple[np.ndarray, np.ndarray]:
    """Each query's nearest ``base`` row other than ``own[i]`` (exact): index (-1 if none), cosine (NaN)."""
    n = len(queries)
    if len(base) < 2 or n == 0:
        return np.full(n, -1, np.int64), np.full(n, np.nan)
    device = device or default_device()
    backend = select_backend("auto", base.shape[1], device)
    q, b = torch.from_numpy(queries).to(device), torch.from_numpy(base).to(device)
    exclude = torch.from_numpy(own.astype(np.int64)).to(device)
    index, value = cross_search(q, b, backend, search_block(device, None), exclude=exclude)
    return index.cpu().numpy(), value.cpu().numpy()


def audit_identities(
    embeddings: pa.Table,
    references: pa.Table,
    consistency: float | None = None,
    *,
    device: str | None = None,
) -> IdentityAudit:
    """Audit image embeddings (``key``, ``identity_id``, ``embedding`` + provenance) against one reference
    embedding per identity (``identity_id``, ``embedding`` + provenance); refuses two spaces. ``consistency``
    None: the space's own same-identity threshold."""
    space = check_same_space([table_space(t) for t in (references, embeddings) if t.num_rows])
    if consistency is None:
        consistency = 1.0 - float(space["embedder_same_identity_cosine_distance"])
    ref_ids, refs = _reference_vectors(references)
    position = {identity: row for row, identity in enumerate(ref_ids)}
    identity = embeddings["identity_id"].to_pylist()
    missing = sorted({i for i in identity if i not in position})
    if missing:
        raise InputError(
            "references", f"no reference embedding for identities {missing[:5]} ({len(missing)})"
        )
    own = np.asarray([position[i] for i in identity], np.int64)
    vectors = unit_rows(table_embeddings(embeddings), "image embeddings") if len(own) else refs[:0]
    own_cosine = np.einsum("ij,ij->i", vectors.astype(np.float64), refs[own].astype(np.float64))
    other, other_cosine = _nearest_other(vectors, refs, own, device)
    inconsistent = own_cosine < consistency
    images = pa.table(
        {
            "key": embeddings["key"],
            "identity_id": pa.array(identity, pa.string()),
            "index": embeddings["index"].cast(pa.int32())
            if "index" in embeddings.column_names
            else pa.nulls(len(own), pa.int32()),
            "own_cosine": pa.array(own_cosine, pa.float64()),
            "other_identity_id": pa.array([ref_ids[i] if i >= 0 else None for i in other], pa.string()),
            "other_cosine": pa.array(other_cosine, pa.float64()),
            "inconsistent": pa.array(inconsistent),
            "closer_to_other": pa.array(np.nan_to_num(other_cosine, nan=-2.0) > own_cosine),
        },
        schema=IMAGES_SCHEMA,
    )
    identities = _identity_table(vectors, own, own_cosine, inconsistent, refs, ref_ids, device)
    summary = _summary(images, identities, consistency, space)
    return IdentityAudit(images, identities, summary)


def _identity_table(
    vectors: np.ndarray,
    own: np.ndarray,
    own_cosine: np.ndarray,
    inconsistent: np.ndarray,
    refs: np.ndarray,
    ref_ids: Sequence[str],
    device: str | None,
) -> pa.Table:
    present = np.unique(own)
    slot = np.searchsorted(present, own)
    count = np.bincount(slot, minlength=len(present)).astype(np.int64)
    sums = np.zeros((len(present), refs.shape[1]), np.float64)
    np.add.at(sums, slot, vectors.astype(np.float64))
    squared = np.einsum("ij,ij->i", sums, sums)
    pairs = count * (count - 1)
    spread = np.where(pairs > 0, 1.0 - (squared - count) / np.maximum(pairs, 1), np.nan)
    norms = np.sqrt(squared)
    centroids = (sums / np.where(norms > 0, norms, 1.0)[:, None]).astype(np.float32)
    centroid_cosine = np.einsum("ij,ij->i", centroids.astype(np.float64), refs[present].astype(np.float64))
    nearest, nearest_cosine = _nearest_other(centroids, refs, present, device)
    minimum = np.full(len(present), np.inf)
    np.minimum.at(minimum, slot, own_cosine)
    margin = centroid_cosine - nearest_cosine
    return pa.table(
        {
            "identity_id": pa.array([ref_ids[i] for i in present], pa.string()),
            "images": pa.array(count),
            "mean_cosine": pa.array(np.bincount(slot, own_cosine, len(present)) / np.maximum(count, 1)),
            "min_cosine": pa.array(minimum, pa.float64()),
            "inconsistent_images": pa.array(np.bincount(slot, inconsistent, len(present)).astype(np.int64)),
            "spread": pa.array(spread, pa.float64()),
            "centroid_cosine": pa.array(centroid_cosine),
            "nearest_identity_id": pa.array([ref_ids[i] if i >= 0 else None for i in nearest], pa.string()),
            "nearest_cosine": pa.array(nearest_cosine, pa.float64()),
            "margin": pa.array(margin, pa.float64()),
            "separated": pa.array(np.nan_to_num(margin, nan=1.0) > 0),
        },
        schema=IDENTITIES_SCHEMA,
    )


def _summary(
    images: pa.Table, identities: pa.Table, consistency: float, space: Mapping[str, Any]
) -> dict[str, Any]:
    own = images["own_cosine"].to_numpy() if images.num_rows else np.zeros(0)

    def stat(function: Callable[[np.ndarray], Any]) -> float | None:
        return round(float(function(own)), 6) if len(own) else None

    return {
        "images": images.num_rows,
        "identities": identities.num_rows,
        "consistency": consistency,
        "inconsistent_images": int(pc.sum(images["inconsistent"]).as_py() or 0),
        "identities_with_inconsistent_images": int(
            pc.sum(pc.greater(identities["inconsistent_images"], 0)).as_py() or 0
        ),
        "images_closer_to_other_identity": int(pc.sum(images["closer_to_other"]).as_py() or 0),
        "identities_not_separated": int(pc.sum(pc.invert(identities["separated"])).as_py() or 0),
        "identities_below_consistency": int(
            pc.sum(pc.less(identities["mean_cosine"], consistency)).as_py() or 0
        ),
        "own_cosine_mean": stat(np.mean),
        "own_cosine_median": stat(np.median),
        "own_cosine_min": stat(np.min),
        "embedder": space_label(space),
        "random_init": bool(space.get("embedder_random_init")),
    }


def cosine_plot(audit: IdentityAudit, *, title: str = "", warning: str | None = None) -> bytes:
    """PNG: the distribution of each image's cosine to its own reference and to the nearest other one, with the
    consistency threshold, and each identity's spread."""
    figure = new_figure(9.0, 3.8)
    left, right = figure.subplots(1, 2)
    own = audit.images["own_cosine"].to_numpy() if audit.images.num_rows else np.zeros(0)
    other = (
        audit.images["other_cosine"].to_numpy(zero_copy_only=False) if audit.images.num_rows else np.zeros(0)
    )
    bins = np.linspace(-1.0, 1.0, 81)
    left.hist(own, bins=bins, alpha=0.7, label="own reference")
    left.hist(other[np.isfinite(other)], bins=bins, alpha=0.7, label="nearest other reference")
    left.axvline(audit.summary["consistency"], color="red", linestyle="--", label="consistency")
    left.set_xlabel("cosine of an image to a reference")
    left.set_ylabel("images")
    left.legend(fontsize=7)
    spread = (
        audit.identities["spread"].to_numpy(zero_copy_only=False)
        if audit.identities.num_rows
        else np.zeros(0)
    )
    right.hist(spread[np.isfinite(spread)], bins=40, color="grey")
    right.set_xlabel("intra-identity spread (mean pairwise cosine distance)")
    right.set_ylabel("identities")
    heading = " — ".join(part for part in (title, warning) if part)
    if heading:
        figure.suptitle(heading, fontsize=8, color="red" if warning else "black")
    return figure_png(figure)


def inconsistent_keys(images: pa.Table) -> set[str]:
    """The keys of an audit's images below the consistency threshold (its ``images.parquet``)."""
    return set(images.filter(images["inconsistent"])["key"].to_pylist()) if images.num_rows else set()


def worst_identities(audit: IdentityAudit, count: int) -> list[str]:
    """The ``count`` identities with the lowest mean cosine to their own reference (ties: smaller id)."""
    if count <= 0 or not audit.identities.num_rows:
        return []
    table = audit.identities.sort_by([("mean_cosine", "ascending"), ("identity_id", "ascending")])
    return table["identity_id"].to_pylist()[:count]


# --- the committed audit ------------------------------------------------------------------------------


def embed_aligned_shard(
    storage: Storage,
    shard_id: int,
    tar_uri: str,
    boxes: Mapping[str, np.ndarray],
    embedder: IdentityEmbedder,
    size: int,
    batch_size: int = 64,
    progress: Progress | None = None,
) -> pa.Table:
    """Embeddings of one aligned shard's crops: key, identity_id, index, shard, embedding, provenance."""
    template = arcface_template(size).astype(np.float32)
    tables = [
        embedding_table(
            np.zeros((0, embedder.profile.dimension), np.float32), embedder.profile, _ids([], [], [], [])
        )
    ]
    for batch in iter_aligned_tar(storage, shard_id, tar_uri, batch_size):
        box = np.stack([boxes[key] for key in batch.keys])
        vectors = embedder.embed(batch.crops, box, np.repeat(template[None], len(batch.keys), axis=0))
        identity = [record.get("identity_id") for record in batch.records]
        index = [record.get("index") for record in batch.records]
        tables.append(
            embedding_table(
                vectors, embedder.profile, _ids(batch.keys, identity, index, [shard_id] * len(index))
            )
        )
        if progress is not None:
            progress.advance(len(batch.keys))
    return pa.concat_tables(tables)


def _ids(keys: list[str], identity: list[Any], index: list[Any], shard: list[int]) -> dict[str, pa.Array]:
    return {
        "key": pa.array(keys, pa.string()),
        "identity_id": pa.array(identity, pa.string()),
        "index": pa.array(index, pa.int32()),
        "shard": pa.array(shard, pa.int64()),
    }


@dataclass
class AuditResult:
    """The commit's outcome, the audit (None when the partition was reused), and the two PNGs."""

    outcome: CommitOutcome
    audit: IdentityAudit | None
    plot: bytes | None = None
    sheet: bytes | None = None
    warnings: list[str] = field(default_factory=list)

    def metadata(self) -> dict[str, Any]:
        """The summary, reuse and the random-weights warning, for the asset."""
        return outcome_metadata(self.outcome, self.outcome.manifest.extra.get("summary", {}))

    def passed(self) -> bool:
        """The check: at least one image audited, and every identity consistent: its images' mean cosine to
        its reference at or above the consistency threshold (single inconsistent images are counted in the
        summary and left out of the dataset; they do not fail the check)."""
        summary = self.outcome.manifest.extra.get("summary", {})
        return bool(summary.get("images")) and summary.get("identities_below_consistency", 1) == 0


def check_embedder_space(embedder: IdentityEmbedder, references: pa.Table) -> dict[str, Any]:
    """The one space of the embedder and the reference embeddings; raises
    :class:`~facelake.faces.identity.EmbeddingSpaceMismatchError` naming both otherwise."""
    try:
        return check_same_space([table_space(references), embedder.profile])
    except EmbeddingSpaceMismatchError as error:
        raise EmbeddingSpaceMismatchError(
            f"the identity audit's embedder must embed in the references' space (the generator's identity "
            f"space): {error}"
        ) from None


def combined_warning(*parts: str | None) -> str | None:
    """The distinct non-empty warnings joined, or None."""
    seen = list(dict.fromkeys(part for part in parts if part))
    return "; ".join(seen) or None


def commit_identity_audit(
    artifact: PartitionArtifact,
    aligned_artifact: PartitionArtifact,
    embedder: IdentityEmbedder,
    references: pa.Table,
    options: AuditOptions = AuditOptions(),
    *,
    code_version: str,
    owner: str,
    run_config: Mapping[str, Any] | None = None,
    force: bool = False,
    lease_ttl_s: float = 900.0,
    device: str | None = None,
    log: Callable[[str], None] | None = None,
) -> AuditResult:
    """Embed every aligned crop (``embeddings/NNNNN.parquet``, committed shard by shard, resumable), audit them
    against ``references`` and commit ``images.parquet``, ``identities.parquet``, ``cosines.png`` and
    ``worst_identities.png`` manifest-last; ``extra["summary"]`` holds :attr:`IdentityAudit.summary`.
    Refuses an embedder outside the references' space before anything is embedded."""
    space = check_embedder_space(embedder, references)
    storage = artifact.storage
    aligned_manifest = aligned_artifact.require_manifest()
    size = options_of(aligned_manifest.extra).size
    index = aligned_index(aligned_artifact.storage, aligned_artifact)
    boxes = dict(zip(index["key"].to_pylist(), _boxes(index), strict=True))
    tars = committed_tars(aligned_artifact)
    per_shard = {shard: int(pc.sum(pc.equal(index["shard"], shard)).as_py() or 0) for shard in tars}
    upstream_random, upstream_warning = source_warning(aligned_artifact)
    warning = combined_warning(
        upstream_warning, RANDOM_EMBEDDER_WARNING if space.get("embedder_random_init") else None
    )
    random_init = upstream_random or bool(space.get("embedder_random_init"))
    stage_config = {"embedder": embedder.profile.provenance(), "size": size}
    config = {
        **stage_config,
        **options.config(),
        "aligned": aligned_manifest.content_hash,
        "references": table_fingerprint(references),
        **dict(run_config or {}),
    }
    progress = Progress(
        f"identity audit {artifact.artifact}[{artifact.partition}]", len(index), log, unit="images"
    )
    found: dict[str, Any] = {}
    sha = {entry.path: entry.sha256 or "" for entry in aligned_manifest.files}

    def process(shard_id: int) -> pa.Table:
        return embed_aligned_shard(
            aligned_artifact.storage,
            shard_id,
            tars[shard_id],
            boxes,
            embedder,
            size,
            options.batch_size,
            progress,
        )

    def write(attempt: Attempt) -> Written:
        result = run_shard_stage(
            attempt,
            sorted(tars),
            process,
            EMBEDDINGS_DIR,
            config=stage_config,
            fingerprint=lambda i: sha.get(
                aligned_artifact.storage.relative(tars[i], aligned_artifact.prefix), ""
            ),
            log=log,
            on_reused=lambda i: progress.advance(per_shard[i]),
        )
        embeddings = _read_shards(
            storage, artifact, [f.path for f in result.files if f.path.endswith(".parquet")]
        )
        audit = audit_identities(embeddings, references, options.consistency, device=device)
        title = f"identity audit {artifact.partition}: {audit.summary['embedder']}"
        plot = cosine_plot(audit, title=title, warning=warning)
        sheet = identity_sheet(aligned_artifact, index, audit, options, warning=warning)
        files = list(result.files)
        files += [
            write_table(attempt, IMAGES_FILE, audit.images),
            write_table(attempt, IDENTITIES_FILE, audit.identities),
        ]
        files += [write_file(attempt, PLOT_FILE, plot), write_file(attempt, SHEET_FILE, sheet)]
        found.update(audit=audit, plot=plot, sheet=sheet)
        extra = {**result.stats(), "summary": audit.summary, **provenance_extra(random_init, warning)}
        return Written(files, rows=audit.images.num_rows, extra=extra)

    outcome = materialize_partition(
        artifact,
        config,
        code_version,
        owner,
        write,
        force=force,
        lease_ttl_s=lease_ttl_s,
        keep=(f"{EMBEDDINGS_DIR}/",),
    )
    if not outcome.reused:
        progress.finish()
    plot = found.get("plot") or committed_bytes(artifact, PLOT_FILE)
    sheet = found.get("sheet") or committed_bytes(artifact, SHEET_FILE)
    return AuditResult(outcome, found.get("audit"), plot, sheet, [warning] if warning else [])


def _boxes(index: pa.Table) -> list[np.ndarray]:
    if not index.num_rows:
        return []
    flat = index["aligned_box"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return list(flat.reshape(-1, 4).astype(np.float64))


def _read_shards(storage: Storage, artifact: PartitionArtifact, paths: list[str]) -> pa.Table:
    tables = [read_parquet(storage, artifact.uri(path)) for path in sorted(paths)]
    return pa.concat_tables(tables) if tables else pa.table({})


def table_fingerprint(table: pa.Table) -> str:
    """A content hash of a (small) table's column names and values (independent of its parquet encoding)."""
    return combine_hashes([*table.column_names, *(str(column.to_pylist()) for column in table.columns)])


def audit_embeddings(artifact: PartitionArtifact) -> pa.Table:
    """The committed audit's image embeddings (``key``, ``identity_id``, ``index``, ``shard``, ``embedding``,
    provenance): the generated side of the leakage search."""
    return read_stage_table(artifact.storage, artifact, EMBEDDINGS_DIR)


def identity_sheet(
    aligned_artifact: PartitionArtifact,
    index: pa.Table,
    audit: IdentityAudit,
    options: AuditOptions,
    *,
    warning: str | None = None,
) -> bytes:
    """PNG contact sheet of the worst identities (lowest mean cosine to the own reference): one row each, the
    identity's lowest-cosine crops first, labelled with its mean cosine."""
    chosen = worst_identities(audit, options.worst_identities)
    images = audit.images.filter(pc.is_in(audit.images["identity_id"], pa.array(chosen, pa.string())))
    images = images.sort_by([("own_cosine", "ascending")])
    wanted: dict[str, list[str]] = {identity: [] for identity in chosen}
    for key, identity in zip(images["key"].to_pylist(), images["identity_id"].to_pylist(), strict=True):
        if len(wanted[identity]) < options.sheet_images:
            wanted[identity].append(key)
    crops = read_aligned_crops(aligned_artifact, index, [k for keys in wanted.values() for k in keys])
    mean = dict(
        zip(
            audit.identities["identity_id"].to_pylist(),
            audit.identities["mean_cosine"].to_pylist(),
            strict=True,
        )
    )
    rows = [
        (f"{identity[-12:]} {mean[identity]:.2f}", [crops[k] for k in keys if k in crops])
        for identity, keys in wanted.items()
    ]
    title = (
        f"worst identities by mean cosine to their reference (consistency {audit.summary['consistency']:.3f})"
    )
    return contact_sheet_png(rows, title=title, warning=warning)


def read_aligned_crops(
    aligned_artifact: PartitionArtifact, index: pa.Table, keys: Sequence[str]
) -> dict[str, np.ndarray]:
    """Key -> RGB crop of the given aligned images, reading only the shards that hold them."""
    wanted = set(keys)
    if not wanted:
        return {}
    shard_of = dict(zip(index["key"].to_pylist(), index["shard"].to_pylist(), strict=True))
    tars = committed_tars(aligned_artifact)
    out: dict[str, np.ndarray] = {}
    for shard in sorted({shard_of[k] for k in wanted if k in shard_of}):
        for batch in iter_aligned_tar(aligned_artifact.storage, shard, tars[shard]):
            out.update({k: c for k, c in zip(batch.keys, batch.crops, strict=True) if k in wanted})
    return out
