"""The storage root (local path or s3://) as a Dagster resource."""

from __future__ import annotations

from dagster import ConfigurableResource

from facelake.settings import FacelakeSettings
from facelake.storage import S3Options, Storage


class StorageResource(ConfigurableResource):
    """Where every artifact is written: ``{root}/{dataset}/{artifact}/{partition}/``."""

    root: str
    s3_endpoint_url: str | None = None
    s3_key: str | None = None
    s3_secret: str | None = None
    s3_region: str | None = None

    @classmethod
    def from_settings(cls, settings: FacelakeSettings) -> StorageResource:
        s3 = settings.s3
        return cls(
            root=settings.root,
            s3_endpoint_url=s3.endpoint_url,
            s3_key=s3.key,
            s3_secret=s3.secret,
            s3_region=s3.region,
        )

    def get(self) -> Storage:
        """The engine's Storage for this root."""
        return Storage(
            self.root, S3Options(self.s3_endpoint_url, self.s3_key, self.s3_secret, self.s3_region)
        )
