"""Generation settings: per-variant images and noise (the paper's defaults), sampling, sharding."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:  # the engine modules import torch: settings stay importable without it
    from facelake.generation.generator import Sampling
    from facelake.generation.stage import GenerationOptions


class GenerationSettings(BaseModel):
    """How a variant's images are generated (HyperFace §2, Arc2Face's defaults).

    The paper generates 64 images per identity (ablating 32-128) with embedding noise beta; its value was lost
    from the seed text, 0.005 is the project's default. ``few_step`` switches to Arc2Face's LCM-LoRA mode
    (2 steps, guidance 1.0) when the ``lcm-lora-sdv1-5`` weights are present; ``steps``/``guidance`` left
    empty take the mode's defaults (25 / 3.0, or 2 / 1.0)."""

    model_config = ConfigDict(extra="forbid")

    images_per_identity: int = Field(64, ge=1)
    beta: float = Field(0.005, ge=0.0, description="embedding noise: x' = normalize(x + beta * n)")
    seed: int = Field(0, description="mixed into every image's seeds (a re-roll of the whole variant)")
    few_step: bool = Field(False, description="Arc2Face's LCM-LoRA mode (needs lcm-lora-sdv1-5)")
    steps: int | None = Field(None, ge=1, description="None: 25, or 2 in few-step mode")
    guidance: float | None = Field(None, ge=0.0, description="None: 3.0, or 1.0 in few-step mode")
    height: int = Field(512, ge=8, multiple_of=8)
    width: int = Field(512, ge=8, multiple_of=8)
    batch_size: int = Field(8, ge=1, description="images per pipeline call; batches span identities")
    shard_identities: int = Field(
        16, ge=1, description="identities per committed generation shard (16 x 64 images ~ 20 min on a 3090)"
    )
    jpeg_quality: int = Field(95, ge=1, le=100)
    contact_sheet_identities: int = Field(4, ge=1)
    contact_sheet_images: int = Field(4, ge=1)
    lease_ttl_s: float = Field(900.0, gt=0)

    def sampling(self) -> Sampling:
        from facelake.generation.generator import Sampling

        return Sampling(
            steps=self.steps,
            guidance=self.guidance,
            height=self.height,
            width=self.width,
            few_step=self.few_step,
        )

    def options(self) -> GenerationOptions:
        from facelake.generation.stage import GenerationOptions

        return GenerationOptions(
            images_per_identity=self.images_per_identity,
            beta=self.beta,
            seed=self.seed,
            shard_identities=self.shard_identities,
            batch_size=self.batch_size,
            jpeg_quality=self.jpeg_quality,
            contact_sheet_identities=self.contact_sheet_identities,
            contact_sheet_images=self.contact_sheet_images,
        )
