"""HyperFace settings: the gallery source, the named packing variants (partition keys), the output shards."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class HyperfaceGallerySettings(BaseModel):
    """Where HyperFace's gallery embeddings come from: ONE embedding space (checked by provenance).

    ``table``: parquet files (local or ``s3://``; ``{sources}`` expands) with an ``embedding`` column and the
    embedder provenance columns of ``facelake.faces.identity``. ``laion_face_embeddings`` /
    ``sfhq_face_embeddings``: that asset's committed parts (``parts``; empty = every committed part). The
    paper's gallery is SFHQ part 3 (StyleGAN2 faces) embedded with the same model as the packing space:
    ``source: sfhq_face_embeddings`` with ``parts: ["3"]``."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["table", "laion_face_embeddings", "sfhq_face_embeddings"] = "laion_face_embeddings"
    uris: list[str] = Field(default_factory=list, description="table: parquet embedding tables")
    parts: list[str] = Field(
        default_factory=list, description="laion_face_embeddings / sfhq_face_embeddings: parts (empty = all)"
    )
    max_rows: int | None = Field(None, ge=1, description="seeded sample of the gallery when it is larger")
    seed: int = 0


class HyperfaceVariant(BaseModel):
    """One named packing run (a partition key): N identities in the gallery's space (d from the gallery).

    ``packing`` passes further ``facelake.hyperface.packing.PackingConfig`` fields (learning_rate, lr_decay,
    gallery_sample, against_all, screen, checkpoint_every, ...) through unchanged; ``generation`` overrides the
    deployment's ``generation`` settings (``facelake.generation.settings.GenerationSettings``:
    images_per_identity, beta, few_step, steps, ...) for this variant's images."""

    model_config = ConfigDict(extra="forbid")

    identities: int = Field(ge=2)
    alpha: float = Field(0.5, ge=0.0)
    algorithm: Literal["full", "stochastic"] = "stochastic"
    optimizer: Literal["adam", "fast"] = "adam"
    iterations: int = Field(ge=1, description="full: Adam steps; stochastic: epochs")
    batch_size: int = Field(1000, ge=1)
    seed: int = 0
    init: Literal["gallery", "random"] = "gallery"
    min_angle_deg: float = Field(
        20.0, ge=0.0, le=180.0, description="asset check: the packed minimum pairwise angle must reach this"
    )
    packing: dict[str, Any] = Field(default_factory=dict)
    generation: dict[str, Any] = Field(
        default_factory=dict,
        description="per-variant overrides of the generation settings (images, beta, ...)",
    )


def _default_hyperface_variants() -> dict[str, HyperfaceVariant]:
    return {
        "demo": HyperfaceVariant(identities=1_000, algorithm="full", iterations=200),
        "10k": HyperfaceVariant(identities=10_000, algorithm="full", iterations=2_000),
        "50k": HyperfaceVariant(identities=50_000, algorithm="stochastic", iterations=20, batch_size=1_000),
    }


class HyperfaceSettings(BaseModel):
    """HyperFace reference embeddings: the gallery, the named variants (partition keys), the output shards."""

    model_config = ConfigDict(extra="forbid")

    gallery: HyperfaceGallerySettings = Field(default_factory=HyperfaceGallerySettings)
    variants: dict[str, HyperfaceVariant] = Field(default_factory=_default_hyperface_variants)
    shard_size: int = Field(1_000, ge=1, description="identities per output shard (the generation unit)")
    lease_ttl_s: float = Field(900.0, gt=0)

    @field_validator("variants")
    @classmethod
    def _variant_names(cls, value: dict[str, HyperfaceVariant]) -> dict[str, HyperfaceVariant]:
        if not value:
            raise ValueError("at least one variant is needed")
        bad = [name for name in value if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name)]
        if bad:
            raise ValueError(f"variant names {bad} must be partition keys: letters, digits, '_', '.', '-'")
        return value
