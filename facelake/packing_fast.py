"""Our own packing optimizer (``optimizer="fast"``): Adam on a soft maximum over each row's nearest neighbours.

The paper's hard ``max_{j≠i}`` gives each point a gradient from one neighbour, which flips between nearly
tied neighbours from step to step, so Adam's moments cancel and steps must stay small. Here each row's
maximum is replaced by ``s_i = (1/t) log Σ_{j∈K_i} exp(t·cos(x_i,x_j))`` over ``K_i``, the row's
``fast_neighbours`` nearest neighbours, so the gradient spreads over the close neighbours, changes smoothly,
and a larger learning rate converges::

    ∂L/∂u_i = (1/n) [Σ_{j∈K_i} p_ij u_j + Σ_{k: i∈K_k} p_ki u_k] − (α/n) g*(i),   p_i· = softmax_K_i(t·cos)

The gallery term, Adam, the re-normalisation and the schedule are the faithful mode's; the reported minimum
angle and every metric stay exact. Defaults (measured on synthetic galleries, benchmarks/README.md):
``fast_temperature`` 300, ``fast_neighbours`` 16, ``fast_learning_rate`` 1e-2. The neighbour search uses
float32 screening under ``screen='auto'`` (the soft weights need float32-accurate neighbour order).
"""

from __future__ import annotations

import torch

from facelake.neighbours import float32_backend, topk_search
from facelake.packing import _Run
from facelake.packing_objective import normalise, tangent_gradient


class FastRun(_Run):
    """A packing run whose full-batch step uses the soft-max objective."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.adaptive and self.backends["self"].screen_dtype != torch.float32:
            self.backends["self"] = float32_backend(self.device, self.dim)

    def _make_optimizer(self) -> torch.optim.Optimizer:
        optimizer = super()._make_optimizer()
        for group in optimizer.param_groups:
            group["lr"] = self.config.fast_learning_rate
        return optimizer

    def learning_rate(self, iteration: int) -> float:
        c = self.config
        return c.fast_learning_rate * c.lr_decay ** (iteration // c.decay_interval())

    def full_gradient(self) -> tuple[float, torch.Tensor]:
        """Set ``x.grad`` to the soft objective's gradient; return (its loss, each row's exact max dot)."""
        c = self.config
        t = c.fast_temperature
        with torch.no_grad():
            u, norms = normalise(self.x.detach())
            rows, cols, dots, _, best = topk_search(u, self.backends["self"], self.block, c.fast_neighbours)
            k = len(rows) // self.n
            logits = (t * dots).view(self.n, k)
            p = torch.softmax(logits, dim=1).reshape(-1, 1)
            soft = torch.logsumexp(logits.double(), dim=1) / t
            grad_u = torch.zeros_like(u).index_add_(0, rows, p * u[cols])
            grad_u.index_add_(0, cols, p * u[rows])
            loss = float(soft.mean())
            if self.gallery is not None and c.alpha:
                glower = self._lower_bounds(u, self.gallery, self.previous_gallery)
                gindex, gdots = self._nearest_gallery(u, self.gallery, self.gallery_screened, glower)
                loss += c.alpha * float((1.0 - gdots).mean())
                grad_u.sub_(self.gallery[gindex], alpha=c.alpha)
                self.previous_gallery = gindex
            grad_u.div_(self.n)
            self.x.grad = tangent_gradient(grad_u, u, norms)
        return loss, best
