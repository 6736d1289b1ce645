"""HyperFace generation (issue 14): ``hyperface_images[variant]``, faces from the packed identities.

One partition per variant, as the reference embeddings: its images are committed inside the partition in
generation shards of ``generation.shard_identities`` identities (``shards/NNNNN.tar`` + index parquet), one by
one, so a killed run resumes at the first shard not committed and a variant's 174 GPU-hours (the paper's
500k images) never restart from zero. Shard ids are stable (identity index // shard size), so the variant can
later be split over GPUs without renaming anything. Images per identity, beta and the sampling come from the
``generation`` settings and the variant's ``generation`` overrides (facelake/generation/settings.py).
"""

# No "from __future__ import annotations" here: Dagster reads the asset functions' annotations at runtime.

import dagster as dg

from assets.areas import gpu_job
from assets.hyperface_variants import VariantStep, check_spec, variant_asset
from assets.materializing import code_version, failing_check, materialize_result
from assets.pools import gpu_asset
from facelake.generation.stage import GenerationResult
from facelake.generation.variant import generate_variant_images, images_artifact, missing_generator
from facelake.lake.plots import png_markdown
from facelake.settings import FacelakeSettings

IMAGES = "hyperface_images"
COUNT_CHECK = "every_identity_has_its_images"


def images_asset(settings: FacelakeSettings, reference: str) -> dg.AssetsDefinition:
    """``hyperface_images``: partitioned like ``reference`` (one key per variant), on the GPU pool."""
    version = code_version("1", {"generation": settings.generation.model_dump()})

    @variant_asset(
        gpu_asset,
        settings,
        IMAGES,
        [reference],
        version,
        resources=("models",),
        kinds={"pytorch", "webdataset"},
        check_specs=[
            check_spec(
                IMAGES, COUNT_CHECK, "Committed images = identities x images_per_identity of the variant."
            )
        ],
        description="HyperFace images of one variant: images_per_identity faces per packed identity from "
        "Arc2Face (SD-1.5 + identity encoder, diffusers), each from normalize(x + beta n) and fresh latent "
        "noise seeded by (variant, identity, index): webdataset shards shards/NNNNN.tar (jpg + json) with a "
        "parquet index per shard, committed per shard and resumable; images/s and a contact sheet in the "
        "metadata. Needs the Arc2Face weights (`facelake models`).",
    )
    def _images(step: VariantStep) -> dg.MaterializeResult:
        context, name = step.context, step.variant
        generation = settings.generation_for(name)
        registry = step.resource("models").registry()
        missing = missing_generator(registry, generation)
        if missing is not None:
            raise dg.Failure(description=f"hyperface_images[{name}]: no generator weights. {missing}")
        result = generate_variant_images(step.lake, name, registry, generation, **step.commit_options())
        if result.generator.get("random_init"):
            context.log.warning(result.metadata().get("warning", "random generator weights"))
        metadata = _images_metadata(result)
        return materialize_result(
            context,
            images_artifact(step.lake, name),
            result.outcome,
            metadata,
            check_results=[_count_check(result)],
        )

    return _images


def _images_metadata(result: GenerationResult) -> dict:
    metadata = {k: v for k, v in result.metadata().items() if v is not None}
    if result.contact_sheet:
        metadata["contact_sheet"] = dg.MetadataValue.md(png_markdown(result.contact_sheet, "contact sheet"))
    return metadata


def _count_check(result: GenerationResult) -> dg.AssetCheckResult:
    extra = result.outcome.manifest.extra
    expected = int(extra.get("identities", 0)) * int(extra.get("images_per_identity", 0))
    images = int(result.outcome.manifest.rows or 0)
    return failing_check(
        COUNT_CHECK, images == expected and images > 0, {"images": images, "expected": expected}
    )


hyperface_images_job = gpu_job(
    "hyperface_images_job",
    [IMAGES],
    "HyperFace images of one variant (partition key = variant name; GPU step: pool 'gpu', celery "
    "queue 'gpu', run tag facelake/resource=gpu). Materialize hyperface_reference_embeddings first and "
    "configure the Arc2Face weights (`facelake models`).",
)
