"""Curation settings (issue 15): identity consistency, leakage search, the exported dataset's layout."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class CurationSettings(BaseModel):
    """How generated faces are audited and exported (``facelake.curation``).

    ``consistency``: an aligned image whose cosine to its own identity's reference embedding is below it is
    *inconsistent* and left out of the dataset; an identity whose images' mean cosine is below it fails the
    audit's check (None: the embedder's own same-identity threshold). ``leakage_top_k``: the most similar generated × real pairs
    removed per real set (the paper: 200); ``leakage_threshold``: every pair at or above this cosine is
    removed as well (None: top-K only). ``embedder``: the audit's identity embedder; None means the
    generator's identity space (the one the references live in)."""

    model_config = ConfigDict(extra="forbid")

    consistency: float | None = Field(
        None,
        ge=-1.0,
        le=1.0,
        description="minimum cosine of an image to its own reference embedding (None: the audit embedder's own "
        "same-identity threshold, 1 - same_identity_cosine_distance: 0.65 for ArcFace)",
    )
    leakage_top_k: int = Field(200, ge=0, description="most similar generated x real pairs per real set")
    leakage_threshold: float | None = Field(
        None, ge=-1.0, le=1.0, description="every generated x real pair with cosine >= this leaks (None: off)"
    )
    real_sets: list[str] = Field(
        default_factory=lambda: ["hyperface_gallery"],
        description="real embedding sets checked for leakage: hyperface_gallery, celebahq_face_embeddings, "
        "laion_face_embeddings (every committed part, or laion_face_embeddings[00000]), sfhq_face_embeddings, "
        "or a parquet table URI ({sources} expands)",
    )
    embedder: str | None = Field(None, description="audit embedder; None: the generator's identity space")
    dataset_shard_size: int = Field(1000, ge=1, description="images per exported webdataset shard")
    jpeg_quality: int = Field(95, ge=1, le=100, description="JPEG quality of aligned crops")
    aligned_size: int = Field(112, ge=32, description="side of the aligned ArcFace-template crop")
    worst_identities: int = Field(8, ge=0, description="identities on the audit's contact sheet")
    worst_pairs: int = Field(16, ge=0, description="pairs on the leakage contact sheet")
