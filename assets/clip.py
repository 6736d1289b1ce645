"""CLIP features for every image asset (issue 12), by factories applied to each image asset:

* :func:`clip_embeddings_asset`: open_clip image embeddings of an image asset's shards in clip-retrieval's
  layout (``img_emb/img_emb_<i>.npy`` float16 unit rows + ``metadata/metadata_<i>.parquet``), one part per
  input shard, committed shard by shard so a killed run resumes (GPU step); the space, images/s and, for random
  weights, the warning in the metadata. Applied to LAION-Face parts (``laion_face_clip_embeddings[part]``, from
  ``laion_face_images``' webdataset shards) and CelebA-HQ (``celebahq_clip_embeddings``, from the jxie parquet
  files ``celebahq_images`` indexes, one shard per source file);
* :func:`clip_index_asset`: exact search below ``clip.exact_search_max_rows`` (recorded: no index needed), a
  faiss IVF-Flat index above it with its parameters and measured recall@10; contact sheets of the probe
  prompts' hits (``laion_face_clip_index[part]``);
* :func:`clip_near_duplicates_asset`: every pair above ``clip.near_duplicate_threshold`` across the configured
  embedding assets/parts of ONE space, the groups and the keep-list, with the blocking check
  ``no_kept_pair_above_threshold`` that recomputes from the committed keep-list that no two kept images
  exceed the threshold (``clip_near_duplicates``).

Every CLIP artifact lives under ``{root}/clip/<asset>/<part>/`` (:func:`facelake.clip.catalog.clip_artifact`).
An image asset joins with an :class:`ImageSource` (its shards and their :class:`~facelake.clip.stage.ClipSample`
s): SFHQ parts and generated images apply the same factories.
"""

# No "from __future__ import annotations" here: Dagster reads the asset functions' annotations at runtime.

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetKey,
    AssetsDefinition,
    Definitions,
    MaterializeResult,
    MetadataValue,
    PartitionsDefinition,
    asset_check,
)

from assets.areas import area_definitions, gpu_job
from assets.materializing import (
    Commit,
    Plan,
    Step,
    code_version,
    committed_asset,
    lake_asset,
    materialize_result,
    owner,
)
from assets.partitions import laion_parts
from assets.pools import GPU_TAGS, ArtifactFor, cpu_asset, gpu_asset
from facelake.celebahq import dataset as celebahq
from facelake.clip.ann import INDEX_FILE as ANN_INDEX_FILE
from facelake.clip.ann import PARAMS_FILE as ANN_PARAMS_FILE
from facelake.clip.ann import build_ann
from facelake.clip.catalog import (
    GROUPS_FILE,
    GROUPS_SCHEMA,
    INDEX_SUMMARY_FILE,
    INDEX_SUMMARY_SCHEMA,
    KEEP_FILE,
    KEEP_SCHEMA,
    NEAR_DUPLICATES,
    PAIRS_FILE,
    PAIRS_SCHEMA,
    PROBE_HITS_FILE,
    PROBE_HITS_SCHEMA,
    clip_artifact,
    rows_by_shard,
    source_name,
)
from facelake.clip.dedup import (
    KEEP_RULE,
    groups_table,
    keep_table,
    near_duplicate_pairs,
    near_duplicates,
    pairs_table,
)
from facelake.clip.layout import ClipEmbeddings, combine, read_partition
from facelake.clip.search import ClipSearch
from facelake.clip.settings import ClipSettings
from facelake.clip.sheet import contact_sheet, hit_labels
from facelake.clip.space import random_weights_warning
from facelake.clip.stage import ClipSample, commit_clip_embeddings, stage_config, webdataset_samples
from facelake.laion import artifacts as laion_artifacts
from facelake.laion.artifacts import committed_file
from facelake.lake.catalog import committed_partitions
from facelake.lake.commit import Attempt, Manifest, Written
from facelake.lake.errors import FacelakeError, InputError
from facelake.lake.hashing import combine_hashes
from facelake.lake.plots import png_markdown
from facelake.lake.progress import Progress
from facelake.lake.storage import Storage
from facelake.lake.tables import read_parquet
from facelake.lake.webdataset_reader import part_image_shards
from facelake.settings import FacelakeSettings
from resources import StorageResource

GROUP = "clip"
NO_KEPT_PAIR_CHECK = "no_kept_pair_above_threshold"
PROBE_SHEET = "probe_{:02d}.png"
LAION_FACE_CLIP_ASSETS = [AssetKey("laion_face_clip_embeddings"), AssetKey("laion_face_clip_index")]
CLIP_ASSETS = [AssetKey("celebahq_clip_embeddings"), AssetKey(NEAR_DUPLICATES)]


# --- where an image asset's images are -------------------------------------------------------------------


@dataclass(frozen=True)
class ImageSource:
    """An image asset as the CLIP factories see it: ``shards_of(lake, part)`` → shard id → an input shard
    with a ``fingerprint`` (the unit of commit and resume; shard ``i`` becomes clip-retrieval part ``i``),
    ``samples_of(lake, part, shard)`` → its :class:`ClipSample` s, and ``size_of(shard)`` → how many (for
    progress; None when unknown)."""

    asset: str
    shards_of: Callable[[Storage, str], Mapping[int, Any]]
    samples_of: Callable[[Storage, str, Any], Iterable[ClipSample]]
    size_of: Callable[[Any], int] | None = None

    def total(self, shards: Mapping[int, Any]) -> int | None:
        """Images over all ``shards`` (None when the source cannot tell)."""
        if self.size_of is None:
            return None
        return sum(int(self.size_of(shard)) for shard in shards.values())

    def images(self, lake: Storage, part: str, wanted: Mapping[int, set[str]]) -> dict[str, Any]:
        """The images of the ``wanted`` keys by shard id (to draw hits), reading only those shards."""
        shards = self.shards_of(lake, part)
        found: dict[str, Any] = {}
        for shard_id, keys in sorted(wanted.items()):
            if shard_id not in shards:
                continue
            for sample in self.samples_of(lake, part, shards[shard_id]):
                if sample.key in keys:
                    found[sample.key] = sample.image
                    if len(found) == len(keys):
                        break
        return found


def laion_face_shards(lake: Storage, part: str) -> dict[int, Any]:
    """The committed webdataset shards of a downloaded LAION-Face part (successes not opted out)."""
    return {shard.shard_id: shard for shard in part_image_shards(lake, laion_artifacts.images(lake, part))}


def laion_face_samples(lake: Storage, part: str, shard: Any) -> Iterator[ClipSample]:
    """A LAION-Face shard's images (undecoded) with caption, url and SAMPLE_ID from their json sidecars."""
    return webdataset_samples(lake, shard)


LAION_FACE_IMAGES = ImageSource(
    "laion_face_images", laion_face_shards, laion_face_samples, lambda shard: len(shard.sample_ids)
)


@dataclass(frozen=True)
class SourceFileShard:
    """One parquet source file of an image dataset as a CLIP input shard: its rows' file names."""

    shard_id: int
    uri: str
    names: Mapping[int, str]
    fingerprint: str

    def __len__(self) -> int:
        return len(self.names)


def celebahq_shards(lake: Storage, part: str) -> dict[int, SourceFileShard]:
    """The jxie/celeba-hq parquet files ``celebahq_images`` indexed, one shard per file (in name order),
    each fingerprinted by its name and the file's size/stamp."""
    artifact = celebahq.images_artifact(lake, part)
    folder = artifact.require_manifest().extra["folder"].rstrip("/")
    index = read_parquet(lake, committed_file(artifact, f"/{celebahq.INDEX_FILE}"))
    grouped: dict[str, dict[int, str]] = {}
    for name, source, row in zip(
        index["file_name"].to_pylist(),
        index["source_file"].to_pylist(),
        index["source_row"].to_pylist(),
        strict=True,
    ):
        grouped.setdefault(source, {})[int(row)] = name
    shards = {}
    for shard_id, source in enumerate(sorted(grouped)):
        uri = f"{folder}/{source}"
        fingerprint = combine_hashes([source, lake.fingerprint(uri)])
        shards[shard_id] = SourceFileShard(shard_id, uri, grouped[source], fingerprint)
    return shards


def celebahq_samples(
    lake: Storage, part: str, shard: SourceFileShard, batch_size: int = 64
) -> Iterator[ClipSample]:
    """A CelebA-HQ source file's images (undecoded ``image.bytes``) keyed by file name, in row order; a null
    image becomes empty bytes, which the encoder reports as failed to decode."""
    with lake.open(shard.uri, "rb") as handle:
        start = 0
        for batch in pq.ParquetFile(handle).iter_batches(
            batch_size=batch_size, columns=[celebahq.IMAGE_COLUMN]
        ):
            payloads = batch.column(0).field("bytes").to_pylist()
            for offset, payload in enumerate(payloads):
                name = shard.names.get(start + offset)
                if name is not None:
                    yield ClipSample(name, payload if payload is not None else b"")
            start += batch.num_rows


CELEBAHQ_IMAGES = ImageSource("celebahq_images", celebahq_shards, celebahq_samples, len)


def _clip(name: str) -> ArtifactFor:
    return lambda lake, part: clip_artifact(lake, name, part)


def _plain(values: Mapping[str, Any]) -> dict[str, Any]:
    """Metadata without None values (a trained model has no warning)."""
    return {key: value for key, value in values.items() if value is not None}


# --- embeddings --------------------------------------------------------------------------------------------


def embeddings_metadata(manifest: Manifest, device: str | None = None) -> dict[str, Any]:
    """An embeddings partition's metadata: images, throughput, shards, the space and the random-weights label."""
    extra = manifest.extra
    encode = extra.get("encode", {})
    return _plain(
        {
            "images": extra.get("images"),
            "failed_images": extra.get("failed_images"),
            "images_per_second": extra.get("images_per_second"),
            "decode_ms_per_image": encode.get("decode_ms_per_image"),
            "model_ms_per_image": encode.get("model_ms_per_image"),
            "shards_done_now": extra.get("shards_done_now"),
            "shards_reused": extra.get("shards_reused"),
            "shards_incomplete_redone": extra.get("shards_incomplete_redone"),
            "space": extra.get("space_label"),
            "space_provenance": extra.get("space"),
            "dimension": extra.get("space", {}).get("embedder_dimension"),
            "random_init": extra.get("random_init"),
            "warning": extra.get("warning"),
            "device": device or extra.get("device"),
            "precision": extra.get("precision"),
            "layout": "clip-retrieval: img_emb/img_emb_<i>.npy (float16, unit rows) + metadata/metadata_<i>.parquet",
        }
    )


def clip_embeddings_asset(
    *,
    name: str,
    images: str,
    partitions_def: PartitionsDefinition | None,
    shards_of: Callable[[Storage, str], Mapping[int, Any]],
    samples_of: Callable[[Storage, str, Any], Iterable[ClipSample]],
    group: str,
    settings: ClipSettings,
    out_artifact: ArtifactFor | None = None,
    size_of: Callable[[Any], int] | None = None,
    description: str | None = None,
) -> AssetsDefinition:
    """open_clip image embeddings of the image asset ``images`` (any: see :class:`ImageSource`), per shard
    committed and resumed, in clip-retrieval's layout under ``out_artifact`` (default
    ``{root}/clip/<name>/<part>/``). GPU step; needs the ``clip`` resource."""
    source = ImageSource(images, shards_of, samples_of, size_of)
    out_artifact = out_artifact or _clip(name)
    version = code_version("1", settings.output_config())

    @lake_asset(
        gpu_asset,
        resources=("clip",),
        name=name,
        group_name=group,
        partitions_def=partitions_def,
        deps=[images],
        code_version=version,
        description=description
        or f"CLIP image embeddings (open_clip, the clip resource's model) of {images}, in clip-retrieval's layout: "
        "img_emb/img_emb_<i>.npy (float16, L2-normalised) and metadata/metadata_<i>.parquet (image_path = the "
        "sample key, caption, url, SAMPLE_ID, width, height, the space), one part per input shard, committed "
        "shard by shard; space.json records the space, images/s and, for random weights, the warning.",
    )
    def _embeddings(step: Step) -> MaterializeResult:
        lake, part, log = step.lake, step.part, step.context.log
        shards = dict(source.shards_of(lake, part))
        encoder = step.resource("clip").encoder()
        if encoder.warning:
            log.warning(encoder.warning)
        log.info(
            f"{encoder.profile.describe()} on {encoder.device} ({encoder.precision}, batch {encoder.batch_size}, "
            f"{encoder.decode_workers} decode threads) over {len(shards)} shard(s) of {images}[{part}]"
        )
        progress = Progress(f"clip {name}[{part}]", source.total(shards), log.info, unit="images")
        run_config = {
            **stage_config(encoder),
            "images": {str(i): str(shard.fingerprint) for i, shard in sorted(shards.items())},
        }
        artifact = out_artifact(lake, part)
        outcome = commit_clip_embeddings(
            artifact,
            run_config,
            version,
            owner(step.context),
            shards,
            lambda i: source.samples_of(lake, part, shards[i]),
            encoder,
            force=step.config.force,
            extra={"images_asset": images, "device": encoder.device, "precision": encoder.precision},
            log=log.info,
            progress=progress,
        )
        metadata = embeddings_metadata(outcome.manifest, encoder.device)
        return materialize_result(step.context, artifact, outcome, metadata)

    return _embeddings


# --- search index and probe sheets ---------------------------------------------------------------------------


INDEX_SETTINGS = {"exact_search_max_rows", "ann_nlist", "ann_recall_target", "ann_probe_queries", "probe_k"}
"""The clip settings a search index depends on as they are (with the probe prompts and the model's output)."""


def _index_config(settings: ClipSettings) -> dict[str, Any]:
    return {
        **settings.model_dump(include=INDEX_SETTINGS),
        "probe_prompts": list(settings.probe_prompts),
        "model": settings.output_config(),
    }


def _ann_options(settings: ClipSettings) -> dict[str, Any]:
    """:func:`~facelake.clip.ann.build_ann`'s options from the clip settings."""
    return dict(
        nlist=settings.ann_nlist,
        recall_target=settings.ann_recall_target,
        probe_count=settings.ann_probe_queries,
    )


def probe_sheets(
    lake: Storage,
    part: str,
    title: str,
    search: ClipSearch,
    prompts: list[str],
    k: int,
    source: ImageSource,
    warning: str | None,
) -> tuple[pa.Table, list[tuple[str, bytes]]]:
    """The hits of each prompt (a table) and one contact-sheet PNG per prompt."""
    hits = search.text(prompts, k=k)
    data = search.embeddings
    wanted = rows_by_shard(data.parts, data.keys, hits.column("row").to_pylist())
    images = source.images(lake, part, wanted)
    sheets = []
    for prompt in prompts:
        mine = hits.filter(pc.equal(hits.column("query"), prompt))
        pictures = [images.get(key) for key in mine.column("image_path").to_pylist()]
        png = contact_sheet(
            pictures, hit_labels(mine), columns=5, thumb=128, title=f'"{prompt}" in {title}', warning=warning
        )
        sheets.append((prompt, png))
    return hits.select(PROBE_HITS_SCHEMA.names).cast(PROBE_HITS_SCHEMA), sheets


def _write_table(lake: Storage, attempt: Attempt, file_name: str, table: pa.Table) -> Any:
    uri = attempt.uri(file_name)
    with lake.open(uri, "wb") as handle:
        pq.write_table(table, handle)
    return attempt.entry(uri, rows=table.num_rows)


def clip_index_asset(
    *,
    name: str,
    embeddings: str,
    partitions_def: PartitionsDefinition | None,
    shards_of: Callable[[Storage, str], Mapping[int, Any]],
    samples_of: Callable[[Storage, str, Any], Iterable[ClipSample]],
    group: str,
    settings: ClipSettings,
    embeddings_artifact: ArtifactFor | None = None,
    out_artifact: ArtifactFor | None = None,
) -> AssetsDefinition:
    """Search over the embeddings asset ``embeddings``: exact below ``exact_search_max_rows`` (recorded: no
    index needed), else a faiss IVF-Flat index (``image.index`` + ``image.index.json``) with nprobe chosen
    by measured recall@10 against exact search; contact sheets of the probe prompts' hits when the clip
    resource's text encoder is of the embeddings' space. ``shards_of``/``samples_of``: the embeddings' image
    source (to draw the hits)."""
    source = ImageSource(embeddings, shards_of, samples_of)
    embeddings_artifact = embeddings_artifact or _clip(embeddings)
    out_artifact = out_artifact or _clip(name)
    index_config = _index_config(settings)
    version = code_version("1", index_config)

    @committed_asset(
        cpu_asset,
        version=version,
        resources=("clip",),
        name=name,
        group_name=group,
        partitions_def=partitions_def,
        deps=[embeddings],
        kinds={"faiss", "parquet"},
        description=f"Search over {embeddings}: exact top-k by blocked matrix products up to "
        f"{settings.exact_search_max_rows:,} rows (no index needed; recorded), above that a faiss IVF-Flat index "
        "(image.index, as clip-retrieval writes it) with its parameters and measured recall@10 against exact "
        "search; contact sheets of the probe prompts' hits.",
    )
    def _index(step: Step) -> Plan:
        lake, part, log = step.lake, step.part, step.context.log
        clip = step.resource("clip").settings_model()
        embedded = embeddings_artifact(lake, part)
        embedded_manifest = embedded.require_manifest()
        artifact = out_artifact(lake, part)

        def write(attempt: Attempt) -> Written:
            data = read_partition(embedded)
            n, limit = len(data), clip.exact_search_max_rows
            profile = data.profile
            warning = random_weights_warning(profile)
            files, ann, params = [], None, {}
            if n > limit:
                log.info(f"{n:,} rows > exact_search_max_rows {limit:,}: building a faiss IVF-Flat index")
                ann = build_ann(data.vectors, data.space, **_ann_options(clip))
                params = ann.params
                for file_name, content in (
                    (ANN_INDEX_FILE, ann.to_bytes()),
                    (ANN_PARAMS_FILE, ann.params_json()),
                ):
                    lake.write_bytes(attempt.uri(file_name), content)
                    files.append(attempt.entry(attempt.uri(file_name)))
                method = "faiss"
                reason = (
                    f"{n:,} rows > exact_search_max_rows {limit:,}: faiss IVF-Flat, nlist {params['nlist']}, "
                    f"nprobe {params['nprobe']} reaches recall@10 {params['recall_at_10']:.3f} against exact search"
                )
            else:
                method = "exact"
                reason = (
                    f"{n:,} rows <= exact_search_max_rows {limit:,}: exact search by blocked matrix products; "
                    "no index needed"
                )
            log.info(reason)
            summary = {
                "embeddings": embeddings,
                "part": part,
                "rows": n,
                "dimension": profile.dimension,
                "method": method,
                "reason": reason,
                "exact_search_max_rows": limit,
                "nlist": params.get("nlist"),
                "nprobe": params.get("nprobe"),
                "recall_at_10": params.get("recall_at_10"),
                "recall_target": params.get("recall_target"),
                "build_seconds": params.get("build_seconds"),
                "space": profile.describe(),
                "random_init": profile.random_init,
                "warning": warning,
            }
            files.append(
                _write_table(
                    lake, attempt, INDEX_SUMMARY_FILE, pa.Table.from_pylist([summary], INDEX_SUMMARY_SCHEMA)
                )
            )
            sheets_note = None
            prompts = list(clip.probe_prompts)
            try:
                encoder = step.resource("clip").encoder()
                search = ClipSearch(data, encoder, ann=ann, exact_limit=limit, screen=clip.screen)
            except FacelakeError as error:  # weights missing, or a text encoder of another space
                sheets_note = f"no probe sheets: {error}"
                log.warning(sheets_note)
                prompts = []
            if prompts:
                title = f"{embeddings}[{part}] ({method}; {profile.name})"
                hits, sheets = probe_sheets(lake, part, title, search, prompts, clip.probe_k, source, warning)
                files.append(_write_table(lake, attempt, PROBE_HITS_FILE, hits))
                for i, (_, png) in enumerate(sheets):
                    lake.write_bytes(attempt.uri(PROBE_SHEET.format(i)), png)
                    files.append(attempt.entry(attempt.uri(PROBE_SHEET.format(i))))
            extra = {
                **{key: value for key, value in summary.items() if key not in ("embeddings", "part")},
                "embeddings_asset": embeddings,
                "embeddings_content_hash": embedded_manifest.content_hash,
                "ann": params or None,
                "probe_prompts": prompts,
                "probe_k": clip.probe_k,
                "probe_sheets_note": sheets_note,
            }
            return Written(files, rows=n, extra=extra)

        def report(manifest: Manifest) -> dict[str, Any]:
            extra = manifest.extra
            metadata = {
                key: extra.get(key)
                for key in (
                    "method",
                    "reason",
                    "rows",
                    "dimension",
                    "exact_search_max_rows",
                    "nlist",
                    "nprobe",
                    "recall_at_10",
                    "recall_target",
                    "build_seconds",
                    "space",
                    "random_init",
                    "warning",
                    "probe_sheets_note",
                )
            }
            metadata["index_needed"] = extra["method"] != "exact"
            if extra.get("ann"):
                metadata["ann"] = {k: v for k, v in extra["ann"].items() if k != "space"}
            prompts = extra.get("probe_prompts") or []
            blocks = []
            for i, prompt in enumerate(prompts):
                png = lake.read_bytes(committed_file(artifact, f"/{PROBE_SHEET.format(i)}"))
                blocks.append(f"**{prompt}**\n\n{png_markdown(png, prompt)}")
            if blocks:
                label = f"\n\n_{extra['warning']}_" if extra.get("warning") else ""
                metadata["probe_sheets"] = MetadataValue.md("\n\n".join(blocks) + label)
            return _plain(metadata)

        run_config = {**index_config, "embeddings": embedded_manifest.content_hash}
        return Plan(Commit(artifact, run_config, write, step.config.force), report)

    return _index


# --- near-duplicates -----------------------------------------------------------------------------------------


def committed_sources(
    lake: Storage, sources: list[tuple[str, str | None]]
) -> list[tuple[str, str, Manifest]]:
    """(asset, part, manifest) of every committed embeddings partition the ``sources`` name: ``(asset, None)``
    is every committed part of the asset, ``(asset, part)`` that part (which must be committed)."""
    by_asset: dict[str, list[tuple[str, Manifest]]] = {}
    for committed in committed_partitions(lake, "clip"):
        by_asset.setdefault(committed.artifact.artifact, []).append(
            (committed.artifact.partition, committed.manifest)
        )
    found = []
    for asset, part in sources:
        parts = by_asset.get(asset, [])
        if part is not None:
            parts = [(p, m) for p, m in parts if p == part]
            if not parts:
                raise InputError(
                    clip_artifact(lake, asset, part).prefix, "not committed: materialize it first"
                )
        found.extend((asset, p, m) for p, m in parts)
    return found


def _read_sources(
    lake: Storage, sources: list[dict[str, str]]
) -> tuple[list[ClipEmbeddings], list[str], list[str]]:
    """The recorded embeddings partitions, their names (``asset:part``) and those changed since recording."""
    sets, names, stale = [], [], []
    for entry in sources:
        artifact = clip_artifact(lake, entry["asset"], entry["part"])
        if artifact.require_manifest().content_hash != entry["content_hash"]:
            stale.append(source_name(entry["asset"], entry["part"]))
        sets.append(read_partition(artifact))
        names.append(source_name(entry["asset"], entry["part"]))
    return sets, names, stale


def clip_near_duplicates_asset(*, settings: ClipSettings, group: str, name: str = NEAR_DUPLICATES) -> list:
    """The near-duplicates of ``settings.near_duplicate_sources`` (one space) and the blocking check."""
    threshold = settings.near_duplicate_threshold
    sources = settings.sources()
    deps = sorted({asset for asset, _ in sources})
    version = code_version(
        "1", {"threshold": threshold, "sources": settings.near_duplicate_sources, "rule": KEEP_RULE}
    )

    @committed_asset(
        gpu_asset,
        version=version,
        name=name,
        group_name=group,
        deps=deps,
        description=f"Near-duplicates across {', '.join(settings.near_duplicate_sources)} (one embedding space; "
        f"two spaces are refused, naming both): every pair with similarity > {threshold} found exactly (Gram "
        f"screening, pairs near the threshold re-checked in float64), its connected groups and the keep-list "
        f"({KEEP_RULE}).",
    )
    def _near_duplicates(step: Step) -> Plan:
        lake, log = step.lake, step.context.log
        found = committed_sources(lake, sources)
        if not found:
            raise InputError(
                lake.uri("clip"), f"none of {settings.near_duplicate_sources} has a committed partition"
            )
        recorded = [{"asset": a, "part": p, "content_hash": m.content_hash} for a, p, m in found]
        artifact = clip_artifact(lake, name)

        def write(attempt: Attempt) -> Written:
            sets, names, _ = _read_sources(lake, recorded)
            log.info(
                f"near-duplicates of {sum(len(s) for s in sets):,} images from {', '.join(names)}, "
                f"threshold {threshold}"
            )
            started = time.perf_counter()
            result, data = near_duplicates(sets, threshold, names=names, screen=settings.screen)
            sources_column = data.metadata.column("source")
            pairs = pairs_table(result, data)
            pairs = pairs.append_column("source_a", sources_column.take(pairs.column("row_a"))).append_column(
                "source_b", sources_column.take(pairs.column("row_b"))
            )
            files = [
                _write_table(lake, attempt, KEEP_FILE, keep_table(result, data).cast(KEEP_SCHEMA)),
                _write_table(lake, attempt, GROUPS_FILE, groups_table(result, data).cast(GROUPS_SCHEMA)),
                _write_table(lake, attempt, PAIRS_FILE, pairs.cast(PAIRS_SCHEMA)),
            ]
            profile = data.profile
            counts = result.counts()
            log.info(f"{counts}")
            extra = {
                **counts,
                "threshold": threshold,
                "keep_rule": KEEP_RULE,
                "sources": recorded,
                "space": profile.describe(),
                "random_init": profile.random_init,
                "warning": random_weights_warning(profile),
                "screen": result.pairs.stats.get("screen"),
                "knife_edge_pairs": result.pairs.stats.get("knife_edge_pairs"),
                "band_pairs": result.pairs.stats.get("band_pairs"),
                "seconds": round(time.perf_counter() - started, 3),
            }
            return Written(files, rows=counts["kept"], extra=extra)

        def report(manifest: Manifest) -> dict[str, Any]:
            extra = manifest.extra
            keys = (
                "images",
                "pairs",
                "groups",
                "images_in_groups",
                "removed",
                "kept",
                "threshold",
                "keep_rule",
            )
            metadata = {key: extra[key] for key in keys}
            metadata["sources"] = [source_name(e["asset"], e["part"]) for e in extra["sources"]]
            for key in ("space", "random_init", "warning", "screen", "knife_edge_pairs", "seconds"):
                metadata[key] = extra.get(key)
            return _plain(metadata)

        run_config = {"threshold": threshold, "rule": KEEP_RULE, "sources": recorded}
        return Plan(Commit(artifact, run_config, write, step.config.force), report)

    @asset_check(
        asset=name,
        name=NO_KEPT_PAIR_CHECK,
        blocking=True,
        op_tags=GPU_TAGS,
        pool="gpu",
        description=f"Recomputes from the committed keep-list, exactly (the same pair finder), that no two kept "
        f"images have similarity above the threshold ({threshold}), and that every kept image is one of the "
        "recorded embeddings partitions (unchanged since).",
    )
    def _no_kept_pair(context: AssetCheckExecutionContext, storage: StorageResource) -> AssetCheckResult:
        lake = storage.get()
        artifact = clip_artifact(lake, name)
        manifest = artifact.require_manifest()
        limit = float(manifest.extra["threshold"])
        sets, names, stale = _read_sources(lake, manifest.extra["sources"])
        data = combine(sets, names)
        keep = read_parquet(lake, committed_file(artifact, f"/{KEEP_FILE}"))
        row_of = {
            (source, key): row
            for row, (source, key) in enumerate(
                zip(data.metadata.column("source").to_pylist(), data.keys, strict=True)
            )
        }
        wanted = list(
            zip(keep.column("source").to_pylist(), keep.column("image_path").to_pylist(), strict=True)
        )
        rows = np.array([row_of.get(item, -1) for item in wanted], np.int64)
        unknown = [f"{s}/{k}" for (s, k), r in zip(wanted, rows, strict=True) if r < 0]
        rows = rows[rows >= 0]
        pairs = near_duplicate_pairs(data.vectors[rows], limit, screen=settings.screen)
        worst = [
            {
                "a": f"{wanted[int(i)][0]}/{wanted[int(i)][1]}",
                "b": f"{wanted[int(j)][0]}/{wanted[int(j)][1]}",
                "similarity": round(float(s), 6),
            }
            for i, j, s in sorted(
                zip(pairs.rows.tolist(), pairs.cols.tolist(), pairs.similarity.tolist(), strict=True),
                key=lambda item: -item[2],
            )[:10]
        ]
        passed = len(pairs) == 0 and not unknown and not stale
        context.log.info(f"{len(rows):,} kept images, {len(pairs)} pairs above {limit}")
        metadata = {
            "kept": len(wanted),
            "threshold": limit,
            "pairs_above_threshold": len(pairs),
            "max_kept_pair_similarity": round(float(pairs.similarity.max()), 6) if len(pairs) else None,
            "pairs": worst or None,
            "unknown_kept_images": unknown[:10] or None,
            "stale_sources": stale or None,
        }
        return AssetCheckResult(passed=bool(passed), metadata=_plain(metadata))

    return [_near_duplicates, _no_kept_pair]


# --- the area ------------------------------------------------------------------------------------------------


def clip_assets(settings: FacelakeSettings) -> list:
    """The CLIP assets of LAION-Face parts and CelebA-HQ, and the near-duplicates across them."""
    clip = settings.clip
    laion = {"shards_of": laion_face_shards, "samples_of": laion_face_samples}
    return [
        clip_embeddings_asset(
            name="laion_face_clip_embeddings",
            images="laion_face_images",
            partitions_def=laion_parts,
            group=GROUP,
            settings=clip,
            size_of=LAION_FACE_IMAGES.size_of,
            **laion,
        ),
        clip_index_asset(
            name="laion_face_clip_index",
            embeddings="laion_face_clip_embeddings",
            partitions_def=laion_parts,
            group=GROUP,
            settings=clip,
            **laion,
        ),
        clip_embeddings_asset(
            name="celebahq_clip_embeddings",
            images="celebahq_images",
            partitions_def=None,
            shards_of=celebahq_shards,
            samples_of=celebahq_samples,
            size_of=len,
            group=GROUP,
            settings=clip,
        ),
        *clip_near_duplicates_asset(settings=clip, group=GROUP),
    ]


laion_face_clip_job = gpu_job(
    "laion_face_clip_job",
    LAION_FACE_CLIP_ASSETS,
    "CLIP embeddings of one downloaded LAION-Face part (GPU step) and its search index (exact below "
    "the size threshold, faiss above it) with the probe prompts' contact sheets.",
)
clip_job = gpu_job(
    "clip_job",
    CLIP_ASSETS,
    "CLIP embeddings of CelebA-HQ (GPU step), then the near-duplicates across the configured "
    "embedding assets with the blocking check that no two kept images exceed the threshold.",
)


def definitions(settings: FacelakeSettings) -> Definitions:
    """The CLIP area for ``settings``."""
    return area_definitions(clip_assets(settings), jobs=[laion_face_clip_job, clip_job])
