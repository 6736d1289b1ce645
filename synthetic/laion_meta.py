"""Synthetic laion400m-meta parts in the real schema (DESIGN §5), for tests and benchmarks.

Rows are generated vectorised, one row group at a time (Arrow compute kernels join the string pieces), so
millions of rows take seconds: SAMPLE_IDs increase with gaps, URLs are ~80-120 characters, captions
~30-200 characters of words, HEIGHT/WIDTH are null at ``null_fraction``, NSFW is mostly 'UNLIKELY'.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from facelake.laion.formats import LAION400M_META_SCHEMA, META_PART_TEMPLATE
from facelake.lake.storage import Storage, is_remote

META_SCHEMA = LAION400M_META_SCHEMA

# Each part's ids start here times the part index, so parts never share a SAMPLE_ID.
PART_ID_STRIDE = 10**9

_DOMAINS = pa.array(
    [
        "i.pinimg.com",
        "images-na.ssl-images-amazon.com",
        "cdn.shopify.com",
        "i.ebayimg.com",
        "img.alicdn.com",
        "media.gettyimages.com",
        "upload.wikimedia.org",
        "static.wixstatic.com",
        "i0.wp.com",
        "cdn.pixabay.com",
        "thumbs.dreamstime.com",
        "farm4.staticflickr.com",
    ]
)
_EXTENSIONS = pa.array([".jpg", ".jpeg", ".png", ".jpg?w=600", ".webp"])
_VOCABULARY = (
    "a the of and with in on portrait woman man girl boy smiling face close up photo young old "
    "beautiful happy person wearing black white red blue dress shirt hair long short studio light "
    "background stock image vector illustration isolated business team family outdoor summer "
    "winter city street fashion model actor singer wedding bride groom child baby hands glasses "
    "hat beard makeup profile headshot people group friends 2015 hd high quality new vintage"
)
_WORDS = pa.array(_VOCABULARY.split())
_LICENSES = pa.array(
    ["?", "https://creativecommons.org/licenses/by/4.0/", "https://creativecommons.org/licenses/by-sa/3.0/"]
)
_LICENSE_P = np.array([0.96, 0.025, 0.015])
_NSFW = pa.array(["UNLIKELY", "UNSURE", "NSFW"])
_NSFW_P = np.array([0.9, 0.07, 0.03])
_ALNUM = np.frombuffer(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", dtype=np.uint8)

UrlFor = Callable[[int], str]


def meta_part_name(i: int) -> str:
    """File name of laion400m-meta part ``i`` (the files' own numbering)."""
    return META_PART_TEMPLATE.format(part=i)


def _random_strings(rng: np.random.Generator, lengths: np.ndarray) -> pa.StringArray:
    """One random alphanumeric string of each length, built straight into Arrow buffers."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    data = _ALNUM[rng.integers(0, len(_ALNUM), size=int(offsets[-1]), dtype=np.uint8)]
    return pa.StringArray.from_buffers(len(lengths), pa.py_buffer(offsets), pa.py_buffer(data))


def _urls(rng: np.random.Generator, n: int) -> pa.Array:
    domains = _DOMAINS.take(rng.integers(0, len(_DOMAINS), n))
    extensions = _EXTENSIONS.take(rng.integers(0, len(_EXTENSIONS), n))
    fixed = pc.add(pc.utf8_length(domains), pc.utf8_length(extensions)).to_numpy() + len("https:///")
    path_lengths = np.maximum(rng.integers(80, 121, n) - fixed, 8)
    paths = _random_strings(rng, path_lengths)
    return pc.binary_join_element_wise("https://", domains, "/", paths, extensions, "")


def _captions(rng: np.random.Generator, n: int) -> pa.Array:
    counts = rng.integers(6, 32, n)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    words = _WORDS.take(rng.integers(0, len(_WORDS), int(offsets[-1])))
    return pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), words), " ")


def _sizes(rng: np.random.Generator, n: int, null_fraction: float) -> pa.Array:
    values = rng.integers(64, 4097, n)
    return pa.array(values, mask=rng.random(n) < null_fraction, type=pa.int64())


def _batch(
    rng: np.random.Generator,
    sample_ids: np.ndarray,
    url_for: UrlFor | None,
    null_fraction: float,
) -> pa.RecordBatch:
    n = len(sample_ids)
    urls = pa.array([url_for(int(s)) for s in sample_ids], pa.string()) if url_for else _urls(rng, n)
    columns = [
        pa.array(sample_ids, pa.int64()),
        urls,
        _captions(rng, n),
        _sizes(rng, n, null_fraction),
        _sizes(rng, n, null_fraction),
        _LICENSES.take(rng.choice(len(_LICENSES), n, p=_LICENSE_P)),
        _NSFW.take(rng.choice(len(_NSFW), n, p=_NSFW_P)),
        pa.array(rng.uniform(0.3, 0.45, n)),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=META_SCHEMA)


def sample_ids_for(n_rows: int, seed: int, first_id: int = 0) -> np.ndarray:
    """Increasing SAMPLE_IDs with gaps (1-4 apart), as a part's ids are."""
    gaps = np.random.default_rng([seed, 0]).integers(1, 5, n_rows)
    return first_id + np.cumsum(gaps, dtype=np.int64)


def write_meta_part(
    uri_or_path: str,
    n_rows: int,
    seed: int,
    url_for: UrlFor | None = None,
    null_fraction: float = 0.05,
    row_group_size: int = 500_000,
    first_id: int = 0,
    storage: Storage | None = None,
) -> np.ndarray:
    """Write a synthetic laion400m-meta part; returns its SAMPLE_IDs in file order.

    ``url_for(sample_id) -> url`` replaces the random URLs (e.g. to point at a local HTTP server).
    Remote URIs are written through ``storage``.
    """
    sample_ids = sample_ids_for(n_rows, seed, first_id)
    rng = np.random.default_rng([seed, 1])
    if storage is None:
        if is_remote(uri_or_path):
            raise ValueError(f"{uri_or_path}: a remote URI needs a Storage")
        os.makedirs(os.path.dirname(os.path.abspath(uri_or_path)), exist_ok=True)
    sink = storage.open(uri_or_path, "wb") if storage else nullcontext(uri_or_path)
    with sink as target, pq.ParquetWriter(target, META_SCHEMA, compression="snappy") as writer:
        for start in range(0, max(n_rows, 1), row_group_size):
            chunk = sample_ids[start : start + row_group_size]
            writer.write_batch(_batch(rng, chunk, url_for, null_fraction), row_group_size=row_group_size)
    return sample_ids


def choose_face_ids(sample_ids: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A random ``fraction`` of ``sample_ids`` as int64, in shuffled order (the id list's order is not the file's)."""
    rng = np.random.default_rng(seed)
    count = round(len(sample_ids) * fraction)
    return np.asarray(sample_ids, dtype=np.int64)[rng.permutation(len(sample_ids))[:count]]


@dataclass(frozen=True)
class SyntheticMeta:
    """A folder of synthetic parts and the face-id split chosen from each."""

    uris: list[str]
    face_ids: list[np.ndarray]


def write_meta_parts(
    folder: str,
    parts: int,
    rows_per_part: int,
    seed: int = 0,
    face_fraction: float = 0.12,
    storage: Storage | None = None,
    **part_options: Any,
) -> SyntheticMeta:
    """Write parts ``0..parts-1`` under ``folder`` with disjoint SAMPLE_IDs, and pick face ids from each."""
    uris, face_ids = [], []
    for i in range(parts):
        uri = f"{folder.rstrip('/')}/{meta_part_name(i)}"
        ids = write_meta_part(
            uri, rows_per_part, seed + i, first_id=i * PART_ID_STRIDE, storage=storage, **part_options
        )
        uris.append(uri)
        face_ids.append(choose_face_ids(ids, face_fraction, seed + 1000 + i))
    return SyntheticMeta(uris, face_ids)
