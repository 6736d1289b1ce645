"""How LAION-Face parts are downloaded: the authors' img2dataset settings, declared once.

:class:`DownloadOptions` is what the engine runs img2dataset with; :class:`DownloadSettings` adds the two
orchestration settings (the success-rate check, the partition lease) and is the ``download:`` section of
``facelake.yaml``. The resource and the asset read these models; nothing re-declares their fields.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

SAMPLE_ID = "SAMPLE_ID"
DEFAULT_DISALLOWED_DIRECTIVES = ("noai", "noimageai", "noindex", "noimageindex")
OUTPUT_FIELDS = (
    "timeout",
    "retries",
    "number_sample_per_shard",
    "user_agent_token",
    "disallowed_header_directives",
)
"""The options that change what is downloaded (not how fast): they enter the config hash."""


class DownloadOptions(BaseModel):
    """img2dataset settings; defaults follow the LAION-Face ``download.sh`` (16 processes × 128 threads,
    webdataset, no resize).

    ``number_sample_per_shard`` fixes which input rows form shard ``i``: never change it between runs
    into the same shards folder. ``disallowed_header_directives`` keeps the X-Robots-Tag opt-out on;
    an empty list turns it off.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    processes: int = Field(16, ge=1)
    threads: int = Field(128, ge=1)
    timeout: int = Field(10, ge=1)
    retries: int = Field(0, ge=0)
    number_sample_per_shard: int = Field(10_000, ge=1)
    max_shard_retry: int = Field(1, ge=0)
    resize_mode: str = "no"
    image_size: int = Field(256, ge=1)
    encode_format: str = "jpg"
    encode_quality: int = 95
    skip_reencode: bool = False
    compute_hash: str | None = "sha256"
    extract_exif: bool = True
    disallowed_header_directives: list[str] = Field(
        default_factory=lambda: list(DEFAULT_DISALLOWED_DIRECTIVES)
    )
    user_agent_token: str | None = "facelake"
    url_col: str = "URL"
    caption_col: str | None = "TEXT"
    save_additional_columns: list[str] = Field(
        default_factory=lambda: ["NSFW", "similarity", "LICENSE", SAMPLE_ID]
    )

    @model_validator(mode="after")
    def _keeps_sample_id(self) -> DownloadOptions:
        if SAMPLE_ID not in self.save_additional_columns:
            raise ValueError(
                f"DownloadOptions.save_additional_columns must keep {SAMPLE_ID} (sample accounting)"
            )
        return self

    @property
    def input_columns(self) -> list[str]:
        """The input columns img2dataset reads: SAMPLE_ID, URL, caption, then the other saved columns."""
        caption = [self.caption_col] if self.caption_col else []
        rest = [c for c in self.save_additional_columns if c != SAMPLE_ID]
        return [SAMPLE_ID, self.url_col, *caption, *rest]

    def output_config(self) -> dict[str, Any]:
        """The options that change what is downloaded (:data:`OUTPUT_FIELDS`), for the config hash."""
        values = self.model_dump(mode="json", include=set(OUTPUT_FIELDS))
        return {name: values[name] for name in OUTPUT_FIELDS}

    def img2dataset_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``img2dataset.download`` (all but url_list, output_folder, incremental_mode)."""
        return {
            "input_format": "parquet",
            "output_format": "webdataset",
            "url_col": self.url_col,
            "caption_col": self.caption_col,
            "save_additional_columns": list(self.save_additional_columns),
            "processes_count": self.processes,
            "thread_count": self.threads,
            "timeout": self.timeout,
            "retries": self.retries,
            "number_sample_per_shard": self.number_sample_per_shard,
            "max_shard_retry": self.max_shard_retry,
            "resize_mode": self.resize_mode,
            "image_size": self.image_size,
            "encode_format": self.encode_format,
            "encode_quality": self.encode_quality,
            "skip_reencode": self.skip_reencode,
            "compute_hash": self.compute_hash,
            "extract_exif": self.extract_exif,
            "disallowed_header_directives": list(self.disallowed_header_directives),
            "user_agent_token": self.user_agent_token,
            "oom_shard_count": 5,
            "distributor": "multiprocessing",
            "enable_wandb": False,
        }


class DownloadSettings(DownloadOptions):
    """The ``download:`` section: the download options plus the asset check's threshold and the lease."""

    min_success_rate: float = Field(0.5, ge=0.0, le=1.0, description="asset check threshold")
    lease_ttl_s: float = Field(900.0, gt=0)

    def options(self) -> DownloadOptions:
        """The engine's options (without the orchestration settings)."""
        return DownloadOptions(**self.model_dump(exclude={"min_success_rate", "lease_ttl_s"}))
