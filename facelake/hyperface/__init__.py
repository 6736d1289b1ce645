"""HyperFace: the gallery and reference embeddings (:mod:`.references`) and the hypersphere packer
(:mod:`.packing` with its config, run state, metrics, gallery cache, checkpoints and objective)."""
