"""The Arc2Face generator: diffusers' StableDiffusionPipeline with Arc2Face's UNet and id encoder.

Loaded from the released folders (:mod:`facelake.generation.layout`) with ``local_files_only=True``: SD-1.5's
VAE, scheduler config and tokenizer, Arc2Face's ``arc2face`` UNet and ``encoder`` CLIPTextModel. Sampling is
DPMSolverMultistepScheduler, 25 steps, classifier-free guidance 3.0 at 512² by default; the few-step mode
loads the LCM-LoRA (``load_lora_weights``, then fused), switches to LCMScheduler and samples 2 steps at
guidance 1.0 (no classifier-free guidance), as Arc2Face's README does.

Device: ``cuda`` when available, else ``cpu``; dtype fp16 on a GPU, fp32 on a CPU. A batch spans identities:
:meth:`Arc2FaceGenerator.generate` takes one identity vector and one latent seed per image, draws each image's
latents from its own CPU generator and hands the pipeline the per-image generator list (used again by
schedulers that draw noise while sampling, e.g. LCM's), so an image does not depend on its batch.
"""

from __future__ import annotations

import logging
import pickle
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import torch

from facelake.faces.identity import EmbedderProfile
from facelake.generation.conditioning import PROMPT, IdentityPrompt
from facelake.generation.layout import LORA_FILE, Arc2FaceFolders, resolve_arc2face_folders
from facelake.generation.seeds import generators, initial_latents
from facelake.generation.space import arc2face_identity_space
from facelake.lake.errors import InputError
from facelake.models.registry import ModelRegistry

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_SCHEDULER = "DPMSolverMultistepScheduler"
FEW_STEP_SCHEDULER = "LCMScheduler"
FEW_STEP_MODE = "lcm-lora"
RANDOM_WEIGHTS_WARNING = (
    "RANDOM TEST WEIGHTS: the generator's components are randomly initialised (facelake_weights.json says "
    "random_init), so these images are not faces"
)


@dataclass(frozen=True)
class Sampling:
    """How images are sampled: steps, guidance, size, and whether the few-step (LCM-LoRA) mode is on.

    ``steps``/``guidance`` of ``None`` take the mode's defaults: 25 and 3.0, or 2 and 1.0 in few-step mode.
    """

    steps: int | None = None
    guidance: float | None = None
    height: int = 512
    width: int = 512
    few_step: bool = False

    def __post_init__(self) -> None:
        if self.height % 8 or self.width % 8 or self.height <= 0 or self.width <= 0:
            raise ValueError(
                f"height and width must be positive multiples of 8, got {self.height}x{self.width}"
            )
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.guidance is not None and self.guidance < 0:
            raise ValueError(f"guidance must be >= 0, got {self.guidance}")

    @property
    def num_steps(self) -> int:
        return self.steps if self.steps is not None else (2 if self.few_step else 25)

    @property
    def guidance_scale(self) -> float:
        return self.guidance if self.guidance is not None else (1.0 if self.few_step else 3.0)

    @property
    def scheduler(self) -> str:
        return FEW_STEP_SCHEDULER if self.few_step else DEFAULT_SCHEDULER

    @property
    def mode(self) -> Literal["default", "lcm-lora"]:
        return FEW_STEP_MODE if self.few_step else "default"

    def describe(self) -> dict[str, Any]:
        """The resolved sampling settings, as recorded with every image."""
        return {
            "steps": self.num_steps,
            "guidance": self.guidance_scale,
            "scheduler": self.scheduler,
            "mode": self.mode,
            "few_step": self.few_step,
            "height": self.height,
            "width": self.width,
        }


def default_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu`` (as the other GPU stages choose)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str) -> torch.dtype:
    """fp16 on a GPU, fp32 on a CPU."""
    return torch.float16 if str(device).startswith("cuda") else torch.float32


@dataclass
class Arc2FaceComponents:
    """The loaded pipeline (UNet, VAE, id encoder, tokenizer, scheduler) and its identity prompt."""

    pipeline: Any
    prompt: IdentityPrompt
    folders: Arc2FaceFolders
    device: str
    dtype: torch.dtype
    few_step: bool
    base_scheduler_config: dict[str, Any]
    weights: dict[str, str]  # sha256 by role (unet, encoder, vae, lora), hashed once at load
    weights_sha256: str  # one sha256 over every weights and config file loaded


def load_components(
    folders: Arc2FaceFolders,
    *,
    few_step: bool = False,
    device: str | None = None,
    dtype: torch.dtype | None = None,
) -> Arc2FaceComponents:
    """Load the pipeline from local folders only (``local_files_only=True``; never a hub id), and hash the
    files it loaded (their sha256 is every image's provenance)."""
    from diffusers import (
        AutoencoderKL,
        DPMSolverMultistepScheduler,
        LCMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTokenizer

    if few_step and folders.lora is None:
        raise ValueError("the few-step mode needs the LCM-LoRA folder (resolve with few_step=True)")
    device = str(device or default_device())
    dtype = dtype or default_dtype(device)
    base, arc = str(folders.base.root), str(folders.arc2face.root)
    local = {"local_files_only": True}
    files = {**folders.base.files, **folders.arc2face.files}
    unet = _load(
        files["arc2face/weights"],
        lambda: UNet2DConditionModel.from_pretrained(arc, subfolder="arc2face", torch_dtype=dtype, **local),
    )
    encoder = _load(
        files["encoder/weights"],
        lambda: CLIPTextModel.from_pretrained(arc, subfolder="encoder", dtype=dtype, **local),
    )
    vae = _load(
        files["vae/weights"],
        lambda: AutoencoderKL.from_pretrained(base, subfolder="vae", torch_dtype=dtype, **local),
    )
    tokenizer = _load(
        files["tokenizer/vocab.json"],
        lambda: CLIPTokenizer.from_pretrained(base, subfolder="tokenizer", **local),
    )
    scheduler_config = dict(
        _load(
            files["scheduler/scheduler_config.json"],
            lambda: DPMSolverMultistepScheduler.load_config(base, subfolder="scheduler", **local),
        )
    )
    scheduler_class = LCMScheduler if few_step else DPMSolverMultistepScheduler
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler_class.from_config(scheduler_config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    if few_step:
        assert folders.lora is not None
        pipeline.load_lora_weights(str(folders.lora.root), weight_name=LORA_FILE, adapter_name="lcm")
        pipeline.fuse_lora(adapter_names=["lcm"])
        pipeline.unload_lora_weights()  # the fused weights stay; the adapter layers go
    pipeline = pipeline.to(device)
    pipeline.set_progress_bar_config(disable=True)
    for module in (unet, encoder, vae):
        module.eval()
    prompt = IdentityPrompt(tokenizer, encoder)
    if folders.random_init:
        log.warning("Arc2Face components at %s: %s", arc, RANDOM_WEIGHTS_WARNING)
    return Arc2FaceComponents(
        pipeline,
        prompt,
        folders,
        device,
        dtype,
        few_step,
        scheduler_config,
        folders.weights(),
        folders.weights_sha256(),
    )


def _load(path: Path, load: Callable[[], T]) -> T:
    """Run a library loader; a refused pickle or an unreadable file becomes an :class:`InputError` naming it.

    diffusers and transformers read ``.bin`` files with ``torch.load(weights_only=True)``: a pickle asking
    for anything but tensors is refused before anything it carries runs (DESIGN §3)."""
    try:
        return load()
    except pickle.UnpicklingError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(
            str(path),
            f"refused to unpickle: the file holds more than tensors (loaded with weights_only=True, nothing it "
            f"carries was executed): {first}",
        ) from None
    except (OSError, ValueError, RuntimeError) as error:
        raise InputError(str(path), f"not a loadable model file: {error}") from error


_LOCK = threading.RLock()
_LOADED: dict[tuple[Any, ...], Arc2FaceComponents] = {}


def _folders_key(folders: Arc2FaceFolders) -> tuple[Any, ...]:
    return tuple(
        (str(path), path.stat().st_size, path.stat().st_mtime_ns)
        for component in folders.components()
        for path in sorted(component.files.values())
    )


def load_generator(
    registry: ModelRegistry,
    sampling: Sampling | None = None,
    *,
    device: str | None = None,
    dtype: torch.dtype | None = None,
) -> Arc2FaceGenerator:
    """The generator from the registry's folders; components are loaded once per process per files/mode/device."""
    sampling = sampling or Sampling()
    folders = resolve_arc2face_folders(registry, few_step=sampling.few_step)
    device = str(device or default_device())
    dtype = dtype or default_dtype(device)
    key = (_folders_key(folders), sampling.few_step, device, str(dtype))
    with _LOCK:
        if key not in _LOADED:
            _LOADED[key] = load_components(folders, few_step=sampling.few_step, device=device, dtype=dtype)
        return Arc2FaceGenerator(_LOADED[key], sampling)


def clear_loaded_generators() -> None:
    """Forget every generator loaded in this process (frees their memory)."""
    with _LOCK:
        for components in _LOADED.values():
            components.prompt.close()
        _LOADED.clear()


class Arc2FaceGenerator:
    """Images from unit ArcFace vectors: one vector and one latent seed per image."""

    def __init__(self, components: Arc2FaceComponents, sampling: Sampling | None = None) -> None:
        sampling = sampling or Sampling(few_step=components.few_step)
        if sampling.few_step != components.few_step:
            raise ValueError(
                f"sampling few_step={sampling.few_step} but the components were loaded with "
                f"few_step={components.few_step}"
            )
        self.components = components
        self.sampling = sampling
        self.identity_space: EmbedderProfile = arc2face_identity_space(components.folders.arcface_path)
        self._unconditional: torch.Tensor | None = None

    # --- what it is -------------------------------------------------------------------------------------

    @property
    def device(self) -> str:
        return self.components.device

    @property
    def dtype(self) -> torch.dtype:
        return self.components.dtype

    @property
    def random_init(self) -> bool:
        return self.components.folders.random_init

    @property
    def warning(self) -> str | None:
        """The warning every output of random components carries, else None."""
        return RANDOM_WEIGHTS_WARNING if self.random_init else None

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        pipeline = self.components.pipeline
        factor = int(pipeline.vae_scale_factor)
        if self.sampling.height % factor or self.sampling.width % factor:
            raise ValueError(f"height and width must be multiples of the VAE's factor {factor}")
        channels = int(pipeline.unet.config.in_channels)
        return channels, self.sampling.height // factor, self.sampling.width // factor

    def config(self) -> dict[str, Any]:
        """What decides the images (weights, sampling, prompt): the stage's config hash covers exactly this."""
        return {
            "generator": "arc2face",
            "weights_sha256": self.components.weights_sha256,
            "random_init": self.random_init,
            "prompt": PROMPT,
            **self.sampling.describe(),
            "identity_space": self.identity_space.provenance(),
        }

    def provenance(self) -> dict[str, Any]:
        """Everything recorded with each image: :meth:`config` plus per-file weights, device, dtype, versions."""
        import diffusers
        import transformers

        record = {
            **self.config(),
            "weights": dict(self.components.weights),
            "device": self.device,
            "dtype": str(self.dtype).removeprefix("torch."),
            "versions": {
                "diffusers": diffusers.__version__,
                "transformers": transformers.__version__,
                "torch": torch.__version__,
            },
        }
        if self.warning:
            record["warning"] = self.warning
        return record

    def describe(self) -> str:
        """One line for logs and metadata; random components say so loudly."""
        weights = "RANDOM TEST WEIGHTS" if self.random_init else "trained weights"
        s = self.sampling
        return (
            f"Arc2Face ({weights}, {s.mode}, {s.scheduler} {s.num_steps} steps, guidance {s.guidance_scale}, "
            f"{s.height}x{s.width}, {self.device} {str(self.dtype).removeprefix('torch.')})"
        )

    # --- generating -------------------------------------------------------------------------------------

    def encode(self, identities: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Arc2Face ``prompt_embeds`` for unit identity vectors ``[N, 512]``."""
        tensor = torch.as_tensor(np.asarray(identities, dtype=np.float32))
        return self.components.prompt.encode(tensor)

    def unconditional(self) -> torch.Tensor:
        if self._unconditional is None:
            self._unconditional = self.components.prompt.unconditional()
        return self._unconditional

    @torch.inference_mode()
    def generate(
        self,
        identities: np.ndarray,
        latent_seeds: Sequence[int],
        *,
        output: Literal["uint8", "float"] = "uint8",
    ) -> np.ndarray:
        """Images ``[N, H, W, 3]`` (uint8, or float32 in [0, 1]) for unit identity vectors ``[N, 512]``, image
        ``i`` from latent seed ``latent_seeds[i]``; one pipeline call for the whole batch."""
        vectors = np.asarray(identities, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(latent_seeds):
            raise ValueError(
                f"need [N, d] identities and N seeds, got {vectors.shape} and {len(latent_seeds)}"
            )
        if vectors.shape[1] != self.identity_space.dimension:
            raise ValueError(
                f"Arc2Face takes {self.identity_space.dimension}-d identity vectors, got {vectors.shape[1]}-d"
            )
        if not len(vectors):
            return np.zeros((0, self.sampling.height, self.sampling.width, 3), np.uint8)
        latent_generators = generators(latent_seeds)
        latents = initial_latents(latent_generators, self.latent_shape)
        prompt_embeds = self.encode(vectors)
        arguments: dict[str, Any] = {
            "prompt_embeds": prompt_embeds,
            "latents": latents.to(device=self.device, dtype=self.dtype),
            "generator": latent_generators,
            "num_inference_steps": self.sampling.num_steps,
            "guidance_scale": self.sampling.guidance_scale,
            "height": self.sampling.height,
            "width": self.sampling.width,
            "output_type": "np",
        }
        if self.sampling.guidance_scale > 1.0:
            arguments["negative_prompt_embeds"] = self.unconditional().expand(len(vectors), -1, -1)
        images = self.components.pipeline(**arguments).images
        images = np.asarray(images, dtype=np.float32)
        if output == "float":
            return images
        return (images * 255.0).round().clip(0, 255).astype(np.uint8)
