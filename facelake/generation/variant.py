"""One HyperFace variant's images: its committed reference identities through the configured generator.

The glue an orchestrator calls (``hyperface_images[variant]``): read the variant's committed reference
embeddings, load the generator from the model registry (or say in one line what to provide), and commit the
images with :func:`facelake.generation.stage.commit_generated_images` into ``{root}/hyperface/images/{variant}/``.
The reference partition's content hash is part of the images' config, so re-packed identities are a new
input and regenerate.
"""

from __future__ import annotations

from collections.abc import Callable

from facelake.generation.generator import Arc2FaceGenerator, load_generator
from facelake.generation.identities import ReferenceIdentities
from facelake.generation.layout import ARC2FACE_MODEL, BASE_MODEL, LCM_LORA_MODEL, generator_available
from facelake.generation.settings import GenerationSettings
from facelake.generation.stage import GenerationResult, commit_generated_images
from facelake.hyperface.references import DATASET, read_reference_embeddings, reference_artifact
from facelake.lake.commit import PartitionArtifact
from facelake.lake.storage import Storage
from facelake.models.registry import ModelRegistry

IMAGES_TABLE = "images"


def images_artifact(storage: Storage, variant: str) -> PartitionArtifact:
    """One variant's generated images: ``{root}/hyperface/images/{variant}/``."""
    return PartitionArtifact(storage, DATASET, IMAGES_TABLE, variant)


def missing_generator(registry: ModelRegistry, settings: GenerationSettings) -> str | None:
    """None when the generator (and, in few-step mode, its LoRA) can load; else one line: what to provide,
    and where."""
    reason = generator_available(registry, few_step=settings.few_step)
    if reason is None:
        return None
    needed = [BASE_MODEL, ARC2FACE_MODEL] + ([LCM_LORA_MODEL] if settings.few_step else [])
    return (
        f"the Arc2Face generator needs {', '.join(needed)} under {registry.cache_dir} or models.paths: "
        f"{reason}"
    )


def variant_generator(registry: ModelRegistry, settings: GenerationSettings) -> Arc2FaceGenerator:
    """The generator for ``settings``' sampling; ``facelake.models.registry.ModelNotFoundError`` says what to
    provide when its folders are absent (nothing is fetched)."""
    return load_generator(registry, settings.sampling())


def variant_identities(storage: Storage, variant: str) -> tuple[ReferenceIdentities, str]:
    """The variant's committed reference identities and the reference partition's content hash."""
    artifact = reference_artifact(storage, variant)
    manifest = artifact.require_manifest()
    table = read_reference_embeddings(storage, artifact)
    return ReferenceIdentities.from_table(table, variant, name=artifact.prefix), manifest.content_hash


def generate_variant_images(
    storage: Storage,
    variant: str,
    registry: ModelRegistry,
    settings: GenerationSettings,
    *,
    code_version: str,
    owner: str,
    force: bool = False,
    log: Callable[[str], None] | None = None,
) -> GenerationResult:
    """Generate and commit ``variant``'s images (resumable per shard; a committed partition is reused)."""
    identities, reference_hash = variant_identities(storage, variant)
    generator = variant_generator(registry, settings)
    if log is not None:
        log(
            f"variant {variant}: {len(identities)} identities x {settings.images_per_identity} images, "
            f"beta {settings.beta}, {generator.describe()}"
        )
        if generator.warning:
            log(generator.warning)
    return commit_generated_images(
        images_artifact(storage, variant),
        identities,
        generator,
        settings.options(),
        code_version=code_version,
        owner=owner,
        run_config={"reference_content_hash": reference_hash},
        force=force,
        lease_ttl_s=settings.lease_ttl_s,
        log=log,
    )
