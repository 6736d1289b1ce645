"""Model weights and loaded models (face detector, identity embedder) as a Dagster resource."""

from __future__ import annotations

from typing import Any

import torch

from facelake.faces.detection import FaceDetector
from facelake.faces.identity import IdentityEmbedder
from facelake.models.registry import EMBEDDERS, ModelRegistry, detector_model
from facelake.models.settings import ModelSettings
from facelake.settings import FacelakeSettings
from resources.settings_resource import settings_resource


class ModelRegistryResource(settings_resource(ModelSettings, "ModelRegistrySettings")):
    """Resolves weights from explicit paths, the cache dir, shipped packages or offline imports (never a
    download unless ``allow_download`` and not offline); detector and embedder are loaded once per process.
    The device is ``cuda`` when available, else ``cpu``. ``torch_threads``: set 1-2 where steps share cores
    (oversubscribed OpenMP threads slowed detection ~30x when other steps ran on the same 2 cores)."""

    @classmethod
    def from_settings(cls, settings: FacelakeSettings) -> ModelRegistryResource:
        return cls(**settings.models.model_dump())

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

    def identity_embedder(self) -> IdentityEmbedder:
        """The configured identity embedder (shared within the process)."""
        return self.registry().embedder(self.embedder)

    def describe(self, name: str) -> dict[str, Any]:
        """Asset metadata of model ``name`` (file, sha256, size, random_init, license)."""
        return self.registry().describe(name)

    def model_names(self) -> list[str]:
        """Catalogue names of the configured detector's and embedder's weights (for :meth:`describe`)."""
        entry = EMBEDDERS.get(self.embedder)
        return [detector_model(self.detector_backbone), *(entry.models if entry else ())]
