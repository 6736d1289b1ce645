"""Validated settings: defaults < YAML config file < environment (``FACELAKE_*``, nested with ``__``).

The config file is ``$FACELAKE_CONFIG`` if set, else ``facelake.yaml`` in the working directory if present.
Example: ``FACELAKE_ROOT=s3://bucket/lake FACELAKE_S3__ENDPOINT_URL=http://127.0.0.1:9000``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from facelake.laion.formats import META_PART_TEMPLATE
from facelake.storage import S3Options, Storage

LAION_PARTS = [f"{i:05d}" for i in range(32)]
LAION_20M_PARTS = [f"{i:05d}" for i in (0, 2, 5, 8, 13, 15, 17, 18, 21, 22, 24, 25, 28)]


class S3Settings(BaseModel):
    """S3 endpoint and credentials; empty values fall back to the AWS environment."""

    endpoint_url: str | None = None
    key: str | None = None
    secret: str | None = None
    region: str | None = None

    def options(self) -> S3Options:
        return S3Options(self.endpoint_url, self.key, self.secret, self.region)


class LaionSources(BaseModel):
    """Where the released LAION-Face inputs are. ``{sources}`` expands to the sources root."""

    meta_uri_template: str = "{sources}/laion400m-meta/" + META_PART_TEMPLATE
    face_ids_uri: str = "{sources}/laion_face_ids.pth"
    sample2detect_uri_template: str = "{sources}/detection_metadata/sample2detect_{part}.pth"
    optout_uris: list[str] = Field(
        default_factory=list, description="CSV or parquet blocklists with a SAMPLE_ID and/or URL column"
    )


class DownloadSettings(BaseModel):
    """img2dataset options (the authors ran 16 processes x 128 threads)."""

    processes: int = Field(16, ge=1)
    threads: int = Field(128, ge=1)
    timeout: int = Field(10, ge=1)
    retries: int = Field(0, ge=0)
    number_sample_per_shard: int = Field(10_000, ge=1)
    user_agent_token: str | None = "facelake"
    disallowed_header_directives: list[str] = Field(
        default_factory=lambda: ["noai", "noimageai", "noindex", "noimageindex"]
    )
    min_success_rate: float = Field(0.5, ge=0.0, le=1.0, description="asset check threshold")
    lease_ttl_s: float = Field(900.0, gt=0)


class ScheduleSettings(BaseModel):
    """The part-download schedule: which parts, how often, how many in flight."""

    subset: Literal["20m", "50m"] = "20m"
    cron: str = "*/15 * * * *"
    max_in_flight: int = Field(2, ge=1)


class ModelSettings(BaseModel):
    """Model weights (see ``facelake.models.registry``): a local cache dir, explicit paths by catalogue name
    (e.g. ``arcface``, ``retinaface-resnet50``), and the detector and embedder the pipeline uses."""

    model_config = ConfigDict(extra="forbid")

    cache_dir: str = "./.facelake/models"
    paths: dict[str, str] = Field(default_factory=dict, description="catalogue name -> local weights file")
    allow_download: bool = Field(False, description="download from a model's home URL (never when offline)")
    detector_backbone: Literal["mobilenet0.25", "resnet50"] = "mobilenet0.25"
    detector_max_side: int = Field(1024, ge=32)
    detector_threshold: float = Field(0.5, gt=0.0, lt=1.0)
    embedder: Literal["dlib", "arcface"] = "dlib"
    torch_threads: int = Field(0, ge=0, description="torch CPU threads on CPU workers (0: torch default)")


class HyperfaceGallerySettings(BaseModel):
    """Where HyperFace's gallery embeddings come from: ONE embedding space (checked by provenance).

    ``table``: parquet files (local or ``s3://``; ``{sources}`` expands) with an ``embedding`` column and the
    embedder provenance columns of ``facelake.identity``. ``laion_face_embeddings``: that asset's committed
    parts (``parts``; empty = every committed part). The paper's gallery is SFHQ part 3 (StyleGAN2 faces)
    embedded with the same model as the packing space."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["table", "laion_face_embeddings"] = "laion_face_embeddings"
    uris: list[str] = Field(default_factory=list, description="table: parquet embedding tables")
    parts: list[str] = Field(default_factory=list, description="laion_face_embeddings: parts (empty = all)")
    max_rows: int | None = Field(None, ge=1, description="seeded sample of the gallery when it is larger")
    seed: int = 0


class HyperfaceVariant(BaseModel):
    """One named packing run (a partition key): N identities in the gallery's space (d from the gallery).

    ``packing`` passes further ``facelake.packing.PackingConfig`` fields (learning_rate, lr_decay,
    gallery_sample, against_all, screen, checkpoint_every, ...) through unchanged."""

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


class ClusteringSettings(BaseModel):
    """Identity clusters (DBSCAN, cosine distance; see ``facelake.identity_clusters``) and the CelebA-HQ source.

    eps comes from the embedder's profile (its same-identity cosine distance: ArcFace 0.35 as on the
    celebahq_512_id_clusters card, dlib 0.092), from the valley of the nearest-neighbour cosine histogram
    (``1 - valley``), or is fixed; the choice is recorded in every output."""

    model_config = ConfigDict(extra="forbid")

    celebahq_uri: str = Field(
        "{sources}/celeba-hq",
        description="folder of the jxie/celeba-hq parquet export (image struct<bytes, path>); {sources} expands",
    )
    eps_source: Literal["profile", "valley", "fixed"] = "profile"
    eps: float = Field(
        0.35, gt=0.0, le=2.0, description="DBSCAN eps (cosine distance) when eps_source is fixed"
    )
    min_samples: int = Field(2, ge=1)
    screen: Literal["auto", "numpy-float32", "torch-float32", "torch-bfloat16"] = Field(
        "auto", description="Gram screening precision (facelake.gram); labels are exact whatever it is"
    )
    block: int | None = Field(None, ge=1, description="Gram block edge (default: 2048 CPU, 8192 CUDA)")
    min_centroid_cosine: float | None = Field(
        None,
        ge=-1.0,
        le=1.0,
        description="asset check bound on each member's cosine to its centroid (None: 1 - eps)",
    )
    face_batch_size: int = Field(16, ge=1, description="CelebA-HQ images per detection/embedding batch")


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

    def storage(self) -> Storage:
        return Storage(self.root, self.s3.options())

    def source_uri(self, template: str, **fields: Any) -> str:
        """Expand a source template; relative local paths become absolute."""
        uri = template.format(sources=self.sources.rstrip("/"), **fields)
        return uri if "://" in uri else os.path.abspath(uri)

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
