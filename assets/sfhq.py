"""SFHQ parts (issue 13): curated synthetic 1024² faces with 110 landmarks, 19-class parsing maps and shipped
CLIP features, one static partition per part (``1`` .. ``4``).

``sfhq_index[part]`` lists the part's folder (``sfhq.part_uri_template`` under ``{sources}``, local or S3):
the index (a flag per modality) and every missing, orphan or unexpected file by name. Downstream assets read
the committed index, never the folder listing again:

- ``sfhq_landmarks[part]``: the 110 points, face box, validity, eye-line measures (from the ONE declared,
  ASSUMED landmark index table, ``sfhq.landmark_index``);
- ``sfhq_segmentations[part]``: class fractions, eye centroids, roll, hairline measures per map;
- ``sfhq_clip_features[part]``: the shipped feature pickles, read through the restricted unpickler (a
  malicious pickle is refused and nothing in it runs), written in the CLIP stage's clip-retrieval layout with
  the feature key mapped to its embedding space (``facelake.clip.foreign``), so ``facelake search --asset
  sfhq_clip_features`` encodes queries with that space's model; SFHQ's claim (no two images above ~0.92) is
  checked exactly with the near-duplicate engine;
- ``sfhq_face_embeddings[part]`` (GPU): the largest face per image through the registry's detector and
  embedder; a HyperFace gallery source (``hyperface.gallery.source: sfhq_face_embeddings``);
- ``sfhq_report[part]``: the exploratory plots in the UI and one self-contained ``report.html``;
- ``sfhq_clip_embeddings[part]`` (GPU, not in ``sfhq_part_job``): the CLIP stage's own embeddings of the
  images by the clip resource's model (:func:`assets.clip.clip_embeddings_asset`), the alternative to the
  shipped features.

Every stage writes the files it could not use into ``problems.parquet`` and has a ``no_problems`` check that
FAILS (severity error, not blocking: the usable files are still processed) when there is any. Artifacts live
under ``{root}/sfhq/<artifact>/<part>/`` (:mod:`facelake.sfhq.artifacts`).
"""

# No "from __future__ import annotations" here: Dagster reads the asset functions' annotations at runtime.

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    Definitions,
    MetadataValue,
    StaticPartitionsDefinition,
)

from assets.areas import area_definitions, asset_job
from assets.clip import clip_embeddings_asset
from assets.faces.stages import (
    embedder_config,
    primary_face_extra,
    primary_face_metadata,
    primary_face_models,
)
from assets.materializing import Commit, Plan, Step, code_version, committed_asset
from assets.pools import cpu_asset, gpu_asset
from facelake.clip.dedup import near_duplicates
from facelake.clip.foreign import (
    FOREIGN,
    ForeignSpace,
    committed_space_record,
    resolve_space,
    searchable,
    spec_of,
    weights_here,
)
from facelake.clip.layout import (
    SPACE_FILE,
    ClipEmbeddings,
    metadata_table,
    read_partition,
    space_record,
    to_float16,
    write_part,
)
from facelake.clip.space import random_weights_warning
from facelake.clip.stage import ClipSample
from facelake.faces.primary import NamedImages, embed_primary_faces
from facelake.faces.stages import StageCounter
from facelake.lake.commit import Attempt, FileEntry, Manifest, PartitionArtifact, Written
from facelake.lake.hashing import combine_hashes
from facelake.lake.progress import Progress
from facelake.lake.storage import Storage
from facelake.lake.tables import read_parquet
from facelake.settings import FacelakeSettings
from facelake.sfhq import artifacts as sfhq
from facelake.sfhq.catalog import PAIRS_FILE
from facelake.sfhq.faces import NAME_COLUMN, NO_FACE_SCHEMA, iter_part_images
from facelake.sfhq.features import FeatureMatrix, clip_metadata, features_matrix
from facelake.sfhq.landmarks import read_landmarks
from facelake.sfhq.layout import (
    FEATURES,
    IMAGES,
    LANDMARKS,
    SEGMENTATIONS,
    PartScan,
    SfhqPart,
    concat_problems,
    problems_table,
    scan_part,
)
from facelake.sfhq.plots import hairline_summary
from facelake.sfhq.reader import FileProblem, map_files
from facelake.sfhq.report import Report, build_report, describe, problems_text
from facelake.sfhq.segmentation import read_segmentations
from facelake.sfhq.settings import LANDMARK_COUNT, PARTS, SfhqSettings

GROUP = "sfhq"
INDEX_ASSET = "sfhq_index"
LANDMARKS_ASSET = "sfhq_landmarks"
SEGMENTATIONS_ASSET = "sfhq_segmentations"
FEATURES_ASSET = "sfhq_clip_features"
FACES_ASSET = "sfhq_face_embeddings"
REPORT_ASSET = "sfhq_report"
CLIP_EMBEDDINGS_ASSET = "sfhq_clip_embeddings"
SFHQ_ASSETS = (INDEX_ASSET, LANDMARKS_ASSET, SEGMENTATIONS_ASSET, FEATURES_ASSET, FACES_ASSET, REPORT_ASSET)
PROBLEMS_CHECK = "no_problems"
CLAIM_CHECK = "no_near_duplicates_above_claim"
PROBE_HITS_FILE = "probe_hits.parquet"
READ_CHUNK = 2048
"""Files per engine call: a progress line can go out between chunks (every 5 % or 30 s)."""
LAYOUT_ROWS = 100_000
"""Rows per clip-retrieval part of the features layout (an SFHQ part, ~90-125k images, makes one or two)."""
TOP_PAIRS = 10
SHARD_IMAGES = 10_000
"""Images per input shard of ``sfhq_clip_embeddings`` (its unit of commit and resume)."""

FEATURES_SETTINGS = {
    "feature_key",
    "feature_model",
    "feature_pretrained",
    "near_duplicate_threshold",
    "image_size",
}
"""The sfhq settings the shipped features' layout depends on (with :data:`LAYOUT_ROWS`)."""
REPORT_SETTINGS = {"report_sample", "report_measure", "report_seed", "probe_k", "landmark_index"}
"""The sfhq settings the report depends on (with the probe prompts)."""

sfhq_parts = StaticPartitionsDefinition(list(PARTS))
"""SFHQ's parts ``1`` .. ``4``."""


# --- sources and committed inputs ----------------------------------------------------------------------------


def part_source(settings: FacelakeSettings, part: str) -> SfhqPart:
    """The part's folder (``sfhq.part_uri_template`` under ``sources``), read with the settings' S3 options."""
    return SfhqPart.at(settings.sfhq.part_uri(settings.sources, part), part, settings.s3.options())


def _committed_file(artifact: PartitionArtifact, manifest: Manifest, name: str) -> str | None:
    """The committed file named ``name`` (wherever its attempt put it), or None."""
    paths = [f.path for f in manifest.files if f.path.rsplit("/", 1)[-1] == name]
    return artifact.uri(paths[0]) if len(paths) == 1 else None


def committed_table(lake: Storage, name: str, part: str, file: str) -> tuple[pa.Table, Manifest]:
    """Table ``file`` of the committed SFHQ artifact ``name`` (raises naming the asset when not committed)."""
    artifact = sfhq.artifact(lake, name, part)
    manifest = artifact.require_manifest()
    uri = _committed_file(artifact, manifest, file)
    if uri is None:
        raise FileNotFoundError(f"{artifact.prefix}: the committed partition lists no {file}")
    return read_parquet(lake, uri), manifest


def committed_scan(settings: FacelakeSettings, lake: Storage, part: str) -> tuple[PartScan, Manifest]:
    """The part as ``sfhq_index[part]`` committed it (its folder, index and problems), and that manifest."""
    index, manifest = committed_table(lake, sfhq.INDEX, part, sfhq.INDEX_FILE)
    problems, _ = committed_table(lake, sfhq.INDEX, part, sfhq.PROBLEMS_FILE)
    source = SfhqPart.at(manifest.extra["folder"], part, settings.s3.options())
    return PartScan(source, index, problems), manifest


def table_digest(*tables: pa.Table) -> str:
    """sha256 of the tables' Arrow IPC bytes (the same content always gives the same digest)."""
    digest = hashlib.sha256()
    for table in tables:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        digest.update(sink.getvalue().to_pybytes())
    return digest.hexdigest()


def _chunks(names: Sequence[str], size: int = READ_CHUNK) -> Iterator[list[str]]:
    for start in range(0, len(names), size):
        yield list(names[start : start + size])


# --- checks ------------------------------------------------------------------------------------------------


def problems_spec(asset: str, what: str) -> AssetCheckSpec:
    return AssetCheckSpec(
        PROBLEMS_CHECK,
        asset=asset,
        description=f"No {what} could not be used: fails on any row of the partition's problems.parquet "
        "(every missing, orphan, unexpected, unreadable, unsafe or invalid file, by name).",
    )


def problems_check(lake: Storage, name: str, part: str, manifest: Manifest) -> AssetCheckResult:
    """``no_problems`` from a committed stage: passed when its problems.parquet is empty; the counts by kind
    and the first names per kind in the metadata."""
    artifact = sfhq.artifact(lake, name, part)
    uri = _committed_file(artifact, manifest, sfhq.PROBLEMS_FILE)
    problems = read_parquet(lake, uri) if uri else problems_table([])
    counts = dict(manifest.extra.get("problems", {}))
    return AssetCheckResult(
        check_name=PROBLEMS_CHECK,
        passed=problems.num_rows == 0,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "problem_rows": problems.num_rows,
            "problems_by_kind": MetadataValue.json(counts),
            "problems": MetadataValue.md("```\n" + problems_text(problems, 20) + "\n```"),
        },
    )


def _text(value: str) -> MetadataValue:
    return MetadataValue.md("```\n" + value + "\n```")


def part_stage(
    pool: Callable,
    version: str,
    name: str,
    *,
    problems_of: str | None = None,
    deps: Sequence[str] = (INDEX_ASSET,),
    checks: Sequence[AssetCheckSpec] = (),
    kinds: set[str] | None = None,
    **options: Any,
) -> Callable[[Callable[[Step], Plan]], Any]:
    """``committed_asset`` for one stage of an SFHQ part: partitioned by part, in the SFHQ group, after
    ``deps``, with the ``no_problems`` check over ``problems_of`` (what a problem row is about) and ``checks``;
    the asset's description is the stage function's docstring (its lines joined into one)."""
    specs = [problems_spec(name, problems_of)] if problems_of else []

    def wrap(plan: Callable[[Step], Plan]) -> Any:
        return committed_asset(
            pool,
            version=version,
            name=name,
            group_name=GROUP,
            partitions_def=sfhq_parts,
            deps=list(deps),
            check_specs=[*specs, *checks],
            kinds=kinds or {"parquet"},
            description=" ".join((plan.__doc__ or "").split()),
            **options,
        )(plan)

    return wrap


def read_chunked(
    names: Sequence[str], read: Callable[[list[str]], Any], label: str, unit: str, log: Callable[[str], None]
) -> tuple[list[pa.Table], pa.Table]:
    """``read`` over ``names`` in chunks, progress between them: its tables and the problems, concatenated."""
    progress = Progress(label, len(names), log, unit=unit)
    tables, problems = [], []
    for chunk in _chunks(names):
        result = read(chunk)
        tables.append(result.table)
        problems.append(result.problems)
        progress.advance(len(chunk))
    progress.finish()
    return tables, concat_problems(problems)


class StageInput(NamedTuple):
    """What a stage of an SFHQ part reads: the committed scan, the file names it processes, and the run config
    (the stage's ``config`` plus the committed index's content hash)."""

    scan: PartScan
    names: list[str]
    run_config: dict[str, Any]


def stage_input(
    settings: FacelakeSettings, step: Step, config: dict[str, Any], *modalities: str
) -> StageInput:
    """The part as ``sfhq_index`` committed it, the names with an image and every one of ``modalities``, and
    the run config."""
    scan, index_manifest = committed_scan(settings, step.lake, step.part)
    return StageInput(scan, scan.names(*modalities), {**config, "index": index_manifest.content_hash})


def stage_plan(
    step: Step,
    artifact: str,
    run_config: dict[str, Any],
    write: Callable[[Attempt], Written],
    report: Callable[[Manifest], dict[str, Any]],
    checks: Callable[[Manifest], list[AssetCheckResult]] | None = None,
) -> Plan:
    """Commit the SFHQ ``artifact`` of the step's part; the checks default to its ``no_problems`` check."""
    lake, part = step.lake, step.part

    def no_problems(manifest: Manifest) -> list[AssetCheckResult]:
        return [problems_check(lake, artifact, part, manifest)]

    commit = Commit(sfhq.artifact(lake, artifact, part), run_config, write, step.config.force)
    return Plan(commit, report, checks or no_problems)


# --- the assets ------------------------------------------------------------------------------------------


def index_asset(settings: FacelakeSettings) -> Any:
    version = code_version("1", {"part_uri_template": settings.sfhq.part_uri_template})

    @part_stage(cpu_asset, version, INDEX_ASSET, problems_of="source file", deps=())
    def sfhq_index(step: Step) -> Plan:
        """The SFHQ part's folder (sfhq.part_uri_template under {sources}; local or s3://) listed once:
        index.parquet (one row per name seen in images/, landmarks/, segmentations/, pretrained_features/, a
        flag per modality) and problems.parquet (every image missing a landmark, map or feature file, every
        file without an image, every file of another extension, by name)."""
        part = step.part
        source = part_source(settings, part)
        step.context.log.info(f"listing SFHQ part {part} at {source.folder}")
        scan = scan_part(source)
        counts = scan.counts()
        step.context.log.info(f"SFHQ part {part}: {counts}")
        run_config = {"folder": source.folder, "listing": table_digest(scan.index, scan.problems)}

        def write(attempt: Attempt) -> Written:
            tables = {sfhq.INDEX_FILE: scan.index, sfhq.PROBLEMS_FILE: scan.problems}
            return write_tables_extra(attempt, tables, {"folder": source.folder, "counts": counts})

        def report(manifest: Manifest) -> dict[str, Any]:
            extra = manifest.extra
            index, _ = committed_table(step.lake, sfhq.INDEX, part, sfhq.INDEX_FILE)
            problems, _ = committed_table(step.lake, sfhq.INDEX, part, sfhq.PROBLEMS_FILE)
            text = describe(PartScan(source, index, problems))
            return {"source": extra["folder"], **extra["counts"], "validation": _text(text)}

        return stage_plan(step, sfhq.INDEX, run_config, write, report)

    return sfhq_index


def write_tables_extra(
    attempt: Attempt, tables: dict[str, pa.Table], extra: dict[str, Any], **options
) -> Written:
    """:func:`facelake.sfhq.artifacts.write_tables` with ``extra`` in the manifest."""
    return sfhq.write_tables(attempt, tables, extra=extra, **options)


def landmarks_asset(settings: FacelakeSettings) -> Any:
    config = {
        "landmark_index": settings.sfhq.landmark_index.model_dump(),
        "image_size": settings.sfhq.image_size,
    }
    version = code_version("1", config)

    @part_stage(cpu_asset, version, LANDMARKS_ASSET, problems_of="landmarks file")
    def sfhq_landmarks(step: Step) -> Plan:
        """landmarks.parquet: per image with a landmarks file, the 110 points (fixed-size list, as stored),
        face box, validity (finite, inside the image; invalid rows kept and reported), eye centres,
        inter-ocular distance and roll from the DECLARED, ASSUMED landmark index table (sfhq.landmark_index:
        the order of SFHQ's 110 points is undocumented). Unreadable or malformed files and invalid rows are
        problems."""
        part, index = step.part, settings.sfhq.landmark_index
        scan, names, run_config = stage_input(settings, step, config, LANDMARKS)

        def write(attempt: Attempt) -> Written:
            tables, problems = read_chunked(
                names,
                lambda chunk: read_landmarks(
                    scan.part, chunk, index, size=settings.sfhq.image_size, threads=settings.sfhq.threads
                ),
                f"landmarks sfhq[{part}]",
                "files",
                step.context.log.info,
            )
            table = pa.concat_tables(tables) if tables else _empty_landmarks(index, settings.sfhq)
            valid = int(np.asarray(table.column("valid").to_pylist(), bool).sum())
            extra = {
                "files": len(names),
                "valid": valid,
                "invalid": table.num_rows - valid,
                "landmark_index": index.label(),
                "landmark_index_assumed": index.assumed,
            }
            tables_out = {sfhq.LANDMARKS_FILE: table, sfhq.PROBLEMS_FILE: problems}
            return write_tables_extra(attempt, tables_out, extra, rows_from=sfhq.LANDMARKS_FILE)

        def report(manifest: Manifest) -> dict[str, Any]:
            extra = manifest.extra
            metadata = {
                "landmark_files": extra["files"],
                "valid_rows": extra["valid"],
                "invalid_rows": extra["invalid"],
                "landmark_index": extra["landmark_index"],
                "landmark_index_assumed": extra["landmark_index_assumed"],
                "problems_by_kind": extra.get("problems", {}),
            }
            if extra["landmark_index_assumed"]:
                metadata["assumption"] = index.note
            return metadata

        return stage_plan(step, sfhq.LANDMARKS, run_config, write, report)

    return sfhq_landmarks


def _empty_landmarks(index, settings: SfhqSettings) -> pa.Table:
    from facelake.sfhq.landmarks import landmarks_table

    return landmarks_table([], np.zeros((0, LANDMARK_COUNT, 2), np.float32), index, settings.image_size)


def segmentations_asset(settings: FacelakeSettings) -> Any:
    config = {"image_size": settings.sfhq.image_size}
    version = code_version("1", config)

    @part_stage(cpu_asset, version, SEGMENTATIONS_ASSET, problems_of="segmentation map")
    def sfhq_segmentations(step: Step) -> Plan:
        """segmentations.parquet: per usable 19-class parsing map, the area fraction of every class, face /
        hair / background fractions, eye centroids of classes 4 and 5 with inter-ocular distance and roll, and
        the hairline (class 17 over the skin, class 1) in the skin centre column with its height and coverage.
        A map that does not decode, is not mode L, has another size or holds a label outside 0-18 is a problem
        (e.g. 'labels outside 0-18: 25 (4096 px)')."""
        part = step.part
        scan, names, run_config = stage_input(settings, step, config, SEGMENTATIONS)

        def write(attempt: Attempt) -> Written:
            tables, problems = read_chunked(
                names,
                lambda chunk: read_segmentations(
                    scan.part, chunk, size=settings.sfhq.image_size, threads=settings.sfhq.threads
                ),
                f"segmentations sfhq[{part}]",
                "maps",
                step.context.log.info,
            )
            table = pa.concat_tables(tables) if tables else read_segmentations(scan.part, []).table
            summary = hairline_summary(table)
            extra = {
                "files": len(names),
                "mean_face_fraction": _mean(table, "face_fraction"),
                "mean_hair_fraction": _mean(table, "hair_fraction"),
                "mean_background_fraction": _mean(table, "background_fraction"),
                "with_hairline": summary.with_hairline,
                "without_hairline": summary.without_hairline,
                "without_skin": summary.without_skin,
            }
            tables_out = {sfhq.SEGMENTATIONS_FILE: table, sfhq.PROBLEMS_FILE: problems}
            return write_tables_extra(attempt, tables_out, extra, rows_from=sfhq.SEGMENTATIONS_FILE)

        def report(manifest: Manifest) -> dict[str, Any]:
            extra = dict(manifest.extra)
            problems = extra.pop("problems", {})
            extra.pop("problem_rows", None)
            return {"map_files": extra.pop("files"), **extra, "problems_by_kind": problems}

        return stage_plan(step, sfhq.SEGMENTATIONS, run_config, write, report)

    return sfhq_segmentations


def _mean(table: pa.Table, column: str) -> float | None:
    values = table.column(column).to_numpy(zero_copy_only=False).astype(np.float64)
    values = values[np.isfinite(values)]
    return round(float(values.mean()), 6) if len(values) else None


# --- the shipped CLIP features -------------------------------------------------------------------------------


def read_features(
    scan: PartScan, names: Sequence[str], key: str, threads: int | None, log: Callable[[str], None] | None
) -> FeatureMatrix:
    """:func:`facelake.sfhq.features.features_matrix` over ``names`` in chunks (progress between them); the
    first usable file fixes the width for the rest."""
    progress = Progress(f"features sfhq[{scan.part.part}]", len(names), log, unit="files")
    kept: list[str] = []
    matrices: list[np.ndarray] = []
    problems: list[pa.Table] = []
    dimension = None
    for chunk in _chunks(names):
        result = features_matrix(scan.part, chunk, key, dimension=dimension, threads=threads)
        if result.names:
            dimension = dimension or result.dimension
            kept.extend(result.names)
            matrices.append(result.matrix)
        problems.append(result.problems)
        progress.advance(len(chunk))
    progress.finish()
    matrix = np.concatenate(matrices) if matrices else np.zeros((0, 0), np.float32)
    return FeatureMatrix(kept, matrix, key, concat_problems(problems))


def write_feature_layout(
    attempt: Attempt,
    scan: PartScan,
    features: FeatureMatrix,
    space: ForeignSpace,
    size: int,
    extra: dict[str, Any],
) -> tuple[list[FileEntry], ClipEmbeddings, float]:
    """The features in clip-retrieval's layout under the partition prefix (float16 unit rows, metadata with
    image_path = the image's URI and name, ``space.json`` with the foreign record); returns the files, the
    stored embeddings and the largest ``|norm - 1|`` of the shipped vectors."""
    artifact = attempt.artifact
    storage, prefix = artifact.storage, artifact.prefix
    profile = space.profile
    norms = np.linalg.norm(features.matrix.astype(np.float64), axis=1) if len(features.names) else np.zeros(0)
    norm_error = float(np.abs(norms - 1.0).max(initial=0.0))
    matrix = features.matrix if len(features.names) else np.zeros((0, profile.dimension), np.float32)
    vectors = to_float16(matrix)
    paths = clip_metadata(scan.part, features.names)
    sizes = np.full((len(features.names), 2), size, np.int32)
    metadata = metadata_table(paths.column("image_path").to_pylist(), profile, sizes=sizes)
    metadata = metadata.append_column("name", paths.column("name"))
    files = []
    starts = range(0, max(len(features.names), 1), LAYOUT_ROWS)
    for index, start in enumerate(starts):
        stop = min(start + LAYOUT_ROWS, len(features.names))
        for written in write_part(
            storage, prefix, index, vectors[start:stop], metadata.slice(start, stop - start)
        ):
            files.append(FileEntry(written.path, written.size, written.sha256, written.rows))
    record = space_record(
        profile,
        random_weights_warning(profile),
        {FOREIGN: space.record(), "feature_key": features.key, "source": scan.part.folder, **extra},
    )
    space_uri = artifact.uri(SPACE_FILE)
    storage.write_bytes(space_uri, json.dumps(record, indent=2, sort_keys=True).encode())
    files.append(attempt.entry(space_uri))
    return files, ClipEmbeddings(vectors, metadata, profile.provenance()), norm_error


def pairs_table(result: Any, data: ClipEmbeddings) -> pa.Table:
    """Every near-duplicate pair by name (most similar first), with the float64 similarity and the rows."""
    pairs = result.pairs
    names = data.metadata.column("name")
    order = np.lexsort((pairs.cols, pairs.rows, -pairs.similarity))
    rows, cols = pairs.rows[order], pairs.cols[order]
    return pa.table(
        {
            "name_a": names.take(pa.array(rows, pa.int64())),
            "name_b": names.take(pa.array(cols, pa.int64())),
            "similarity": pa.array(pairs.similarity[order], pa.float64()),
            "row_a": pa.array(rows, pa.int64()),
            "row_b": pa.array(cols, pa.int64()),
        }
    )


def clip_features_asset(settings: FacelakeSettings) -> Any:
    options = settings.sfhq
    config = {**options.model_dump(include=FEATURES_SETTINGS), "layout_rows": LAYOUT_ROWS}
    version = code_version("1", config)

    @part_stage(
        cpu_asset,
        version,
        FEATURES_ASSET,
        problems_of="feature pickle",
        checks=[
            AssetCheckSpec(
                CLAIM_CHECK,
                asset=FEATURES_ASSET,
                description="SFHQ's claim: no two images' CLIP features above sfhq.near_duplicate_threshold "
                "(0.92), checked exactly with the near-duplicate engine (severity warn).",
            ),
        ],
        kinds={"parquet"},
    )
    def sfhq_clip_features(step: Step) -> Plan:
        """The shipped pretrained_features pickles (sfhq.feature_key, default CLIP_ViTL_14@336) read through
        the restricted unpickler (numpy arrays, dicts, lists, scalars only: a malicious pickle is refused and
        nothing in it runs), in the CLIP stage's clip-retrieval layout (img_emb/img_emb_<i>.npy float16 unit
        rows + metadata/metadata_<i>.parquet) with the key mapped to its embedding space (the CLIP stage's
        foreign-label table: CLIP_ViTL_14@336 = open_clip ViT-L-14-336-quickgelu / openai; the weights are
        hashed when here, else the space is declared and marked unverified); near_duplicate_pairs.parquet:
        every pair above the claim's threshold. `facelake search --asset sfhq_clip_features --part N` searches
        it with that space's text encoder."""
        part, lake, log = step.part, step.lake, step.context.log
        from facelake.clip.foreign import feature_spec

        scan, names, run_config = stage_input(settings, step, config, FEATURES)
        spec = feature_spec(options.feature_key, options.feature_model, options.feature_pretrained)
        here, why = weights_here(spec)
        run_config = {**run_config, "weights_here": here, "spec": spec.describe()}

        def write(attempt: Attempt) -> Written:
            features = read_features(scan, names, options.feature_key, options.threads, log.info)
            dimension = features.dimension if features.names else None
            space = resolve_space(
                options.feature_key,
                dimension,
                model=options.feature_model,
                pretrained=options.feature_pretrained,
            )
            log.info(f"{FEATURES_ASSET}[{part}]: {len(features.names)} vectors; {space.describe()}")
            if space.profile.random_init:
                log.warning(random_weights_warning(space.profile))
            threshold = options.near_duplicate_threshold
            files, data, norm_error = write_feature_layout(
                attempt, scan, features, space, options.image_size, {"near_duplicate_threshold": threshold}
            )
            result, _ = near_duplicates(data, threshold)
            pairs = pairs_table(result, data)
            counts = result.counts()
            extra = {
                "feature_key": options.feature_key,
                "files": len(names),
                "dimension": space.profile.dimension,
                "space": space.profile.provenance(),
                "space_label": space.profile.describe(),
                "weights_verified": space.verified,
                "weights_reason": space.reason or None,
                "model": space.spec.describe(),
                "random_init": space.profile.random_init,
                "warning": random_weights_warning(space.profile),
                "shipped_max_norm_error": norm_error,
                "near_duplicates": {**counts, "threshold": threshold},
                "top_pairs": pairs.slice(0, TOP_PAIRS).to_pylist(),
            }
            written = sfhq.write_tables(
                attempt,
                {sfhq.PROBLEMS_FILE: features.problems, PAIRS_FILE: pairs},
                rows_from=sfhq.PROBLEMS_FILE,
                extra=extra,
            )
            return Written(files + written.files, rows=len(features.names), extra=written.extra)

        def report(manifest: Manifest) -> dict[str, Any]:
            extra = manifest.extra
            duplicates = extra["near_duplicates"]
            metadata = {
                "feature_key": extra["feature_key"],
                "feature_files": extra["files"],
                "dimension": extra["dimension"],
                "space": extra["space_label"],
                "space_provenance": extra["space"],
                "weights_verified": extra["weights_verified"],
                "model": extra["model"],
                "shipped_max_norm_error": extra["shipped_max_norm_error"],
                "near_duplicate_threshold": duplicates["threshold"],
                "near_duplicate_pairs": duplicates["pairs"],
                "near_duplicate_groups": duplicates["groups"],
                "images_in_near_duplicate_groups": duplicates["images_in_groups"],
                "claim_holds": duplicates["pairs"] == 0,
                "top_pairs": extra["top_pairs"],
                "problems_by_kind": extra.get("problems", {}),
                "layout": "clip-retrieval: img_emb/img_emb_<i>.npy (float16, unit rows) + "
                "metadata/metadata_<i>.parquet",
            }
            if extra["weights_reason"]:
                metadata["weights_reason"] = extra["weights_reason"]
            if extra["warning"]:
                metadata["warning"] = extra["warning"]
            return metadata

        def checks(manifest: Manifest) -> list[AssetCheckResult]:
            duplicates = manifest.extra["near_duplicates"]
            claim = AssetCheckResult(
                check_name=CLAIM_CHECK,
                passed=duplicates["pairs"] == 0,
                severity=AssetCheckSeverity.WARN,
                metadata={
                    "threshold": duplicates["threshold"],
                    "pairs": duplicates["pairs"],
                    "groups": duplicates["groups"],
                    "top_pairs": MetadataValue.json(manifest.extra["top_pairs"]),
                },
            )
            return [problems_check(lake, sfhq.CLIP_FEATURES, part, manifest), claim]

        if not here:
            log.info(f"{options.feature_key}: {why}; the features' space will be declared, not verified")
        return stage_plan(step, sfhq.CLIP_FEATURES, run_config, write, report, checks)

    return sfhq_clip_features


# --- face embeddings -------------------------------------------------------------------------------------------


def _advancing(batches: Iterable[NamedImages], progress: Progress) -> Iterator[NamedImages]:
    for batch in batches:
        yield batch
        progress.advance(len(batch))


def face_embeddings_asset(settings: FacelakeSettings) -> Any:
    version = code_version("1", embedder_config(settings.models))

    @part_stage(
        gpu_asset,
        version,
        FACES_ASSET,
        problems_of="image",
        resources=("models",),
        kinds={"pytorch", "parquet"},
    )
    def sfhq_face_embeddings(step: Step) -> Plan:
        """Identity embeddings (L2-normalised, with the embedder's provenance) of the largest face of every
        SFHQ image of the part (the registry's RetinaFace detector and identity embedder): embeddings.parquet
        (name, face_box, face_score, faces_detected, embedding), no_face.parquet (images without a face),
        problems.parquet (undecodable images). A HyperFace gallery source (hyperface.gallery.source:
        sfhq_face_embeddings)."""
        part, log = step.part, step.context.log
        scan, names, index = stage_input(settings, step, {})
        detector, embedder, identity = primary_face_models(step.resource("models"))
        profile = embedder.profile
        run_config = {**identity, **index}
        progress = Progress(f"faces sfhq[{part}]", len(names), log.info, unit="images")
        counter = StageCounter()
        log.info(f"{detector.name} on {detector.device}; embedder {profile.describe()}; {len(names)} images")

        def write(attempt: Attempt) -> Written:
            rows: list[tuple] = []
            batches = iter_part_images(
                scan.part,
                names,
                batch_size=settings.sfhq.face_batch_size,
                threads=settings.sfhq.threads,
                problems=rows,
            )
            result = embed_primary_faces(
                _advancing(batches, progress),
                detector,
                embedder,
                counter,
                name_column=NAME_COLUMN,
                no_face_schema=NO_FACE_SCHEMA,
            )
            progress.finish()
            extra = primary_face_extra(len(names), result, profile)
            tables = {
                sfhq.EMBEDDINGS_FILE: result.embeddings,
                sfhq.NO_FACE_FILE: result.no_face,
                sfhq.PROBLEMS_FILE: problems_table(rows),
            }
            return write_tables_extra(attempt, tables, extra, rows_from=sfhq.EMBEDDINGS_FILE)

        def report(manifest: Manifest) -> dict[str, Any]:
            metadata = primary_face_metadata(counter, detector, profile, manifest.extra)
            return {**metadata, "problems_by_kind": manifest.extra.get("problems", {})}

        return stage_plan(step, sfhq.FACE_EMBEDDINGS, run_config, write, report)

    return sfhq_face_embeddings


# --- the report -------------------------------------------------------------------------------------------------


def text_search_section(
    report: Report, lake: Storage, scan: PartScan, options: SfhqSettings, log: Callable[[str], None]
) -> pa.Table | None:
    """Add the probe prompts' top hits over the committed features (a contact sheet and a listing) when the
    features' model is here; otherwise a line saying why not. Returns the hits (None without search)."""
    part = scan.part.part
    heading = "Text search"
    features = sfhq.artifact(lake, sfhq.CLIP_FEATURES, part)
    manifest = features.manifest()
    if manifest is None:
        report.add(
            heading,
            text=f"{FEATURES_ASSET}[{part}] is not committed: no features to search",
            slug="text_search",
        )
        return None
    record = committed_space_record(features, manifest).get(FOREIGN)
    label = manifest.extra.get("space_label", "?")
    if not record:
        report.add(heading, text=f"no model recorded for the features' space {label}", slug="text_search")
        return None
    spec = spec_of(record)
    here, why = weights_here(spec)
    if not here:
        text = (
            f"no text encoder for the features' space ({record['label']} = {spec.model} / {spec.pretrained}): "
            f"{why}. Provide the weights (see `facelake search`'s error for how) to see the probe prompts' hits."
        )
        report.add(heading, text=text, slug="text_search")
        return None
    from facelake.clip.encoder import ClipEncoder
    from facelake.clip.model import load_clip
    from facelake.clip.search import ClipSearch
    from facelake.clip.sheet import contact_sheet, hit_labels

    loaded = load_clip(spec)
    embeddings, note = searchable(read_partition(features), record, loaded.profile)
    encoder = ClipEncoder(loaded)
    hits = ClipSearch(embeddings, encoder).text(list(options.probe_prompts), k=options.probe_k)
    lines = [f"model: {loaded.profile.describe()}"] + ([note] if note else [])
    if encoder.warning:
        lines.append(f"WARNING: {encoder.warning}")
    for prompt in options.probe_prompts:
        lines.append(f"{prompt!r}:")
        for row in hits.filter(pc.equal(hits.column("query"), prompt)).to_pylist():
            lines.append(f"  #{row['rank']} {row['score']:.4f} {row['name']}")
    images = []
    for uri in hits.column("image_path").to_pylist():
        try:
            images.append(scan.part.storage.read_bytes(uri))
        except OSError:
            images.append(None)
    labels = [
        f"{q[:24]} {label}"
        for q, label in zip(hits.column("query").to_pylist(), hit_labels(hits), strict=True)
    ]
    sheet = contact_sheet(
        images,
        labels,
        columns=options.probe_k,
        thumb=128,
        title=f"SFHQ part {part}: probe prompts",
        warning=encoder.warning,
    )
    log(f"text search over {len(embeddings)} features: {len(hits)} hits")
    report.add(heading, sheet, text="\n".join(lines), slug="text_search")
    return hits.select([c for c in hits.column_names if c != "method"])


def report_asset(settings: FacelakeSettings) -> Any:
    options = settings.sfhq
    config = {**options.model_dump(include=REPORT_SETTINGS), "probe_prompts": list(options.probe_prompts)}
    version = code_version("1", config)

    @part_stage(
        cpu_asset,
        version,
        REPORT_ASSET,
        deps=(INDEX_ASSET, LANDMARKS_ASSET, SEGMENTATIONS_ASSET, FEATURES_ASSET),
        kinds={"html"},
    )
    def sfhq_report(step: Step) -> Plan:
        """The exploratory analysis of the part: counts and every problem, the mean landmark layout (ASSUMED
        order), class-area distributions, derived measures, hairline coverage, example images per quantile of
        sfhq.report_measure, and the top text-search hits of sfhq.probe_prompts when the features' text
        encoder is here (else a line saying why not): plots in the metadata, and report.html (one
        self-contained file, plots embedded) plus each plot as PNG beside it."""
        part, lake, log = step.part, step.lake, step.context.log
        scan, index_manifest = committed_scan(settings, lake, part)
        landmarks, landmarks_manifest = committed_table(lake, sfhq.LANDMARKS, part, sfhq.LANDMARKS_FILE)
        maps, maps_manifest = committed_table(lake, sfhq.SEGMENTATIONS, part, sfhq.SEGMENTATIONS_FILE)
        inputs = {"index": index_manifest.content_hash, "landmarks": landmarks_manifest.content_hash}
        inputs["segmentations"] = maps_manifest.content_hash
        problems = []
        for name in (sfhq.LANDMARKS, sfhq.SEGMENTATIONS, sfhq.CLIP_FEATURES, sfhq.FACE_EMBEDDINGS):
            artifact = sfhq.artifact(lake, name, part)
            manifest = artifact.manifest()
            inputs[name] = manifest.content_hash if manifest else None
            uri = _committed_file(artifact, manifest, sfhq.PROBLEMS_FILE) if manifest else None
            if uri:
                problems.append(read_parquet(lake, uri))
        run_config = {**config, "inputs": inputs}

        def write(attempt: Attempt) -> Written:
            report = build_report(
                scan,
                landmarks=landmarks,
                segmentations=maps,
                problems=problems,
                index=options.landmark_index,
                measure=options.report_measure,
                sample=options.report_sample,
                seed=options.report_seed,
                threads=options.threads,
            )
            hits = text_search_section(report, lake, scan, options, log.info)
            files = {sfhq.REPORT_FILE: report.to_html().encode(), **report.plots()}
            tables = {PROBE_HITS_FILE: hits} if hits is not None else {}
            sections = [
                {"heading": s.heading, "slug": s.slug, "plot": s.png is not None, "text": s.text}
                for s in report.sections
            ]
            extra = {"title": report.title, "sections": sections, "text_search": hits is not None}
            written = sfhq.write_tables(attempt, tables, files=files, extra=extra)
            return Written(written.files, rows=len(sections), extra=written.extra)

        def report_metadata(manifest: Manifest) -> dict[str, Any]:
            artifact = sfhq.artifact(lake, sfhq.REPORT, part)
            metadata: dict[str, Any] = {"report_html": _committed_file(artifact, manifest, sfhq.REPORT_FILE)}
            for section in manifest.extra["sections"]:
                parts = [f"### {section['heading']}"]
                if section["text"]:
                    parts.append("```\n" + section["text"] + "\n```")
                if section["plot"]:
                    from facelake.lake.plots import png_markdown

                    uri = _committed_file(artifact, manifest, f"{section['slug']}.png")
                    parts.append(png_markdown(lake.read_bytes(uri), section["heading"]))
                metadata[section["slug"]] = MetadataValue.md("\n\n".join(parts))
            metadata["text_search_ran"] = manifest.extra["text_search"]
            return metadata

        return Plan(
            Commit(sfhq.artifact(lake, sfhq.REPORT, part), run_config, write, step.config.force),
            report_metadata,
        )

    return sfhq_report


# --- the CLIP stage's own embeddings of the images -------------------------------------------------------------


@dataclass(frozen=True)
class SfhqShard:
    """A run of the part's image names (in index order) as one input shard of the CLIP embeddings factory."""

    shard_id: int
    folder: str
    names: tuple[str, ...]
    fingerprint: str

    def __len__(self) -> int:
        return len(self.names)


def sfhq_image_shards(settings: FacelakeSettings) -> Callable[[Storage, str], dict[int, SfhqShard]]:
    """``shards_of`` for :func:`assets.clip.clip_embeddings_asset`: the committed index's images in shards of
    :data:`SHARD_IMAGES`, each fingerprinted by the folder and its names."""

    def shards_of(lake: Storage, part: str) -> dict[int, SfhqShard]:
        scan, _ = committed_scan(settings, lake, part)
        names, folder = scan.names(), scan.part.folder
        shards = {}
        for shard_id, start in enumerate(range(0, len(names), SHARD_IMAGES)):
            chunk = tuple(names[start : start + SHARD_IMAGES])
            shards[shard_id] = SfhqShard(shard_id, folder, chunk, combine_hashes([folder, *chunk]))
        return shards

    return shards_of


def sfhq_image_samples(
    settings: FacelakeSettings,
) -> Callable[[Storage, str, SfhqShard], Iterator[ClipSample]]:
    """``samples_of``: a shard's JPEG bytes (read ahead in a thread pool), keyed by the image's URI; an image
    that cannot be read becomes empty bytes, which the encoder reports as failed to decode."""

    def samples_of(lake: Storage, part: str, shard: SfhqShard) -> Iterator[ClipSample]:
        source = SfhqPart.at(shard.folder, part, settings.s3.options())
        read = map_files(source, IMAGES, shard.names, lambda name, data: data, threads=settings.sfhq.threads)
        for name, data in read:
            yield ClipSample(source.uri(IMAGES, name), b"" if isinstance(data, FileProblem) else data)

    return samples_of


def clip_embeddings(settings: FacelakeSettings) -> Any:
    """The CLIP stage's own embeddings of the part's images (the clip resource's model), by the CLIP factory."""
    return clip_embeddings_asset(
        name=CLIP_EMBEDDINGS_ASSET,
        images=INDEX_ASSET,
        partitions_def=sfhq_parts,
        shards_of=sfhq_image_shards(settings),
        samples_of=sfhq_image_samples(settings),
        size_of=len,
        group=GROUP,
        settings=settings.clip,
        description="CLIP image embeddings of the SFHQ part's images by the clip resource's model (the "
        "alternative to the shipped features of sfhq_clip_features), in clip-retrieval's layout under "
        "{root}/clip/sfhq_clip_embeddings/<part>/: img_emb/img_emb_<i>.npy (float16, L2-normalised) + "
        f"metadata/metadata_<i>.parquet (image_path = the image's URI), one part per {SHARD_IMAGES:,} images, "
        "committed shard by shard (a killed run resumes); GPU step. `facelake search --asset "
        "sfhq_clip_embeddings` searches it with the configured model.",
    )


# --- the area --------------------------------------------------------------------------------------------------


def sfhq_assets(settings: FacelakeSettings) -> list:
    """Index -> landmarks, segmentations, CLIP features, face embeddings -> report, and the CLIP stage's own
    embeddings of the images, per part."""
    return [
        index_asset(settings),
        landmarks_asset(settings),
        segmentations_asset(settings),
        clip_features_asset(settings),
        face_embeddings_asset(settings),
        report_asset(settings),
        clip_embeddings(settings),
    ]


sfhq_part_job = asset_job(
    "sfhq_part_job",
    [AssetKey(name) for name in SFHQ_ASSETS],
    "One SFHQ part end to end: the validated index, landmarks, segmentation statistics, the shipped CLIP "
    "features (restricted unpickling, clip-retrieval layout, the near-duplicate claim), the largest face's "
    "identity embedding per image (GPU step) and the exploratory report; every stage's no_problems check fails "
    "on any file it could not use.",
    partitions_def=sfhq_parts,
)


def definitions(settings: FacelakeSettings) -> Definitions:
    """The SFHQ area for ``settings``."""
    return area_definitions(sfhq_assets(settings), jobs=[sfhq_part_job])
