"""Where the released LAION-Face inputs live (metadata parts, id list, detections, blocklists)."""

from __future__ import annotations

import os

from dagster import ConfigurableResource
from pydantic import Field

from facelake.settings import FacelakeSettings


class LaionSourcesResource(ConfigurableResource):
    """Templates of the source files; ``{sources}`` and ``{part}`` are filled in per partition.

    Sources are read through the storage resource's filesystem (local paths or s3:// on the same endpoint).
    """

    sources: str
    meta_uri_template: str
    face_ids_uri: str
    sample2detect_uri_template: str
    optout_uris: list[str] = Field(default_factory=list)

    @classmethod
    def from_settings(cls, settings: FacelakeSettings) -> LaionSourcesResource:
        return cls(
            sources=settings.sources,
            meta_uri_template=settings.laion.meta_uri_template,
            face_ids_uri=settings.laion.face_ids_uri,
            sample2detect_uri_template=settings.laion.sample2detect_uri_template,
            optout_uris=settings.laion.optout_uris,
        )

    def _expand(self, template: str, **fields: object) -> str:
        uri = template.format(sources=self.sources.rstrip("/"), **fields)
        return uri if "://" in uri else os.path.abspath(uri)

    def meta_uri(self, part: int) -> str:
        return self._expand(self.meta_uri_template, part=part)

    def ids_uri(self) -> str:
        return self._expand(self.face_ids_uri)

    def sample2detect_uri(self, part: int) -> str:
        return self._expand(self.sample2detect_uri_template, part=part)

    def blocklist_uris(self) -> list[str]:
        return [self._expand(u) for u in self.optout_uris]
