"""The generator's identity space: Arc2Face is conditioned on 512-d ArcFace vectors, nothing else.

The generator declares its space as an :class:`~facelake.faces.identity.EmbedderProfile`, the mechanism
every embedder uses. When Arc2Face's folder holds the ArcFace model it was trained on (``arcface.onnx``, as
the release ships it) the space is pinned to that file's sha256 and a variant must have been packed in
exactly that space (:func:`~facelake.faces.identity.check_same_space`). Without it the space is pinned only
by model family and dimension (an ArcFace ONNX model, 512-d) and the provenance says the weights are
unchecked. Either way a variant packed in another space (dlib's 128-d, CLIP) is refused with an error that
names both spaces; the documented path for real use is a gallery embedded with the ``arcface`` embedder.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from facelake.faces.identity import EmbedderProfile, EmbeddingSpaceMismatchError, check_same_space
from facelake.models.registry import file_sha256, read_sidecar

ARCFACE_NAME = "arcface_onnx"
"""The space name of ``facelake.faces.identity_onnx.ArcFaceOnnxEmbedder`` (the registry's ``arcface``)."""
ARCFACE_DIMENSION = 512
ARCFACE_SAME_IDENTITY = 0.35  # facelake.faces.identity_onnx.ARCFACE_SAME_IDENTITY_COSINE_DISTANCE
UNPINNED = "unpinned"
"""``weights_sha256`` of a declared space whose ArcFace weights are unknown (family and dimension only)."""


def arc2face_identity_space(arcface_onnx: str | Path | None = None) -> EmbedderProfile:
    """Arc2Face's identity space: ArcFace 512-d, pinned to ``arcface_onnx``'s sha256 when given."""
    if arcface_onnx is None:
        return EmbedderProfile(
            name=ARCFACE_NAME,
            dimension=ARCFACE_DIMENSION,
            weights_sha256=UNPINNED,
            random_init=False,
            same_identity_cosine_distance=ARCFACE_SAME_IDENTITY,
            note="ArcFace 512-d, weights not pinned: put Arc2Face's arcface.onnx beside arc2face/ and encoder/",
        )
    path = str(arcface_onnx)
    return EmbedderProfile(
        name=ARCFACE_NAME,
        dimension=ARCFACE_DIMENSION,
        weights_sha256=file_sha256(path),
        random_init=bool(read_sidecar(path).get("random_init", False)),
        same_identity_cosine_distance=ARCFACE_SAME_IDENTITY,
        note=f"pinned to {Path(path).name} shipped with the generator",
    )


def is_pinned(space: EmbedderProfile) -> bool:
    return space.weights_sha256 != UNPINNED


def check_identity_space(
    variant_space: EmbedderProfile | Mapping[str, Any], generator_space: EmbedderProfile
) -> dict[str, Any]:
    """The variant's provenance if its vectors live in the generator's identity space; else raise
    :class:`~facelake.faces.identity.EmbeddingSpaceMismatchError` naming both spaces."""
    variant = (
        variant_space.provenance() if isinstance(variant_space, EmbedderProfile) else dict(variant_space)
    )
    if is_pinned(generator_space):
        try:
            return check_same_space([variant, generator_space])
        except EmbeddingSpaceMismatchError as error:
            raise _mismatch(variant, generator_space, " (other weights)") from error
    name, dimension = variant.get("embedder_name"), variant.get("embedder_dimension")
    if name != generator_space.name or int(dimension or 0) != generator_space.dimension:
        raise _mismatch(variant, generator_space, "")
    return variant


def space_label(space: EmbedderProfile | Mapping[str, Any]) -> str:
    """``name (d-d, sha256 …, RANDOM TEST WEIGHTS)``: how errors name a space."""
    values = space.provenance() if isinstance(space, EmbedderProfile) else dict(space)
    random = ", RANDOM TEST WEIGHTS" if values.get("embedder_random_init") else ""
    return (
        f"{values.get('embedder_name')} ({values.get('embedder_dimension')}-d, "
        f"sha256 {str(values.get('embedder_weights_sha256'))[:12]}{random})"
    )


def _mismatch(
    variant: Mapping[str, Any], generator: EmbedderProfile, detail: str
) -> EmbeddingSpaceMismatchError:
    shown = generator if is_pinned(generator) else replace(generator, weights_sha256="(any)")
    return EmbeddingSpaceMismatchError(
        f"refusing to generate: the variant was packed in {space_label(variant)}{detail} but Arc2Face is "
        f"conditioned on {space_label(shown)}; pack the variant from a gallery embedded with the 'arcface' "
        "embedder (models.embedder=arcface) in Arc2Face's ArcFace space"
    )
