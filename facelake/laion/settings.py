"""LAION-Face settings: where the released inputs are, the part-download schedule.

The download options themselves are declared once, in :mod:`facelake.laion.download_options`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from facelake.laion.formats import META_PART_TEMPLATE


class LaionSources(BaseModel):
    """Where the released LAION-Face inputs are. ``{sources}`` expands to the sources root."""

    meta_uri_template: str = "{sources}/laion400m-meta/" + META_PART_TEMPLATE
    face_ids_uri: str = "{sources}/laion_face_ids.pth"
    sample2detect_uri_template: str = "{sources}/detection_metadata/sample2detect_{part}.pth"
    optout_uris: list[str] = Field(
        default_factory=list, description="CSV or parquet blocklists with a SAMPLE_ID and/or URL column"
    )


class ScheduleSettings(BaseModel):
    """The part-download schedule: which parts, how often, how many in flight."""

    subset: Literal["20m", "50m"] = "20m"
    cron: str = "*/15 * * * *"
    max_in_flight: int = Field(2, ge=1)
    faces_follow_images: bool = Field(
        True, description="a part's detections and embeddings follow its images by declarative automation"
    )
