"""How LAION-Face parts are downloaded: the authors' img2dataset settings, made configurable."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SAMPLE_ID = "SAMPLE_ID"
DEFAULT_DISALLOWED_DIRECTIVES = ("noai", "noimageai", "noindex", "noimageindex")


@dataclass(frozen=True)
class DownloadOptions:
    """img2dataset settings; defaults follow the LAION-Face ``download.sh`` (webdataset, no resize).

    ``number_sample_per_shard`` fixes which input rows form shard ``i``: never change it between runs
    into the same shards folder. ``disallowed_header_directives`` keeps the X-Robots-Tag opt-out on;
    an empty tuple turns it off.
    """

    processes: int = 1
    threads: int = 64
    timeout: float = 10.0
    retries: int = 0
    number_sample_per_shard: int = 10_000
    max_shard_retry: int = 1
    resize_mode: str = "no"
    image_size: int = 256
    encode_format: str = "jpg"
    encode_quality: int = 95
    skip_reencode: bool = False
    compute_hash: str | None = "sha256"
    extract_exif: bool = True
    disallowed_header_directives: tuple[str, ...] = DEFAULT_DISALLOWED_DIRECTIVES
    user_agent_token: str | None = None
    url_col: str = "URL"
    caption_col: str | None = "TEXT"
    save_additional_columns: tuple[str, ...] = ("NSFW", "similarity", "LICENSE", SAMPLE_ID)

    def __post_init__(self) -> None:
        positive = {
            "processes": self.processes,
            "threads": self.threads,
            "timeout": self.timeout,
            "number_sample_per_shard": self.number_sample_per_shard,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"DownloadOptions.{name} must be positive, got {value}")
        if self.retries < 0 or self.max_shard_retry < 0:
            raise ValueError("DownloadOptions.retries and max_shard_retry must be >= 0")
        if SAMPLE_ID not in self.save_additional_columns:
            raise ValueError(
                f"DownloadOptions.save_additional_columns must keep {SAMPLE_ID} (sample accounting)"
            )

    @property
    def input_columns(self) -> list[str]:
        """The input columns img2dataset reads: SAMPLE_ID, URL, caption, then the other saved columns."""
        caption = [self.caption_col] if self.caption_col else []
        rest = [c for c in self.save_additional_columns if c != SAMPLE_ID]
        return [SAMPLE_ID, self.url_col, *caption, *rest]

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
