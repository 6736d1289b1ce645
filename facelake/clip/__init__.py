"""CLIP features for every image asset (issue 12): open_clip encoders, one embedding-space identity, the
clip-retrieval layout, exact and approximate search, and near-duplicate removal.

Modules by role: :mod:`.space` (a model's space: resolved config + weights hash; the foreign-label table),
:mod:`.model` (loading from a tag, a checkpoint file, a ``local-dir:`` folder or random weights; offline
checks), :mod:`.encoder` (batched image/text encoding, decoding overlapped with the model), :mod:`.layout`
(clip-retrieval's ``img_emb``/``metadata`` files, written and read), :mod:`.stage` (the per-shard stage and
its commit), :mod:`.similarity` (the one similarity), :mod:`.search` (exact top-k, the Python search API),
:mod:`.ann` (the faiss index), :mod:`.sheet` (contact sheets), :mod:`.dedup` (near-duplicates).
"""
