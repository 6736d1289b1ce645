"""Which model weights the pipelines load, and from where."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ModelSettings(BaseModel):
    """Model weights (see ``facelake.models.registry``): a local cache dir, explicit paths by catalogue name
    (e.g. ``arcface``, ``retinaface-resnet50``), and the detector and embedder the pipeline uses."""

    model_config = ConfigDict(extra="forbid")

    cache_dir: str = "./.facelake/models"
    paths: dict[str, str] = Field(default_factory=dict, description="catalogue name -> local weights file")
    allow_download: bool = Field(False, description="download from a model's home URL (never when offline)")
    detector_backbone: str = Field(
        "mobilenet0.25", description="a RetinaFace backbone (facelake.faces.detection)"
    )
    detector_max_side: int = Field(1024, ge=32)
    detector_threshold: float = Field(0.5, gt=0.0, lt=1.0)
    embedder: str = Field("dlib", description="an identity embedder of facelake.models.registry.EMBEDDERS")
    torch_threads: int = Field(0, ge=0, description="torch CPU threads on CPU workers (0: torch default)")

    @field_validator("detector_backbone")
    @classmethod
    def _known_backbone(cls, value: str) -> str:
        from facelake.faces.detection import BACKBONES

        if value not in BACKBONES:
            raise ValueError(f"unknown RetinaFace backbone {value!r}: expected one of {sorted(BACKBONES)}")
        return value

    @field_validator("embedder")
    @classmethod
    def _known_embedder(cls, value: str) -> str:
        from facelake.models.registry import EMBEDDERS

        if value not in EMBEDDERS:
            raise ValueError(f"unknown identity embedder {value!r}: expected one of {sorted(EMBEDDERS)}")
        return value
