"""HyperFace around the packer: the gallery, the sharded reference embeddings, resume and the convergence plot.

Layout under the storage root (DESIGN §3):

- ``hyperface/gallery/all/``: ``gallery.parquet``, the gallery's unit embeddings (``gallery_index``,
  ``source``, ``source_row``, the sources' id columns where all have them, ``embedding``, provenance).
- ``hyperface/reference_embeddings/{variant}/``: ``identities-{shard:05d}.parquet`` (``identity_id``,
  ``identity_index``, ``shard``, ``variant``, ``embedding`` and the gallery's embedder provenance, so
  later stages can refuse mixed spaces with :func:`facelake.faces.identity.table_space`), ``convergence.png`` and
  ``packing.json`` (config, metrics, history).
- ``hyperface/_checkpoints/{variant}/{run_hash}.npz``: the packer's checkpoint of a run in progress, OUTSIDE
  the partition prefix, so the commit protocol's cleanup of a crashed attempt leaves it for the rerun to
  resume from; it is deleted once the partition commits.

Identity ids are ``{variant}-{index:07d}``: stable across reruns of a variant, and shard ``s`` holds
indices ``[s·shard_size, (s+1)·shard_size)``. Everything here is engine code (no Dagster).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from facelake.faces.identity import (
    EmbedderProfile,
    EmbeddingSpaceMismatchError,
    check_same_space,
    embedding_table,
    l2_normalise,
    table_space,
)
from facelake.hyperface.packing import PackingConfig, PackingResult, StorageCheckpointer, pack
from facelake.hyperface.settings import HyperfaceGallerySettings, HyperfaceVariant
from facelake.lake.commit import (
    Attempt,
    CommitOutcome,
    FileEntry,
    Manifest,
    PartitionArtifact,
    Written,
    materialize_partition,
)
from facelake.lake.errors import FacelakeError, InputError
from facelake.lake.hashing import config_hash
from facelake.lake.plots import figure_png
from facelake.lake.progress import Report
from facelake.lake.shard_stage import read_stage_table
from facelake.lake.storage import Storage
from facelake.lake.tables import read_input_parquet

DATASET = "hyperface"
GALLERY_FILE = "gallery.parquet"
PLOT_FILE = "convergence.png"
REPORT_FILE = "packing.json"
SHARD_PATTERN = re.compile(r"^identities-(\d{5,})\.parquet$")
ID_COLUMNS = ("sample_id", "key", "face_index")
"""Source id columns carried into the gallery when every source has them (LAION-Face embeddings do)."""
REFERENCE_FIELDS = [
    ("identity_id", pa.string()),
    ("identity_index", pa.int64()),
    ("shard", pa.int32()),
    ("variant", pa.string()),
]
"""The id columns of an identity shard (then ``embedding`` and the gallery's embedder provenance)."""
GALLERY_FIELDS = [("gallery_index", pa.int64()), ("source", pa.string()), ("source_row", pa.int64())]
"""The first columns of ``gallery.parquet`` (then the sources' :data:`ID_COLUMNS` where all have them)."""
RANDOM_WEIGHTS_WARNING = (
    "RANDOM TEST WEIGHTS: the gallery was embedded by a randomly initialised model, so these are not "
    "face-recognition embeddings"
)


# --- where things live ---------------------------------------------------------------------------------


def gallery_artifact(storage: Storage) -> PartitionArtifact:
    """The committed gallery: ``{root}/hyperface/gallery/all/``."""
    return PartitionArtifact(storage, DATASET, "gallery", "all")


def reference_artifact(storage: Storage, variant: str) -> PartitionArtifact:
    """One variant's reference embeddings: ``{root}/hyperface/reference_embeddings/{variant}/``."""
    return PartitionArtifact(storage, DATASET, "reference_embeddings", variant)


def checkpoint_folder(storage: Storage, variant: str) -> str:
    """Where a variant's checkpoints live, outside its committed prefix."""
    return storage.uri(DATASET, "_checkpoints", variant)


def checkpoint_uri(storage: Storage, variant: str, run_hash: str) -> str:
    """The checkpoint of one run configuration (a changed config never resumes a stale state)."""
    return f"{checkpoint_folder(storage, variant)}/{run_hash}.npz"


def shard_file(shard: int) -> str:
    """``identities-{shard:05d}.parquet``."""
    return f"identities-{shard:05d}.parquet"


def identity_id(variant: str, index: int) -> str:
    """The stable id of identity ``index`` of ``variant``."""
    return f"{variant}-{index:07d}"


# --- the gallery ---------------------------------------------------------------------------------------


@dataclass
class Gallery:
    """Unit gallery embeddings of ONE embedding space, with where each row came from."""

    table: pa.Table
    vectors: np.ndarray
    space: dict[str, Any]

    @property
    def dimension(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def random_init(self) -> bool:
        return bool(self.space.get("embedder_random_init"))

    def profile(self) -> EmbedderProfile:
        return EmbedderProfile.from_provenance(self.space)

    def describe(self) -> str:
        return self.profile().describe()


@dataclass
class GallerySource:
    """One configured source of gallery rows: a name for errors, a fingerprint for staleness, a loader."""

    name: str
    fingerprint: str
    load: Callable[[], pa.Table]


def embedding_matrix(name: str, table: pa.Table) -> np.ndarray:
    """The ``embedding`` column as float32 ``[N, d]`` (fixed-size or equal-length lists of numbers)."""
    if "embedding" not in table.column_names:
        raise InputError(name, f"no 'embedding' column (columns: {table.column_names})")
    column = table.column("embedding").combine_chunks()
    kind = column.type
    if pa.types.is_fixed_size_list(kind):
        width = kind.list_size
    elif pa.types.is_list(kind) or pa.types.is_large_list(kind):
        lengths = np.unique(column.value_lengths().to_numpy(zero_copy_only=False))
        if len(lengths) > 1:
            raise InputError(name, f"'embedding' rows have different lengths {lengths[:5].tolist()}")
        width = int(lengths[0]) if len(lengths) else 0
    else:
        raise InputError(name, f"'embedding' must be a list of floats, got {kind}")
    if column.null_count:
        raise InputError(name, f"'embedding' has {column.null_count} null row(s)")
    if not (pa.types.is_floating(kind.value_type) or pa.types.is_integer(kind.value_type)):
        raise InputError(name, f"'embedding' must hold numbers, got {kind.value_type}")
    values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32)  # a writable copy
    return values.reshape(len(column), width)


def source_space(name: str, table: pa.Table) -> dict[str, Any]:
    """The one embedding space of a source table, its rows' width checked against the declared dimension."""
    try:
        space = table_space(table)
    except EmbeddingSpaceMismatchError as exc:
        raise EmbeddingSpaceMismatchError(f"{name}: its rows mix embedding spaces: {exc}") from exc
    except ValueError as exc:
        raise InputError(name, f"{exc}: cannot tell which embedding space its rows are in") from exc
    return space


def assemble_gallery(
    sources: Sequence[tuple[str, pa.Table]], *, max_rows: int | None = None, seed: int = 0
) -> Gallery:
    """One gallery from named embedding tables, refusing mixed spaces; rows are re-normalised to unit length.

    Every table needs an ``embedding`` column and the provenance columns of :mod:`facelake.faces.identity`; all
    rows of all tables must share one space (model name, dimension, weights sha256). With ``max_rows``, a
    seeded sample of that many rows (kept in source order) is used.
    """
    if not sources:
        raise FacelakeError("the gallery has no sources: configure hyperface.gallery")
    spaces, matrices = [], []
    for name, table in sources:
        space = source_space(name, table) if table.num_rows else None
        matrix = embedding_matrix(name, table)
        if space is not None and matrix.shape[1] != int(space["embedder_dimension"]):
            raise InputError(
                name,
                f"embeddings are {matrix.shape[1]}-d but the provenance says "
                f"{space['embedder_name']} is {space['embedder_dimension']}-d",
            )
        if space is not None:
            for other_name, other in spaces:
                try:
                    check_same_space([other, space])
                except EmbeddingSpaceMismatchError as exc:
                    raise EmbeddingSpaceMismatchError(
                        f"gallery sources {other_name} and {name} are in different embedding spaces: {exc}"
                    ) from exc
            spaces.append((name, space))
        matrices.append(matrix)
    if not spaces:
        raise FacelakeError(f"the gallery sources {[n for n, _ in sources]} hold no rows")
    space = check_same_space([s for _, s in spaces])
    ids = [c for c in ID_COLUMNS if all(c in t.column_names for _, t in sources)]
    parts = []
    for (name, table), matrix in zip(sources, matrices, strict=True):
        if not table.num_rows:
            continue
        columns: dict[str, Any] = {
            "source": pa.repeat(name, table.num_rows),
            "source_row": pa.array(np.arange(table.num_rows, dtype=np.int64)),
        }
        columns.update({c: table.column(c) for c in ids})
        try:
            unit = l2_normalise(matrix)
        except ValueError as exc:
            raise InputError(name, str(exc)) from exc
        parts.append(embedding_table(unit, EmbedderProfile.from_provenance(space), columns))
    combined = pa.concat_tables(parts, promote_options="default").combine_chunks()
    if max_rows is not None and combined.num_rows > max_rows:
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(combined.num_rows, size=max_rows, replace=False))
        combined = combined.take(pa.array(keep))
    combined = combined.add_column(0, "gallery_index", pa.array(np.arange(combined.num_rows, dtype=np.int64)))
    return gallery_from_table(combined, "gallery")


def gallery_from_table(table: pa.Table, name: str) -> Gallery:
    """A :class:`Gallery` over a gallery table (space checked, vectors unit float32)."""
    space = source_space(name, table)
    return Gallery(table, embedding_matrix(name, table), space)


def configured_sources(
    storage: Storage,
    settings: HyperfaceGallerySettings,
    expand: Callable[[str], str] = lambda uri: uri,
    laion_embeddings: Callable[[Storage, str], PartitionArtifact] | None = None,
    laion_parts: Sequence[str] = (),
    sfhq_embeddings: Callable[[Storage, str], PartitionArtifact] | None = None,
    sfhq_parts: Sequence[str] = (),
) -> list[GallerySource]:
    """The gallery sources the settings name; ``expand`` resolves ``{sources}`` in table URIs.

    For ``laion_face_embeddings`` (``sfhq_face_embeddings``), ``laion_embeddings(storage, part)``
    (``sfhq_embeddings``) gives a part's artifact and ``laion_parts`` (``sfhq_parts``) are the candidate parts
    (used when ``settings.parts`` is empty: every committed one). An SFHQ part's table is its committed
    ``embeddings.parquet``.
    """
    if settings.source == "table":
        if not settings.uris:
            raise FacelakeError("hyperface.gallery.source is 'table' but hyperface.gallery.uris is empty")
        sources = []
        for template in settings.uris:
            uri = expand(template)
            if not storage.exists(uri):
                raise InputError(uri, "gallery embedding table not found")
            sources.append(
                GallerySource(
                    uri,
                    storage.fingerprint(uri),
                    lambda u=uri: read_input_parquet(storage, u, "gallery embedding table"),
                )
            )
        return sources
    if settings.source == "sfhq_face_embeddings":
        return _committed_part_sources(
            storage, settings, settings.source, sfhq_embeddings, sfhq_parts, _sfhq_table(storage)
        )
    return _committed_part_sources(
        storage,
        settings,
        settings.source,
        laion_embeddings,
        laion_parts,
        lambda artifact: read_stage_table(storage, artifact),
    )


SFHQ_TABLE = "embeddings.parquet"
"""The file of an ``sfhq_face_embeddings`` part that is its gallery table."""


def _sfhq_table(storage: Storage) -> Callable[[PartitionArtifact], pa.Table]:
    def load(artifact: PartitionArtifact) -> pa.Table:
        manifest = artifact.require_manifest()
        paths = [f.path for f in manifest.files if f.path.rsplit("/", 1)[-1] == SFHQ_TABLE]
        if len(paths) != 1:
            raise InputError(artifact.prefix, f"expected one committed {SFHQ_TABLE}, found {len(paths)}")
        return read_input_parquet(storage, artifact.uri(paths[0]), "sfhq_face_embeddings table")

    return load


def _committed_part_sources(
    storage: Storage,
    settings: HyperfaceGallerySettings,
    asset: str,
    locate: Callable[[Storage, str], PartitionArtifact] | None,
    candidates: Sequence[str],
    load: Callable[[PartitionArtifact], pa.Table],
) -> list[GallerySource]:
    """One source per committed part of a partitioned embeddings asset (the parts named, else every one)."""
    if locate is None:
        raise FacelakeError(f"{asset} gallery: no artifact locator given")
    wanted = list(settings.parts) or list(candidates)
    sources = []
    for part in wanted:
        artifact = locate(storage, part)
        manifest = artifact.manifest()
        if manifest is None:
            if settings.parts:
                raise InputError(artifact.prefix, f"{asset} part not committed; materialize it")
            continue
        sources.append(GallerySource(f"{asset}[{part}]", manifest.content_hash, lambda a=artifact: load(a)))
    if not sources:
        raise FacelakeError(f"no committed {asset} part to build the gallery from")
    return sources


def write_gallery(attempt: Attempt, gallery: Gallery) -> Written:
    """Write ``gallery.parquet`` into an attempt; the manifest's extra records the space."""
    uri = attempt.uri(GALLERY_FILE)
    _write_table(attempt.artifact.storage, uri, gallery.table)
    extra = {"space": gallery.space, "dimension": gallery.dimension, "rows": gallery.table.num_rows}
    return Written([attempt.entry(uri, rows=gallery.table.num_rows)], gallery.table.num_rows, extra)


def commit_gallery(
    storage: Storage,
    sources: Sequence[GallerySource],
    settings: HyperfaceGallerySettings,
    code_version: str,
    owner: str,
    *,
    force: bool = False,
) -> CommitOutcome:
    """Assemble and commit the gallery (a no-op when committed from the same sources and settings)."""
    config = {
        "settings": settings.model_dump(),
        "sources": {s.name: s.fingerprint for s in sources},
    }

    def write(attempt: Attempt) -> Written:
        tables = [(s.name, s.load()) for s in sources]
        gallery = assemble_gallery(tables, max_rows=settings.max_rows, seed=settings.seed)
        return write_gallery(attempt, gallery)

    return materialize_partition(gallery_artifact(storage), config, code_version, owner, write, force=force)


def read_gallery(storage: Storage, artifact: PartitionArtifact | None = None) -> Gallery:
    """The committed gallery (raises if it is not committed)."""
    artifact = artifact or gallery_artifact(storage)
    uri = committed_uri(artifact, GALLERY_FILE)
    return gallery_from_table(read_input_parquet(storage, uri, "gallery embedding table"), uri)


# --- packing a variant ---------------------------------------------------------------------------------


def packing_config(variant: HyperfaceVariant) -> PackingConfig:
    """The packer's config for a settings variant (``variant.packing`` passes further fields through)."""
    fields = {
        "identities": variant.identities,
        "alpha": variant.alpha,
        "algorithm": variant.algorithm,
        "optimizer": variant.optimizer,
        "iterations": variant.iterations,
        "batch_size": variant.batch_size,
        "seed": variant.seed,
        "init": variant.init,
    }
    clash = sorted(set(variant.packing) & set(fields))
    if clash:
        raise ValueError(f"variant.packing repeats {clash}: set them as the variant's own fields")
    return PackingConfig(**fields, **variant.packing)


def validate_variants(variants: Mapping[str, HyperfaceVariant]) -> dict[str, PackingConfig]:
    """Every variant's packer config, built now so a bad variant fails when the code location loads."""
    configs = {}
    for name, variant in variants.items():
        try:
            configs[name] = packing_config(variant)
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            raise FacelakeError(f"hyperface.variants.{name}: not a valid packing config: {exc}") from exc
    return configs


def run_config(
    name: str, variant: HyperfaceVariant, gallery_manifest: Manifest, dimension: int, shard_size: int
) -> dict[str, Any]:
    """What identifies one variant's output: the packing config, the gallery's content, the shard size
    (not the check's bound: changing ``min_angle_deg`` re-checks, it never re-packs)."""
    return {
        "variant": name,
        "packing": packing_config(variant).model_dump(mode="json"),
        "gallery_content_hash": gallery_manifest.content_hash,
        "dimension": dimension,
        "shard_size": shard_size,
    }


class RecordingCheckpointer:
    """A checkpointer that remembers whether a saved state was resumed from, at which step, and the saves."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.resumed = False
        self.resumed_step: int | None = None
        self.saves = 0

    def load(self) -> dict[str, np.ndarray] | None:
        state = self.inner.load()
        if state is not None:
            self.resumed = True
            step = state.get("step")
            self.resumed_step = int(np.asarray(step).reshape(-1)[0]) if step is not None else None
        return state

    def save(self, state: dict[str, np.ndarray]) -> None:
        self.inner.save(state)
        self.saves += 1


def reference_tables(
    points: np.ndarray, variant: str, space: Mapping[str, Any], shard_size: int
) -> list[tuple[int, pa.Table]]:
    """The identity shards of packed ``points``: ids, shard, variant, embedding and the gallery's provenance."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    profile = EmbedderProfile.from_provenance(space)
    shards = []
    for shard, start in enumerate(range(0, len(points), shard_size)):
        index = np.arange(start, min(start + shard_size, len(points)), dtype=np.int64)
        values = [
            [identity_id(variant, int(i)) for i in index],
            index,
            np.full(len(index), shard, dtype=np.int32),
            [variant] * len(index),
        ]
        columns = {name: pa.array(v, kind) for (name, kind), v in zip(REFERENCE_FIELDS, values, strict=True)}
        shards.append((shard, embedding_table(points[index], profile, columns)))
    return shards


def metrics_summary(result: PackingResult) -> dict[str, Any]:
    """Final and initial metrics for metadata: minimum angle, NN cosine mean/max/quantiles, gallery distance."""
    keys = (
        "min_angle_deg",
        "mean_nn_cosine",
        "max_nn_cosine",
        "nn_cosine_quantiles",
        "mean_gallery_distance",
    )
    final = {k: _plain(result.metrics.get(k)) for k in keys if k in result.metrics}
    initial = {
        f"initial_{k}": _plain(result.initial_metrics.get(k)) for k in keys if k in result.initial_metrics
    }
    summary = {**final, **initial}
    if "min_angle_deg" in final and "initial_min_angle_deg" in initial:
        summary["min_angle_gain_deg"] = round(final["min_angle_deg"] - initial["initial_min_angle_deg"], 6)
    return summary


@dataclass
class PackRun:
    """What one (non-reused) packing run did."""

    result: PackingResult
    seconds: float
    resumed: bool
    resumed_step: int | None
    checkpoint_saves: int
    summary: dict[str, Any] = field(default_factory=dict)


def write_reference_embeddings(
    attempt: Attempt,
    result: PackingResult,
    *,
    variant: str,
    space: Mapping[str, Any],
    shard_size: int,
    report: dict[str, Any],
) -> Written:
    """Write the identity shards, the convergence plot and ``packing.json`` into an attempt."""
    storage = attempt.artifact.storage
    points = np.ascontiguousarray(result.points, dtype=np.float32)
    files: list[FileEntry] = []
    for shard, table in reference_tables(points, variant, space, shard_size):
        uri = attempt.uri(shard_file(shard))
        _write_table(storage, uri, table)
        files.append(attempt.entry(uri, rows=table.num_rows))
    plot_uri = attempt.uri(PLOT_FILE)
    storage.write_bytes(
        plot_uri, convergence_plot(result.history, title=f"HyperFace packing, variant {variant}")
    )
    report_uri = attempt.uri(REPORT_FILE)
    full = {**report, "history": result.history, "metrics": _plain(result.metrics)}
    full["initial_metrics"] = _plain(result.initial_metrics)
    storage.write_bytes(report_uri, json.dumps(full, indent=2, sort_keys=True, default=str).encode())
    files += [attempt.entry(plot_uri), attempt.entry(report_uri)]
    return Written(files, rows=len(points), extra=report)


def commit_reference_embeddings(
    storage: Storage,
    name: str,
    variant: HyperfaceVariant,
    *,
    shard_size: int,
    code_version: str,
    owner: str,
    force: bool = False,
    lease_ttl_s: float = 900.0,
    progress: Report | None = None,
    checkpointer_factory: Callable[[Storage, str], Any] | None = None,
) -> tuple[CommitOutcome, PackRun | None]:
    """Pack variant ``name`` against the committed gallery and commit its identity shards manifest-last.

    A partition committed with the same config (gallery content included) and code version is reused as
    is, without reading the gallery (``PackRun`` is None). Otherwise the packer checkpoints to
    :func:`checkpoint_uri` (outside the partition) and a rerun after a crash resumes from there; the
    checkpoints are deleted after the commit. ``checkpointer_factory`` (default
    :class:`facelake.hyperface.packing.StorageCheckpointer`) is called with the storage and the checkpoint URI.
    ``progress`` gets the packer's progress lines.
    """
    gallery_manifest = gallery_artifact(storage).require_manifest()
    dimension, rows = int(gallery_manifest.extra["dimension"]), int(gallery_manifest.rows or 0)
    config = run_config(name, variant, gallery_manifest, dimension, shard_size)
    packer_config = packing_config(variant)
    run_hash = config_hash({"config": config, "code_version": code_version})
    ckpt_uri = checkpoint_uri(storage, name, run_hash)
    runs: list[PackRun] = []

    def write(attempt: Attempt) -> Written:
        gallery = read_gallery(storage)
        if gallery.vectors.shape != (rows, dimension):
            raise InputError(gallery_artifact(storage).prefix, "gallery changed while it was being read")
        factory = checkpointer_factory or StorageCheckpointer
        checkpointer = RecordingCheckpointer(factory(storage, ckpt_uri))
        started = time.perf_counter()
        result = pack(packer_config, gallery.vectors, checkpointer=checkpointer, report=progress)
        seconds = time.perf_counter() - started
        run = PackRun(result, seconds, checkpointer.resumed, checkpointer.resumed_step, checkpointer.saves)
        run.summary = metrics_summary(result)
        runs.append(run)
        report = {
            "variant": name,
            "identities": len(result.points),
            "dimension": gallery.dimension,
            "shard_size": shard_size,
            "shards": -(-len(result.points) // shard_size),
            "device": str(result.device),
            "screen": str(result.screen),
            "packing_seconds": round(seconds, 3),
            "packing_seconds_total": round(float(getattr(result, "stats", {}).get("seconds", seconds)), 3),
            "gallery_rows": rows,
            "resumed_from_checkpoint": run.resumed,
            "resumed_at_step": run.resumed_step,
            "embedder": gallery.describe(),
            "embedder_random_init": gallery.random_init,
            "metrics": run.summary,
        }
        return write_reference_embeddings(
            attempt, result, variant=name, space=gallery.space, shard_size=shard_size, report=report
        )

    outcome = materialize_partition(
        reference_artifact(storage, name),
        config,
        code_version,
        owner,
        write,
        force=force,
        lease_ttl_s=lease_ttl_s,
    )
    if not outcome.reused:
        storage.rm(checkpoint_folder(storage, name), recursive=True)
    return outcome, (runs[-1] if runs else None)


# --- reading the output --------------------------------------------------------------------------------


def committed_files(artifact: PartitionArtifact, manifest: Manifest | None = None) -> dict[str, str]:
    """File name -> full URI of every file a partition's manifest lists (they live in its attempt folder)."""
    manifest = manifest or artifact.require_manifest()
    return {f.path.rsplit("/", 1)[-1]: artifact.uri(f.path) for f in manifest.files}


def committed_uri(artifact: PartitionArtifact, name: str, manifest: Manifest | None = None) -> str:
    """The URI of the committed file called ``name`` (raises naming the partition if it is not listed)."""
    files = committed_files(artifact, manifest)
    if name not in files:
        raise InputError(artifact.prefix, f"the committed partition lists no {name}")
    return files[name]


def reference_shard_ids(artifact: PartitionArtifact, manifest: Manifest | None = None) -> list[int]:
    """The committed identity shards of a variant."""
    names = committed_files(artifact, manifest)
    return sorted(int(m.group(1)) for name in names if (m := SHARD_PATTERN.match(name)))


def read_reference_embeddings(
    storage: Storage, artifact: PartitionArtifact, shards: Iterable[int] | None = None
) -> pa.Table:
    """Committed identity shards (all, or ``shards``) as one table, refusing a table of mixed spaces."""
    manifest = artifact.require_manifest()
    files = committed_files(artifact, manifest)
    available = reference_shard_ids(artifact, manifest)
    wanted = available if shards is None else sorted(set(int(s) for s in shards))
    missing = sorted(set(wanted) - set(available))
    if missing:
        raise InputError(artifact.prefix, f"identity shards {missing} are not committed (have {available})")
    tables = [read_input_parquet(storage, files[shard_file(s)], "reference shard") for s in wanted]
    table = pa.concat_tables(tables) if tables else pa.table({})
    if table.num_rows:
        source_space(artifact.prefix, table)
    return table


# --- the convergence plot ------------------------------------------------------------------------------


def convergence_plot(history: Sequence[Mapping[str, Any]], *, title: str = "HyperFace packing") -> bytes:
    """A PNG of loss and minimum pairwise angle against the step (matplotlib Agg, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = [float(h["step"]) for h in history if "step" in h]
    figure = Figure(figsize=(9, 3.4), dpi=100)
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2)
    for axis, key, label in ((left, "loss", "loss"), (right, "min_angle_deg", "minimum angle (°)")):
        values = [float(h[key]) for h in history if "step" in h and h.get(key) is not None]
        if values and len(values) == len(steps):
            axis.plot(steps, values, marker="." if len(values) < 50 else None)
        else:
            axis.text(0.5, 0.5, f"no {key} logged", ha="center", va="center", transform=axis.transAxes)
        axis.set_xlabel("step")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    figure.suptitle(title)
    return figure_png(figure)


# --- helpers -------------------------------------------------------------------------------------------


def _write_table(storage: Storage, uri: str, table: pa.Table) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    storage.write_bytes(uri, sink.getvalue().to_pybytes())


def _plain(value: Any) -> Any:
    """Numpy scalars/arrays inside metrics as plain JSON-able Python values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
