"""Embeddings computed elsewhere, in the clip-retrieval layout: pretrained features a dataset ships (SFHQ's
``pretrained_features`` pickles, key ``CLIP_ViTL_14@336``), their embedding space, and the encoder that
searches them.

A feature key is a foreign label (:data:`facelake.clip.space.FOREIGN_LABELS`: ``CLIP_ViTL_14@336`` is open_clip
``ViT-L-14-336-quickgelu`` / ``openai``), or any key given an explicit model (a config name or a
``local-dir:`` folder, and its weights). :func:`resolve_space` gives the features' space:

* when the model's weights are HERE (a local checkpoint or folder, or a tag already in a local cache: this
  never downloads), the model is loaded and the space is exactly the one its encoder has (resolved config
  + loaded-weights hash), so search and near-duplicates compare like with like;
* otherwise the space is DECLARED: the resolved config (from open_clip's own config files, no weights
  needed), the label's dimension and the label's weights hash when the table knows it, else
  ``unverified:<model>/<tag>``; ``space.json`` says ``weights_verified: false`` and why.

``space.json`` of such a layout carries a :data:`FOREIGN` record (label, model spec, whether the weights were
verified). :func:`foreign_encoder` reads it back: ``facelake search`` then encodes queries with THAT model
(failing at once, naming how to provide the weights, when they are not here), and for a declared space it
checks the loaded model's config and dimension against the declared ones before searching.

:data:`FOREIGN_ASSETS` says where such an asset lives when it is not under ``{root}/clip/<asset>/``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facelake.clip.layout import SPACE_FILE, ClipEmbeddings
from facelake.clip.model import (
    HF_HUB,
    LOCAL_DIR,
    ClipModelSpec,
    LoadedClip,
    cached_tag_file,
    load_clip,
    resolve_model_config,
)
from facelake.clip.space import FOREIGN_LABELS, ForeignLabel, canonical_config, clip_profile
from facelake.lake.commit import Manifest, PartitionArtifact
from facelake.lake.errors import InputError
from facelake.lake.storage import Storage
from facelake.models.registry import ModelNotFoundError
from facelake.vectors.spaces import EmbedderProfile, EmbeddingSpaceMismatchError, space_label

FOREIGN = "foreign"
"""Key of ``space.json`` holding the foreign record (label, spec, weights_verified, reason)."""
UNVERIFIED = "unverified:"
"""Prefix of the weights hash of a declared space whose weights were not here to hash."""
CLIP_DATASET = "clip"
FOREIGN_ASSETS: dict[str, tuple[str, str]] = {"sfhq_clip_features": ("sfhq", "clip_features")}
"""Embeddings assets in the clip-retrieval layout that live outside ``{root}/clip/``: asset -> (dataset,
artifact folder)."""


def asset_location(asset: str) -> tuple[str, str]:
    """``(dataset, artifact)`` of an embeddings asset: :data:`FOREIGN_ASSETS`, else ``("clip", asset)``."""
    return FOREIGN_ASSETS.get(asset, (CLIP_DATASET, asset))


def feature_spec(label: str, model: str | None = None, pretrained: str | None = None) -> ClipModelSpec:
    """The model of feature key ``label``: ``model`` (+ ``pretrained``) when given, else the foreign-label
    table's entry (``pretrained``: a local checkpoint of the same weights instead of the table's tag)."""
    if model:
        return ClipModelSpec(model, None if model.startswith(LOCAL_DIR) else pretrained)
    return ClipModelSpec.from_label(label, pretrained)


def _is_tag(spec: ClipModelSpec) -> bool:
    tag = spec.pretrained
    if tag is None or spec.model.startswith((LOCAL_DIR, HF_HUB)):
        return False
    return not (os.path.isfile(tag) or os.sep in tag)


def weights_here(spec: ClipModelSpec) -> tuple[bool, str]:
    """Whether ``spec``'s weights can be loaded without the network, and if not, why (never downloads)."""
    if spec.model.startswith(HF_HUB):
        return False, f"{spec.model}: Hugging Face Hub models are not resolved offline here"
    if spec.model.startswith(LOCAL_DIR):
        folder = Path(spec.model[len(LOCAL_DIR) :])
        if not folder.is_dir():
            return False, f"{spec.model}: no such folder"
        return True, ""
    if spec.pretrained is None:
        return True, ""  # seeded random weights (tests, demos): labelled in every output
    if not _is_tag(spec):
        if os.path.isfile(spec.pretrained):
            return True, ""
        return False, f"checkpoint {spec.pretrained} does not exist"
    found, looked = cached_tag_file(spec.model, spec.pretrained, spec.cache_dir)
    if found is None:
        where = ", ".join(looked) or "no cache location known for this tag"
        return (
            False,
            f"weights of {spec.model} pretrained={spec.pretrained!r} are not here (looked at {where})",
        )
    return True, ""


@dataclass
class ForeignSpace:
    """The space of a feature key: its model spec, the profile, and the loaded model when its weights are here."""

    label: str
    spec: ClipModelSpec
    profile: EmbedderProfile
    loaded: LoadedClip | None
    reason: str = ""
    """Why the weights were not verified (empty when they were)."""

    @property
    def verified(self) -> bool:
        return self.loaded is not None

    def record(self) -> dict[str, Any]:
        """The :data:`FOREIGN` record of ``space.json``."""
        return {
            "label": self.label,
            "spec": self.spec.describe(),
            "weights_verified": self.verified,
            "reason": self.reason or None,
        }

    def describe(self) -> str:
        how = "weights verified" if self.verified else f"DECLARED space, weights not verified: {self.reason}"
        return (
            f"{self.label} -> {self.spec.model} / {self.spec.pretrained}: {self.profile.describe()} ({how})"
        )


def _entry(label: str) -> ForeignLabel | None:
    return FOREIGN_LABELS.get(label)


def declared_profile(
    spec: ClipModelSpec, dimension: int | None = None, entry: ForeignLabel | None = None
) -> EmbedderProfile:
    """The space ``spec`` declares without its weights: resolved config, its width (which must equal
    ``dimension`` when given) and the label's known weights hash (else ``unverified:<model>/<tag>``)."""
    config = resolve_model_config(spec)
    dimension = int(config["embed_dim"]) if dimension is None else int(dimension)
    if int(config["embed_dim"]) != dimension:
        raise InputError(
            spec.model, f"the features are {dimension}-d but the model's config gives {config['embed_dim']}-d"
        )
    known = entry.state_dict_sha256 if entry is not None else None
    sha = known or f"{UNVERIFIED}{spec.model}/{spec.pretrained}"
    return clip_profile(canonical_config(config), sha, dimension, random_init=False)


def resolve_space(
    label: str,
    dimension: int | None,
    *,
    model: str | None = None,
    pretrained: str | None = None,
) -> ForeignSpace:
    """The embedding space of features stored under ``label`` (``dimension`` wide; None when no file held a
    usable vector): loaded when the weights are here, declared otherwise (see the module doc). A model whose
    width is not ``dimension`` is refused."""
    spec = feature_spec(label, model, pretrained)
    entry = None if model else _entry(label)
    if entry is not None and dimension is not None and entry.dimension != int(dimension):
        raise InputError(label, f"the features are {dimension}-d but {label} is {entry.dimension}-d")
    here, reason = weights_here(spec)
    if here:
        try:
            loaded = load_clip(spec)
        except ModelNotFoundError as error:
            here, reason = False, str(error)
        else:
            if dimension is not None and loaded.profile.dimension != int(dimension):
                raise InputError(
                    label,
                    f"the features are {dimension}-d but {spec.model} embeds in {loaded.profile.dimension}-d",
                )
            return ForeignSpace(label, spec, loaded.profile, loaded)
    return ForeignSpace(label, spec, declared_profile(spec, dimension, entry), None, reason)


# --- search ----------------------------------------------------------------------------------------------


def committed_space_record(artifact: PartitionArtifact, manifest: Manifest | None = None) -> dict[str, Any]:
    """The committed ``space.json`` of a layout partition (``{}`` when it lists none)."""
    manifest = manifest or artifact.require_manifest()
    if SPACE_FILE not in {f.path for f in manifest.files}:
        return {}
    return json.loads(artifact.storage.read_bytes(artifact.uri(SPACE_FILE)))


def spec_of(record: dict[str, Any]) -> ClipModelSpec:
    """The model spec a :data:`FOREIGN` record names."""
    spec = record["spec"]
    return ClipModelSpec(
        spec["model"],
        spec.get("pretrained"),
        seed=int(spec.get("seed", 0)),
        force_quick_gelu=bool(spec.get("force_quick_gelu", False)),
        force_image_size=spec.get("force_image_size"),
    )


def searchable(
    embeddings: ClipEmbeddings, record: dict[str, Any], profile: EmbedderProfile
) -> tuple[ClipEmbeddings, str | None]:
    """``embeddings`` in the space of a loaded model ``profile``: unchanged when their space was verified (the
    search then checks it as usual); for a declared space, config and dimension must equal the model's, and
    the embeddings take its space (with a note saying so)."""
    if record.get("weights_verified", True):
        return embeddings, None
    declared = embeddings.profile
    if declared.config != profile.config or declared.dimension != profile.dimension:
        raise EmbeddingSpaceMismatchError(
            f"the {record['label']} features declare {space_label(declared)} but the model "
            f"{record['spec']['model']} loads as {space_label(profile)}: another configuration"
        )
    note = (
        f"{record['label']} features: weights not verified when committed ({record.get('reason')}); "
        f"searching with {profile.describe()}, whose config and dimension match"
    )
    return dataclasses.replace(embeddings, space=profile.provenance()), note


def foreign_encoder(
    artifact: PartitionArtifact, embeddings: ClipEmbeddings, options: dict[str, Any]
) -> tuple[Any, ClipEmbeddings, list[str]] | None:
    """For a layout whose ``space.json`` has a :data:`FOREIGN` record: an encoder of that record's model
    (``options``: :class:`facelake.clip.encoder.ClipEncoder` keywords), the embeddings in its space, and
    notes; None for any other layout. Raises :class:`facelake.models.registry.ModelNotFoundError` at once
    when the model's weights are not here (offline), naming how to provide them."""
    record = committed_space_record(artifact).get(FOREIGN)
    if not record:
        return None
    from facelake.clip.encoder import ClipEncoder

    loaded = load_clip(spec_of(record))
    embeddings, note = searchable(embeddings, record, loaded.profile)
    notes = [f"queries encoded by {record['spec']['model']} ({record['label']}'s model)"]
    return ClipEncoder(loaded, **options), embeddings, notes + ([note] if note else [])


def embeddings_artifact(storage: Storage, asset: str, part: str) -> PartitionArtifact:
    """The partition ``part`` of embeddings asset ``asset`` wherever it lives (:func:`asset_location`)."""
    dataset, name = asset_location(asset)
    return PartitionArtifact(storage, dataset, name, part)


def images_by_uri(storage: Storage, uris: list[str]) -> dict[str, bytes]:
    """The bytes of the images whose ``image_path`` is their own URI (local or ``s3://`` with ``storage``'s S3
    options), for the layouts of :data:`FOREIGN_ASSETS`; unreadable ones are left out."""
    found = {}
    for uri in dict.fromkeys(uris):
        folder = uri.rsplit("/", 1)[0]
        try:
            found[uri] = Storage(folder, storage.s3).read_bytes(uri)
        except OSError:
            continue
    return found
