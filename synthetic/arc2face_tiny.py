"""Random Arc2Face components in the released folder layout, for tests, the demo and benchmarks.

No Stable Diffusion, Arc2Face or LCM-LoRA weights ship in any package, so the generation engine's real
loader is exercised on randomly initialised models of the same classes, saved exactly where the released
files live:

```
<root>/stable-diffusion-v1-5/   vae/ (config.json, diffusion_pytorch_model.safetensors),
                                scheduler/scheduler_config.json (SD-1.5's PNDM config),
                                tokenizer/ (vocab.json, merges.txt, tokenizer_config.json,
                                special_tokens_map.json), facelake_weights.json
<root>/Arc2Face/                arc2face/ (UNet: config.json, diffusion_pytorch_model.safetensors),
                                encoder/ (CLIPTextModel: config.json, pytorch_model.bin as released, or
                                model.safetensors), [arcface.onnx], facelake_weights.json
<root>/lcm-lora-sdv1-5/         pytorch_lora_weights.safetensors (kohya ``lora_unet_*`` keys, as the released
                                LCM-LoRA), facelake_weights.json               (only with ``lora=True``)
```

``facelake_weights.json`` marks every folder ``random_init: true``; the engine reads it and labels every
output. The CLIP tokenizer is rebuilt offline from the BPE merges open_clip ships (49,408 tokens, the same
vocabulary as SD-1.5's ``tokenizer/``).

Presets: ``tiny`` (diffusers' own pipeline-test sizes: UNet and VAE channels (4, 8), one layer per block,
two groups; a 2-layer, 2-head text encoder of hidden size 544 so the 512-d identity vector is zero-padded;
seconds on a CPU) and ``sd15`` (Stable Diffusion 1.5's sizes: UNet2DConditionModel's SD-1.5 config with
cross-attention 768, the SD VAE, a 12-layer 768-wide CLIP text encoder; for benchmarks, saved as fp16).
"""

from __future__ import annotations

import gzip
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

BASE_DIR, ARC2FACE_DIR, LORA_DIR = "stable-diffusion-v1-5", "Arc2Face", "lcm-lora-sdv1-5"
SIDECAR = "facelake_weights.json"  # facelake.generation.layout.FOLDER_SIDECAR
LORA_FILE = "pytorch_lora_weights.safetensors"
RANDOM_NOTE = "RANDOM TEST WEIGHTS built by synthetic.arc2face_tiny: not a face generator"

SD15_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
    "trained_betas": None,
}
"""Stable Diffusion 1.5's ``scheduler/scheduler_config.json`` (a PNDMScheduler)."""


@dataclass(frozen=True)
class Preset:
    unet_channels: tuple[int, ...]
    unet_down: tuple[str, ...]
    unet_up: tuple[str, ...]
    unet_layers: int
    unet_groups: int
    unet_head_dim: int
    vae_channels: tuple[int, ...]
    vae_groups: int
    text_hidden: int
    text_layers: int
    text_heads: int
    text_intermediate: int


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        unet_channels=(4, 8),
        unet_down=("DownBlock2D", "CrossAttnDownBlock2D"),
        unet_up=("CrossAttnUpBlock2D", "UpBlock2D"),
        unet_layers=1,
        unet_groups=2,
        unet_head_dim=8,
        vae_channels=(4, 8),
        vae_groups=2,
        text_hidden=544,
        text_layers=2,
        text_heads=2,
        text_intermediate=64,
    ),
    "small": Preset(  # the benchmark's --quick size: every block kind of SD-1.5, a fraction of its width
        unet_channels=(32, 64, 64, 64),
        unet_down=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        unet_up=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        unet_layers=1,
        unet_groups=8,
        unet_head_dim=8,
        vae_channels=(16, 32, 32, 32),
        vae_groups=8,
        text_hidden=576,
        text_layers=2,
        text_heads=4,
        text_intermediate=1152,
    ),
    "sd15": Preset(
        unet_channels=(320, 640, 1280, 1280),
        unet_down=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        unet_up=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        unet_layers=2,
        unet_groups=32,
        unet_head_dim=8,
        vae_channels=(128, 256, 512, 512),
        vae_groups=32,
        text_hidden=768,
        text_layers=12,
        text_heads=12,
        text_intermediate=3072,
    ),
}


@dataclass(frozen=True)
class Arc2FaceFixture:
    """Where the random components were written, and the registry paths that point at them."""

    root: Path
    base: Path
    arc2face: Path
    lora: Path | None
    preset: str

    def registry_paths(self) -> dict[str, str]:
        """``ModelRegistry(paths=...)`` entries for these folders (``facelake.models.registry`` names)."""
        paths = {"stable-diffusion-v1-5": str(self.base), "arc2face": str(self.arc2face)}
        if self.lora is not None:
            paths["lcm-lora-sdv1-5"] = str(self.lora)
        return paths


def clip_vocabulary() -> tuple[dict[str, int], list[str]]:
    """CLIP's BPE vocabulary (token -> id) and merges, rebuilt from the file open_clip ships."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    with gzip.open(default_bpe()) as stream:
        lines = stream.read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    tokens = list(bytes_to_unicode().values())
    tokens = tokens + [token + "</w>" for token in tokens]
    tokens += ["".join(merge.split()) for merge in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}, merges


def write_clip_tokenizer(folder: Path) -> None:
    """SD-1.5's ``tokenizer/`` files: vocab.json, merges.txt and its tokenizer/special-token configs."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocabulary()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
    }
    config = {**special, "do_lower_case": True, "model_max_length": 77, "tokenizer_class": "CLIPTokenizer"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))


def _sidecar(folder: Path, component: str, preset: str, seed: int) -> None:
    record = {
        "random_init": True,
        "component": component,
        "preset": preset,
        "seed": seed,
        "builder": "synthetic.arc2face_tiny",
        "note": RANDOM_NOTE,
    }
    (folder / SIDECAR).write_text(json.dumps(record, indent=2))


def build_unet(preset: Preset, seed: int):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        block_out_channels=preset.unet_channels,
        down_block_types=preset.unet_down,
        up_block_types=preset.unet_up,
        layers_per_block=preset.unet_layers,
        norm_num_groups=preset.unet_groups,
        attention_head_dim=preset.unet_head_dim,
        cross_attention_dim=preset.text_hidden,
    )


def build_vae(preset: Preset, seed: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed + 1)
    blocks = len(preset.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=preset.vae_channels,
        layers_per_block=2 if blocks == 4 else 1,
        latent_channels=4,
        norm_num_groups=preset.vae_groups,
        sample_size=512,
        scaling_factor=0.18215,
    )


def build_encoder(preset: Preset, seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed + 2)
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=preset.text_hidden,
        intermediate_size=preset.text_intermediate,
        num_hidden_layers=preset.text_layers,
        num_attention_heads=preset.text_heads,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        projection_dim=preset.text_hidden,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=1,
    )
    return CLIPTextModel(config).eval()


def lora_state_dict(unet, rank: int = 4, seed: int = 0, scale: float = 0.05) -> dict[str, torch.Tensor]:
    """A random LoRA over the UNet's attention projections in kohya's ``lora_unet_*`` key layout, the
    layout of the released ``lcm-lora-sdv1-5/pytorch_lora_weights.safetensors``."""
    targets = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out")
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for name, module in unet.named_modules():
        if not isinstance(module, torch.nn.Linear) or not name.endswith(targets):
            continue
        if "attentions" not in name:
            continue
        key = "lora_unet_" + name.replace(".", "_")
        down = torch.randn(rank, module.in_features, generator=generator) * scale
        up = torch.randn(module.out_features, rank, generator=generator) * scale
        state[f"{key}.lora_down.weight"] = down.contiguous()
        state[f"{key}.lora_up.weight"] = up.contiguous()
        state[f"{key}.alpha"] = torch.tensor(float(rank))
    if not state:
        raise ValueError("the UNet has no attention projections to put a LoRA on")
    return state


def _released_key(name: str) -> str:
    return name if name.startswith("text_model.") else f"text_model.{name}"


def _cast(model, dtype: torch.dtype):
    return model if dtype == torch.float32 else model.to(dtype)


def build_arc2face_components(
    root: str | Path,
    *,
    preset: Literal["tiny", "small", "sd15"] = "tiny",
    seed: int = 0,
    lora: bool = False,
    lora_rank: int = 4,
    encoder_format: Literal["bin", "safetensors"] = "bin",
    arcface_onnx: str | Path | None = None,
    dtype: torch.dtype | None = None,
) -> Arc2FaceFixture:
    """Write random SD-1.5 base, Arc2Face and (with ``lora``) LCM-LoRA folders under ``root``.

    ``encoder_format="bin"`` writes the id encoder as ``pytorch_model.bin`` like the released Arc2Face
    (transformers 4 key names ``text_model.*``; read back with ``weights_only=True``); ``arcface_onnx`` is copied to ``Arc2Face/arcface.onnx`` (the
    released repository ships the ArcFace model it was trained on there), pinning the generator's identity
    space to that file. ``dtype`` defaults to fp16 for ``sd15`` (half the disk) and fp32 otherwise.
    """
    from safetensors.torch import save_file

    spec = PRESETS[preset]
    dtype = dtype or (torch.float16 if preset == "sd15" else torch.float32)
    root = Path(root)
    base, arc2face = root / BASE_DIR, root / ARC2FACE_DIR
    for folder in (base, arc2face):
        if folder.exists():
            shutil.rmtree(folder)
    _cast(build_vae(spec, seed), dtype).save_pretrained(base / "vae")
    (base / "scheduler").mkdir(parents=True)
    scheduler = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", **SD15_SCHEDULER}
    (base / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2))
    write_clip_tokenizer(base / "tokenizer")
    _sidecar(base, "stable-diffusion-v1-5 (vae, scheduler, tokenizer)", preset, seed)

    unet = build_unet(spec, seed)
    _cast(unet, dtype).save_pretrained(arc2face / "arc2face")
    encoder = _cast(build_encoder(spec, seed), dtype)
    if encoder_format == "safetensors":
        encoder.save_pretrained(arc2face / "encoder")
    else:
        (arc2face / "encoder").mkdir(parents=True)
        encoder.config.save_pretrained(arc2face / "encoder")
        # The released pickle was written by transformers 4, whose CLIPTextModel wrapped a ``text_model``:
        # keep its key names, so loading exercises transformers 5's prefix conversion as the real file does.
        state = {_released_key(name): tensor.contiguous() for name, tensor in encoder.state_dict().items()}
        torch.save(state, arc2face / "encoder" / "pytorch_model.bin")
    if arcface_onnx is not None:
        shutil.copyfile(arcface_onnx, arc2face / "arcface.onnx")
    _sidecar(arc2face, "Arc2Face (arc2face UNet, encoder)", preset, seed)

    lora_folder = None
    if lora:
        lora_folder = root / LORA_DIR
        if lora_folder.exists():
            shutil.rmtree(lora_folder)
        lora_folder.mkdir(parents=True)
        state = lora_state_dict(unet, rank=lora_rank, seed=seed + 3)
        save_file({k: v.to(dtype) for k, v in state.items()}, str(lora_folder / LORA_FILE))
        _sidecar(lora_folder, "LCM-LoRA for SD-1.5", preset, seed)
    return Arc2FaceFixture(root, base, arc2face, lora_folder, preset)
