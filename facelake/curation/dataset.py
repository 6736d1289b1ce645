"""The cleaned training set: aligned − (leaking ∪ inconsistent), in two layouts face-recognition trainers read.

Kept images are the aligned crops (their JPEG bytes as aligned, not re-encoded) that are neither inconsistent
(identity audit) nor in a leakage pair. Labels are integers ``0..C-1`` over the kept identities in sorted
``identity_id`` order. One partition per variant holds, in place:

- ``identities/<identity_id>/<index:04d>.jpg``: a folder per identity (``torchvision.datasets.ImageFolder``
  reads ``identities/``; its class order is the same sorted order, so its targets equal the labels);
- ``webdataset/NNNNN.tar``: ``dataset_shard_size`` images a shard, each ``<key>.jpg``, ``<key>.cls`` (the
  integer label as text) and ``<key>.json`` (identity_id, index, label);
- ``dataset.parquet`` (:data:`DATASET_SCHEMA`, one row per kept image), ``labels.parquet`` (label,
  identity_id, images) and ``removed.parquet`` (every aligned image left out, and why);

then the manifest LAST, whose ``extra["counts"]`` holds the counts before and after each filter
(:func:`plan_dataset`). An empty dataset commits as such with ``extra["empty"] = True``: the asset's check
fails on it. :func:`export_dataset` copies a committed dataset to a folder or an ``s3://`` root.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from facelake.curation.aligned import aligned_index, iter_aligned_tar, source_warning
from facelake.curation.audit import IMAGES_FILE, inconsistent_keys
from facelake.curation.leakage import PAIRS_FILE, leaking_keys
from facelake.curation.outputs import (
    committed_table,
    outcome_metadata,
    provenance_extra,
    write_json,
    write_table,
)
from facelake.generation.shards import TarBuilder, committed_tars, sample_json, tar_name
from facelake.lake.commit import (
    Attempt,
    CommitOutcome,
    FileEntry,
    PartitionArtifact,
    Written,
    materialize_partition,
)
from facelake.lake.hashing import combine_hashes
from facelake.lake.progress import Progress
from facelake.lake.storage import S3Options, Storage
from facelake.lake.webdataset_reader import ImageShard

IDENTITIES_DIR = "identities"
WEBDATASET_DIR = "webdataset"
INDEX_FILE = "dataset.parquet"
LABELS_FILE = "labels.parquet"
REMOVED_FILE = "removed.parquet"
SUMMARY_FILE = "dataset.json"
LAYOUTS = ("folders", "webdataset")
DATASET_SCHEMA = pa.schema(
    [
        ("sample_id", pa.int64()),
        ("key", pa.string()),
        ("identity_id", pa.string()),
        ("index", pa.int32()),
        ("label", pa.int64()),
        ("path", pa.string()),
        ("shard", pa.int64()),
    ]
)
"""One row per kept image: a running ``sample_id``, the webdataset ``key``, ids, the integer ``label``, the
folder-layout ``path`` (relative to the partition) and the webdataset ``shard``."""

REMOVED_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("identity_id", pa.string()),
        ("index", pa.int32()),
        ("inconsistent", pa.bool_()),
        ("leaking", pa.bool_()),
    ]
)
"""``removed.parquet``: one row per aligned image left out of the dataset, and which filter(s) removed it."""


@dataclass(frozen=True)
class DatasetOptions:
    """Images per webdataset shard."""

    shard_size: int = 1000

    def __post_init__(self) -> None:
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {self.shard_size}")


@dataclass(eq=False)
class DatasetPlan:
    """The kept images (key, identity_id, index, label), the removed ones with why, and the counts."""

    kept: pa.Table
    removed: pa.Table
    counts: dict[str, Any]

    @property
    def empty(self) -> bool:
        return self.kept.num_rows == 0


def image_path(identity_id: str, index: int) -> str:
    """The folder-layout path of one image, relative to the partition: ``identities/<identity_id>/<index:04d>.jpg``."""
    return f"{IDENTITIES_DIR}/{identity_id}/{int(index):04d}.jpg"


def plan_dataset(
    aligned: pa.Table,
    inconsistent: set[str],
    leaking: set[str],
    alignment_counts: Mapping[str, int] | None = None,
) -> DatasetPlan:
    """Kept = aligned − (leaking ∪ inconsistent), with the overlap reported; ``aligned`` holds the aligned
    rows (key, identity_id, index, and the aligned ``shard``), ``alignment_counts`` the alignment stage's counts (generated, no_face, …)."""
    keys = aligned["key"].to_pylist()
    columns = [c for c in ("key", "identity_id", "index", "shard") if c in aligned.column_names]
    is_inconsistent = np.array([key in inconsistent for key in keys], bool)
    is_leaking = np.array([key in leaking for key in keys], bool)
    removed = is_inconsistent | is_leaking
    kept = aligned.select(columns).filter(pa.array(~removed))
    kept = kept.sort_by([("identity_id", "ascending"), ("index", "ascending"), ("key", "ascending")])
    identities = sorted(set(kept["identity_id"].to_pylist()))
    label_of = {identity: label for label, identity in enumerate(identities)}
    kept = kept.append_column(
        "label", pa.array([label_of[i] for i in kept["identity_id"].to_pylist()], pa.int64())
    )
    dropped = aligned.select(["key", "identity_id", "index"]).filter(pa.array(removed))
    dropped = dropped.append_column("inconsistent", pa.array(is_inconsistent[removed]))
    dropped = dropped.append_column("leaking", pa.array(is_leaking[removed])).cast(REMOVED_SCHEMA)
    counts = {
        **{k: int(v) for k, v in (alignment_counts or {}).items()},
        "aligned": len(keys),
        "inconsistent": int(is_inconsistent.sum()),
        "leaking": int(is_leaking.sum()),
        "leaking_and_inconsistent": int((is_inconsistent & is_leaking).sum()),
        "removed": int(removed.sum()),
        "kept": kept.num_rows,
        "identities_aligned": len(set(aligned["identity_id"].to_pylist())),
        "identities_kept": len(identities),
    }
    if counts["kept"] != counts["aligned"] - counts["removed"]:
        raise RuntimeError(f"dataset counts do not add up: {counts}")
    return DatasetPlan(kept, dropped, counts)


def _entry(path: str, data: bytes, rows: int | None = None) -> FileEntry:
    return FileEntry(path, len(data), hashlib.sha256(data).hexdigest(), rows)


@dataclass
class DatasetResult:
    """The commit's outcome and the counts; ``empty`` when nothing was kept."""

    outcome: CommitOutcome
    counts: dict[str, Any] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return bool(self.outcome.manifest.extra.get("empty", True))

    def metadata(self) -> dict[str, Any]:
        """The counts, emptiness, shards, reuse and the random-weights warning, for the asset."""
        extra = self.outcome.manifest.extra
        facts = {**extra.get("counts", {}), "empty": self.empty, "shards": extra.get("webdataset_shards")}
        return outcome_metadata(self.outcome, facts)


def commit_dataset(
    artifact: PartitionArtifact,
    aligned_artifact: PartitionArtifact,
    audit_artifact: PartitionArtifact,
    leakage_artifact: PartitionArtifact | None,
    options: DatasetOptions = DatasetOptions(),
    *,
    code_version: str,
    owner: str,
    run_config: Mapping[str, Any] | None = None,
    force: bool = False,
    lease_ttl_s: float = 900.0,
    log: Callable[[str], None] | None = None,
) -> DatasetResult:
    """Write the cleaned dataset of a variant in both layouts and commit it manifest-last (see the module doc).
    ``leakage_artifact`` None: no leakage filter (reported as 0 leaking)."""
    storage = artifact.storage
    aligned_manifest = aligned_artifact.require_manifest()
    upstream = [audit_artifact] + ([leakage_artifact] if leakage_artifact is not None else [])
    warnings = [source_warning(a) for a in [aligned_artifact, *upstream]]
    random_init = any(flag for flag, _ in warnings)
    warning = "; ".join(dict.fromkeys(text for _, text in warnings if text)) or None
    config = {
        "shard_size": options.shard_size,
        "inputs": [a.require_manifest().content_hash for a in [aligned_artifact, *upstream]],
        **dict(run_config or {}),
    }
    alignment_counts = {
        k: aligned_manifest.extra[k]
        for k in ("generated", "no_face", "several_faces", "unreadable")
        if k in aligned_manifest.extra
    }

    def write(attempt: Attempt) -> Written:
        index = aligned_index(aligned_artifact.storage, aligned_artifact)
        inconsistent = inconsistent_keys(committed_table(audit_artifact, IMAGES_FILE))
        leaking = leaking_keys(committed_table(leakage_artifact, PAIRS_FILE)) if leakage_artifact else set()
        plan = plan_dataset(index, inconsistent, leaking, alignment_counts)
        files, table = _write_layouts(storage, artifact, aligned_artifact, plan, options, log)
        files.append(write_table(attempt, INDEX_FILE, table))
        labels = (
            table.group_by(["label", "identity_id"])
            .aggregate([("key", "count")])
            .rename_columns(["label", "identity_id", "images"])
        )
        files.append(write_table(attempt, LABELS_FILE, labels.sort_by("label")))
        files.append(write_table(attempt, REMOVED_FILE, plan.removed))
        summary = {"counts": plan.counts, "empty": plan.empty, "layouts": list(LAYOUTS)}
        summary.update(provenance_extra(random_init, warning))
        files.append(write_json(attempt, SUMMARY_FILE, summary))
        shards = sorted(set(table["shard"].to_pylist())) if table.num_rows else []
        extra = {**summary, "webdataset_shards": len(shards), "shard_size": options.shard_size}
        return Written(files, rows=plan.counts["kept"], extra=extra)

    outcome = materialize_partition(
        artifact, config, code_version, owner, write, force=force, lease_ttl_s=lease_ttl_s
    )
    return DatasetResult(outcome, dict(outcome.manifest.extra.get("counts", {})))


def _write_layouts(
    storage: Storage,
    artifact: PartitionArtifact,
    aligned_artifact: PartitionArtifact,
    plan: DatasetPlan,
    options: DatasetOptions,
    log: Callable[[str], None] | None,
) -> tuple[list[FileEntry], pa.Table]:
    """Stream the aligned shards once: every kept crop into its identity folder and into the current webdataset
    shard (in the aligned shards' order); returns the files written and the dataset index."""
    kept = plan.kept
    order = {key: row for row, key in enumerate(kept["key"].to_pylist())}
    labels, identity, index = (kept[c].to_pylist() for c in ("label", "identity_id", "index"))
    progress = Progress(f"dataset {artifact.partition}", kept.num_rows, log, unit="images")
    files: list[FileEntry] = []
    rows: list[dict[str, Any]] = []
    builder, shard_id = TarBuilder(), 0

    def flush() -> None:
        nonlocal builder, shard_id
        if builder.count:
            data = builder.finish()
            path = f"{WEBDATASET_DIR}/{tar_name(shard_id)}"
            storage.write_bytes(artifact.uri(path), data)
            files.append(_entry(path, data, builder.count))
            builder, shard_id = TarBuilder(), shard_id + 1

    tars = committed_tars(aligned_artifact)
    for shard in sorted(set(kept["shard"].to_pylist())) if kept.num_rows else []:
        for batch in iter_aligned_tar(aligned_artifact.storage, shard, tars[shard]):
            for key, data in zip(batch.keys, batch.jpegs, strict=True):
                if key not in order:
                    continue
                row = order[key]
                path = image_path(identity[row], index[row])
                storage.write_bytes(artifact.uri(path), data)
                files.append(_entry(path, data))
                record = {"key": key, "identity_id": identity[row], "index": index[row], "label": labels[row]}
                builder.add(key, {"jpg": data, "cls": str(labels[row]).encode(), "json": sample_json(record)})
                rows.append({**record, "sample_id": len(rows), "path": path, "shard": shard_id})
                progress.advance()
                if builder.count == options.shard_size:
                    flush()
    flush()
    if len(rows) != kept.num_rows:
        raise RuntimeError(f"{kept.num_rows - len(rows)} kept images are missing from the aligned tars")
    if rows:
        progress.finish()
    table = pa.Table.from_pylist(rows, schema=DATASET_SCHEMA) if rows else DATASET_SCHEMA.empty_table()
    return files, table


# --- reading and exporting a committed dataset ----------------------------------------------------------


def dataset_image_shards(artifact: PartitionArtifact) -> list[ImageShard]:
    """The committed webdataset shards as :class:`~facelake.lake.webdataset_reader.ImageShard` (for
    :func:`facelake.lake.webdataset_reader.iter_shard_images`)."""
    table = committed_table(artifact, INDEX_FILE)
    shards = []
    for shard_id in sorted(set(table["shard"].to_pylist())):
        rows = table.filter(pc.equal(table["shard"], shard_id)).sort_by("key")
        keys = tuple(rows["key"].to_pylist())
        ids = np.asarray(rows["sample_id"].to_pylist(), np.int64)
        uri = artifact.uri(f"{WEBDATASET_DIR}/{tar_name(shard_id)}")
        shards.append(ImageShard(shard_id, uri, ids, keys, combine_hashes([uri, *keys])))
    return shards


@dataclass
class ExportResult:
    """Where a dataset went, what was copied, and its counts; ``empty`` when it holds no image."""

    to: str
    files: int
    bytes: int
    counts: dict[str, Any]
    empty: bool
    layouts: tuple[str, ...]


def export_dataset(
    artifact: PartitionArtifact,
    to: str,
    *,
    layouts: Sequence[str] = LAYOUTS,
    s3: S3Options | None = None,
    log: Callable[[str], None] | None = None,
) -> ExportResult:
    """Copy a committed dataset partition to ``to`` (a folder or ``s3://bucket/prefix``): ``identities/``
    (folders layout), ``webdataset/`` (webdataset layout), and always ``dataset.parquet``, ``labels.parquet``
    and ``dataset.json``. An empty dataset copies only those three files and says ``empty``."""
    unknown = sorted(set(layouts) - set(LAYOUTS))
    if unknown or not layouts:
        raise ValueError(f"layouts must be among {LAYOUTS}, got {list(layouts)}")
    manifest = artifact.require_manifest()
    folders = {"folders": f"{IDENTITIES_DIR}/", "webdataset": f"{WEBDATASET_DIR}/"}
    wanted_prefixes = tuple(folders[layout] for layout in layouts)
    always = {INDEX_FILE, LABELS_FILE, SUMMARY_FILE}
    target = Storage(to, s3)
    entries = []
    for entry in manifest.files:
        name = entry.path.rsplit("/", 1)[-1]
        if entry.path.startswith(wanted_prefixes):
            entries.append((entry.path, entry.path))
        elif name in always:
            entries.append((entry.path, name))
    progress = Progress(f"export {artifact.partition} to {to}", len(entries), log, unit="files")
    size = 0
    for source, destination in entries:
        data = artifact.storage.read_bytes(artifact.uri(source))
        target.write_bytes(target.uri(destination), data)
        size += len(data)
        progress.advance()
    progress.finish()
    extra = manifest.extra
    return ExportResult(
        target.root,
        len(entries),
        size,
        dict(extra.get("counts", {})),
        bool(extra.get("empty", True)),
        tuple(layouts),
    )
