"""The embedding space of an open_clip model: its resolved configuration plus a hash of its loaded weights.

A CLIP space is an :class:`facelake.vectors.spaces.EmbedderProfile` whose

* ``config`` is the canonical JSON of the resolved model configuration (:func:`canonical_config`): the
  config after every override (``force_quick_gelu``, image size), with the dataclass defaults of open_clip's
  ``CLIPVisionCfg``/``CLIPTextCfg`` filled in, so ``{"quick_gelu": false}`` and a missing ``quick_gelu``
  are one config while ``ViT-L-14-336`` and ``ViT-L-14-336-quickgelu`` are two;
* ``weights_sha256`` is :func:`state_dict_sha256` of the model as loaded: every tensor in sorted key order,
  its key, shape and bytes after casting floating tensors to float32 (little-endian), so a ``.pt`` file,
  a ``local-dir:`` safetensors folder and a pretrained tag holding the same weights give one hash;
* ``name`` is ``open_clip:`` plus the stock open_clip config the resolved config equals (read from the
  package's own ``model_configs`` folder, so registering a config elsewhere does not rename a space), or
  ``open_clip:custom``; it is a function of ``config``, never of how the model was spelled.

Foreign labels (SFHQ's pickled ``pretrained_features`` keys) map to open_clip configs through ONE table,
:data:`FOREIGN_LABELS`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facelake.lake.hashing import canonical_json
from facelake.vectors.spaces import EmbedderProfile

NAME_PREFIX = "open_clip:"
CUSTOM = "custom"
NEAR_DUPLICATE_SIMILARITY = 0.92
"""SFHQ's de-duplication threshold on CLIP similarity; the profile's "same thing" threshold is 1 − this."""
_INIT_ONLY = {"timm_model_pretrained", "hf_model_pretrained"}
"""Config keys that change how a model is initialised, never the function its weights compute."""


@dataclass(frozen=True)
class ForeignLabel:
    """What a label written by another project means: an open_clip config, the tag of its weights, the width.

    ``state_dict_sha256``: the weights hash (:func:`state_dict_sha256`) once someone has computed it on a
    machine that has the weights; while ``None``, only the config and dimension can be checked.
    """

    label: str
    model: str
    pretrained: str
    dimension: int
    state_dict_sha256: str | None = None
    note: str = ""


FOREIGN_LABELS: dict[str, ForeignLabel] = {
    entry.label: entry
    for entry in (
        ForeignLabel(
            "CLIP_ViTL_14@336",
            "ViT-L-14-336-quickgelu",
            "openai",
            768,
            note="SFHQ pretrained_features: OpenAI CLIP ViT-L/14 at 336 px; OpenAI weights need the "
            "-quickgelu config (under the plain name open_clip silently runs GELU)",
        ),
    )
}
"""Foreign embedding labels by name: adding one is one entry."""


def foreign_label(label: str) -> ForeignLabel:
    """The :data:`FOREIGN_LABELS` entry of ``label``; ``KeyError`` names the known labels otherwise."""
    try:
        return FOREIGN_LABELS[label]
    except KeyError:
        raise KeyError(
            f"unknown CLIP feature label {label!r}: known labels {sorted(FOREIGN_LABELS)}"
        ) from None


def _dataclass_defaults(cls: type) -> dict[str, Any]:
    values = {}
    for item in dataclasses.fields(cls):
        if item.default is not dataclasses.MISSING:
            values[item.name] = item.default
        elif item.default_factory is not dataclasses.MISSING:  # pragma: no cover - none today
            values[item.name] = item.default_factory()
    return values


def canonical_config(model_cfg: Mapping[str, Any]) -> str:
    """The canonical JSON of an open_clip model config (defaults filled, init-only flags dropped)."""
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    config = json.loads(canonical_json(dict(model_cfg)))
    config["quick_gelu"] = bool(config.get("quick_gelu", False))
    config["custom_text"] = bool(config.get("custom_text", False))
    for key, cls in (("vision_cfg", CLIPVisionCfg), ("text_cfg", CLIPTextCfg)):
        tower = {**_dataclass_defaults(cls), **dict(config.get(key) or {})}
        config[key] = {k: v for k, v in tower.items() if k not in _INIT_ONLY}
    return canonical_json(config)


@functools.lru_cache(maxsize=1)
def _stock_names() -> dict[str, str]:
    """Canonical config JSON -> name, for the configs shipped inside the open_clip package."""
    import open_clip

    folder = Path(open_clip.__file__).parent / "model_configs"
    names: dict[str, str] = {}
    for path in sorted(folder.glob("*.json")):
        try:
            config = json.loads(path.read_text())
        except ValueError:  # pragma: no cover - a broken stock file
            continue
        if all(key in config for key in ("embed_dim", "vision_cfg", "text_cfg")):
            names.setdefault(canonical_config(config), path.stem)
    return names


def config_name(config: str) -> str:
    """The stock open_clip config name whose canonical JSON is ``config``, else ``custom``."""
    return _stock_names().get(config, CUSTOM)


def state_dict_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the tensors in sorted key order: key, shape, then the bytes of the tensor with floating
    dtypes cast to float32, booleans to uint8 and other integers to int64 (dtype-normalised)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach()
        if tensor.is_floating_point():
            tensor = tensor.to(torch.float32)
        elif tensor.dtype == torch.bool:
            tensor = tensor.to(torch.uint8)
        else:
            tensor = tensor.to(torch.int64)
        tensor = tensor.cpu().contiguous()
        digest.update(key.encode())
        digest.update(b"\0")
        digest.update(repr(tuple(tensor.shape)).encode())
        digest.update(b"\0")
        digest.update(tensor.numpy().reshape(-1).view(np.uint8))
    return digest.hexdigest()


def clip_profile(config: str, weights_sha256: str, dimension: int, random_init: bool) -> EmbedderProfile:
    """The embedding space of an open_clip model with resolved ``config`` and loaded-weights hash."""
    note = "open_clip image/text embedding; same-thing threshold = near-duplicate similarity 0.92"
    if random_init:
        note += "; RANDOM WEIGHTS (pretrained=None): for tests and demos, not meaningful similarities"
    return EmbedderProfile(
        name=NAME_PREFIX + config_name(config),
        dimension=int(dimension),
        weights_sha256=weights_sha256,
        random_init=bool(random_init),
        same_identity_cosine_distance=round(1.0 - NEAR_DUPLICATE_SIMILARITY, 6),
        note=note,
        config=config,
    )


def random_weights_warning(profile: EmbedderProfile) -> str | None:
    """The warning every output of a randomly initialised model carries, or None for trained weights."""
    if not profile.random_init:
        return None
    return (
        f"RANDOM WEIGHTS: {profile.name} was initialised randomly (pretrained=None); its embeddings, "
        "search results and near-duplicates are for testing the pipeline only"
    )
