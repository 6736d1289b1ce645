"""SFHQ's shipped ``pretrained_features/<name>.pickle``: read safely, collected into one matrix per key.

Each file is a pickled dict, model name -> array (e.g. ``'CLIP_ViTL_14@336'``: float ``(1, 768)``, OpenAI CLIP
ViT-L/14 at 336 px). Pickles from the internet are never unpickled freely: every file goes through
:func:`facelake.lake.safe_load.restricted_unpickle`, which admits numpy arrays, dicts, lists and scalars
only (numpy-1 and numpy-2 spellings). A pickle asking for anything else is refused when the global is
looked up, before it could run, and becomes a problem row of kind ``unsafe``; a truncated or non-pickle
file is ``unreadable``; a file without the key, of another width or with non-finite values is ``invalid``.

:func:`features_matrix` returns the names that have a usable vector under one key, in order, with the
float32 ``[N, d]`` matrix (as stored: not re-normalised) and the key; which embedding space a key denotes is
the CLIP stage's business (its table of foreign labels maps ``CLIP_ViTL_14@336`` to open_clip
``ViT-L-14-336-quickgelu`` / ``openai``). :func:`clip_metadata` gives the clip-retrieval ``metadata`` rows
of those names (``image_path``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from facelake.lake.safe_load import restricted_unpickle
from facelake.sfhq.layout import FEATURES, IMAGES, INVALID, PartScan, SfhqPart, problems_table
from facelake.sfhq.reader import FileProblem, map_files


def parse_features(path: str, data: bytes) -> dict[str, np.ndarray]:
    """One features pickle's bytes as ``{model name: numeric array}`` (restricted unpickling; ``path`` is
    named in errors). Raises :class:`FileProblem` (``invalid``) for a well-formed pickle of the wrong shape,
    :class:`facelake.lake.errors.UnsafePickleError` / ``InputError`` for a refused or broken one."""
    value = restricted_unpickle(data, path)
    if not isinstance(value, dict):
        raise FileProblem(
            INVALID, f"a pickled {type(value).__name__}, expected a dict of model name -> array"
        )
    features = {}
    for key, array in value.items():
        if not isinstance(key, str):
            raise FileProblem(INVALID, f"key {key!r} is a {type(key).__name__}, expected a model name")
        try:
            array = np.asarray(array)
        except (ValueError, TypeError) as error:
            raise FileProblem(INVALID, f"{key!r}: not an array ({error})") from None
        if array.dtype.kind not in "fiu":
            raise FileProblem(INVALID, f"{key!r}: dtype {array.dtype}, expected numbers")
        features[key] = array
    return features


def _vector(features: dict[str, np.ndarray], key: str, dimension: int | None) -> np.ndarray:
    if key not in features:
        raise FileProblem(INVALID, f"no {key!r} features (the file holds {sorted(features)})")
    array = features[key]
    if array.ndim == 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 1:
        raise FileProblem(INVALID, f"{key!r} has shape {features[key].shape}, expected (d,) or (1, d)")
    if dimension is not None and array.shape[0] != dimension:
        raise FileProblem(INVALID, f"{key!r} is {array.shape[0]}-d, expected {dimension}-d")
    vector = array.astype(np.float32)
    if not np.isfinite(vector).all():
        raise FileProblem(INVALID, f"{key!r} holds non-finite values")
    return vector


@dataclass(frozen=True, eq=False)
class FeatureMatrix:
    """The names with a usable vector under ``key`` (in the order asked), their float32 ``[N, d]`` matrix,
    and the files that could not be used."""

    names: list[str]
    matrix: np.ndarray
    key: str
    problems: pa.Table

    @property
    def dimension(self) -> int:
        return int(self.matrix.shape[1])


def features_matrix(
    part: SfhqPart,
    names: Sequence[str],
    key: str,
    *,
    dimension: int | None = None,
    threads: int | None = None,
) -> FeatureMatrix:
    """Read ``names``' feature pickles (restricted unpickler, thread pool) and stack the ``key`` vectors.

    ``dimension``: the expected width; by default the first usable file's width, and a file of another
    width is a problem row. Nothing is dropped silently: every name without a row is in ``problems``.
    """
    kept: list[str] = []
    vectors: list[np.ndarray] = []
    rows: list[tuple[str, str, str | None, str, str]] = []

    def parse(name: str, data: bytes) -> dict[str, np.ndarray]:
        return parse_features(part.relative(FEATURES, name), data)

    for name, result in map_files(part, FEATURES, names, parse, threads=threads, chunk=32):
        if not isinstance(result, FileProblem):
            try:
                vector = _vector(result, key, dimension)
            except FileProblem as problem:
                result = problem
            else:
                dimension = dimension or int(vector.shape[0])
                kept.append(name)
                vectors.append(vector)
                continue
        rows.append((name, FEATURES, part.relative(FEATURES, name), result.kind, result.problem))
    matrix = np.stack(vectors) if vectors else np.zeros((0, dimension or 0), np.float32)
    return FeatureMatrix(kept, matrix, key, problems_table(rows))


def part_features_matrix(scan: PartScan, key: str, **options) -> FeatureMatrix:
    """:func:`features_matrix` over every image of a scanned part that has a features file."""
    return features_matrix(scan.part, scan.names(FEATURES), key, **options)


@dataclass(frozen=True)
class KeySummary:
    """One features key as seen in a sample of files: how many held it, its shapes and dtypes."""

    key: str
    files: int
    shapes: dict[str, int]
    dtypes: dict[str, int]


def feature_keys(
    part: SfhqPart, names: Sequence[str], *, threads: int | None = None
) -> dict[str, KeySummary]:
    """The keys found in ``names``' feature files (pass a sample for a big part), with shapes and dtypes;
    unreadable or refused files are skipped here (:func:`features_matrix` reports them)."""
    files: Counter[str] = Counter()
    shapes: dict[str, Counter[str]] = {}
    dtypes: dict[str, Counter[str]] = {}

    def parse(name: str, data: bytes) -> dict[str, np.ndarray]:
        return parse_features(part.relative(FEATURES, name), data)

    for _, result in map_files(part, FEATURES, names, parse, threads=threads, chunk=32):
        if isinstance(result, FileProblem):
            continue
        for key, array in result.items():
            files[key] += 1
            shapes.setdefault(key, Counter())[str(tuple(array.shape))] += 1
            dtypes.setdefault(key, Counter())[str(array.dtype)] += 1
    return {key: KeySummary(key, files[key], dict(shapes[key]), dict(dtypes[key])) for key in sorted(files)}


def clip_metadata(part: SfhqPart, names: Sequence[str]) -> pa.Table:
    """clip-retrieval ``metadata`` rows for ``names``: ``image_path`` (the image's URI) and ``name``."""
    return pa.table(
        {
            "image_path": pa.array([part.uri(IMAGES, name) for name in names], pa.string()),
            "name": pa.array(list(names), pa.string()),
        }
    )
