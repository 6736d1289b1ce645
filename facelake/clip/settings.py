"""CLIP settings (issue 12): the open_clip model and where its weights come from, how images are encoded,
search and its approximate index, near-duplicate removal and the probe prompts. Declared once, here; the
``clip`` resource's fields are these fields (``resources/clip.py``) and ``facelake search`` reads the same.

Weights (``model`` + ``pretrained``, see :mod:`facelake.clip.model`):

* ``model: ViT-B-32`` + ``pretrained: laion2b_s34b_b79k`` (default): a pretrained tag, downloaded when online;
  with ``HF_HUB_OFFLINE=1``/``FACELAKE_OFFLINE=1`` read from the local caches only, failing at once with how to
  provide it otherwise;
* ``pretrained: /path/model.pt``: a local checkpoint file of the model;
* ``model: local-dir:/folder``: an open_clip folder (``open_clip_config.json`` + ``open_clip_model.safetensors``;
  ``pretrained`` must then be unset or null);
* ``pretrained: null`` (or ``random``): seeded random weights, for tests and the demo. Every output of random
  weights says so (``random_init``, ``warning``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:
    from facelake.clip.model import ClipModelSpec

# Literals of facelake.clip.encoder/model (imported lazily: loading the settings must not import torch;
# tests/test_clip_assets.py checks they agree)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
LOCAL_DIR = "local-dir:"
RANDOM = ("random", "none", "null", "")
"""Spellings of ``pretrained`` that mean seeded random weights (an environment variable cannot say null)."""
SCREENS = ("auto", "numpy-float32", "torch-float32", "torch-bfloat16")
DEFAULT_PROMPTS = ("a smiling old man with a beard", "a woman wearing glasses", "a child laughing outdoors")


class ClipSettings(BaseModel):
    """CLIP features (``facelake.clip``): the open_clip model and its weights, encoding, search, the faiss
    index, near-duplicates and the probe prompts of the index assets' contact sheets."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        "ViT-B-32",
        description="an open_clip config name (open_clip.list_models(), e.g. ViT-B-32, ViT-L-14-336-quickgelu) "
        "or 'local-dir:/folder' (open_clip_config.json + open_clip_model.safetensors)",
    )
    pretrained: str | None = Field(
        "laion2b_s34b_b79k",
        description="a pretrained tag of the model (offline: local caches only), a local checkpoint file, or "
        "null/'random' for seeded random weights (labelled RANDOM WEIGHTS in every output); unset with local-dir:",
    )
    seed: int = Field(0, description="seed of random weights (every process builds the same model)")
    force_quick_gelu: bool = Field(False, description="open_clip's force_quick_gelu (part of the space)")
    cache_dir: str | None = Field(None, description="open_clip's download cache (default: the HF cache)")
    device: str = Field("auto", description="'auto' (cuda when present, else cpu), 'cpu', 'cuda', 'cuda:1'")
    precision: str = Field(
        "auto", description=f"one of {PRECISIONS}: auto = fp16 autocast on CUDA, fp32 on CPU"
    )
    batch_size: int = Field(64, ge=1, description="images per model batch (outputs do not depend on it)")
    decode_workers: int = Field(
        0, ge=0, description="image decode threads (0: every core on a GPU box, <=8 on CPU)"
    )
    jpeg_draft: bool = Field(
        False, description="decode large JPEGs at a reduced DCT scale (changes the numbers)"
    )
    torch_threads: int = Field(0, ge=0, description="torch CPU threads (0: torch's default)")
    exact_search_max_rows: int = Field(
        1_000_000,
        ge=0,
        description="search is exact (blocked products) up to this many rows and no index is built; above it "
        "the *_clip_index assets build a faiss IVF-Flat index and search uses it",
    )
    ann_nlist: int | None = Field(None, ge=1, description="faiss inverted lists (default ~4*sqrt(N))")
    ann_recall_target: float = Field(
        0.95, gt=0.0, le=1.0, description="nprobe grows until recall@10 reaches this"
    )
    ann_probe_queries: int = Field(
        1000, ge=1, description="stored rows sampled to measure recall@10 against exact"
    )
    screen: str = Field("auto", description=f"Gram screening precision, one of {SCREENS}; results are exact")
    near_duplicate_threshold: float = Field(
        0.92, gt=-1.0, lt=1.0, description="pairs with similarity above this are near-duplicates (SFHQ: 0.92)"
    )
    near_duplicate_sources: list[str] = Field(
        default_factory=lambda: ["laion_face_clip_embeddings", "celebahq_clip_embeddings"],
        description="embedding assets de-duplicated together (one space): 'asset' (every committed part) or "
        "'asset:part'; assets without a committed part are skipped",
    )
    probe_prompts: list[str] = Field(
        default_factory=lambda: list(DEFAULT_PROMPTS),
        description="text queries whose hits the *_clip_index assets show as contact sheets",
    )
    probe_k: int = Field(10, ge=1, le=100, description="hits per probe prompt on the contact sheets")

    @field_validator("pretrained", mode="before")
    @classmethod
    def _random_spellings(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in RANDOM:
            return None
        return value

    @field_validator("precision")
    @classmethod
    def _known_precision(cls, value: str) -> str:
        if value not in PRECISIONS:
            raise ValueError(f"unknown precision {value!r}: expected one of {PRECISIONS}")
        return value

    @field_validator("screen")
    @classmethod
    def _known_screen(cls, value: str) -> str:
        if value not in SCREENS:
            raise ValueError(f"unknown screen {value!r}: expected one of {SCREENS}")
        return value

    @field_validator("near_duplicate_sources")
    @classmethod
    def _sources(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("name at least one embedding asset")
        for entry in value:
            asset, _, part = entry.partition(":")
            if not asset.strip() or (":" in entry and not part.strip()):
                raise ValueError(f"{entry!r}: expected 'asset' or 'asset:part'")
        return value

    @model_validator(mode="after")
    def _local_dir_has_its_own_weights(self) -> ClipSettings:
        if self.model.startswith(LOCAL_DIR) and self.pretrained is not None:
            if "pretrained" in self.model_fields_set:
                raise ValueError(
                    f"pretrained={self.pretrained!r} with model {self.model!r}: a {LOCAL_DIR} folder holds its "
                    "own weights; leave pretrained unset (or null)"
                )
            self.pretrained = None
        return self

    def spec(self) -> ClipModelSpec:
        """The model to load (:class:`facelake.clip.model.ClipModelSpec`)."""
        from facelake.clip.model import ClipModelSpec

        return ClipModelSpec(
            self.model,
            self.pretrained,
            seed=self.seed,
            force_quick_gelu=self.force_quick_gelu,
            cache_dir=self.cache_dir,
        )

    def resolved_device(self) -> str:
        """``device`` with ``auto`` resolved (cuda when a GPU is visible)."""
        if self.device == "auto":
            from facelake.clip.encoder import default_device

            return default_device()
        return self.device

    def encoder_options(self) -> dict[str, Any]:
        """Keyword arguments of :class:`facelake.clip.encoder.ClipEncoder` besides the loaded model."""
        return {
            "device": self.resolved_device(),
            "precision": self.precision,
            "batch_size": self.batch_size,
            "decode_workers": self.decode_workers or None,
            "jpeg_draft": self.jpeg_draft,
        }

    def output_config(self) -> dict[str, Any]:
        """What changes the embeddings (for code versions): the model, its weights' source, the numerics."""
        return {
            "model": self.model,
            "pretrained": self.pretrained,
            "seed": self.seed,
            "force_quick_gelu": self.force_quick_gelu,
            "precision": self.precision,
            "jpeg_draft": self.jpeg_draft,
        }

    def sources(self) -> list[tuple[str, str | None]]:
        """``near_duplicate_sources`` as (asset, part or None for every committed part)."""
        return [
            (a.strip(), p.strip() or None)
            for a, _, p in (e.partition(":") for e in self.near_duplicate_sources)
        ]
