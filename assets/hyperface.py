"""HyperFace (DESIGN §1, §5): the gallery of face embeddings, and the reference embeddings packed on the
hypersphere for each named variant (static partition keys from the settings).

``hyperface_gallery`` assembles ONE embedding space from a configured parquet table or the committed
``laion_face_embeddings`` or ``sfhq_face_embeddings`` parts (the paper's gallery is SFHQ part 3, StyleGAN2
faces: ``hyperface.gallery.source: sfhq_face_embeddings``, ``parts: ["3"]``).
``hyperface_reference_embeddings`` packs a variant's N identities against it on the GPU pool (DESIGN §4),
checkpointing outside its partition so a killed run resumes, and commits identity shards manifest-last with
the metrics, a convergence plot and a blocking check on the minimum angle.
"""

# No "from __future__ import annotations" here: Dagster reads the asset functions' annotations at runtime.

import torch
from dagster import (
    AssetCheckResult,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    Definitions,
    MaterializeResult,
    MetadataValue,
)

from assets.areas import area_definitions, gpu_job
from assets.hyperface_curation import curation_assets, hyperface_curation_job
from assets.hyperface_images import IMAGES, hyperface_images_job, images_asset
from assets.hyperface_variants import GROUP, VariantStep, check_spec, variant_asset
from assets.materializing import CommitConfig, code_version, failing_check, materialize_result, owner
from assets.pools import cpu_asset, gpu_asset
from facelake.faces.identity import EmbedderProfile
from facelake.hyperface.references import (
    PLOT_FILE,
    RANDOM_WEIGHTS_WARNING,
    commit_gallery,
    commit_reference_embeddings,
    committed_uri,
    configured_sources,
    gallery_artifact,
    reference_artifact,
    validate_variants,
)
from facelake.laion import artifacts as laion_artifacts
from facelake.laion.formats import LAION_PARTS
from facelake.lake.commit import Manifest
from facelake.lake.plots import png_markdown
from facelake.settings import FacelakeSettings
from facelake.sfhq import artifacts as sfhq_artifacts
from facelake.sfhq.settings import PARTS as SFHQ_PARTS
from resources import StorageResource

GALLERY = "hyperface_gallery"
REFERENCE = "hyperface_reference_embeddings"
MIN_ANGLE_CHECK = "min_angle_reaches_bound"


def hyperface_assets(settings: FacelakeSettings) -> list[AssetsDefinition]:
    """The gallery, the per-variant reference embeddings (with their min-angle check) and images."""
    return [
        gallery_asset(settings),
        reference_embeddings_asset(settings),
        images_asset(settings, REFERENCE),
        *curation_assets(settings, IMAGES),
    ]


def gallery_asset(settings: FacelakeSettings) -> AssetsDefinition:
    gallery_settings = settings.hyperface.gallery
    upstream = {"laion_face_embeddings", "sfhq_face_embeddings"}
    from_asset = gallery_settings.source if gallery_settings.source in upstream else None
    version = code_version("1", gallery_settings.model_dump())

    @cpu_asset(
        name=GALLERY,
        group_name=GROUP,
        deps=[AssetKey(from_asset)] if from_asset else [],
        code_version=version,
        kinds={"parquet"},
        description="Gallery face embeddings for HyperFace's regulariser and initialisation: unit vectors of ONE "
        f"embedding space (refused otherwise), from {gallery_settings.source}. The paper uses SFHQ part 3 "
        "(StyleGAN2 faces) embedded with the packing space's model.",
    )
    def _gallery(
        context: AssetExecutionContext, config: CommitConfig, storage: StorageResource
    ) -> MaterializeResult:
        lake = storage.get()
        sources = configured_sources(
            lake,
            gallery_settings,
            expand=lambda uri: settings.source_uri(uri),
            laion_embeddings=laion_artifacts.embeddings,
            laion_parts=LAION_PARTS,
            sfhq_embeddings=sfhq_artifacts.face_embeddings_artifact,
            sfhq_parts=SFHQ_PARTS,
        )
        context.log.info(f"gallery from {len(sources)} source(s): {[s.name for s in sources]}")
        artifact = gallery_artifact(lake)
        outcome = commit_gallery(lake, sources, gallery_settings, version, owner(context), force=config.force)
        space = outcome.manifest.extra["space"]
        metadata = {
            "sources": [s.name for s in sources],
            "dimension": outcome.manifest.extra["dimension"],
            "embedder": EmbedderProfile.from_provenance(space).describe(),
            "embedder_random_init": bool(space["embedder_random_init"]),
        }
        if space["embedder_random_init"]:
            context.log.warning(RANDOM_WEIGHTS_WARNING)
            metadata["warning"] = RANDOM_WEIGHTS_WARNING
        return materialize_result(context, artifact, outcome, metadata)

    return _gallery


def reference_embeddings_asset(settings: FacelakeSettings) -> AssetsDefinition:
    hyperface = settings.hyperface
    validate_variants(hyperface.variants)
    version = code_version("1", {"shard_size": hyperface.shard_size})

    @variant_asset(
        gpu_asset,
        settings,
        REFERENCE,
        [GALLERY],
        version,
        check_specs=[
            check_spec(
                REFERENCE,
                MIN_ANGLE_CHECK,
                "The packed minimum pairwise angle reaches the variant's min_angle_deg (settings).",
            )
        ],
        description="HyperFace reference embeddings of one variant (N identities packed on the unit sphere of "
        "the gallery's embedding space, regularised toward the gallery): identity shards "
        f"identities-NNNNN.parquet of {hyperface.shard_size} identities with stable ids {{variant}}-NNNNNNN, "
        "the embedder provenance, a convergence plot and packing.json.",
    )
    def _reference(step: VariantStep) -> MaterializeResult:
        context, lake, name = step.context, step.lake, step.variant
        variant = hyperface.variants[name]
        _limit_cpu_threads(settings)
        space = gallery_artifact(lake).require_manifest().extra["space"]
        context.log.info(
            f"variant {name}: {variant.identities} identities, {variant.algorithm}/{variant.optimizer}, "
            f"{variant.iterations} iterations, in the space of {EmbedderProfile.from_provenance(space).describe()}"
        )
        if space["embedder_random_init"]:
            context.log.warning(RANDOM_WEIGHTS_WARNING)
        outcome, _ = commit_reference_embeddings(
            lake,
            name,
            variant,
            shard_size=hyperface.shard_size,
            code_version=version,
            owner=owner(context),
            force=step.config.force,
            lease_ttl_s=hyperface.lease_ttl_s,
            progress=context.log.info,
        )
        artifact = reference_artifact(lake, name)
        metadata = _reference_metadata(outcome.manifest)
        plot_uri = committed_uri(artifact, PLOT_FILE, outcome.manifest)
        metadata["convergence_plot"] = MetadataValue.md(
            png_markdown(lake.read_bytes(plot_uri), "convergence")
        )
        metadata["convergence_plot_uri"] = plot_uri
        check = _min_angle_check(outcome.manifest, variant.min_angle_deg)
        return materialize_result(context, artifact, outcome, metadata, check_results=[check])

    return _reference


def _reference_metadata(manifest: Manifest) -> dict:
    """The packing report committed in the manifest's extra, flattened for the UI."""
    report = dict(manifest.extra)
    metrics = report.pop("metrics", {})
    metadata = {**report, **metrics}
    if metadata.get("resumed_at_step") is None:
        metadata["resumed_at_step"] = -1  # not resumed
    if report.get("embedder_random_init"):
        metadata["warning"] = RANDOM_WEIGHTS_WARNING
    return metadata


def _min_angle_check(manifest: Manifest, bound: float) -> AssetCheckResult:
    metrics = manifest.extra.get("metrics", {})
    angle = float(metrics.get("min_angle_deg", float("nan")))
    metadata = {
        "min_angle_deg": angle,
        "bound_deg": float(bound),
        "initial_min_angle_deg": float(metrics.get("initial_min_angle_deg", float("nan"))),
    }
    return failing_check(MIN_ANGLE_CHECK, angle >= bound, metadata)


def _limit_cpu_threads(settings: FacelakeSettings) -> None:
    """On a CPU worker, cap torch's threads as the face stages do (``models.torch_threads``, 0 = default)."""
    threads = settings.models.torch_threads
    if threads > 0 and not torch.cuda.is_available():
        torch.set_num_threads(threads)


hyperface_reference_job = gpu_job(
    "hyperface_reference_job",
    [REFERENCE],
    "HyperFace reference embeddings of one variant (partition key = variant name from "
    "hyperface.variants; GPU step: pool 'gpu', celery queue 'gpu'), with the blocking minimum-angle check. "
    "Materialize hyperface_gallery first.",
)


def definitions(settings: FacelakeSettings) -> Definitions:
    """The HyperFace area for ``settings``."""
    return area_definitions(
        hyperface_assets(settings),
        jobs=[hyperface_reference_job, hyperface_images_job, hyperface_curation_job],
    )
