"""Load any open_clip model from a pretrained tag, a local checkpoint file, a ``local-dir:`` folder, or random
weights, and resolve its embedding space (DESIGN §6, §9).

Where the weights come from (:class:`ClipModelSpec`):

* ``pretrained=None``: random weights, seeded (``seed``) so that every process builds the same model and
  the same space; every output says so (``random_init`` in the provenance, :func:`random_weights_warning`).
* ``pretrained="/path/file.pt"`` (or ``.safetensors``/``.bin``/``.pth``/``.npz``): that file, loaded by
  open_clip's own ``load_checkpoint`` (``torch.load(weights_only=True)``: nothing in it is executed).
* ``model="local-dir:/path"``: ``open_clip_config.json`` + the checkpoint in that folder (``pretrained`` must
  then be None: open_clip would silently ignore it).
* ``pretrained="<tag>"`` (e.g. ``openai``): open_clip's download. Offline (``HF_HUB_OFFLINE`` or
  ``FACELAKE_OFFLINE``) a tag is resolved from the local caches only (the Hugging Face cache, or open_clip's
  URL cache ``~/.cache/clip``), checked BEFORE open_clip is called; if it is not there this raises
  :class:`facelake.models.registry.ModelNotFoundError` at once, naming the model and how to provide it,
  and nothing touches the network. A tag whose weights were trained with QuickGELU under a config without
  it (OpenAI's weights under ``ViT-L-14-336``) is refused: the model would silently run GELU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from facelake.clip.space import (
    FOREIGN_LABELS,
    canonical_config,
    clip_profile,
    foreign_label,
    random_weights_warning,
    state_dict_sha256,
)
from facelake.lake.errors import InputError
from facelake.models.registry import (
    OFFLINE_VARIABLES,
    ModelNotFoundError,
    is_offline,
    read_sidecar,
    sidecar_path,
)
from facelake.vectors.spaces import EmbedderProfile

log = logging.getLogger(__name__)

LOCAL_DIR = "local-dir:"
HF_HUB = "hf-hub:"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".npz", ".npy")
LOCAL_CONFIG_FILE = "open_clip_config.json"
LOCAL_WEIGHTS_FILE = "open_clip_model.safetensors"
MARKER_KEY = "facelake"
"""Key of a ``local-dir:`` config JSON under which facelake records ``random_init`` and the weights hash."""


@dataclass(frozen=True)
class ClipModelSpec:
    """Which open_clip model to load and where its weights come from (see the module doc).

    ``model``: an open_clip config name (``ViT-B-32``), ``local-dir:/folder`` or ``hf-hub:org/repo``;
    ``pretrained``: a tag, a checkpoint path, or None for random weights (seeded by ``seed``);
    ``force_quick_gelu``/``force_image_size``: open_clip's overrides (part of the resolved config, hence of
    the space); ``cache_dir``: open_clip's download cache (default: the Hugging Face cache and ``~/.cache/clip``).
    """

    model: str
    pretrained: str | None = None
    seed: int = 0
    force_quick_gelu: bool = False
    force_image_size: int | None = None
    cache_dir: str | None = None

    @classmethod
    def from_label(cls, label: str, pretrained: str | None = None) -> ClipModelSpec:
        """The spec of a foreign label (:data:`facelake.clip.space.FOREIGN_LABELS`): its config and tag, or
        a local checkpoint of the same weights given as ``pretrained``."""
        entry = foreign_label(label)
        return cls(entry.model, pretrained or entry.pretrained)

    def describe(self) -> dict[str, Any]:
        """The spec as asset metadata / config (paths as given)."""
        return {
            "model": self.model,
            "pretrained": self.pretrained,
            "seed": self.seed,
            "force_quick_gelu": self.force_quick_gelu,
            "force_image_size": self.force_image_size,
        }


@dataclass
class LoadedClip:
    """A loaded open_clip model with its eval transform, tokenizer and embedding space."""

    model: torch.nn.Module
    preprocess: Any
    tokenizer: Any
    profile: EmbedderProfile
    spec: ClipModelSpec
    source: str
    """Where the weights came from: ``random``, ``file:<path>``, ``local-dir:<path>``, ``tag:<tag>``."""
    model_config: dict[str, Any] = field(default_factory=dict)
    preprocess_config: dict[str, Any] = field(default_factory=dict)

    @property
    def random_init(self) -> bool:
        return self.profile.random_init

    @property
    def warning(self) -> str | None:
        """The random-weights warning every output of this model carries (None for trained weights)."""
        return random_weights_warning(self.profile)

    def provenance(self) -> dict[str, Any]:
        """The space columns plus where the weights came from and the random-weights warning."""
        return {
            **self.profile.provenance(),
            "source": self.source,
            "spec": self.spec.describe(),
            "random_init": self.random_init,
            "warning": self.warning,
        }


def _offline_switches() -> str:
    return ", ".join(f"{name}={os.environ[name]}" for name in OFFLINE_VARIABLES if name in os.environ)


def _how_to_provide(model: str, tag: str) -> str:
    return (
        f'on a machine with internet run `python -c "import open_clip; open_clip.create_model_and_transforms('
        f"'{model}', pretrained='{tag}')\"` and copy the downloaded checkpoint here, then set pretrained to "
        f"its path; or save the model as a folder holding {LOCAL_CONFIG_FILE} + {LOCAL_WEIGHTS_FILE} and "
        f"use model='{LOCAL_DIR}/that/folder' (facelake.clip.model.save_local_dir writes one); or unset "
        "HF_HUB_OFFLINE/FACELAKE_OFFLINE on a machine with internet"
    )


def _hf_cached(repo: str, filename: str, cache_dir: str | None) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    candidates = [filename]
    if filename.endswith((".bin", ".pth")):
        candidates.insert(0, filename[:-4] + ".safetensors")
    for name in candidates:
        found = try_to_load_from_cache(repo, name, cache_dir=cache_dir)
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


def cached_tag_file(model: str, tag: str, cache_dir: str | None = None) -> tuple[str | None, list[str]]:
    """The local file of open_clip's pretrained ``tag`` of ``model`` if some cache holds it (never touches the
    network), and the places looked at."""
    from open_clip.pretrained import HF_WEIGHTS_NAME, get_pretrained_cfg

    cfg = get_pretrained_cfg(model, tag)
    looked: list[str] = []
    if cfg.get("file"):
        looked.append(cfg["file"])
        if os.path.isfile(cfg["file"]):
            return cfg["file"], looked
    hub = cfg.get("hf_hub", "")
    if hub:
        # open_clip's convention: 'org/repo/file.ext', or 'org/repo/' for its default weights file name
        repo, filename = (hub.rstrip("/"), HF_WEIGHTS_NAME) if hub.endswith("/") else os.path.split(hub)
        looked.append(f"Hugging Face cache {repo}/{filename}")
        found = _hf_cached(repo, filename, cache_dir)
        if found:
            return found, looked
    if cfg.get("url"):
        target = os.path.join(cache_dir or os.path.expanduser("~/.cache/clip"), os.path.basename(cfg["url"]))
        looked.append(target)
        if os.path.isfile(target):
            return target, looked
    return None, looked


def _tag_preprocess(model: str, tag: str) -> dict[str, Any]:
    from open_clip.pretrained import get_pretrained_cfg
    from open_clip.transform import PreprocessCfg

    keys = {f.name for f in dataclasses.fields(PreprocessCfg)}
    return {k: v for k, v in get_pretrained_cfg(model, tag).items() if k in keys}


def _hf_hub_config(spec: ClipModelSpec) -> dict[str, Any] | None:
    """An ``hf-hub:`` model's config: downloaded when online, only from the local cache when offline."""
    import open_clip

    if not is_offline():
        return open_clip.get_model_config(spec.model)
    repo = spec.model[len(HF_HUB) :]
    cached = _hf_cached(repo, LOCAL_CONFIG_FILE, spec.cache_dir)
    if cached is None:
        raise ModelNotFoundError(
            spec.model,
            [f"Hugging Face cache {repo}/{LOCAL_CONFIG_FILE}"],
            f"offline ({_offline_switches()}): not downloading from the Hugging Face Hub",
            _how_to_provide(spec.model, "<none: hf-hub>"),
        )
    content = json.loads(Path(cached).read_text())
    return content.get("model_cfg", content)


def resolve_model_config(spec: ClipModelSpec) -> dict[str, Any]:
    """The open_clip model config ``spec`` resolves to, with its overrides, without building the model."""
    import open_clip

    if spec.model.startswith(LOCAL_DIR):
        folder = Path(spec.model[len(LOCAL_DIR) :])
        path = folder / LOCAL_CONFIG_FILE
        if not path.is_file():
            raise InputError(str(path), f"{LOCAL_DIR} folder has no {LOCAL_CONFIG_FILE}")
        try:
            content = json.loads(path.read_text())
        except ValueError as error:
            raise InputError(str(path), f"not valid JSON: {error}") from None
        config = content.get("model_cfg") if isinstance(content, dict) else None
        if not isinstance(config, dict):
            raise InputError(str(path), "lacks a 'model_cfg' object")
    elif spec.model.startswith(HF_HUB):
        config = _hf_hub_config(spec)
    else:
        config = open_clip.get_model_config(spec.model.replace("/", "-"))
        if config is None:
            raise ValueError(
                f"unknown open_clip model config {spec.model!r}: expected one of open_clip.list_models() "
                f"(e.g. ViT-B-32, ViT-L-14-336-quickgelu), a '{LOCAL_DIR}/folder' or a foreign label of "
                f"{sorted(FOREIGN_LABELS)} via ClipModelSpec.from_label"
            )
    config = json.loads(json.dumps(config))
    if spec.force_quick_gelu:
        config["quick_gelu"] = True
    if spec.force_image_size is not None:
        config["vision_cfg"]["image_size"] = spec.force_image_size
    return config


def _weights_source(spec: ClipModelSpec, config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(source label, extra keyword arguments for open_clip) — every offline and consistency check happens
    here, before open_clip is called."""
    model, tag = spec.model, spec.pretrained
    if model.startswith(LOCAL_DIR):
        if tag:
            raise ValueError(
                f"{model}: pretrained={tag!r} given with a {LOCAL_DIR} model; the folder's own checkpoint is "
                "used (open_clip ignores pretrained there): pass pretrained=None"
            )
        folder = Path(model[len(LOCAL_DIR) :])
        weights = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pth"))
        return (f"{LOCAL_DIR}{folder}" if weights else "random"), {}
    if model.startswith(HF_HUB):
        return f"hf-hub:{model[len(HF_HUB) :]}", {}
    if tag is None:
        return "random", {}
    if os.path.isfile(tag):
        path = os.path.abspath(tag)
        return f"file:{path}", {"pretrained": path}
    from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

    name = model.replace("/", "-")
    tag_cfg = get_pretrained_cfg(name, tag)
    if not tag_cfg:
        if tag.endswith(CHECKPOINT_SUFFIXES) or os.sep in tag:
            raise ModelNotFoundError(
                f"{name} weights", [tag], "the checkpoint file does not exist", "check the path"
            )
        raise ValueError(
            f"{tag!r} is neither a pretrained tag of open_clip model {name} "
            f"(tags: {list_pretrained_tags_by_model(name)}) nor an existing checkpoint file"
        )
    if bool(tag_cfg.get("quick_gelu", False)) != bool(config.get("quick_gelu", False)):
        want = "with" if tag_cfg.get("quick_gelu") else "without"
        raise ValueError(
            f"pretrained {tag!r} of {name} was trained {want} QuickGELU but the config has "
            f"quick_gelu={bool(config.get('quick_gelu', False))}: it would silently compute the wrong "
            f"activation; use the '{name.removesuffix('-quickgelu')}-quickgelu' config"
            if tag_cfg.get("quick_gelu")
            else f"pretrained {tag!r} of {name} was trained without QuickGELU: drop force_quick_gelu"
        )
    if is_offline():
        found, looked = cached_tag_file(name, tag, spec.cache_dir)
        if found is None:
            raise ModelNotFoundError(
                f"open_clip {name} pretrained={tag!r}",
                looked or ["(no cache location known for this tag)"],
                f"offline ({_offline_switches()}): not downloading",
                _how_to_provide(name, tag),
            )
        return f"tag:{tag} ({found})", {
            "pretrained": found,
            "force_preprocess_cfg": _tag_preprocess(name, tag),
        }
    return f"tag:{tag}", {"pretrained": tag}


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def load_clip(spec: ClipModelSpec, device: str = "cpu") -> LoadedClip:
    """Build the model of ``spec`` (see the module doc) in float32 eval mode on ``device``, with its eval
    transform, tokenizer and embedding space; random weights are seeded and flagged."""
    import open_clip

    config = resolve_model_config(spec)
    source, kwargs = _weights_source(spec, config)
    overrides: dict[str, Any] = {}
    if spec.force_quick_gelu:
        overrides["force_quick_gelu"] = True
    if spec.force_image_size is not None:
        overrides["force_image_size"] = spec.force_image_size
    if spec.cache_dir:
        overrides["cache_dir"] = spec.cache_dir
    with _seeded(spec.seed):
        model, _, preprocess = open_clip.create_model_and_transforms(
            spec.model, device="cpu", **kwargs, **overrides
        )
    model.eval()
    weights = state_dict_sha256(model.state_dict())
    marker = _weights_marker(spec, source)
    if marker.get("weights_sha256") and marker["weights_sha256"] != weights:
        raise InputError(
            source,
            f"weights hash {weights[:12]} does not match the {marker['weights_sha256'][:12]} recorded beside them",
        )
    random_init = source == "random" or bool(marker.get("random_init", False))
    canonical = canonical_config(config)
    profile = clip_profile(canonical, weights, int(config["embed_dim"]), random_init=random_init)
    model.to(device)
    tokenizer = open_clip.get_tokenizer(spec.model, context_length=config["text_cfg"].get("context_length"))
    if profile.random_init:
        log.warning(random_weights_warning(profile))
    preprocess_cfg = dict(getattr(getattr(model, "visual", None), "preprocess_cfg", {}) or {})
    return LoadedClip(model, preprocess, tokenizer, profile, spec, source, config, preprocess_cfg)


def _marker(loaded: LoadedClip) -> dict[str, Any]:
    return {"random_init": loaded.random_init, "weights_sha256": loaded.profile.weights_sha256}


def _weights_marker(spec: ClipModelSpec, source: str) -> dict[str, Any]:
    """What the files themselves say about the weights (written by :func:`save_checkpoint` /
    :func:`save_local_dir`): ``random_init`` and ``weights_sha256``, or ``{}``."""
    if source.startswith("file:"):
        return read_sidecar(source[len("file:") :])
    if source.startswith(LOCAL_DIR):
        path = Path(source[len(LOCAL_DIR) :]) / LOCAL_CONFIG_FILE
        marker = json.loads(path.read_text()).get(MARKER_KEY, {})
        return marker if isinstance(marker, dict) else {}
    return {}


def save_checkpoint(loaded: LoadedClip, path: str | os.PathLike[str]) -> str:
    """Write ``loaded``'s state dict as a ``.pt`` file (plus a ``.json`` sidecar recording ``random_init`` and
    the weights hash, as the model registry's sidecars do); returns the path, usable as ``pretrained``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in loaded.model.state_dict().items()}, target)
    sidecar_path(str(target)).write_text(json.dumps(_marker(loaded), indent=2))
    return str(target)


def save_local_dir(loaded: LoadedClip, folder: str | os.PathLike[str]) -> str:
    """Write ``loaded`` as an open_clip ``local-dir:`` folder (config JSON + safetensors); returns the model
    string ``local-dir:<folder>`` that loads it back. The config JSON also records ``random_init`` and the
    weights hash under :data:`MARKER_KEY` (open_clip ignores the key)."""
    from safetensors.torch import save_file

    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    content = {
        "model_cfg": loaded.model_config,
        "preprocess_cfg": loaded.preprocess_config,
        MARKER_KEY: _marker(loaded),
    }
    (path / LOCAL_CONFIG_FILE).write_text(json.dumps(content, indent=2))
    state = {k: v.detach().cpu().contiguous() for k, v in loaded.model.state_dict().items()}
    save_file(state, str(path / LOCAL_WEIGHTS_FILE))
    return f"{LOCAL_DIR}{path}"
