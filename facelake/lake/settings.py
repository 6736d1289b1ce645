"""Settings of the lake itself: the S3 endpoint."""

from __future__ import annotations

from pydantic import BaseModel

from facelake.lake.storage import S3Options


class S3Settings(BaseModel):
    """S3 endpoint and credentials; empty values fall back to the AWS environment."""

    endpoint_url: str | None = None
    key: str | None = None
    secret: str | None = None
    region: str | None = None

    def options(self) -> S3Options:
        return S3Options(self.endpoint_url, self.key, self.secret, self.region)
