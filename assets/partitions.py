"""Partition sets (DESIGN §4): keep counts modest — parts and shards, never one per image."""

from __future__ import annotations

from dagster import StaticPartitionsDefinition

from facelake.laion.formats import LAION_20M_PARTS, LAION_PARTS

laion_parts = StaticPartitionsDefinition(LAION_PARTS)
"""The 32 laion400m metadata parts, keyed by the files' own numbering ``00000``…``00031``."""

LAION_FACE_20M_PARTS = LAION_20M_PARTS
"""The parts of the LAION-Face 20M subset."""
