"""img2dataset as a Dagster resource: the ``download:`` settings (declared in the engine), per deployment."""

from __future__ import annotations

from typing import Any

from facelake.laion.download_options import DownloadOptions, DownloadSettings
from facelake.settings import FacelakeSettings
from resources.settings_resource import settings_resource


class Img2DatasetResource(settings_resource(DownloadSettings, "Img2DatasetSettings")):
    """Processes, threads, timeout and retries of img2dataset, plus the success-rate check threshold."""

    @classmethod
    def from_settings(cls, settings: FacelakeSettings) -> Img2DatasetResource:
        return cls(**settings.download.model_dump())

    def options(self) -> DownloadOptions:
        """The engine's download options."""
        return self.settings_model().options()

    def output_config(self) -> dict[str, Any]:
        """The options that change what is downloaded (not how fast): they enter the config hash."""
        return self.settings_model().output_config()
