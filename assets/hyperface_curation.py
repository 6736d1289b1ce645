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
    AssetCheckSpec,
    AssetDep,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    AssetSelection,
    MaterializeResult,
    MetadataValue,
    define_asset_job,
)

from assets.materializing import CommitConfig, code_version, failing_check, materialize_result, owner
from assets.pools import GPU_RUN_TAGS, cpu_asset, gpu_asset
from facelake.curation.aligned import AlignmentOptions, commit_aligned_faces
from facelake.curation.artifacts import aligned_artifact, audit_artifact, dataset_artifact, leakage_artifact
from facelake.curation.audit import AuditOptions, commit_identity_audit
from facelake.curation.dataset import DatasetOptions, commit_dataset
from facelake.curation.leakage import LeakageOptions, commit_leakage
from facelake.curation.real_sets import real_set_assets, real_set_fingerprints, resolve_real_sets
from facelake.generation.space import ARCFACE_NAME
from facelake.generation.variant import images_artifact
from facelake.hyperface.references import read_reference_embeddings, reference_artifact
from facelake.lake.errors import UnknownPartitionError
from facelake.lake.plots import png_markdown
from facelake.settings import FacelakeSettings
from resources import StorageResource
from resources.models import ModelRegistryResource

ALIGNED, AUDIT = "hyperface_aligned", "hyperface_identity_audit"
LEAKAGE, DATASET = "hyperface_leakage", "hyperface_dataset"
COUNTS_CHECK, CONSISTENCY_CHECK, NOT_EMPTY_CHECK = "counts_add_up", "identities_are_consistent", "not_empty"
DEFAULT_AUDIT_EMBEDDER = "arcface"
"""The registry's embedder of the generator's identity space (``facelake.generation.space``: ArcFace 512-d)."""


def curation_assets(settings: FacelakeSettings, group: str, images: str, variants) -> list[AssetsDefinition]:
    """The four curation assets of every variant, downstream of ``images``."""
    return [
        aligned_asset(settings, group, images, variants),
        audit_asset(settings, group, variants),
        leakage_asset(settings, group, variants),
        dataset_asset(settings, group, variants),
    ]


def _variant(settings: FacelakeSettings, context: AssetExecutionContext) -> str:
    name = context.partition_key
    if name not in settings.hyperface.variants:
        raise UnknownPartitionError(
            name, f"a variant of hyperface.variants: {sorted(settings.hyperface.variants)}"
        )
    return name


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


def _spec(asset: str, name: str, description: str, blocking: bool = True) -> AssetCheckSpec:
    return AssetCheckSpec(name, asset=asset, blocking=blocking, description=description)


def aligned_asset(settings: FacelakeSettings, group: str, images: str, variants) -> AssetsDefinition:
    curation = settings.curation
    options = AlignmentOptions(size=curation.aligned_size, jpeg_quality=curation.jpeg_quality)
    version = code_version("1", options.config())

    @gpu_asset(
        name=ALIGNED,
        group_name=group,
        partitions_def=variants,
        deps=[AssetKey(images)],
        code_version=version,
        kinds={"pytorch", "webdataset"},
        check_specs=[
            _spec(ALIGNED, COUNTS_CHECK, "generated = aligned + no face + several faces + unreadable")
        ],
        description="The generated faces of one variant aligned to the 112x112 ArcFace template from RetinaFace's "
        "five landmarks (the configured detector); images with no face or several faces are listed with the "
        "reason and excluded. Webdataset shards of crops (jpg + json) and an index, committed per shard.",
    )
    def _aligned(
        context: AssetExecutionContext,
        config: CommitConfig,
        storage: StorageResource,
        models: ModelRegistryResource,
    ) -> MaterializeResult:
        lake, name = storage.get(), _variant(settings, context)
        detector = models.detector()
        context.log.info(f"aligning hyperface_images[{name}] with {detector.name} on {detector.device}")
        result = commit_aligned_faces(
            aligned_artifact(lake, name),
            images_artifact(lake, name),
            detector,
            options,
            code_version=version,
            owner=owner(context),
            force=config.force,
            log=context.log.info,
        )
        counts = result.counts
        parts = sum(int(counts.get(k, 0)) for k in ("aligned", "no_face", "several_faces", "unreadable"))
        check = failing_check(COUNTS_CHECK, parts == int(counts.get("generated", -1)), counts)
        return _report(context, result, aligned_artifact(lake, name), [check])

    return _aligned


def audit_asset(settings: FacelakeSettings, group: str, variants) -> AssetsDefinition:
    curation = settings.curation
    embedder_name = curation.embedder or DEFAULT_AUDIT_EMBEDDER
    options = AuditOptions(consistency=curation.consistency, worst_identities=curation.worst_identities)
    version = code_version("1", {**options.config(), "embedder": embedder_name})

    @gpu_asset(
        name=AUDIT,
        group_name=group,
        partitions_def=variants,
        deps=[AssetKey(ALIGNED)],
        code_version=version,
        check_specs=[
            _spec(
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
    def _audit(
        context: AssetExecutionContext,
        config: CommitConfig,
        storage: StorageResource,
        models: ModelRegistryResource,
    ) -> MaterializeResult:
        lake, name = storage.get(), _variant(settings, context)
        references = read_reference_embeddings(lake, reference_artifact(lake, name))
        embedder = models.registry().embedder(embedder_name)
        result = commit_identity_audit(
            audit_artifact(lake, name),
            aligned_artifact(lake, name),
            embedder,
            references,
            options,
            code_version=version,
            owner=owner(context),
            force=config.force,
            log=context.log.info,
        )
        check = failing_check(
            CONSISTENCY_CHECK, result.passed(), result.outcome.manifest.extra.get("summary")
        )
        return _report(
            context,
            result,
            audit_artifact(lake, name),
            [check],
            cosines=result.plot,
            worst_identities=result.sheet,
        )

    return _audit


def leakage_asset(settings: FacelakeSettings, group: str, variants) -> AssetsDefinition:
    curation = settings.curation
    names = list(curation.real_sets)
    options = LeakageOptions(
        top_k=curation.leakage_top_k, threshold=curation.leakage_threshold, sheet_pairs=curation.worst_pairs
    )
    version = code_version("1", {**options.config(), "real_sets": names})

    @gpu_asset(
        name=LEAKAGE,
        group_name=group,
        partitions_def=variants,
        deps=[
            AssetKey(AUDIT),
            *(AssetDep(a, partition_mapping=AllPartitionMapping()) for a in real_set_assets(names)),
        ],
        code_version=version,
        description=f"Leakage audit of one variant: every generated embedding against the real sets {names} "
        f"(one embedding space, refused otherwise), exactly: the top {options.top_k} pairs per real set (as the "
        f"paper) and every pair with cosine >= {options.threshold}; the worst pairs drawn generated beside real.",
    )
    def _leakage(
        context: AssetExecutionContext, config: CommitConfig, storage: StorageResource
    ) -> MaterializeResult:
        lake, name = storage.get(), _variant(settings, context)
        real = resolve_real_sets(lake, names, expand=settings.source_uri)
        context.log.info(f"real sets: {[(s.name, s.table.num_rows) for s in real]}")
        result = commit_leakage(
            leakage_artifact(lake, name),
            audit_artifact(lake, name),
            aligned_artifact(lake, name),
            real,
            options,
            code_version=version,
            owner=owner(context),
            run_config={"real_sets": real_set_fingerprints(lake, names, expand=settings.source_uri)},
            force=config.force,
            log=context.log.info,
        )
        return _report(context, result, leakage_artifact(lake, name), [], worst_pairs=result.sheet)

    return _leakage


def dataset_asset(settings: FacelakeSettings, group: str, variants) -> AssetsDefinition:
    options = DatasetOptions(shard_size=settings.curation.dataset_shard_size)
    version = code_version("1", {"shard_size": options.shard_size})

    @cpu_asset(
        name=DATASET,
        group_name=group,
        partitions_def=variants,
        deps=[AssetKey(LEAKAGE), AssetKey(AUDIT), AssetKey(ALIGNED)],
        code_version=version,
        kinds={"webdataset", "parquet"},
        check_specs=[_spec(DATASET, NOT_EMPTY_CHECK, "the cleaned dataset holds at least one image")],
        description="The cleaned HyperFace training set of one variant: aligned crops minus (leaking ∪ "
        "inconsistent), as identities/<identity_id>/<index>.jpg (torchvision ImageFolder) and as webdataset "
        "shards with integer labels (cls); counts before and after each filter. Export it with "
        "`facelake hyperface export --variant V --to DIR|s3://...`.",
    )
    def _dataset(
        context: AssetExecutionContext, config: CommitConfig, storage: StorageResource
    ) -> MaterializeResult:
        lake, name = storage.get(), _variant(settings, context)
        result = commit_dataset(
            dataset_artifact(lake, name),
            aligned_artifact(lake, name),
            audit_artifact(lake, name),
            leakage_artifact(lake, name),
            options,
            code_version=version,
            owner=owner(context),
            force=config.force,
            log=context.log.info,
        )
        check = failing_check(NOT_EMPTY_CHECK, not result.empty, result.outcome.manifest.extra.get("counts"))
        return _report(context, result, dataset_artifact(lake, name), [check])

    return _dataset


hyperface_curation_job = define_asset_job(
    "hyperface_curation_job",
    selection=AssetSelection.assets(ALIGNED, AUDIT, LEAKAGE, DATASET),
    tags=GPU_RUN_TAGS,
    description="HyperFace's last mile for one variant (partition key = variant): align the generated faces, "
    "audit identity consistency and leakage, write the cleaned dataset. Materialize hyperface_images first.",
)
