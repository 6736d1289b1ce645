"""LAION-Face (seed 001): id list, opt-out, filtered metadata, img2dataset downloads and released detections
per part, the report, their jobs and the part-download schedule."""

from dagster import Definitions

from assets.areas import area_definitions
from assets.laion_face.assets import laion_assets
from assets.laion_face.jobs import laion_face_inputs_job, laion_face_part_job, laion_face_report_job
from assets.laion_face.schedules import laion_schedule
from facelake.settings import FacelakeSettings


def definitions(settings: FacelakeSettings) -> Definitions:
    """The LAION-Face area for ``settings`` (code versions carry the settings that shape each output)."""
    return area_definitions(
        laion_assets(settings),
        jobs=[laion_face_part_job, laion_face_inputs_job, laion_face_report_job],
        schedules=[laion_schedule(settings)],
    )
