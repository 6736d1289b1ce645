"""The storage root (local path or s3://) as a Dagster resource."""

from __future__ import annotations

from facelake.lake.settings import S3Settings
from facelake.lake.storage import Storage
from facelake.settings import FacelakeSettings
from resources.settings_resource import settings_resource


class StorageResource(settings_resource(S3Settings, "StorageSettings")):
    """Where every artifact is written: ``{root}/{dataset}/{artifact}/{partition}/``; the S3 fields are the
    ``s3:`` settings section (empty: the AWS environment)."""

    root: str

    @classmethod
    def from_settings(cls, settings: FacelakeSettings) -> StorageResource:
        return cls(root=settings.root, **settings.s3.model_dump())

    def get(self) -> Storage:
        """The engine's Storage for this root."""
        return Storage(self.root, self.settings_model().options())
