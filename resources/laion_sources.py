"""Where the released LAION-Face inputs live (metadata parts, id list, detections, blocklists)."""

from __future__ import annotations

from facelake.laion.settings import LaionSources
from facelake.lake.storage import expand_source
from facelake.settings import FacelakeSettings
from resources.settings_resource import settings_resource


class LaionSourcesResource(settings_resource(LaionSources, "LaionSourcesSettings")):
    """Templates of the source files (the ``laion:`` settings); ``{sources}`` and ``{part}`` are filled in per
    partition. Sources are read through the storage resource's filesystem (local paths or s3:// on the same
    endpoint)."""

    sources: str

    @classmethod
    def from_settings(cls, settings: FacelakeSettings) -> LaionSourcesResource:
        return cls(sources=settings.sources, **settings.laion.model_dump())

    def meta_uri(self, part: int) -> str:
        return expand_source(self.meta_uri_template, self.sources, part=part)

    def ids_uri(self) -> str:
        return expand_source(self.face_ids_uri, self.sources)

    def sample2detect_uri(self, part: int) -> str:
        return expand_source(self.sample2detect_uri_template, self.sources, part=part)

    def blocklist_uris(self) -> list[str]:
        return [expand_source(u, self.sources) for u in self.optout_uris]
