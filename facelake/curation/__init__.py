"""HyperFace's last mile (issue 15): align the generated faces, audit identity and leakage, export a training set.

Engine only (no Dagster): :mod:`~facelake.curation.aligned` (RetinaFace + ArcFace-template crops, shard by
shard), :mod:`~facelake.curation.audit` (identity consistency against the reference embeddings),
:mod:`~facelake.curation.pair_search` and :mod:`~facelake.curation.leakage` (generated vs real embeddings,
exact), :mod:`~facelake.curation.dataset` (the cleaned set in two trainer layouts, and its export).
"""
