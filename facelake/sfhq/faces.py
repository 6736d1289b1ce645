"""Identity embeddings of SFHQ images: the largest face per image, for analysis and as a HyperFace gallery.

Images are decoded in a thread pool (JPEG decoding releases the GIL) and handed to the shared primary-face
stage (:func:`facelake.faces.primary.embed_primary_faces`): the detector finds the faces, the largest is
embedded. The embedding table has ``name``, ``face_box``, ``face_score``, ``faces_detected``, ``embedding``
and the embedder's provenance columns, which is what a HyperFace gallery source needs
(``facelake.hyperface.references.GallerySource``: a table with an ``embedding`` column in one space). Images
without a face are listed (``name``, ``reason``); undecodable images are problem rows, not a crash.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from facelake.faces.detection import FaceDetector
from facelake.faces.identity import IdentityEmbedder
from facelake.faces.primary import NamedImages, embed_primary_faces
from facelake.faces.stages import StageCounter
from facelake.lake.images import decode_rgb
from facelake.sfhq.layout import IMAGES, PartScan, SfhqPart, problems_table
from facelake.sfhq.reader import FileProblem, map_files

NAME_COLUMN = "name"
NO_FACE_SCHEMA = pa.schema([pa.field(NAME_COLUMN, pa.string()), pa.field("reason", pa.string())])


def _decode(name: str, data: bytes) -> np.ndarray:
    return decode_rgb(data)


def iter_part_images(
    part: SfhqPart,
    names: Sequence[str],
    *,
    batch_size: int = 8,
    threads: int | None = None,
    problems: list[tuple[str, str, str | None, str, str]] | None = None,
) -> Iterator[NamedImages]:
    """Decoded RGB images of ``names`` in batches of ``batch_size`` (decoded ahead in a thread pool).

    Undecodable or vanished images are appended to ``problems`` as ``(name, modality, file, kind, problem)``
    rows and left out of the batches."""
    names_batch: list[str] = []
    images: list[np.ndarray] = []
    for name, result in map_files(
        part, IMAGES, names, _decode, threads=threads, chunk=1, in_flight=batch_size
    ):
        if isinstance(result, FileProblem):
            if problems is not None:
                problems.append((name, IMAGES, part.relative(IMAGES, name), result.kind, result.problem))
            continue
        names_batch.append(name)
        images.append(result)
        if len(names_batch) == batch_size:
            yield NamedImages(names_batch, images)
            names_batch, images = [], []
    if names_batch:
        yield NamedImages(names_batch, images)


@dataclass(frozen=True, eq=False)
class FaceEmbeddings:
    """One embedding row per image with a face, the images without one, and the unreadable images."""

    embeddings: pa.Table
    no_face: pa.Table
    problems: pa.Table


def embed_faces(
    part: SfhqPart,
    names: Sequence[str],
    detector: FaceDetector,
    embedder: IdentityEmbedder,
    *,
    batch_size: int = 8,
    threads: int | None = None,
    counter: StageCounter | None = None,
) -> FaceEmbeddings:
    """Embed the largest face of each of ``names``' images (the standard embedding table with provenance)."""
    rows: list[tuple[str, str, str | None, str, str]] = []
    batches = iter_part_images(part, names, batch_size=batch_size, threads=threads, problems=rows)
    result = embed_primary_faces(
        batches, detector, embedder, counter, name_column=NAME_COLUMN, no_face_schema=NO_FACE_SCHEMA
    )
    return FaceEmbeddings(result.embeddings, result.no_face, problems_table(rows))


def embed_part_faces(
    scan: PartScan, detector: FaceDetector, embedder: IdentityEmbedder, **options
) -> FaceEmbeddings:
    """:func:`embed_faces` over every image of a scanned part."""
    return embed_faces(scan.part, scan.names(), detector, embedder, **options)
