"""Where Arc2Face's components live on disk, resolved through the model registry (DESIGN §6, §9).

The released layout, three folders (catalogue names of :mod:`facelake.models.registry` in brackets):

- Stable Diffusion 1.5 [``stable-diffusion-v1-5``]: ``vae/`` (config.json + weights), ``scheduler/``
  (scheduler_config.json), ``tokenizer/`` (vocab.json, merges.txt, configs). Its ``unet/`` and ``text_encoder/``
  are not used.
- Arc2Face [``arc2face``]: ``arc2face/`` (the UNet2DConditionModel), ``encoder/`` (the id encoder, a
  CLIPTextModel; released as ``pytorch_model.bin``, read with ``weights_only=True``) and, optionally,
  ``arcface.onnx``: the ArcFace model it was trained on, which pins the generator's identity space.
- LCM-LoRA for SD-1.5 [``lcm-lora-sdv1-5``], only for the few-step mode: ``pytorch_lora_weights.safetensors``.

A folder may carry ``facelake_weights.json`` (``{"random_init": true, ...}``): the random test components of
``synthetic.arc2face_tiny`` do, and everything generated from them says so. Nothing is ever downloaded: a
missing or incomplete folder raises :class:`facelake.models.registry.ModelNotFoundError` naming the files
and how to provide them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facelake.lake.errors import InputError
from facelake.lake.hashing import combine_hashes
from facelake.models.registry import ModelNotFoundError, ModelRegistry, file_sha256

BASE_MODEL = "stable-diffusion-v1-5"
ARC2FACE_MODEL = "arc2face"
LCM_LORA_MODEL = "lcm-lora-sdv1-5"
FOLDER_SIDECAR = "facelake_weights.json"
ARCFACE_FILE = "arcface.onnx"
LORA_FILE = "pytorch_lora_weights.safetensors"

DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
TRANSFORMERS_WEIGHTS = ("model.safetensors", "pytorch_model.bin")

BASE_FILES: dict[str, tuple[tuple[str, ...], ...]] = {
    "vae": (("config.json",), DIFFUSERS_WEIGHTS),
    "scheduler": (("scheduler_config.json",),),
    "tokenizer": (("vocab.json",), ("merges.txt",)),
}
ARC2FACE_FILES: dict[str, tuple[tuple[str, ...], ...]] = {
    "arc2face": (("config.json",), DIFFUSERS_WEIGHTS),
    "encoder": (("config.json",), TRANSFORMERS_WEIGHTS),
}
"""Per subfolder, the files it must hold; each inner tuple lists alternatives, the first present wins."""


@dataclass(frozen=True)
class ComponentFolder:
    """One resolved model folder: its root, the weight files found in it, and its sidecar."""

    model: str
    root: Path
    files: dict[str, Path]
    sidecar: dict[str, Any]

    @property
    def random_init(self) -> bool:
        return bool(self.sidecar.get("random_init", False))

    def sha256(self, name: str) -> str:
        """sha256 of one of its files (cached per process by path, size and mtime)."""
        return file_sha256(str(self.files[name]))


@dataclass(frozen=True)
class Arc2FaceFolders:
    """The SD-1.5 base, the Arc2Face folder and (for the few-step mode) the LCM-LoRA folder."""

    base: ComponentFolder
    arc2face: ComponentFolder
    lora: ComponentFolder | None = None

    @property
    def random_init(self) -> bool:
        """Whether any component carries random test weights (its sidecar says ``random_init``)."""
        return any(f.random_init for f in self.components())

    def components(self) -> list[ComponentFolder]:
        return [f for f in (self.base, self.arc2face, self.lora) if f is not None]

    @property
    def arcface_path(self) -> Path | None:
        """The ArcFace model shipped beside Arc2Face (``arcface.onnx``), if present."""
        return self.arc2face.files.get(ARCFACE_FILE)

    def weights(self) -> dict[str, str]:
        """sha256 of every weights file the generator loads, by role (``unet``, ``encoder``, ``vae``, ``lora``)."""
        shas = {
            "unet": self.arc2face.sha256("arc2face/weights"),
            "encoder": self.arc2face.sha256("encoder/weights"),
            "vae": self.base.sha256("vae/weights"),
        }
        if self.lora is not None:
            shas["lora"] = self.lora.sha256(LORA_FILE)
        return shas

    def weights_sha256(self) -> str:
        """One sha256 over every weights file (and config) the generator loads, in a fixed order."""
        configs = [
            self.arc2face.sha256("arc2face/config.json"),
            self.arc2face.sha256("encoder/config.json"),
            self.base.sha256("vae/config.json"),
            self.base.sha256("scheduler/scheduler_config.json"),
            self.base.sha256("tokenizer/vocab.json"),
            self.base.sha256("tokenizer/merges.txt"),
        ]
        return combine_hashes([f"{k}:{v}" for k, v in sorted(self.weights().items())] + configs)


def read_folder_sidecar(root: Path) -> dict[str, Any]:
    """``<root>/facelake_weights.json`` as a dict, ``{}`` when absent."""
    path = root / FOLDER_SIDECAR
    if not path.is_file():
        return {}
    try:
        content = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise InputError(str(path), f"model folder sidecar is not valid JSON: {error}") from None
    if not isinstance(content, dict):
        raise InputError(str(path), "model folder sidecar must be a JSON object")
    return content


def _root_of(registry: ModelRegistry, model: str) -> Path:
    """The folder of ``model``: the registry finds one of its catalogue files, which all end with the same
    path inside the folder (the last one, e.g. ``vae/config.json``); the root is what holds that path."""
    found = Path(registry.path(model))
    anchor = Path(registry.spec(model).filenames[-1])
    if found.parts[-len(anchor.parts) :] == anchor.parts:
        return Path(*found.parts[: -len(anchor.parts)])
    return found.parent  # a configured file path: its folder is the root


def _collect(
    registry: ModelRegistry, model: str, root: Path, layout: dict[str, tuple[tuple[str, ...], ...]]
) -> dict[str, Path]:
    """Every required file of ``layout`` under ``root`` (``sub/weights`` names the weights), or raise."""
    files: dict[str, Path] = {}
    missing: list[str] = []
    for sub, groups in layout.items():
        for alternatives in groups:
            present = next((root / sub / a for a in alternatives if (root / sub / a).is_file()), None)
            if present is None:
                missing.append(" or ".join(str(root / sub / a) for a in alternatives))
                continue
            name = "weights" if alternatives in (DIFFUSERS_WEIGHTS, TRANSFORMERS_WEIGHTS) else alternatives[0]
            files[f"{sub}/{name}"] = present
    if missing:
        spec = registry.spec(model)
        raise ModelNotFoundError(
            model,
            missing,
            f"the folder {root} is incomplete (the released layout needs {', '.join(sorted(layout))}/)",
            spec.how_to_provide.format(cache_dir=registry.cache_dir),
        )
    return files


def _folder(
    registry: ModelRegistry, model: str, layout: dict[str, tuple[tuple[str, ...], ...]], extra: Iterable[str]
) -> ComponentFolder:
    root = _root_of(registry, model)
    files = _collect(registry, model, root, layout)
    for name in extra:
        if (root / name).is_file():
            files[name] = root / name
    return ComponentFolder(model, root, files, read_folder_sidecar(root))


def resolve_arc2face_folders(registry: ModelRegistry, *, few_step: bool = False) -> Arc2FaceFolders:
    """The base, Arc2Face and (with ``few_step``) LCM-LoRA folders, complete, or :class:`ModelNotFoundError`."""
    base = _folder(registry, BASE_MODEL, BASE_FILES, ())
    arc2face = _folder(registry, ARC2FACE_MODEL, ARC2FACE_FILES, (ARCFACE_FILE,))
    lora = None
    if few_step:
        root = _root_of(registry, LCM_LORA_MODEL)
        path = root / LORA_FILE
        if not path.is_file():
            spec = registry.spec(LCM_LORA_MODEL)
            raise ModelNotFoundError(
                LCM_LORA_MODEL,
                [str(path)],
                "the LoRA folder holds no pytorch_lora_weights.safetensors",
                spec.how_to_provide.format(cache_dir=registry.cache_dir),
            )
        lora = ComponentFolder(LCM_LORA_MODEL, root, {LORA_FILE: path}, read_folder_sidecar(root))
    return Arc2FaceFolders(base, arc2face, lora)


def few_step_available(registry: ModelRegistry) -> bool:
    """Whether the LCM-LoRA weights are present (configured or cached): the few-step mode can run."""
    try:
        root = _root_of(registry, LCM_LORA_MODEL)
    except ModelNotFoundError:
        return False
    return (root / LORA_FILE).is_file()


def generator_available(registry: ModelRegistry, *, few_step: bool = False) -> str | None:
    """None when every folder the generator needs is present, else the one-line reason (what to provide)."""
    try:
        resolve_arc2face_folders(registry, few_step=few_step)
    except ModelNotFoundError as error:
        return str(error)
    return None
