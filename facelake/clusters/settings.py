"""Identity-cluster settings (DBSCAN eps and its source, screening) and the CelebA-HQ source folder."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ClusteringSettings(BaseModel):
    """Identity clusters (DBSCAN, cosine distance; see ``facelake.clusters.identity_clusters``) and the CelebA-HQ source.

    eps comes from the embedder's profile (its same-identity cosine distance: ArcFace 0.35 as on the
    celebahq_512_id_clusters card, dlib 0.092), from the valley of the nearest-neighbour cosine histogram
    (``1 - valley``), or is fixed; the choice is recorded in every output."""

    model_config = ConfigDict(extra="forbid")

    celebahq_uri: str = Field(
        "{sources}/celeba-hq",
        description="folder of the jxie/celeba-hq parquet export (image struct<bytes, path>); {sources} expands",
    )
    eps_source: Literal["profile", "valley", "fixed"] = "profile"
    eps: float = Field(
        0.35, gt=0.0, le=2.0, description="DBSCAN eps (cosine distance) when eps_source is fixed"
    )
    min_samples: int = Field(2, ge=1)
    screen: Literal["auto", "numpy-float32", "torch-float32", "torch-bfloat16"] = Field(
        "auto",
        description="Gram screening precision (facelake.vectors.gram); labels are exact whatever it is",
    )
    block: int | None = Field(None, ge=1, description="Gram block edge (default: 2048 CPU, 8192 CUDA)")
    min_centroid_cosine: float | None = Field(
        None,
        ge=-1.0,
        le=1.0,
        description="asset check bound on each member's cosine to its centroid (None: 1 - eps)",
    )
    face_batch_size: int = Field(16, ge=1, description="CelebA-HQ images per detection/embedding batch")
