"""Validated settings: defaults < YAML config file < environment (``FACELAKE_*``, nested with ``__``).

Each domain declares its own section (``facelake.<domain>.settings``); this module only composes them.
The config file is ``$FACELAKE_CONFIG`` if set, else ``facelake.yaml`` in the working directory if present.
Example: ``FACELAKE_ROOT=s3://bucket/lake FACELAKE_S3__ENDPOINT_URL=http://127.0.0.1:9000``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from facelake.clip.settings import ClipSettings
from facelake.clusters.settings import ClusteringSettings
from facelake.curation.settings import CurationSettings
from facelake.generation.settings import GenerationSettings
from facelake.hyperface.settings import HyperfaceSettings
from facelake.laion.download_options import DownloadSettings
from facelake.laion.formats import LAION_20M_PARTS, LAION_PARTS
from facelake.laion.settings import LaionSources, ScheduleSettings
from facelake.lake.settings import S3Settings
from facelake.lake.storage import Storage, expand_source
from facelake.models.settings import ModelSettings
from facelake.sfhq.settings import SfhqSettings


class FacelakeSettings(BaseSettings):
    """All settings of one facelake deployment."""

    model_config = SettingsConfigDict(env_prefix="FACELAKE_", env_nested_delimiter="__", extra="forbid")

    root: str = Field("./.facelake/lake", description="storage root: a local path or s3://bucket/prefix")
    sources: str = Field("./.facelake/sources", description="root of the released source files")
    s3: S3Settings = Field(default_factory=S3Settings)
    laion: LaionSources = Field(default_factory=LaionSources)
    download: DownloadSettings = Field(default_factory=DownloadSettings)
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)
    models: ModelSettings = Field(default_factory=ModelSettings)
    clustering: ClusteringSettings = Field(default_factory=ClusteringSettings)
    hyperface: HyperfaceSettings = Field(default_factory=HyperfaceSettings)
    sfhq: SfhqSettings = Field(default_factory=SfhqSettings)
    clip: ClipSettings = Field(default_factory=ClipSettings)
    generation: GenerationSettings = Field(
        default_factory=GenerationSettings,
        description="HyperFace image generation defaults; a variant's ``generation`` overrides them",
    )
    curation: CurationSettings = Field(
        default_factory=CurationSettings,
        description="HyperFace's last mile: alignment, identity audit, leakage, the exported dataset",
    )

    @field_validator("root", "sources")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = config_file_path()
        if path is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)

    @model_validator(mode="after")
    def _variant_generation(self) -> FacelakeSettings:
        for name in self.hyperface.variants:
            self.generation_for(name)  # a bad override fails here, at load time, naming the variant
        return self

    def generation_for(self, variant: str) -> GenerationSettings:
        """The generation settings of HyperFace variant ``variant``: the defaults with its overrides."""
        overrides = self.hyperface.variants[variant].generation
        try:
            return GenerationSettings.model_validate({**self.generation.model_dump(), **overrides})
        except ValueError as error:
            raise ValueError(f"hyperface.variants.{variant}.generation: {error}") from None

    def storage(self) -> Storage:
        return Storage(self.root, self.s3.options())

    def source_uri(self, template: str, **fields: Any) -> str:
        """Expand a source template; relative local paths become absolute."""
        return expand_source(template, self.sources, **fields)

    def schedule_parts(self) -> list[str]:
        return LAION_20M_PARTS if self.schedule.subset == "20m" else LAION_PARTS


def config_file_path() -> Path | None:
    """The YAML config file in force, if any; a named file that does not exist is an error."""
    named = os.environ.get("FACELAKE_CONFIG")
    if named:
        path = Path(named)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: FACELAKE_CONFIG names a config file that does not exist")
        return path
    default = Path("facelake.yaml")
    return default if default.is_file() else None


def load_settings(**overrides: Any) -> FacelakeSettings:
    """Settings from defaults, the config file, the environment and explicit overrides (highest)."""
    return FacelakeSettings(**overrides)
