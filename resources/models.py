"""Model weights and loaded models (face detector, identity embedder) as a Dagster resource."""

from __future__ import annotations

from typing import Any

import torch
from dagster import ConfigurableResource
from pydantic import Field

from facelake.detection import FaceDetector
from facelake.identity import IdentityEmbedder
from facelake.models.registry import DEFAULT_CACHE_DIR, EMBEDDER_MODELS, ModelRegistry, detector_model
from facelake.settings import FacelakeSettings


class ModelRegistryResource(ConfigurableResource):
    """Resolves weights from explicit paths, the cache dir, shipped packages or offline imports (never a
    download unless ``allow_download`` and not offline); detector and embedder are loaded once per process.
    The device is ``cuda`` when available, else ``cpu``."""

    cache_dir: str = DEFAULT_CACHE_DIR
    paths: dict[str, str] = Field(default_factory=dict, description="catalogue name -> local weights file")
    allow_download: bool = False
    detector_backbone: str = "mobilenet0.25"
    detector_max_side: int = 1024
    detector_threshold: float = 0.5
    embedder_name: str = "dlib"
    torch_threads: int = 0
    """CPU threads for torch on a CPU worker (0: torch's default). Set 1-2 where steps share cores: with the
    default, oversubscribed OpenMP threads slowed detection ~30x when other steps ran on the same 2 cores."""

    @classmethod
    def from_settings(cls, settings: FacelakeSettings) -> ModelRegistryResource:
        models = settings.models
        return cls(
            cache_dir=models.cache_dir,
            paths=dict(models.paths),
            allow_download=models.allow_download,
            detector_backbone=models.detector_backbone,
            detector_max_side=models.detector_max_side,
            detector_threshold=models.detector_threshold,
            embedder_name=models.embedder,
            torch_threads=models.torch_threads,
        )

    def registry(self) -> ModelRegistry:
        """The engine's registry for this configuration."""
        return ModelRegistry(self.cache_dir, self.paths, self.allow_download)

    def detector(self, device: str | None = None) -> FaceDetector:
        """The configured RetinaFace detector (shared within the process)."""
        detector = self.registry().detector(
            self.detector_backbone, device, self.detector_max_side, self.detector_threshold
        )
        if self.torch_threads > 0 and str(detector.device) == "cpu":
            torch.set_num_threads(self.torch_threads)
        return detector

    def embedder(self) -> IdentityEmbedder:
        """The configured identity embedder (shared within the process)."""
        return self.registry().embedder(self.embedder_name)

    def describe(self, name: str) -> dict[str, Any]:
        """Asset metadata of model ``name`` (file, sha256, size, random_init, license)."""
        return self.registry().describe(name)

    def model_names(self) -> list[str]:
        """Catalogue names of the configured detector's and embedder's weights (for :meth:`describe`)."""
        return [detector_model(self.detector_backbone), *EMBEDDER_MODELS.get(self.embedder_name, ())]
