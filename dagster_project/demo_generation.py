"""The demo's HyperFace generation: a tiny ArcFace-space variant when generator weights are configured,
otherwise one line saying what to provide and where.

Arc2Face generates from ArcFace vectors only, so a variant must be packed in the generator's identity space.
When the Arc2Face folders are present (model registry: ``stable-diffusion-v1-5``, ``arc2face`` with its
``arcface.onnx``), the demo embeds its faces with that same ``arcface.onnx`` (``models.embedder: arcface``), so
the gallery, the packed identities and the generator share one space, and adds the variant
:data:`GENERATION_VARIANT` (:data:`TINY_VARIANT`: 4 identities x 2 images), which it packs, generates, aligns,
audits and exports to ``hyperface_dataset``. None of these weights ship with facelake; without them the
generation views stay empty and the demo prints why.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from facelake.settings import FacelakeSettings

GENERATION_VARIANT = "demo_arcface"
TINY_VARIANT: dict[str, Any] = {
    "identities": 4,
    "algorithm": "full",
    "iterations": 50,
    "min_angle_deg": 0.0,
    "generation": {"images_per_identity": 2, "shard_identities": 4, "batch_size": 2},
}
CURATION_ASSETS = (
    "hyperface_images",
    "hyperface_aligned",
    "hyperface_identity_audit",
    "hyperface_leakage",
    "hyperface_dataset",
)


def generation_config(settings: FacelakeSettings) -> tuple[dict[str, Any], str | None]:
    """(config additions, None) when the generator can load, else ({}, the one line: what to provide, where)."""
    from facelake.generation.layout import resolve_arc2face_folders
    from facelake.generation.variant import missing_generator
    from facelake.models.registry import ModelRegistry

    models = settings.models
    registry = ModelRegistry(models.cache_dir, models.paths, models.allow_download)
    missing = missing_generator(registry, settings.generation)
    if missing is not None:
        return {}, f"HyperFace generation skipped, its views stay empty: {missing}"
    arcface = resolve_arc2face_folders(registry).arcface_path
    if arcface is None:
        return {}, (
            "HyperFace generation skipped, its views stay empty: the Arc2Face folder holds no arcface.onnx "
            "(the ArcFace model its identity space is; the release ships it beside arc2face/ and encoder/)"
        )
    variants = {name: v.model_dump() for name, v in settings.hyperface.variants.items()}
    return {
        "models": {"embedder": "arcface", "paths": {**models.paths, "arcface": str(arcface)}},
        "hyperface": {"variants": {**variants, GENERATION_VARIANT: TINY_VARIANT}},
    }, None


def merge_config(config: dict[str, Any], additions: dict[str, Any]) -> dict[str, Any]:
    """``config`` with ``additions`` merged in, nested mappings key by key."""
    merged = dict(config)
    for key, value in additions.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_config(merged[key], value)
        else:
            merged[key] = value
    return merged
