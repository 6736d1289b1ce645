"""The released LAION formats (DESIGN §5): metadata part names and their Arrow schema."""

from __future__ import annotations

import pyarrow as pa

META_PART_TEMPLATE = "part-{part:05d}-5b54c5d5-bbcf-484d-a2ce-0d6f73df1a36-c000.snappy.parquet"
"""File name of laion400m-meta part ``part`` (the files' own numbering, 0..31)."""

LAION400M_META_SCHEMA = pa.schema(
    [
        ("SAMPLE_ID", pa.int64()),
        ("URL", pa.string()),
        ("TEXT", pa.string()),
        ("HEIGHT", pa.int64()),
        ("WIDTH", pa.int64()),
        ("LICENSE", pa.string()),
        ("NSFW", pa.string()),
        ("similarity", pa.float64()),
    ]
)
"""Columns of a laion400m-meta part, and of a committed laion_face_meta part (same types, nulls kept)."""

LAION_PARTS = [f"{i:05d}" for i in range(32)]
"""Partition keys of the 32 laion400m metadata parts: the files' own numbering ``00000``…``00031``."""
LAION_20M_PARTS = [f"{i:05d}" for i in (0, 2, 5, 8, 13, 15, 17, 18, 21, 22, 24, 25, 28)]
"""The parts of the LAION-Face 20M subset."""
