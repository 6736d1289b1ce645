"""SFHQ settings: where the parts are, batch sizes, and the ONE declared table of landmark indices.

SFHQ's 110 landmarks come from dlib, face-alignment and post-processing of BiSeNet maps (seed ``000``); which
index is which point is documented nowhere public. Every measure that needs to know it (eye centres,
inter-ocular distance, roll from landmarks) reads :class:`LandmarkIndex`, which is marked ``assumed`` until a
user who knows the true order fixes it here, in one place (``sfhq.landmark_index`` in the config file).

Default ASSUMPTION: the first 68 points follow the iBUG-300W 68-point order (the order of dlib's and
face-alignment's 68-point models, the tools SFHQ names): jaw 0-16, brows 17-21 and 22-26, nose bridge
27-30, lower nose 31-35, eyes 36-41 and 42-47, outer lips 48-59, inner lips 60-67. In that order "left" is
the viewer's left (the smaller x on a frontal face): 36-41 is the eye on the image's left. Points 68-109
(42 points; the card says the set includes inner and outer hairlines) are left unassigned.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from facelake.lake.errors import UnknownPartitionError
from facelake.lake.storage import expand_source

LANDMARK_COUNT = 110
"""Points per SFHQ landmarks file."""
IMAGE_SIZE = 1024
"""SFHQ images are 1024 x 1024 (landmarks and maps were made at 256² and upscaled)."""

IBUG68_GROUPS: dict[str, list[int]] = {
    "jaw": list(range(0, 17)),
    "left_brow": list(range(17, 22)),
    "right_brow": list(range(22, 27)),
    "nose_bridge": list(range(27, 31)),
    "nose_base": list(range(31, 36)),
    "left_eye": list(range(36, 42)),
    "right_eye": list(range(42, 48)),
    "outer_lips": list(range(48, 60)),
    "inner_lips": list(range(60, 68)),
}
"""The iBUG-300W 68-point groups; "left"/"right" are the viewer's (image) left and right."""
ASSUMPTION_NOTE = (
    "ASSUMED landmark order: SFHQ does not document the order of its 110 points; the first 68 are assumed "
    "to follow iBUG-300W's 68-point order (jaw 0-16, brows 17-26, nose 27-35, eyes 36-41 / 42-47, lips "
    "48-67) and 68-109 are unassigned. Fix it in sfhq.landmark_index."
)


class LandmarkIndex(BaseModel):
    """Which landmark indices form which named group; eye centres are the means of ``left_eye`` and
    ``right_eye``. ``assumed`` stays True (and every output says so) until someone verifies the order."""

    model_config = ConfigDict(extra="forbid")

    assumed: bool = Field(True, description="True while the order is an assumption; outputs say so")
    note: str = ASSUMPTION_NOTE
    groups: dict[str, list[int]] = Field(
        default_factory=lambda: {k: list(v) for k, v in IBUG68_GROUPS.items()}
    )

    @field_validator("groups")
    @classmethod
    def _indices_in_range(cls, groups: dict[str, list[int]]) -> dict[str, list[int]]:
        for name, indices in groups.items():
            if not indices:
                raise ValueError(f"group {name!r} is empty")
            bad = [i for i in indices if not 0 <= i < LANDMARK_COUNT]
            if bad:
                raise ValueError(f"group {name!r} has indices outside 0..{LANDMARK_COUNT - 1}: {bad}")
        return groups

    @model_validator(mode="after")
    def _has_eyes(self) -> LandmarkIndex:
        missing = [g for g in ("left_eye", "right_eye") if g not in self.groups]
        if missing:
            raise ValueError(f"landmark_index.groups needs {missing} (eye centres are their means)")
        return self

    def label(self) -> str:
        """One line for outputs: the eye groups and whether the order is assumed."""
        state = "ASSUMED (unverified)" if self.assumed else "verified"
        left, right = self.groups["left_eye"], self.groups["right_eye"]
        return f"landmark order {state}: left_eye {_span(left)}, right_eye {_span(right)}"


PARTS = ("1", "2", "3", "4")
"""SFHQ's parts (static partitions)."""


def check_part(part: str) -> str:
    """``part`` as a key of :data:`PARTS`, else :class:`UnknownPartitionError`."""
    key = str(part)
    if key not in PARTS:
        raise UnknownPartitionError(key, f"one of {', '.join(PARTS)}")
    return key


def _span(indices: list[int]) -> str:
    if indices == list(range(indices[0], indices[-1] + 1)):
        return f"{indices[0]}-{indices[-1]}"
    return ",".join(map(str, indices))


class SfhqSettings(BaseModel):
    """Where the SFHQ parts are (``{sources}`` and ``{part}`` expand) and how they are read."""

    model_config = ConfigDict(extra="forbid")

    part_uri_template: str = Field(
        "{sources}/sfhq/part{part}",
        description="folder (or s3:// prefix) of one part holding images/, landmarks/, segmentations/, "
        "pretrained_features/",
    )
    image_size: int = Field(IMAGE_SIZE, ge=1, description="expected image and map side in pixels")
    landmark_index: LandmarkIndex = Field(default_factory=LandmarkIndex)
    threads: int | None = Field(
        None, ge=1, description="reader threads (PNG decoding releases the GIL); None: the CPU count"
    )
    feature_key: str = Field(
        "CLIP_ViTL_14@336", description="pretrained_features key written as CLIP features"
    )
    feature_model: str | None = Field(
        None,
        description="open_clip model of feature_key's space: None = the CLIP stage's table of foreign labels "
        "(CLIP_ViTL_14@336 -> ViT-L-14-336-quickgelu / openai); else a config name or 'local-dir:/folder'",
    )
    feature_pretrained: str | None = Field(
        None,
        description="its weights: None = the table's tag (or the local-dir's own); else a tag or a local "
        "checkpoint of the same weights. Weights are never downloaded for this: without them the space is "
        "declared (config + dimension) and marked unverified",
    )
    near_duplicate_threshold: float = Field(
        0.92, gt=-1.0, lt=1.0, description="SFHQ's claim: no two images' CLIP features above this similarity"
    )
    probe_prompts: list[str] = Field(
        default_factory=lambda: [
            "a smiling woman with long hair",
            "an old man with a beard",
            "a person wearing glasses",
        ],
        description="text queries whose top hits the report shows (when the features' text encoder is here)",
    )
    probe_k: int = Field(6, ge=1, le=50, description="hits per probe prompt in the report")
    face_batch_size: int = Field(8, ge=1, description="images per detection/embedding batch")
    report_sample: int = Field(2000, ge=1, description="faces averaged in the mean landmark layout")
    report_measure: str = Field(
        "hair_fraction", description="segmentation column whose quantiles pick the contact sheet's examples"
    )
    report_seed: int = 0

    def part_uri(self, sources: str, part: str) -> str:
        """The folder of ``part`` (``{sources}`` and ``{part}`` expanded; relative local paths made absolute)."""
        return expand_source(self.part_uri_template, sources, part=check_part(part))
