"""An offline CelebA-HQ-layout source of two real people, for the demo and the identity-cluster tests.

Two people ship with the installed packages (skimage's astronaut, matplotlib's grace_hopper.jpg). Each gets
eight mildly augmented copies (flip, crop, 3/4 scale, brighter, darker, JPEG quality), and one image has no
face; they are written as two parquet files in the jxie/celeba-hq layout. The augmentations stay mild on
purpose: heavier rescaling (``face_photos.varied_crops``) moves dlib's embeddings far enough that its
same-identity threshold merges the two people.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from PIL import Image, ImageEnhance

from facelake.celebahq import dataset as celebahq
from facelake.lake.storage import Storage
from synthetic.face_photos import PEOPLE, encode_jpeg, face_box, real_faces

NO_FACE = "no_face.jpg"


@functools.cache
def person_copies(name: str) -> tuple[tuple[str, bytes], ...]:
    """(tag, JPEG bytes) of eight augmented copies of one photo: flips, crops, scale, brightness, quality."""
    image = Image.fromarray(np.asarray(real_faces()[name]))
    width, height = image.size
    x1, y1, x2, y2 = face_box(name).box
    w, h = x2 - x1, y2 - y1
    crop = image.crop(
        (max(0, int(x1 - w)), max(0, int(y1 - h)), min(width, int(x2 + w)), min(height, int(y2 + h)))
    )

    def flip(im: Image.Image) -> Image.Image:
        return im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)

    variants = [
        ("orig", image, 95),
        ("flip", flip(image), 90),
        ("crop", crop, 90),
        ("crop_flip", flip(crop), 85),
        ("bright", ImageEnhance.Brightness(image).enhance(1.2), 90),
        ("dark", ImageEnhance.Brightness(image).enhance(0.85), 90),
        ("jpeg70", image, 70),
        ("small", image.resize((width * 3 // 4, height * 3 // 4), Image.Resampling.BILINEAR), 90),
    ]
    return tuple((tag, encode_jpeg(np.asarray(im), quality)) for tag, im, quality in variants)


@functools.cache
def no_face_jpeg() -> bytes:
    """A smooth colour gradient: no face for the detector to find."""
    ramp = np.linspace(0, 255, 256, dtype=np.float32)
    image = np.stack(
        [np.add.outer(ramp, ramp) / 2, np.tile(ramp, (256, 1)), np.full((256, 256), 128.0)], axis=2
    )
    return encode_jpeg(image.astype(np.uint8), 90)


@dataclass(frozen=True)
class CelebaSource:
    """A source folder in the jxie/celeba-hq layout and who is on each image."""

    folder: str
    person: dict[str, str | None]  # file_name -> person (None: no face)
    files: list[str]


def write_two_people_source(storage: Storage, folder: str, *, overwrite: bool = True) -> CelebaSource:
    """Two parquet files (jxie layout: image struct with path = file name, a gender 'label' column); the
    people's copies interleaved across both files, and one image without a face.

    With ``overwrite=False`` files that already exist are left alone (their fingerprints stay, so a rerun of
    the demo does not see a new source)."""
    rows = [(f"{name}_{tag}.jpg", name, data) for name in PEOPLE for tag, data in person_copies(name)]
    rows.append((NO_FACE, None, no_face_jpeg()))
    order = np.random.default_rng(0).permutation(len(rows))
    rows = [rows[i] for i in order]
    halves = [rows[: len(rows) // 2], rows[len(rows) // 2 :]]
    files = []
    for i, half in enumerate(halves):
        uri = f"{folder}/data/train-{i:05d}-of-00002.parquet"
        files.append(uri)
        if not overwrite and storage.exists(uri):
            continue
        celebahq.write_source_parquet(
            storage,
            uri,
            [data for _, _, data in half],
            [name for name, _, _ in half],
            extra={"label": pa.array([0] * len(half), pa.int64())},
        )
    return CelebaSource(folder, {name: person for name, person, _ in rows}, files)
