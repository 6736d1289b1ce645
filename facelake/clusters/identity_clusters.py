"""Identity clusters of any face-embedding table: read, choose eps, DBSCAN, NN analysis, centroids, check.

The recipe of the celebahq_512_id_clusters card (seed 003), for any committed embedding artifact whose rows
carry the embedder's provenance (:func:`facelake.faces.identity.embedding_table`):

1. every committed ``.parquet`` of the artifact with an ``embedding`` column is read; each file must hold one
   embedding space and all files the same one (a mix is refused, naming the file);
2. each point's nearest other point (:func:`facelake.vectors.neighbours.nearest_neighbours`) gives the NN cosine
   histogram, its modes and valley (:mod:`facelake.clusters.nn_similarity`);
3. eps comes from the embedder's profile (``embedder_same_identity_cosine_distance`` in the table's
   provenance: ArcFace 0.35, dlib 0.092), from the valley (``1 − valley``) or is fixed; the choice and its
   source are recorded;
4. :func:`facelake.clusters.dbscan.dbscan_cosine` (scikit-learn's labels exactly); noise points become singleton
   identities; L2-normalised centroids per identity; each member's cosine to its centroid.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from facelake.clusters.dbscan import DbscanResult, dbscan_cosine, identity_centroids
from facelake.clusters.nn_similarity import ValleyAnalysis, analyse_nn_cosines
from facelake.faces.identity import (
    PROVENANCE_COLUMNS,
    EmbedderProfile,
    EmbeddingSpaceMismatchError,
    check_same_space,
    embedding_table,
    table_embeddings,
    table_space,
)
from facelake.lake.commit import PartitionArtifact
from facelake.lake.errors import InputError
from facelake.lake.progress import Report
from facelake.lake.storage import Storage
from facelake.vectors.neighbours import Neighbours, nearest_neighbours, unit_rows
from facelake.vectors.spaces import embedding_schema

EpsSource = Literal["profile", "valley", "fixed"]
EPS_SOURCES = ("profile", "valley", "fixed")
EMBEDDING_COLUMN = "embedding"
LABEL_COLUMNS = ("cluster_id", "cluster_size")
ASSIGNMENTS_FILE = "assignments.parquet"
CENTROIDS_FILE = "centroids.parquet"
PLOT_FILE = "nn_similarity.png"
ASSIGNMENT_FIELDS = [
    ("cluster_id", pa.int64()),
    ("cluster_size", pa.int64()),
    ("dbscan_label", pa.int64()),
    ("core", pa.bool_()),
    ("nn_index", pa.int64()),
    ("nn_cosine", pa.float32()),
    ("centroid_cosine", pa.float32()),
]
"""The columns :func:`assignments_table` appends to the input's id columns, with their Arrow types."""
CENTROID_FIELDS = [("cluster_id", pa.int64()), ("cluster_size", pa.int64()), ("dbscan_cluster", pa.bool_())]
"""The id columns of :func:`centroids_table` (then the centroid as ``embedding`` and the provenance)."""
CENTROIDS_SCHEMA = embedding_schema(CENTROID_FIELDS)


def assignments_schema(id_fields: list[tuple[str, pa.DataType]]) -> pa.Schema:
    """The schema of ``assignments.parquet`` for an input whose id columns are ``id_fields``."""
    return pa.schema([*id_fields, *ASSIGNMENT_FIELDS])


# --- reading embeddings -------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class EmbeddingInput:
    """The rows of an embedding artifact: id columns, unit vectors, the one space, and the files read."""

    ids: pa.Table  # every column but the embedding and the provenance columns
    vectors: np.ndarray  # float32 [N, d]
    space: dict[str, Any]
    files: list[str]


def _file_space(uri: str, table: pa.Table) -> dict[str, Any]:
    missing = [c for c in PROVENANCE_COLUMNS if c not in table.column_names]
    if missing:
        raise InputError(
            uri,
            f"missing column(s) {missing}: embeddings without their embedder's provenance cannot be clustered "
            "(write them with facelake.faces.identity.embedding_table)",
        )
    kind = table.schema.field(EMBEDDING_COLUMN).type
    if not (pa.types.is_fixed_size_list(kind) and pa.types.is_floating(kind.value_type)):
        raise InputError(uri, f"column 'embedding' must be a fixed-size list of floats, got {kind}")
    try:
        return table_space(table)
    except EmbeddingSpaceMismatchError as error:
        raise InputError(uri, f"columns embedder_name/embedder_weights_sha256: {error}") from error


def read_embeddings(storage: Storage, artifact: PartitionArtifact) -> EmbeddingInput:
    """Every committed parquet of ``artifact`` that has an ``embedding`` column, checked to share one space."""
    manifest = artifact.require_manifest()
    tables, spaces, files = [], [], []
    for uri in artifact.file_uris(manifest, suffix=".parquet"):
        try:
            with storage.open(uri, "rb") as handle:
                if EMBEDDING_COLUMN not in pq.read_schema(handle).names:
                    continue
            with storage.open(uri, "rb") as handle:
                table = pq.read_table(handle)
        except (pa.ArrowInvalid, OSError) as error:
            raise InputError(uri, f"unreadable embedding parquet: {error}") from error
        space = _file_space(uri, table)
        if spaces:
            try:
                check_same_space([spaces[0], space])
            except EmbeddingSpaceMismatchError as error:
                raise InputError(
                    uri, f"columns embedder_*: its embedding space differs from that of {files[0]}: {error}"
                ) from error
        tables.append(table)
        spaces.append(space)
        files.append(uri)
    if not tables:
        raise InputError(artifact.prefix, "no committed parquet file with an 'embedding' column")
    table = pa.concat_tables(tables, promote_options="default")
    vectors = (
        table_embeddings(table)
        if table.num_rows
        else np.zeros((0, int(spaces[0]["embedder_dimension"])), np.float32)
    )
    ids = table.drop_columns([EMBEDDING_COLUMN, *PROVENANCE_COLUMNS])
    clash = [c for c in ids.column_names if c in LABEL_COLUMNS]
    if clash:
        ids = ids.drop_columns(clash)
    return EmbeddingInput(ids, vectors, spaces[0], files)


# --- eps ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EpsChoice:
    """The eps used, the source asked for, the source actually used, and why."""

    eps: float
    requested: str
    used: str
    detail: str

    def metadata(self) -> dict[str, Any]:
        return {
            "eps": self.eps,
            "eps_source": self.requested,
            "eps_used_source": self.used,
            "eps_detail": self.detail,
        }


def choose_eps(
    eps_source: str, space: dict[str, Any], analysis: ValleyAnalysis | None, fixed_eps: float | None = None
) -> EpsChoice:
    """eps from the embedder's profile, the NN valley (falls back to the profile, saying so, when the NN
    cosines show no valley), or ``fixed_eps``."""
    if eps_source not in EPS_SOURCES:
        raise ValueError(f"unknown eps source {eps_source!r}: expected one of {EPS_SOURCES}")
    profile_eps = float(space["embedder_same_identity_cosine_distance"])
    from_profile = f"{space['embedder_name']}'s same-identity cosine distance (embedder profile)"
    if eps_source == "fixed":
        if fixed_eps is None:
            raise ValueError("eps_source 'fixed' needs an eps")
        return EpsChoice(float(fixed_eps), "fixed", "fixed", "fixed in the settings")
    if eps_source == "valley":
        if analysis is not None and analysis.suggested_eps is not None:
            low, high = analysis.modes
            detail = (
                f"1 - valley {analysis.valley:.3f} of the NN cosine density (modes {low:.3f}, {high:.3f})"
            )
            return EpsChoice(float(analysis.suggested_eps), "valley", "valley", detail)
        return EpsChoice(
            profile_eps, "valley", "profile", "the NN cosines show no valley; fell back to " + from_profile
        )
    return EpsChoice(profile_eps, "profile", "profile", from_profile)


# --- clustering -----------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class IdentityClusters:
    """DBSCAN identities of N embeddings, their centroids, and the analysis that chose eps."""

    dbscan: DbscanResult
    identity: np.ndarray  # int64 [N]: cluster ids, noise as singletons numbered after the clusters
    cluster_size: np.ndarray  # int64 [N]
    centroids: np.ndarray  # float32 [K, d]
    centroid_cosine: np.ndarray  # float32 [N]: each point's cosine to its identity's centroid
    neighbours: Neighbours | None
    analysis: ValleyAnalysis
    eps: EpsChoice
    seconds: dict[str, float]

    @property
    def identities(self) -> int:
        return len(self.centroids)

    def summary(self) -> dict[str, Any]:
        """Counts for metadata: identities, DBSCAN clusters, singletons, size distribution, largest."""
        sizes = np.bincount(self.identity) if len(self.identity) else np.zeros(0, np.int64)
        return {
            "images": len(self.identity),
            "identities": self.identities,
            "dbscan_clusters": self.dbscan.n_clusters,
            "singletons": int((sizes == 1).sum()),
            "core_points": int(self.dbscan.core.sum()),
            "largest_identity": int(sizes.max()) if len(sizes) else 0,
            "identity_size_distribution": size_distribution(sizes),
        }


def size_distribution(sizes: np.ndarray) -> dict[str, int]:
    """Identities per size: exact sizes 1–8, then power-of-two ranges (``9-16``, ``17-32``, …)."""
    out: dict[str, int] = {}
    for size in range(1, 9):
        count = int((sizes == size).sum())
        if count:
            out[str(size)] = count
    low = 9
    while len(sizes) and low <= sizes.max():
        high = 2 * (low - 1)
        count = int(((sizes >= low) & (sizes <= high)).sum())
        if count:
            out[f"{low}-{high}"] = count
        low = high + 1
    return out


def centroid_cosines(
    unit: np.ndarray, identity: np.ndarray, centroids: np.ndarray, chunk: int = 65536
) -> np.ndarray:
    """float32 ``[N]``: each unit row's cosine to its identity's centroid (float64 sums)."""
    out = np.empty(len(unit), np.float32)
    for start in range(0, len(unit), chunk):
        rows = unit[start : start + chunk].astype(np.float64)
        mine = centroids[identity[start : start + chunk]].astype(np.float64)
        out[start : start + chunk] = np.einsum("ij,ij->i", rows, mine)
    return out


def cluster_identities(
    vectors: np.ndarray,
    space: dict[str, Any],
    *,
    eps_source: str = "profile",
    eps: float | None = None,
    min_samples: int = 2,
    screen: str = "auto",
    block: int | None = None,
    device: str | None = None,
    progress: Report | None = None,
) -> IdentityClusters:
    """NN analysis, eps choice, DBSCAN (cosine), singleton identities, centroids and centroid cosines.

    ``progress`` (e.g. a run log's ``info``) receives the two block scans' lines (nearest neighbours, then
    DBSCAN): pairs done of ``N(N-1)/2``, rate and ETA, every 5 % or 30 s, and at the end of each."""
    if len(vectors) == 0:
        raise ValueError("no embeddings to cluster")
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    unit = unit_rows(vectors, "embeddings")
    neighbours = (
        nearest_neighbours(unit, screen=screen, block=block, device=device, progress=progress)
        if len(unit) >= 2
        else None
    )
    analysis = analyse_nn_cosines(neighbours.cosine if neighbours is not None else np.zeros(0))
    seconds["nearest_neighbours"] = time.perf_counter() - started
    choice = choose_eps(eps_source, space, analysis, eps)
    started = time.perf_counter()
    result = dbscan_cosine(
        unit, choice.eps, min_samples, screen=screen, block=block, device=device, progress=progress
    )
    seconds["dbscan"] = time.perf_counter() - started
    started = time.perf_counter()
    identity = result.identity
    centroids = identity_centroids(unit, identity)
    cosines = centroid_cosines(unit, identity, centroids)
    seconds["centroids"] = time.perf_counter() - started
    return IdentityClusters(
        dbscan=result,
        identity=identity,
        cluster_size=result.cluster_size,
        centroids=centroids,
        centroid_cosine=cosines,
        neighbours=neighbours,
        analysis=analysis,
        eps=choice,
        seconds=seconds,
    )


def centroid_check(clusters: IdentityClusters, bound: float | None = None) -> dict[str, Any]:
    """Members of multi-image identities whose cosine to their centroid is below ``bound`` (default
    ``1 − eps``: a member should lie within eps of its identity's centre; chains of look-alikes do not)."""
    bound = 1.0 - clusters.eps.eps if bound is None else float(bound)
    multi = clusters.cluster_size >= 2
    below = multi & (clusters.centroid_cosine < bound)
    offending = np.unique(clusters.identity[below])
    checked = np.unique(clusters.identity[multi])
    return {
        "passed": bool(len(offending) == 0),
        "bound": round(bound, 6),
        "identities_checked": len(checked),
        "identities_below_bound": len(offending),
        "members_below_bound": int(below.sum()),
        "min_member_centroid_cosine": round(float(clusters.centroid_cosine[multi].min()), 6)
        if multi.any()
        else None,
        "worst_identities": [int(i) for i in offending[:10]],
    }


# --- output tables --------------------------------------------------------------------------------------


def assignments_table(ids: pa.Table, clusters: IdentityClusters) -> pa.Table:
    """The input's id columns plus cluster_id, cluster_size, dbscan_label, core, nn_index, nn_cosine,
    centroid_cosine (one row per embedding, input order)."""
    n = len(clusters.identity)
    nn = clusters.neighbours
    values = [
        clusters.identity,
        clusters.cluster_size,
        clusters.dbscan.labels.astype(np.int64),
        clusters.dbscan.core.astype(bool),
        nn.index if nn is not None else np.full(n, -1),
        nn.cosine if nn is not None else np.full(n, np.nan, np.float32),
        clusters.centroid_cosine,
    ]
    table = ids
    for (name, kind), column in zip(ASSIGNMENT_FIELDS, values, strict=True):
        table = table.append_column(name, pa.array(column, kind))
    return table


def centroids_table(clusters: IdentityClusters, space: dict[str, Any]) -> pa.Table:
    """One row per identity: cluster_id, cluster_size, dbscan_cluster, the centroid as ``embedding`` and the
    embedder's provenance (so centroids stay tied to their space)."""
    sizes = np.bincount(clusters.identity)
    ids = np.arange(clusters.identities, dtype=np.int64)
    values = [ids, sizes.astype(np.int64), ids < clusters.dbscan.n_clusters]
    columns = {name: pa.array(v, kind) for (name, kind), v in zip(CENTROID_FIELDS, values, strict=True)}
    return embedding_table(clusters.centroids, EmbedderProfile.from_provenance(space), columns)


def write_parquet(storage: Storage, uri: str, table: pa.Table) -> None:
    """One parquet file (zstd)."""
    with storage.open(uri, "wb") as sink:
        pq.write_table(table, sink, compression="zstd")
