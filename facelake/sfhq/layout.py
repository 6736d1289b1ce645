"""The SFHQ on-disk layout of one part, its index, and the problems table every SFHQ stage reports into.

A part is a folder or ``s3://`` prefix (DESIGN §5)::

    images/<name>.jpg                  1024 x 1024 RGB
    landmarks/<name>.npz               key ``landmarks``: float [110, 2] (x, y) in image pixels
    segmentations/<name>.png           mode L, 19 classes 0..18 (``facelake.sfhq.segmentation.CLASSES``)
    pretrained_features/<name>.pickle  dict model name -> array, e.g. 'CLIP_ViTL_14@336' (1, 768)

:func:`scan_part` lists the four folders once and returns the part's index (one row per name seen in any
folder, with a flag per modality) and the problems the listing alone shows: an image without its landmark,
map or feature file (``missing``), a file without an image (``orphan``), a file with another extension
(``unexpected``). Nothing is dropped silently: every stage reports the files it could not use into a table
of :data:`PROBLEMS_SCHEMA` (name, modality, file, kind, problem), and an asset check fails on any row.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow as pa

from facelake.lake.errors import InputError
from facelake.lake.storage import S3Options, Storage
from facelake.sfhq.settings import PARTS as PARTS  # re-exported: the part keys live with the settings
from facelake.sfhq.settings import check_part

IMAGES, LANDMARKS, SEGMENTATIONS, FEATURES = "images", "landmarks", "segmentations", "pretrained_features"
MODALITIES: dict[str, str] = {
    IMAGES: ".jpg",
    LANDMARKS: ".npz",
    SEGMENTATIONS: ".png",
    FEATURES: ".pickle",
}
"""Folder -> file extension of each modality."""
FLAG_COLUMNS = {modality: f"has_{modality}" for modality in MODALITIES}

# Problem kinds.
MISSING = "missing"  # an image without this modality's file
ORPHAN = "orphan"  # this modality's file without an image
UNEXPECTED = "unexpected"  # a file in a modality folder with another extension
UNREADABLE = "unreadable"  # the file could not be read or decoded
UNSAFE = "unsafe"  # a pickle asking for something outside the allowlist (refused, nothing ran)
INVALID = "invalid"  # readable, but its content breaks the format (shape, labels, NaN, bounds)

PROBLEMS_SCHEMA = pa.schema(
    [
        pa.field("name", pa.string()),
        pa.field("modality", pa.string()),
        pa.field("file", pa.string()),
        pa.field("kind", pa.string()),
        pa.field("problem", pa.string()),
    ]
)
"""One row per file (or name) that a stage could not use: which, where (relative to the part), why."""

INDEX_SCHEMA = pa.schema(
    [pa.field("name", pa.string())] + [pa.field(flag, pa.bool_()) for flag in FLAG_COLUMNS.values()]
)


@dataclass(frozen=True)
class SfhqPart:
    """One SFHQ part: the storage that reaches it, its folder URI and its key."""

    storage: Storage
    folder: str
    part: str = "1"

    def __post_init__(self) -> None:
        object.__setattr__(self, "folder", self.folder.rstrip("/"))
        object.__setattr__(self, "part", check_part(self.part))

    @classmethod
    def at(cls, folder: str, part: str, s3: S3Options | None = None) -> SfhqPart:
        """A part read through a storage rooted at its own folder (local, or ``s3://`` with ``s3``'s endpoint
        and keys): the sources need not live on the lake's filesystem."""
        return cls(Storage(folder, s3), folder, part)

    def relative(self, modality: str, name: str) -> str:
        """``<modality>/<name><ext>``: a file's path inside the part (what problems name)."""
        return f"{modality}/{name}{MODALITIES[modality]}"

    def uri(self, modality: str, name: str) -> str:
        """The full URI of ``name``'s file of ``modality``."""
        return f"{self.folder}/{self.relative(modality, name)}"


@dataclass(frozen=True, eq=False)
class PartScan:
    """The listing of one part: the index (one row per name, a flag per modality) and its problems."""

    part: SfhqPart
    index: pa.Table
    problems: pa.Table

    def names(self, *modalities: str) -> list[str]:
        """Names that have an image and every one of ``modalities`` (sorted): what a stage processes."""
        mask = self.index[FLAG_COLUMNS[IMAGES]].to_pylist()
        for modality in modalities:
            mask = [
                a and b for a, b in zip(mask, self.index[FLAG_COLUMNS[modality]].to_pylist(), strict=True)
            ]
        return [name for name, keep in zip(self.index["name"].to_pylist(), mask, strict=True) if keep]

    def counts(self) -> dict[str, int]:
        """Files per modality, names in the index, and problems by kind."""
        counts = {modality: int(sum(self.index[flag].to_pylist())) for modality, flag in FLAG_COLUMNS.items()}
        counts["names"] = self.index.num_rows
        counts["complete"] = len(self.names(LANDMARKS, SEGMENTATIONS, FEATURES))
        counts.update({f"problems_{k}": v for k, v in problem_counts(self.problems).items()})
        return counts


def problems_table(rows: Iterable[tuple[str, str, str | None, str, str]]) -> pa.Table:
    """A :data:`PROBLEMS_SCHEMA` table from ``(name, modality, file, kind, problem)`` tuples."""
    columns: list[list] = [[], [], [], [], []]
    for row in rows:
        for column, value in zip(columns, row, strict=True):
            column.append(value)
    return pa.table(dict(zip(PROBLEMS_SCHEMA.names, columns, strict=True)), schema=PROBLEMS_SCHEMA)


def concat_problems(tables: Iterable[pa.Table]) -> pa.Table:
    """Several problems tables as one (in the given order)."""
    tables = [t.cast(PROBLEMS_SCHEMA) for t in tables]
    return pa.concat_tables(tables) if tables else PROBLEMS_SCHEMA.empty_table()


def problem_counts(problems: pa.Table) -> dict[str, int]:
    """Problems by kind (sorted by kind)."""
    return dict(sorted(Counter(problems["kind"].to_pylist()).items()))


def _listing(part: SfhqPart, modality: str) -> tuple[dict[str, str], list[str], bool]:
    """(name -> file name) of a modality folder's files with the right extension, the other files' names,
    and whether the folder exists at all."""
    folder = f"{part.folder}/{modality}"
    entries = part.storage.listdir(folder)
    if not entries and not part.storage.exists(folder):
        return {}, [], False
    extension = MODALITIES[modality]
    named, other = {}, []
    for uri in entries:
        file = uri.rstrip("/").rsplit("/", 1)[-1]
        if file.endswith(extension) and len(file) > len(extension):
            named[file[: -len(extension)]] = file
        elif not file.startswith("."):
            other.append(file)
    return named, sorted(other), True


def scan_part(part: SfhqPart) -> PartScan:
    """List the part's four folders once; the index and every missing, orphan or unexpected file by name.

    A part without an ``images/`` folder (or with no image in it) is an :class:`InputError`: nothing else can
    be checked against it. A missing modality folder makes every image ``missing`` that modality.
    """
    listings = {modality: _listing(part, modality) for modality in MODALITIES}
    images, _, images_exist = listings[IMAGES]
    if not images_exist or not images:
        raise InputError(
            f"{part.folder}/{IMAGES}",
            "no .jpg images: expected an SFHQ part (images/, landmarks/, segmentations/, pretrained_features/)",
        )
    names = sorted(set().union(*(named for named, _, _ in listings.values())))
    index = {"name": names}
    for modality, (named, _, _) in listings.items():
        index[FLAG_COLUMNS[modality]] = [name in named for name in names]
    rows: list[tuple[str, str, str | None, str, str]] = []
    for modality, (named, other, exists) in listings.items():
        for file in other:
            rows.append(
                (file, modality, f"{modality}/{file}", UNEXPECTED, f"not a {MODALITIES[modality]} file")
            )
        if modality == IMAGES:
            continue
        absent = "" if exists else f" (the folder {modality}/ does not exist)"
        for name in names:
            if name in images and name not in named:
                rows.append((name, modality, None, MISSING, f"image has no {modality} file{absent}"))
            elif name in named and name not in images:
                rows.append((name, modality, part.relative(modality, name), ORPHAN, "no image of this name"))
    return PartScan(part, pa.table(index, schema=INDEX_SCHEMA), problems_table(rows))
