"""Exact similarity on unit vectors at scale: blocked Gram products screened in reduced precision
(:mod:`.gram`) and exact nearest-neighbour searches built on them (:mod:`.neighbours`)."""
