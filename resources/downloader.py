"""img2dataset as a Dagster resource: the authors' download options, configurable per deployment."""

from __future__ import annotations

from typing import Any

from dagster import ConfigurableResource
from pydantic import Field

from facelake.laion.download import DownloadOptions
from facelake.settings import FacelakeSettings


class Img2DatasetResource(ConfigurableResource):
    """Processes, threads, timeout and retries of img2dataset, plus the success-rate check threshold."""

    processes: int = 16
    threads: int = 128
    timeout: int = 10
    retries: int = 0
    number_sample_per_shard: int = 10_000
    user_agent_token: str | None = "facelake"
    disallowed_header_directives: list[str] = Field(
        default_factory=lambda: ["noai", "noimageai", "noindex", "noimageindex"]
    )
    min_success_rate: float = 0.5
    lease_ttl_s: float = 900.0

    @classmethod
    def from_settings(cls, settings: FacelakeSettings) -> Img2DatasetResource:
        return cls(**settings.download.model_dump())

    def options(self) -> DownloadOptions:
        """The engine's download options."""
        return DownloadOptions(
            processes=self.processes,
            threads=self.threads,
            timeout=self.timeout,
            retries=self.retries,
            number_sample_per_shard=self.number_sample_per_shard,
            user_agent_token=self.user_agent_token,
            disallowed_header_directives=tuple(self.disallowed_header_directives),
        )

    def output_config(self) -> dict[str, Any]:
        """The options that change what is downloaded (not how fast): they enter the config hash."""
        return {
            "timeout": self.timeout,
            "retries": self.retries,
            "number_sample_per_shard": self.number_sample_per_shard,
            "user_agent_token": self.user_agent_token,
            "disallowed_header_directives": list(self.disallowed_header_directives),
        }
