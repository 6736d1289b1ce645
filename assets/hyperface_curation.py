"""HyperFace, last mile (issue 15): align the generated faces, audit identity and leakage, export the dataset.

Four assets partitioned like ``hyperface_images`` (one key per variant), each a thin call into
``facelake.curation``: ``hyperface_aligned`` (RetinaFace's five landmarks, the 112x112 ArcFace-template crop;
no face / several faces listed and excluded), ``hyperface_identity_audit`` (the crops embedded in the
references' space: cosine to the own reference, spread, nearest other identity; a consistency check),
``hyperface_leakage`` (generated x real sets, exact top-K and threshold pairs) and ``hyperface_dataset`` (the
cleaned set as folders per identity and as webdataset shards; a check that fails on an empty dataset).
"""

# No "from __future__ import annotations" here: Dagster reads the asset functions' annotations at runtime.

from typing import Any

from dagster import (
    AllPartitionMapping,
    AssetCheckResult,
    AssetDep,
    AssetExecutionContext,
    AssetsDefinition,
    MaterializeResult,
    MetadataValue,
)

from assets.areas import gpu_job
from assets.hyperface_variants import VariantStep, check_spec, variant_asset
from assets.materializing import code_version, failing_check, materialize_result
from assets.pools import cpu_asset, gpu_asset
from facelake.curation.aligned import AlignmentOptions, commit_aligned_faces
from facelake.curation.artifacts import aligned_artifact, audit_artifact, dataset_artifact, leakage_artifact
from facelake.curation.audit import AuditOptions, commit_identity_audit
from facelake.curation.dataset import DatasetOptions, commit_dataset
from facelake.curation.leakage import LeakageOptions, commit_leakage
from facelake.curation.real_sets import real_set_assets, real_set_fingerprints, resolve_real_sets
from facelake.generation.space import ARCFACE_NAME
from facelake.generation.variant import images_artifact
from facelake.hyperface.references import read_reference_embeddings, reference_artifact
from facelake.lake.plots import png_markdown
from facelake.settings import FacelakeSettings

ALIGNED, AUDIT = "hyperface_aligned", "hyperface_identity_audit"
LEAKAGE, DATASET = "hyperface_leakage", "hyperface_dataset"
COUNTS_CHECK, CONSISTENCY_CHECK, NOT_EMPTY_CHECK = "counts_add_up", "identities_are_consistent", "not_empty"
DEFAULT_AUDIT_EMBEDDER = "arcface"
"""The registry's embedder of the generator's identity space (``facelake.generation.space``: ArcFace 512-d)."""


def curation_assets(settings: FacelakeSettings, images: str) -> list[AssetsDefinition]:
    """The four curation assets of every variant, downstream of ``images``."""
    return [
        aligned_asset(settings, images),
        audit_asset(settings),
        leakage_asset(settings),
        dataset_asset(settings),
    ]


def _pngs(**pngs: bytes | None) -> dict[str, Any]:
    return {
        name: MetadataValue.md(png_markdown(data, name.replace("_", " ")))
        for name, data in pngs.items()
        if data
    }


def _report(
    context: AssetExecutionContext, result: Any, artifact, checks: list[AssetCheckResult], **pngs
) -> MaterializeResult:
    metadata = {k: v for k, v in result.metadata().items() if v is not None}
    if metadata.get("warning"):
        context.log.warning(str(metadata["warning"]))
    return materialize_result(context, artifact, result.outcome, {**metadata, **_pngs(**pngs)}, checks)


def aligned_asset(settings: FacelakeSettings, images: str) -> AssetsDefinition:
    curation = settings.curation
    options = AlignmentOptions(size=curation.aligned_size, jpeg_quality=curation.jpeg_quality)
    version = code_version("1", options.config())

    @variant_asset(
        gpu_asset,
        settings,
        ALIGNED,
        [images],
        version,
        resources=("models",),
        kinds={"pytorch", "webdataset"},
        check_specs=[
            check_spec(ALIGNED, COUNTS_CHECK, "generated = aligned + no face + several faces + unreadable")
        ],
        description="The generated faces of one variant aligned to the 112x112 ArcFace template from RetinaFace's "
        "five landmarks (the configured detector); images with no face or several faces are listed with the "
        "reason and excluded. Webdataset shards of crops (jpg + json) and an index, committed per shard.",
    )
    def _aligned(step: VariantStep) -> MaterializeResult:
        lake, name = step.lake, step.variant
        detector = step.resource("models").detector()
        step.context.log.info(f"aligning hyperface_images[{name}] with {detector.name} on {detector.device}")
        result = commit_aligned_faces(
            aligned_artifact(lake, name),
            images_artifact(lake, name),
            detector,
            options,
            **step.commit_options(),
        )
        counts = result.counts
        parts = sum(int(counts.get(k, 0)) for k in ("aligned", "no_face", "several_faces", "unreadable"))
        check = failing_check(COUNTS_CHECK, parts == int(counts.get("generated", -1)), counts)
        return _report(step.context, result, aligned_artifact(lake, name), [check])

    return _aligned


def audit_asset(settings: FacelakeSettings) -> AssetsDefinition:
    curation = settings.curation
    embedder_name = curation.embedder or DEFAULT_AUDIT_EMBEDDER
    options = AuditOptions(consistency=curation.consistency, worst_identities=curation.worst_identities)
    version = code_version("1", {**options.config(), "embedder": embedder_name})

    @variant_asset(
        gpu_asset,
        settings,
        AUDIT,
        [ALIGNED],
        version,
        resources=("models",),
        check_specs=[
            check_spec(
                AUDIT,
                CONSISTENCY_CHECK,
                "every identity's mean cosine to its own reference reaches curation.consistency (None: the "
                "embedder's same-identity threshold; the value used is in the metadata). Not blocking: "
                "hyperface_dataset leaves inconsistent images out and reports them",
                blocking=False,
            )
        ],
        description=f"Identity audit of one variant: the aligned crops embedded by '{embedder_name}' (by default "
        f"the generator's identity space, {ARCFACE_NAME}; refused unless the references live in the same space): "
        "per identity the cosine to its own reference, the spread, the nearest other identity; distributions "
        "and the worst identities as contact sheets in the metadata.",
    )
    def _audit(step: VariantStep) -> MaterializeResult:
        lake, name = step.lake, step.variant
        references = read_reference_embeddings(lake, reference_artifact(lake, name))
        embedder = step.resource("models").registry().embedder(embedder_name)
        result = commit_identity_audit(
            audit_artifact(lake, name),
            aligned_artifact(lake, name),
            embedder,
            references,
            options,
            **step.commit_options(),
        )
        check = failing_check(
            CONSISTENCY_CHECK, result.passed(), result.outcome.manifest.extra.get("summary")
        )
        return _report(
            step.context,
            result,
            audit_artifact(lake, name),
            [check],
            cosines=result.plot,
            worst_identities=result.sheet,
        )

    return _audit


def leakage_asset(settings: FacelakeSettings) -> AssetsDefinition:
    curation = settings.curation
    names = list(curation.real_sets)
    options = LeakageOptions(
        top_k=curation.leakage_top_k, threshold=curation.leakage_threshold, sheet_pairs=curation.worst_pairs
    )
    version = code_version("1", {**options.config(), "real_sets": names})

    @variant_asset(
        gpu_asset,
        settings,
        LEAKAGE,
        [AUDIT, *(AssetDep(a, partition_mapping=AllPartitionMapping()) for a in real_set_assets(names))],
        version,
        description=f"Leakage audit of one variant: every generated embedding against the real sets {names} "
        f"(one embedding space, refused otherwise), exactly: the top {options.top_k} pairs per real set (as the "
        f"paper) and every pair with cosine >= {options.threshold}; the worst pairs drawn generated beside real.",
    )
    def _leakage(step: VariantStep) -> MaterializeResult:
        lake, name = step.lake, step.variant
        real = resolve_real_sets(lake, names, expand=settings.source_uri)
        step.context.log.info(f"real sets: {[(s.name, s.table.num_rows) for s in real]}")
        result = commit_leakage(
            leakage_artifact(lake, name),
            audit_artifact(lake, name),
            aligned_artifact(lake, name),
            real,
            options,
            run_config={"real_sets": real_set_fingerprints(lake, names, expand=settings.source_uri)},
            **step.commit_options(),
        )
        return _report(step.context, result, leakage_artifact(lake, name), [], worst_pairs=result.sheet)

    return _leakage


def dataset_asset(settings: FacelakeSettings) -> AssetsDefinition:
    options = DatasetOptions(shard_size=settings.curation.dataset_shard_size)
    version = code_version("1", {"shard_size": options.shard_size})

    @variant_asset(
        cpu_asset,
        settings,
        DATASET,
        [LEAKAGE, AUDIT, ALIGNED],
        version,
        kinds={"webdataset", "parquet"},
        check_specs=[check_spec(DATASET, NOT_EMPTY_CHECK, "the cleaned dataset holds at least one image")],
        description="The cleaned HyperFace training set of one variant: aligned crops minus (leaking ∪ "
        "inconsistent), as identities/<identity_id>/<index>.jpg (torchvision ImageFolder) and as webdataset "
        "shards with integer labels (cls); counts before and after each filter. Export it with "
        "`facelake hyperface export --variant V --to DIR|s3://...`.",
    )
    def _dataset(step: VariantStep) -> MaterializeResult:
        lake, name = step.lake, step.variant
        result = commit_dataset(
            dataset_artifact(lake, name),
            aligned_artifact(lake, name),
            audit_artifact(lake, name),
            leakage_artifact(lake, name),
            options,
            **step.commit_options(),
        )
        check = failing_check(NOT_EMPTY_CHECK, not result.empty, result.outcome.manifest.extra.get("counts"))
        return _report(step.context, result, dataset_artifact(lake, name), [check])

    return _dataset


hyperface_curation_job = gpu_job(
    "hyperface_curation_job",
    [ALIGNED, AUDIT, LEAKAGE, DATASET],
    "HyperFace's last mile for one variant (partition key = variant): align the generated faces, "
    "audit identity consistency and leakage, write the cleaned dataset. Materialize hyperface_images first.",
)
