"""The state of one packing run (:class:`PackingRun`): points, optimizer, RNG, history, one method per
optimizer step, checkpoint state; and the points a run starts from."""

from __future__ import annotations

import hashlib
import math
import os
from typing import Any

import numpy as np
import torch

from facelake.hyperface.packing_checkpoint import (
    array_text,
    text_array,
)
from facelake.hyperface.packing_config import CACHE_MIN_GALLERY, RESUME_INDEPENDENT, PackingConfig
from facelake.hyperface.packing_gallery import GalleryCache, GallerySearch
from facelake.hyperface.packing_metrics import progress_metrics
from facelake.hyperface.packing_objective import normalise, tangent_gradient, unit_gradient
from facelake.vectors.gram import GramBackend, default_device, select_backend
from facelake.vectors.neighbours import (
    DENSE_BAND,
    cross_search,
    exact_dots,
    float32_backend,
    search_block,
    self_search,
    unit_rows,
)


def gallery_fingerprint(gallery: np.ndarray | None) -> str:
    if gallery is None:
        return "none"
    return hashlib.blake2b(gallery.tobytes(), digest_size=16).hexdigest()


class PackingRun:
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
        self.x = torch.nn.Parameter(draw_initial_points(config, gallery, dim, self.generator).to(self.device))
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
        return {"loss": loss, **(progress_metrics(dots) if dots is not None else {})}

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
        return progress_metrics(dots)

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
        settings = self.config.model_dump(mode="json", exclude=RESUME_INDEPENDENT)
        return {"config": settings, "dim": self.dim, "gallery": gallery_fingerprint(self.gallery_np)}

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


def draw_initial_points(
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
    gallery_unit, dim = check_inputs(config, gallery, dim)
    generator = torch.Generator().manual_seed(config.seed)
    return draw_initial_points(config, gallery_unit, dim, generator).numpy()


def check_inputs(config: PackingConfig, gallery: np.ndarray | None, dim: int | None) -> tuple[Any, int]:
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
