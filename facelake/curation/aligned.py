"""The aligned faces of a generated variant: RetinaFace's five landmarks, then the 112×112 ArcFace-template crop.

Input: a committed ``hyperface_images`` partition (:mod:`facelake.generation.shards`: ``shards/NNNNN.tar`` of
``<key>.jpg`` + ``<key>.json`` with an index parquet per shard). Each generated image is detected with the
project's :class:`~facelake.faces.detection.FaceDetector`; an image with exactly one face is aligned with
:func:`facelake.faces.alignment.align`; one with no face, or with several, is excluded with its reason.

Output, one partition per variant, in the generation stage's layout so the same readers serve it: per
generated shard ``shards/NNNNN.tar`` (``<key>.jpg`` the aligned crop, ``<key>.json`` its ids) and
``NNNNN.parquet`` (:data:`ALIGNED_SCHEMA`: ONE ROW PER GENERATED IMAGE with its ``status``), committed shard by
shard by :func:`facelake.lake.shard_stage.run_shard_stage` (a killed run resumes), then ``excluded.parquet``
(the excluded rows) and the manifest LAST. The manifest's ``extra`` holds the counts, which always satisfy
``generated = aligned + no_face + several_faces + unreadable`` (``unreadable``: an image that does not
decode; zero for images this project generated).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from facelake.curation.outputs import outcome_metadata, provenance_extra, write_table
from facelake.faces.alignment import align, alignment_transforms, apply_transforms
from facelake.faces.detection import FaceDetector
from facelake.faces.stages import StageCounter
from facelake.generation.shards import (
    OUT_DIR,
    TarBuilder,
    committed_tar_entries,
    committed_tars,
    decode_images,
    drop_incomplete_tar_shards,
    encode_jpeg,
    generated_image_shards,
    iter_tar_samples,
    read_generated_index,
    sample_json,
    tar_name,
    with_tar_metadata,
)
from facelake.lake.commit import Attempt, CommitOutcome, PartitionArtifact, Written, materialize_partition
from facelake.lake.progress import Progress
from facelake.lake.shard_stage import read_stage_table, run_shard_stage
from facelake.lake.storage import Storage
from facelake.lake.tables import read_parquet
from facelake.lake.webdataset_reader import ImageShard, iter_shard_images

ALIGNED, NO_FACE, SEVERAL_FACES, UNREADABLE = "aligned", "no_face", "several_faces", "unreadable"
STATUSES = (ALIGNED, NO_FACE, SEVERAL_FACES, UNREADABLE)
EXCLUDED_FILE = "excluded.parquet"
ID_COLUMNS = ("key", "identity_id", "identity_index", "index")
ALIGNED_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("sample_id", pa.int64()),
        ("shard", pa.int64()),
        ("identity_id", pa.string()),
        ("identity_index", pa.int64()),
        ("index", pa.int32()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("faces", pa.int32()),
        ("face_score", pa.float32()),
        ("face_box", pa.list_(pa.float32(), 4)),
        ("landmarks", pa.list_(pa.float32(), 10)),
        ("aligned_box", pa.list_(pa.float32(), 4)),
        ("detector", pa.string()),
    ]
)
"""One row per generated image: ids, ``status`` (:data:`STATUSES`) and ``reason``, the number of faces found,
and for an aligned image its face (score, box and five landmarks in the generated image's pixels) and
``aligned_box``, the face box carried into the aligned crop (what a box-based embedder such as dlib needs)."""


@dataclass(frozen=True)
class AlignmentOptions:
    """The aligned crop's side (112: the ArcFace template), its JPEG quality, and images per detector batch."""

    size: int = 112
    jpeg_quality: int = 95
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.size < 16 or self.batch_size < 1 or not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"invalid alignment options {self}")

    def config(self) -> dict[str, Any]:
        """The options that decide the output (the batch size does not)."""
        return {"size": self.size, "jpeg_quality": self.jpeg_quality}


def _reasons(detector: FaceDetector) -> dict[str, str]:
    threshold = detector.config()["threshold"]
    return {
        NO_FACE: f"no face detected by {detector.name} (score > {threshold})",
        SEVERAL_FACES: f"more than one face detected by {detector.name} (score > {threshold})",
        UNREADABLE: "image bytes do not decode",
    }


def _box_in_crop(transforms: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """The axis-aligned box around each face box's corners carried into its crop, clipped to the crop."""
    x1, y1, x2, y2 = (boxes[:, i] for i in range(4))
    corners = np.stack(
        [np.stack([x1, y1], 1), np.stack([x2, y1], 1), np.stack([x1, y2], 1), np.stack([x2, y2], 1)], 1
    )
    moved = apply_transforms(transforms, corners)
    box = np.concatenate([moved.min(axis=1), moved.max(axis=1)], axis=1)
    return np.clip(box, 0.0, float(size)).astype(np.float32)


def _image_ids(key: str, sample_id: int, shard_id: int, meta: Mapping[str, Any] | None) -> dict[str, Any]:
    meta = meta or {}
    return {
        "key": key,
        "sample_id": int(sample_id),
        "shard": int(shard_id),
        "identity_id": meta.get("identity_id"),
        "identity_index": meta.get("identity_index"),
        "index": meta.get("index"),
    }


def align_shard(
    storage: Storage,
    shard: ImageShard,
    detector: FaceDetector,
    options: AlignmentOptions = AlignmentOptions(),
    counter: StageCounter | None = None,
    known: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[bytes, pa.Table]:
    """One generated shard's aligned crops as tar bytes, and its :data:`ALIGNED_SCHEMA` rows (every image).

    ``known``: key -> the generated index's ``identity_id``, ``identity_index``, ``index`` (default: each image's
    json; an image that does not decode has its ids only from there)."""
    reasons = _reasons(detector)
    builder = TarBuilder()
    rows: list[dict[str, Any]] = []
    known = known or {}
    empty = {"face_score": None, "face_box": None, "landmarks": None, "aligned_box": None}
    empty["detector"] = detector.name
    for batch in iter_shard_images(storage, shard, batch_size=options.batch_size):
        started = time.perf_counter()
        for skipped in batch.skipped:
            ids = _image_ids(skipped.key, skipped.sample_id, shard.shard_id, known.get(skipped.key))
            rows.append({**ids, **empty, "status": UNREADABLE, "reason": reasons[UNREADABLE], "faces": 0})
        found = detector.detect(batch.images, names=batch.keys) if len(batch) else []
        single = [slot for slot, faces in enumerate(found) if len(faces) == 1]
        crops: np.ndarray = np.zeros((0, options.size, options.size, 3), np.uint8)
        if single:
            landmarks = np.stack([found[slot].landmarks[0] for slot in single])
            boxes = np.stack([found[slot].boxes[0] for slot in single]).astype(np.float64)
            crops = align([batch.images[slot] for slot in single], landmarks, options.size)
            inside = _box_in_crop(alignment_transforms(landmarks, options.size), boxes, options.size)
        position = {slot: i for i, slot in enumerate(single)}
        for slot, faces in enumerate(found):
            meta = known.get(batch.keys[slot]) or batch.metadata[slot]
            ids = _image_ids(batch.keys[slot], batch.sample_ids[slot], shard.shard_id, meta)
            if slot not in position:
                status = NO_FACE if len(faces) == 0 else SEVERAL_FACES
                rows.append(
                    {**ids, **empty, "status": status, "reason": reasons[status], "faces": len(faces)}
                )
                continue
            i = position[slot]
            face = {
                "face_score": float(faces.scores[0]),
                "face_box": faces.boxes[0].tolist(),
                "landmarks": faces.landmarks[0].reshape(-1).tolist(),
                "aligned_box": inside[i].tolist(),
            }
            rows.append(
                {**ids, **face, "status": ALIGNED, "reason": None, "faces": 1, "detector": detector.name}
            )
            record = {**ids, "face_score": round(face["face_score"], 5), "detector": detector.name}
            warning = (batch.metadata[slot] or {}).get("warning")
            if warning:
                record["warning"] = warning
            builder.add(
                ids["key"], {"jpg": encode_jpeg(crops[i], options.jpeg_quality), "json": sample_json(record)}
            )
        if counter is not None:
            counts = [len(faces) for faces in found]
            counter.add(len(batch), len(batch.skipped), counts, time.perf_counter() - started)
    rows.sort(key=lambda row: row["key"])
    return builder.finish(), pa.Table.from_pylist(rows, schema=ALIGNED_SCHEMA)


def status_counts(index: pa.Table, generated: int | None = None) -> dict[str, int]:
    """``generated`` (the rows, unless given) and the images of each status in an aligned index."""
    values = index.column("status").to_pylist() if index.num_rows else []
    counts = {status: values.count(status) for status in STATUSES}
    total = len(values) if generated is None else generated
    if sum(counts.values()) != total:
        raise RuntimeError(f"alignment counts {counts} do not add up to {total} generated images")
    return {"generated": total, **counts}


@dataclass
class AlignmentResult:
    """The commit's outcome, the counts by status, and this run's detector statistics."""

    outcome: CommitOutcome
    counts: dict[str, int]
    counter: StageCounter = field(default_factory=StageCounter)

    def metadata(self) -> dict[str, Any]:
        """Counts, faces-per-image histogram, rates and the random-weights warning, for the asset."""
        extra = self.outcome.manifest.extra
        facts = {
            **self.counts,
            "identities": extra.get("identities"),
            "identities_without_aligned_image": extra.get("identities_without_aligned_image"),
            "shards": extra.get("shards"),
            "shards_done_now": 0 if self.outcome.reused else extra.get("shards_done_now"),
            "faces_per_image": self.counter.histogram() or extra.get("faces_per_image"),
            "detector": extra.get("detector"),
            "images_per_second": round(self.counter.images_per_second(), 3),
        }
        return outcome_metadata(self.outcome, facts)


def source_warning(images_artifact: PartitionArtifact) -> tuple[bool, str | None]:
    """``random_init`` and ``warning`` of an upstream committed partition (False, None when it has none)."""
    extra = images_artifact.require_manifest().extra
    return bool(extra.get("random_init")), extra.get("warning")


def commit_aligned_faces(
    artifact: PartitionArtifact,
    images_artifact: PartitionArtifact,
    detector: FaceDetector,
    options: AlignmentOptions = AlignmentOptions(),
    *,
    code_version: str,
    owner: str,
    run_config: Mapping[str, Any] | None = None,
    force: bool = False,
    lease_ttl_s: float = 900.0,
    log: Callable[[str], None] | None = None,
) -> AlignmentResult:
    """Detect and align every generated image of ``images_artifact`` into ``artifact``, shard by shard, then
    commit manifest-last (see the module doc). Reuses a partition committed with the same config and code
    version unless ``force``; committed shards whose input, detector and options are unchanged are reused.
    ``log`` receives progress lines (:class:`~facelake.lake.progress.Progress`) and one line per shard."""
    storage = artifact.storage
    shards = {
        shard.shard_id: shard for shard in generated_image_shards(images_artifact.storage, images_artifact)
    }
    random_init, warning = source_warning(images_artifact)
    generated = read_generated_index(images_artifact.storage, images_artifact, columns=list(ID_COLUMNS))
    known = {row["key"]: row for row in generated.to_pylist()}
    stage_config = {"detector": detector.config(), **options.config()}
    config = {
        **stage_config,
        "images": images_artifact.require_manifest().content_hash,
        **dict(run_config or {}),
    }
    total = sum(len(shard) for shard in shards.values())
    progress = Progress(f"alignment {artifact.artifact}[{artifact.partition}]", total, log, unit="images")
    counter = StageCounter(progress=progress)

    def process(shard_id: int) -> pa.Table:
        data, table = align_shard(
            images_artifact.storage, shards[shard_id], detector, options, counter, known
        )
        relative = f"{OUT_DIR}/{tar_name(shard_id)}"
        storage.write_bytes(artifact.uri(relative), data)
        return with_tar_metadata(table, relative, data)

    def write(attempt: Attempt) -> Written:
        redone = drop_incomplete_tar_shards(attempt, sorted(shards))
        if redone and log:
            log(f"shards {redone}: committed tar missing or truncated, aligning again")
        result = run_shard_stage(
            attempt,
            sorted(shards),
            process,
            OUT_DIR,
            config=stage_config,
            fingerprint=lambda i: shards[i].fingerprint,
            log=log,
            on_reused=lambda i: progress.advance(len(shards[i])),
        )
        files = list(result.files) + committed_tar_entries(attempt, result.files)
        parquets = [entry.path for entry in result.files if entry.path.endswith(".parquet")]
        tables = [read_parquet(storage, artifact.uri(path)) for path in parquets]
        index = pa.concat_tables(tables) if tables else ALIGNED_SCHEMA.empty_table()
        excluded = index.filter(pc.not_equal(index["status"], ALIGNED))
        files.append(write_table(attempt, EXCLUDED_FILE, excluded))
        counts = status_counts(index, total)
        aligned_ids = set(index.filter(pc.equal(index["status"], ALIGNED))["identity_id"].to_pylist())
        identities = set(index["identity_id"].to_pylist())
        extra = {
            **result.stats(),
            **counts,
            "identities": len(identities),
            "identities_without_aligned_image": len(identities - aligned_ids),
            "faces_per_image": counter.histogram(),
            "detector": detector.name,
            "detector_config": detector.config(),
            **options.config(),
            **provenance_extra(random_init, warning),
        }
        return Written(files, rows=counts[ALIGNED], extra=extra)

    outcome = materialize_partition(
        artifact,
        config,
        code_version,
        owner,
        write,
        force=force,
        lease_ttl_s=lease_ttl_s,
        keep=(f"{OUT_DIR}/",),
    )
    if counter.images:
        progress.finish()
    extra = outcome.manifest.extra
    return AlignmentResult(outcome, {key: int(extra[key]) for key in ("generated", *STATUSES)}, counter)


# --- reading an aligned partition ---------------------------------------------------------------------


def aligned_index(storage: Storage, artifact: PartitionArtifact, status: str | None = ALIGNED) -> pa.Table:
    """The committed aligned index (:data:`ALIGNED_SCHEMA`), only the rows of ``status`` unless it is None."""
    index = read_stage_table(storage, artifact, OUT_DIR)
    if not index.num_rows:
        return ALIGNED_SCHEMA.empty_table()
    return index if status is None else index.filter(pc.equal(index["status"], status))


@dataclass(eq=False)
class AlignedBatch:
    """Up to ``batch_size`` aligned crops of one shard: keys, json records, RGB crops, and JPEG bytes."""

    shard_id: int
    keys: list[str]
    records: list[dict[str, Any]]
    crops: list[np.ndarray]
    jpegs: list[bytes]


def iter_aligned_tar(
    storage: Storage, shard_id: int, tar_uri: str, batch_size: int = 64
) -> Iterator[AlignedBatch]:
    """Stream one aligned shard's crops (tar order), ``batch_size`` at a time."""
    group: list[tuple[str, bytes, dict[str, Any]]] = []
    for sample in iter_tar_samples(storage, tar_uri):
        group.append(sample)
        if len(group) == batch_size:
            yield _batch(shard_id, group)
            group = []
    if group:
        yield _batch(shard_id, group)


def iter_aligned(
    storage: Storage, artifact: PartitionArtifact, batch_size: int = 64
) -> Iterator[AlignedBatch]:
    """Stream every committed aligned crop, shard by shard, ``batch_size`` at a time."""
    for shard_id, uri in sorted(committed_tars(artifact).items()):
        yield from iter_aligned_tar(storage, shard_id, uri, batch_size)


def _batch(shard_id: int, group: list[tuple[str, bytes, dict[str, Any]]]) -> AlignedBatch:
    keys, jpegs, records = (list(column) for column in zip(*group, strict=True))
    return AlignedBatch(shard_id, keys, records, decode_images(jpegs), jpegs)


def options_of(extra: Mapping[str, Any]) -> AlignmentOptions:
    """The alignment options a committed partition's ``extra`` records."""
    defaults = asdict(AlignmentOptions())
    return AlignmentOptions(
        **{key: extra.get(key, value) for key, value in defaults.items() if key != "batch_size"}
    )
