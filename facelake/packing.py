"""HyperFace packing: N reference embeddings spread over the unit hypersphere, near a gallery of real ones.

Minimises ``mean_i max_{j≠i} cos(x_i, x_j) + α · mean_i min_g (1 − cos(x_i, g))`` (seed 002, Eq. 2) with
the paper's optimizer (Adam, re-normalise after each step, step decay of the learning rate; Alg. 1 full
batch, Alg. 2 stochastic mini-batches), computed the way the hardware wants it:

- the arg-max neighbour and nearest gallery point of every row come from :mod:`facelake.neighbours`:
  blocked Gram products that never hold N×N, only the upper triangle for the points themselves,
  screened in the fastest measured precision and re-checked exactly (the chosen neighbours, the loss,
  the gradient and every metric are exact);
- the gradient is the objective's true gradient, which flows only through those arg-maxes
  (:mod:`facelake.packing_objective`: a gather and a scatter-add, no dense backward);
- runs are deterministic under a seed on the CPU, checkpoint every ``checkpoint_every`` steps
  (:mod:`facelake.packing_checkpoint`) and resume bit-for-bit.

``optimizer="fast"`` selects our own method (:mod:`facelake.packing_fast`), reported separately.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pydantic
import torch
from pydantic import Field

from facelake.gram import SCREENS, GramBackend, default_device, select_backend
from facelake.neighbours import (
    DENSE_BAND,
    auto_backend,
    cross_search,
    exact_dots,
    float32_backend,
    search_block,
    self_search,
    unit_rows,
)
from facelake.packing_checkpoint import (
    Checkpointer,
    MemoryCheckpointer,
    StorageCheckpointer,
    array_text,
    text_array,
)
from facelake.packing_gallery import GalleryCache, GallerySearch
from facelake.packing_objective import normalise, tangent_gradient, unit_gradient

__all__ = [
    "Checkpointer",
    "MemoryCheckpointer",
    "PackingConfig",
    "PackingResult",
    "StorageCheckpointer",
    "initial_points",
    "pack",
    "packing_metrics",
]

CACHE_MIN_GALLERY = 1024
"""Below this many gallery rows a full scan is cheaper than gathering the cached candidates."""
HISTORY_KEYS = ("step", "seconds", "loss", "min_angle_deg", "mean_nn_cosine")
_RESUME_INDEPENDENT = {"checkpoint_every", "log_every"}


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
    screen: str = Field("auto", description="facelake.gram screen for candidate screening (auto: measured)")
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


def packing_metrics(
    points: np.ndarray,
    gallery: np.ndarray | None = None,
    *,
    screen: str = "auto",
    device: str | None = None,
    block: int | None = None,
    bins: int = 50,
) -> dict[str, Any]:
    """Exact nearest-neighbour statistics of ``points`` (and their distance to ``gallery``), in blocks.

    min_angle_deg, mean/max_nn_cosine, nn_cosine_quantiles {p01,p05,p50,p95,p99}, nn_cosine_histogram
    {edges, counts} (``bins`` equal bins), mean_gallery_distance (mean_i min_g 1 − cos; None without a
    gallery), count, dim. The objective is ``mean_nn_cosine + α · mean_gallery_distance``.
    """
    unit = unit_rows(points, "points")
    device = device or default_device()
    rows = torch.from_numpy(unit).to(device)
    backend = auto_backend(rows, screen, device)
    size = search_block(device, block)
    _, dots = self_search(rows, backend, search_block(device, block, len(rows)))
    metrics = _nn_metrics(dots.cpu().numpy(), bins)
    metrics.update(count=int(unit.shape[0]), dim=int(unit.shape[1]), mean_gallery_distance=None)
    if gallery is not None:
        base = torch.from_numpy(unit_rows(gallery, "gallery")).to(device)
        _, gdots = cross_search(rows, base, select_backend(screen, unit.shape[1], device), size)
        metrics["mean_gallery_distance"] = float(np.mean(1.0 - gdots.cpu().numpy()))
    return metrics


def _angle_deg(cosine: float) -> float:
    return math.degrees(math.acos(min(1.0, max(-1.0, cosine))))


def _nn_metrics(dots: np.ndarray, bins: int = 50) -> dict[str, Any]:
    cos = dots.astype(np.float32)
    quantiles = np.quantile(cos.astype(np.float64), [0.01, 0.05, 0.5, 0.95, 0.99])
    counts, edges = np.histogram(cos, bins=bins)
    return {
        "min_angle_deg": _angle_deg(float(dots.max())),
        "mean_nn_cosine": float(dots.mean()),
        "max_nn_cosine": float(cos.max()),
        "nn_cosine_quantiles": dict(
            zip(("p01", "p05", "p50", "p95", "p99"), map(float, quantiles), strict=True)
        ),
        "nn_cosine_histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
    }


def _fingerprint(gallery: np.ndarray | None) -> str:
    if gallery is None:
        return "none"
    return hashlib.blake2b(gallery.tobytes(), digest_size=16).hexdigest()


class _Run:
    """State of one packing run: points, optimizer, RNG, history; one method per optimizer step."""

    def __init__(self, config: PackingConfig, gallery: np.ndarray | None, dim: int) -> None:
        self.config = config
        self.device = config.device or default_device()
        screen = select_backend(config.screen, dim, self.device)
        self.backends: dict[str, GramBackend] = {"self": screen, "gallery": screen}
        self.adaptive = config.screen == "auto" and not os.environ.get("FACELAKE_GRAM_SCREEN")
        self.switches: list[dict[str, Any]] = []
        self.block = search_block(self.device, config.block)
        self.self_block = search_block(self.device, config.block, config.identities)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.n, self.dim = config.identities, dim
        self.gallery_np = gallery
        self.gallery = None if gallery is None else torch.from_numpy(gallery).to(self.device)
        self.gallery_screened = None if gallery is None else screen.prepare(self.gallery)
        self.cache = (
            GalleryCache(self.n, dim, config.gallery_cache, self.device)
            if gallery is not None
            and config.gallery_cache
            and config.alpha
            and len(gallery) >= CACHE_MIN_GALLERY
            else None
        )
        self.x = torch.nn.Parameter(_initial_points(config, gallery, dim, self.generator).to(self.device))
        self.optimizer = self._make_optimizer()
        self.step = 0
        self.seconds = 0.0
        self.history: list[dict] = []
        self.permutation: torch.Tensor | None = None
        self.epoch_loss = [0.0, 0]
        self.previous_neighbour: torch.Tensor | None = None
        self.previous_gallery: torch.Tensor | None = None
        self.fast_state: dict[str, torch.Tensor] = {}
        self.batch_grad: torch.Tensor | None = None

    # --- setup --------------------------------------------------------------------------------
    def _make_optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        fused = self.device == "cpu" or self.device.startswith("cuda")
        return torch.optim.Adam([self.x], lr=c.learning_rate, betas=c.adam_betas, eps=c.adam_eps, fused=fused)

    @property
    def total_steps(self) -> int:
        return self.config.iterations * self.config.steps_per_iteration()

    # --- the faithful full-batch step (Alg. 1) --------------------------------------------------
    def _lower_bounds(self, u: torch.Tensor, others: torch.Tensor, previous: torch.Tensor | None) -> Any:
        if previous is None:
            return None
        rows = torch.arange(len(u), device=u.device)
        return exact_dots(u, others, rows, previous)

    def full_gradient(self) -> tuple[float, torch.Tensor]:
        """Set ``x.grad`` to the exact gradient of the full objective; return (loss, NN dots)."""
        c = self.config
        with torch.no_grad():
            u, norms = normalise(self.x.detach())
            lower = self._lower_bounds(u, u, self.previous_neighbour)
            found: dict = {}
            neighbour, dots = self_search(u, self.backends["self"], self.self_block, lower=lower, stats=found)
            self._adapt("self", found, len(u))
            loss = float(dots.mean())
            pulled = None
            if self.gallery is not None and c.alpha:
                gindex, gdots = self.nearest_gallery(torch.arange(self.n, device=self.device), u)
                loss += c.alpha * float((1.0 - gdots).mean())
                pulled = self.gallery[gindex]
            self.previous_neighbour = neighbour
            grad_u = unit_gradient(u, neighbour, self.n, pulled_to=pulled, alpha=c.alpha)
            self.x.grad = tangent_gradient(grad_u, u, norms)
        return loss, dots

    def full_step(self) -> dict[str, float]:
        """One step of Alg. 1; returns the loss and progress metrics of the points before it."""
        loss, dots = self.full_gradient()
        self._adam_step(self.step)
        return {"loss": loss, **(_progress_metrics(dots) if dots is not None else {})}

    # --- the stochastic step (Alg. 2) -----------------------------------------------------------
    def next_batch(self) -> torch.Tensor:
        """The indices of this step's batch (a fresh permutation at each epoch's start)."""
        c = self.config
        position = self.step % c.steps_per_iteration()
        if position == 0 or self.permutation is None:
            self.permutation = torch.randperm(self.n, generator=self.generator)
        return self.permutation[position * c.batch_size : (position + 1) * c.batch_size].to(self.device)

    def batch_gradient(self, batch: torch.Tensor) -> float:
        """Set ``x.grad`` to the exact gradient of the batch objective (zero outside the batch); its loss."""
        c = self.config
        count = len(batch)
        with torch.no_grad():
            ub, norms = normalise(self.x.detach()[batch])
            found: dict = {}
            if c.against_all:
                u_all = normalise(self.x.detach())[0]
                neighbour, dots = cross_search(
                    ub, u_all, self.backends["self"], self.block, exclude=batch, stats=found
                )
                where = torch.full((self.n,), -1, dtype=torch.int64, device=self.device)
                where[batch] = torch.arange(count, device=self.device)
                grad_u = unit_gradient(ub, neighbour, count, others=u_all, receivers=where[neighbour])
            else:
                neighbour, dots = self_search(ub, self.backends["self"], self.block, stats=found)
                grad_u = unit_gradient(ub, neighbour, count)
            self._adapt("self", found, count)
            loss = float(dots.mean())
            if self.gallery is not None and c.alpha:
                base = self.gallery
                if c.gallery_sample is not None and c.gallery_sample < len(base):
                    rows = torch.randperm(len(base), generator=self.generator)[: c.gallery_sample]
                    rows = rows.to(self.device)
                    base = base[rows]
                    gindex, gdots = self._nearest_gallery(ub, base, self.gallery_screened[rows], None)
                else:
                    gindex, gdots = self.nearest_gallery(batch, ub)
                loss += c.alpha * float((1.0 - gdots).mean())
                grad_u.sub_(base[gindex], alpha=c.alpha / count)
            if self.batch_grad is None:  # zero outside the batch; rows are cleared after each step
                self.batch_grad = torch.zeros_like(self.x)
            self.batch_grad[batch] = tangent_gradient(grad_u, ub, norms)
            self.x.grad = self.batch_grad
        return loss

    def stochastic_step(self) -> None:
        """One step of Alg. 2 (a batch against itself, or against all points held fixed)."""
        batch = self.next_batch()
        loss = self.batch_gradient(batch)
        self._adam_step(self.step // self.config.steps_per_iteration())
        self.batch_grad[batch] = 0.0
        self.epoch_loss[0] += loss
        self.epoch_loss[1] += 1

    def learning_rate(self, iteration: int) -> float:
        """This run's learning rate at ``iteration`` (full: step; stochastic: epoch)."""
        return self.config.learning_rate_at(iteration)

    def _adam_step(self, iteration: int) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(iteration)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            self.x.div_(torch.linalg.vector_norm(self.x, dim=1, keepdim=True).clamp_min(1e-12))

    def exact_progress(self) -> dict[str, float]:
        """Exact min angle and mean NN cosine of all points (one blocked pass)."""
        with torch.no_grad():
            u = normalise(self.x.detach())[0]
            _, dots = self_search(u, self.backends["self"], self.self_block)
        return _progress_metrics(dots)

    # --- screening --------------------------------------------------------------------------------
    def _nearest_gallery(
        self, u: torch.Tensor, base: torch.Tensor, screened: torch.Tensor, lower: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        found: dict = {}
        backend = self.backends["gallery"]
        result = cross_search(u, base, backend, self.block, lower=lower, screened_base=screened, stats=found)
        self._adapt("gallery", found, len(u))
        return result

    def nearest_gallery(self, rows: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact nearest gallery row of points ``rows`` now at ``u``: through the cache, else a full scan."""
        if self.cache is not None:
            search = GallerySearch(self.gallery, self.gallery_screened, self.backends["gallery"], self.block)
            return self.cache.nearest(rows, u, search)
        lower = None
        if self.previous_gallery is not None and len(rows) == self.n:
            lower = self._lower_bounds(u, self.gallery, self.previous_gallery)
        result = self._nearest_gallery(u, self.gallery, self.gallery_screened, lower)
        if len(rows) == self.n:
            self.previous_gallery = result[0]
        return result

    def _adapt(self, kind: str, found: dict, rows: int) -> None:
        """Under ``screen='auto'``, move a search from bfloat16 to float32 once its band gets crowded."""
        backend = self.backends[kind]
        if not self.adaptive or backend.screen_dtype == torch.float32:
            return
        if found.get("candidates", 0) > DENSE_BAND * rows:
            faster = float32_backend(self.device, self.dim)
            self.backends[kind] = faster
            if kind == "gallery" and self.gallery is not None:
                self.gallery_screened = faster.prepare(self.gallery)
            self.switches.append({"step": self.step, "search": kind, "screen": faster.name})

    # --- checkpoints --------------------------------------------------------------------------
    def _identity(self) -> dict[str, Any]:
        settings = self.config.model_dump(mode="json", exclude=_RESUME_INDEPENDENT)
        return {"config": settings, "dim": self.dim, "gallery": _fingerprint(self.gallery_np)}

    def state(self, initial_metrics: dict[str, Any]) -> dict[str, np.ndarray]:
        adam = self.optimizer.state.get(self.x, {})
        state = {
            "points": self.x.detach().cpu().numpy().copy(),
            "step": np.array(self.step, dtype=np.int64),
            "seconds": np.array(self.seconds, dtype=np.float64),
            "generator": self.generator.get_state().numpy().copy(),
            "identity": text_array(self._identity()),
            "history": text_array(self.history),
            "initial_metrics": text_array(initial_metrics),
            "epoch_loss": np.array(self.epoch_loss, dtype=np.float64),
        }
        if adam:
            state["adam_step"] = np.array(float(adam["step"]), dtype=np.float64)
            state["exp_avg"] = adam["exp_avg"].cpu().numpy().copy()
            state["exp_avg_sq"] = adam["exp_avg_sq"].cpu().numpy().copy()
        if self.permutation is not None:
            state["permutation"] = self.permutation.numpy().copy()
        for name, value in self.fast_state.items():
            state[f"fast_{name}"] = value.cpu().numpy().copy()
        return state

    def restore(self, state: dict[str, np.ndarray]) -> dict[str, Any]:
        """Load a checkpoint of this same run (config, dimension and gallery must match)."""
        saved = array_text(state["identity"])
        mine = self._identity()
        if saved != mine:
            diff = sorted(k for k in mine["config"] if saved["config"].get(k) != mine["config"][k])
            what = diff or [k for k in ("dim", "gallery") if saved.get(k) != mine[k]]
            raise ValueError(f"checkpoint belongs to a different packing run (differs in: {', '.join(what)})")
        with torch.no_grad():
            self.x.copy_(torch.from_numpy(state["points"]))
        self.step = int(state["step"])
        self.seconds = float(state["seconds"])
        self.generator.set_state(torch.from_numpy(state["generator"].copy()))
        self.history = array_text(state["history"])
        self.epoch_loss = [float(state["epoch_loss"][0]), int(state["epoch_loss"][1])]
        if "adam_step" in state:
            self.optimizer.state[self.x] = {
                "step": torch.tensor(float(state["adam_step"]), dtype=torch.float32),
                "exp_avg": torch.from_numpy(state["exp_avg"].copy()).to(self.device),
                "exp_avg_sq": torch.from_numpy(state["exp_avg_sq"].copy()).to(self.device),
            }
        if "permutation" in state:
            self.permutation = torch.from_numpy(state["permutation"].copy())
        self.fast_state = {
            name[5:]: torch.from_numpy(value.copy()).to(self.device)
            for name, value in state.items()
            if name.startswith("fast_")
        }
        return array_text(state["initial_metrics"])


def _initial_points(
    config: PackingConfig, gallery: np.ndarray | None, dim: int, generator: torch.Generator
) -> torch.Tensor:
    n = config.identities
    if config.init == "random":
        return normalise(torch.randn(n, dim, generator=generator))[0]
    base = torch.from_numpy(gallery)
    order = torch.randperm(len(base), generator=generator)
    if n <= len(base):
        return base[order[:n]].clone()
    extra = torch.randint(len(base), (n - len(base),), generator=generator)
    noise = torch.randn(n - len(base), dim, generator=generator) * (config.init_noise / math.sqrt(dim))
    return torch.cat([base[order], normalise(base[extra] + noise)[0]])


def initial_points(
    config: PackingConfig, gallery: np.ndarray | None, *, dim: int | None = None
) -> np.ndarray:
    """The points :func:`pack` starts from under ``config`` (its seed): N gallery rows drawn without
    replacement (repeats with ``init_noise`` when N exceeds the gallery), or uniform random unit vectors."""
    gallery_unit, dim = _check_inputs(config, gallery, dim)
    generator = torch.Generator().manual_seed(config.seed)
    return _initial_points(config, gallery_unit, dim, generator).numpy()


def _progress_metrics(dots: torch.Tensor) -> dict[str, float]:
    return {"min_angle_deg": _angle_deg(float(dots.max())), "mean_nn_cosine": float(dots.mean())}


def _check_inputs(config: PackingConfig, gallery: np.ndarray | None, dim: int | None) -> tuple[Any, int]:
    if gallery is None:
        if config.alpha:
            raise ValueError(f"alpha={config.alpha} needs a gallery (or set alpha=0)")
        if config.init == "gallery":
            raise ValueError("init='gallery' needs a gallery (or set init='random')")
        if dim is None or dim < 2:
            raise ValueError(f"without a gallery, dim must be given (>= 2), got {dim}")
        return None, int(dim)
    unit = unit_rows(gallery, "gallery")
    if dim is not None and dim != unit.shape[1]:
        raise ValueError(f"dim={dim} but the gallery has dimension {unit.shape[1]}")
    return unit, unit.shape[1]


def pack(
    config: PackingConfig,
    gallery: np.ndarray | None,
    *,
    dim: int | None = None,
    checkpointer: Checkpointer | None = None,
    progress: Callable[[dict], None] | None = None,
) -> PackingResult:
    """Pack ``config.identities`` unit vectors (see the module docstring); resume from ``checkpointer``.

    ``gallery`` [M, d]: real embeddings (normalised here) for the init and the α term; None with
    ``init='random'``, ``alpha=0`` and ``dim``. ``progress`` receives every history entry as it is made.

    History entries: ``step`` (optimizer steps taken), ``seconds``, ``loss``, ``min_angle_deg``,
    ``mean_nn_cosine`` (both exact over all N points). Full batch: every ``log_every`` steps, the values of
    the points before that step's update, plus the final points; ``loss`` is the exact objective.
    Stochastic: at every ``log_every``-th epoch end and the last; ``loss`` is the mean batch objective over
    the epoch (an exact pass over all points costs one blocked N×N search per entry).
    """
    gallery_unit, dim = _check_inputs(config, gallery, dim)
    if config.optimizer == "fast":
        from facelake.packing_fast import FastRun

        run: _Run = FastRun(config, gallery_unit, dim)
    else:
        run = _Run(config, gallery_unit, dim)
    saved = checkpointer.load() if checkpointer is not None else None
    if saved is not None:
        initial = run.restore(saved)
    else:
        initial = packing_metrics(
            run.x.detach().cpu().numpy(),
            gallery_unit,
            screen=config.screen,
            device=run.device,
            block=run.block,
        )
    started = time.perf_counter() - run.seconds
    per_iteration = config.steps_per_iteration()

    def log(entry: dict[str, float]) -> None:
        record = {"step": run.step, "seconds": time.perf_counter() - started, **entry}
        run.history.append(record)
        if progress is not None:
            progress(record)

    while run.step < run.total_steps:
        if config.algorithm == "full":
            values = run.full_step()
            if run.step % config.log_every == 0:
                log(values)
        else:
            run.stochastic_step()
        run.step += 1
        if config.algorithm == "stochastic" and run.step % per_iteration == 0:
            epoch = run.step // per_iteration
            if epoch % config.log_every == 0 or run.step == run.total_steps:
                loss = run.epoch_loss[0] / max(1, run.epoch_loss[1])
                log({"loss": loss, **run.exact_progress()})
            run.epoch_loss = [0.0, 0]
        run.seconds = time.perf_counter() - started
        if checkpointer is not None and config.checkpoint_every and run.step % config.checkpoint_every == 0:
            checkpointer.save(run.state(initial))
    points = normalise(run.x.detach())[0].cpu().numpy()
    metrics = packing_metrics(points, gallery_unit, screen=config.screen, device=run.device, block=run.block)
    if config.algorithm == "full" and (not run.history or run.history[-1]["step"] != run.step):
        loss = metrics["mean_nn_cosine"] + config.alpha * (metrics["mean_gallery_distance"] or 0.0)
        log(
            {
                "loss": loss,
                "min_angle_deg": metrics["min_angle_deg"],
                "mean_nn_cosine": metrics["mean_nn_cosine"],
            }
        )
    if checkpointer is not None and config.checkpoint_every and run.step % config.checkpoint_every:
        checkpointer.save(run.state(initial))
    stats = {"steps": run.step, "seconds": run.seconds, "block": run.block, "screen_switches": run.switches}
    return PackingResult(
        points=points,
        history=run.history,
        metrics=metrics,
        initial_metrics=initial,
        device=run.device,
        screen=run.backends["self"].name,
        stats=stats,
    )
