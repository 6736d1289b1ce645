"""The packing run's settings (:class:`PackingConfig`) and result (:class:`PackingResult`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pydantic
from pydantic import Field

from facelake.vectors.gram import SCREENS

CACHE_MIN_GALLERY = 1024
"""Below this many gallery rows a full scan is cheaper than gathering the cached candidates."""
HISTORY_KEYS = ("step", "seconds", "loss", "min_angle_deg", "mean_nn_cosine")
RESUME_INDEPENDENT = {"checkpoint_every", "log_every"}


class PackingConfig(pydantic.BaseModel):
    """One packing run. The seed text lost the paper's learning rate, decay schedule and iteration count;
    the defaults below are ours (chosen on synthetic galleries, see benchmarks/README.md)."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    identities: int = Field(10_000, ge=2, description="N, the number of points to pack (paper default 10k)")
    alpha: float = Field(0.5, ge=0.0, description="weight α of the gallery term (paper default 0.5)")
    algorithm: Literal["full", "stochastic"] = Field(
        "stochastic", description="full: Alg. 1, every point every step; stochastic: Alg. 2, mini-batches"
    )
    optimizer: Literal["adam", "fast"] = Field(
        "adam", description="adam: the paper's (faithful mode); fast: our own, reported separately"
    )
    iterations: int = Field(
        20,
        ge=1,
        description=(
            "full: Adam steps; stochastic: epochs (each point in exactly one batch per epoch). The default 20 "
            "suits the stochastic mode; full batch wants ~500-2000 (400 steps reach ~85.7° at N=1,500, d=512)"
        ),
    )
    batch_size: int = Field(1000, ge=2, description="stochastic: points per batch (paper: 1k–10k)")
    learning_rate: float = Field(3e-3, gt=0.0, description="Adam's initial learning rate (faithful mode)")
    lr_decay: float = Field(
        0.5, gt=0.0, le=1.0, description="factor applied to the learning rate every lr_decay_every iterations"
    )
    lr_decay_every: int | None = Field(
        None,
        ge=1,
        description="iterations (full: steps; stochastic: epochs) between decays; None: a quarter of iterations",
    )
    adam_betas: tuple[float, float] = Field((0.9, 0.999), description="Adam's β1, β2 (torch defaults)")
    adam_eps: float = Field(1e-8, gt=0.0, description="Adam's ε (torch default)")
    init: Literal["gallery", "random"] = Field(
        "gallery",
        description="gallery: N gallery rows drawn without replacement; random: uniform on the sphere",
    )
    init_noise: float = Field(
        0.05, ge=0.0, description="gallery init with N > gallery: norm of the noise added to repeated rows"
    )
    gallery_sample: int | None = Field(
        None, ge=1, description="stochastic: gallery rows sampled per step; None: the full gallery"
    )
    gallery_cache: int = Field(
        8,
        ge=0,
        description=(
            "gallery candidates kept per point between full gallery scans, for galleries of >= 1024 rows "
            "(exact either way; 0: scan every step)"
        ),
    )
    against_all: bool = Field(
        False, description="stochastic: the batch is also compared with all other points, held fixed"
    )
    seed: int = Field(0, description="seeds the init, the batches and the gallery samples")
    screen: str = Field(
        "auto", description="facelake.vectors.gram screen for candidate screening (auto: measured)"
    )
    device: str | None = Field(None, description="cpu or cuda; None: cuda when available")
    block: int | None = Field(None, ge=1, description="rows per Gram block; None: the device default")
    checkpoint_every: int = Field(100, ge=0, description="steps between checkpoints (0: never)")
    log_every: int = Field(
        10,
        ge=1,
        description="iterations between history entries (stochastic: each costs an exact N-point pass)",
    )
    fast_temperature: float = Field(
        300.0, gt=0.0, description="optimizer=fast: inverse temperature t of the soft maximum over neighbours"
    )
    fast_neighbours: int = Field(
        8, ge=1, description="optimizer=fast: the soft maximum runs over each row's nearest fast_neighbours"
    )
    fast_refresh: int = Field(
        1, ge=1, description="optimizer=fast: steps between refreshes of the neighbour lists"
    )
    fast_learning_rate: float = Field(
        1e-2, gt=0.0, description="optimizer=fast: Adam's initial learning rate"
    )

    @pydantic.field_validator("screen")
    @classmethod
    def _known_screen(cls, value: str) -> str:
        if value not in SCREENS:
            raise ValueError(f"unknown Gram screen {value!r}; choose one of {SCREENS}")
        return value

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> PackingConfig:
        if self.algorithm == "stochastic" and self.batch_size > self.identities:
            raise ValueError(f"batch_size {self.batch_size} exceeds identities {self.identities}")
        if self.optimizer == "fast" and self.algorithm != "full":
            raise ValueError("optimizer='fast' runs full batch only: set algorithm='full'")
        if not all(0.0 <= b < 1.0 for b in self.adam_betas):
            raise ValueError(f"adam_betas must lie in [0, 1), got {self.adam_betas}")
        return self

    def steps_per_iteration(self) -> int:
        """Optimizer steps per iteration: 1 for full batch, batches per epoch for stochastic."""
        return 1 if self.algorithm == "full" else math.ceil(self.identities / self.batch_size)

    def decay_interval(self) -> int:
        """Iterations between learning-rate decays (``lr_decay_every``, default a quarter of ``iterations``)."""
        return self.lr_decay_every or max(1, self.iterations // 4)

    def learning_rate_at(self, iteration: int) -> float:
        """Step decay (torch's StepLR): ``learning_rate · lr_decay ** (iteration // decay_interval())``."""
        return self.learning_rate * self.lr_decay ** (iteration // self.decay_interval())


@dataclass
class PackingResult:
    """The packed points and how they got there."""

    points: np.ndarray
    history: list[dict]
    metrics: dict[str, Any]
    initial_metrics: dict[str, Any]
    device: str
    screen: str
    stats: dict[str, Any] = field(default_factory=dict)
