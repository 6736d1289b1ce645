"""The configured open_clip model as a Dagster resource: its fields are :class:`facelake.clip.settings.ClipSettings`'s."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from facelake.clip.settings import ClipSettings
from facelake.settings import FacelakeSettings
from resources.settings_resource import settings_resource

if TYPE_CHECKING:
    from facelake.clip.encoder import ClipEncoder
    from facelake.clip.model import ClipModelSpec, LoadedClip


@functools.lru_cache(maxsize=2)
def _loaded(spec: ClipModelSpec) -> LoadedClip:
    """One load per process and model (the steps of an in-process run share it)."""
    from facelake.clip.model import load_clip

    return load_clip(spec)


class ClipResource(settings_resource(ClipSettings, "ClipSettingsResource")):
    """The open_clip model of the settings (a pretrained tag — offline only from the local caches —, a
    checkpoint file, a ``local-dir:`` folder, or seeded random weights that every output labels), loaded once
    per process, and the search / index / near-duplicate settings."""

    @classmethod
    def from_settings(cls, settings: FacelakeSettings) -> ClipResource:
        return cls(**settings.clip.model_dump())

    def encoder(self) -> ClipEncoder:
        """A batched image/text encoder of the configured model on the configured device (raises
        :class:`facelake.models.registry.ModelNotFoundError` at once when the weights are not here)."""
        import torch

        from facelake.clip.encoder import ClipEncoder

        settings = self.settings_model()
        options = settings.encoder_options()
        if self.torch_threads > 0 and options["device"] == "cpu":
            torch.set_num_threads(self.torch_threads)
        return ClipEncoder(_loaded(settings.spec()), **options)
