"""Our own packing optimizer (``optimizer="fast"``): Adam on a soft maximum over each row's nearest neighbours.

The paper's hard ``max_{j≠i}`` gives each point a gradient from one neighbour, which flips between nearly
tied neighbours from step to step, so Adam's moments cancel and steps must stay small. Here each row's
maximum is replaced by ``s_i = (1/t) log Σ_{j∈K_i} exp(t·cos(x_i,x_j))`` over ``K_i``, the row's
``fast_neighbours`` nearest neighbours by screened value (lists refreshed every ``fast_refresh`` steps), so
the gradient spreads over the close neighbours, changes smoothly, and a larger learning rate converges::

    ∂L/∂u_i = (1/n) [Σ_{j∈K_i} p_ij u_j + Σ_{k: i∈K_k} p_ki u_k] − (α/n) g*(i),   p_i· = softmax_K_i(t·cos)

The gallery term, Adam, the re-normalisation and the schedule are the faithful mode's; the reported minimum
angle and every metric stay exact (the exact nearest-neighbour search runs on the steps the history logs). Defaults (measured on synthetic galleries, benchmarks/README.md): ``fast_temperature`` 300,
``fast_neighbours`` 8, ``fast_refresh`` 1, ``fast_learning_rate`` 1e-2.
"""

from __future__ import annotations

import torch

from facelake.hyperface.packing_objective import normalise, tangent_gradient
from facelake.hyperface.packing_run import PackingRun
from facelake.vectors.neighbours import blocked_topk, self_search


class FastRun(PackingRun):
    """A packing run whose full-batch step uses the soft-max objective."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.membership = self.backends["self"]

    def _make_optimizer(self) -> torch.optim.Optimizer:
        optimizer = super()._make_optimizer()
        for group in optimizer.param_groups:
            group["lr"] = self.config.fast_learning_rate
        return optimizer

    def learning_rate(self, iteration: int) -> float:
        c = self.config
        return c.fast_learning_rate * c.lr_decay ** (iteration // c.decay_interval())

    def _neighbour_lists(self, u: torch.Tensor) -> torch.Tensor:
        """Each row's ``fast_neighbours`` nearest rows by screened value, refreshed every ``fast_refresh``
        steps (membership may be slightly stale or approximate; the weights use current float32 dots)."""
        c = self.config
        lists = self.fast_state.get("lists")
        if lists is None or self.step - int(self.fast_state["lists_step"]) >= c.fast_refresh:
            backend = self.membership  # the fastest screen: membership needs no exactness
            screened = backend.prepare(u)
            own = torch.arange(self.n, device=u.device)
            k = min(c.fast_neighbours, self.n - 1)
            _, lists = blocked_topk(screened, screened, backend, self.self_block, k, exclude=own)
            self.fast_state = {"lists": lists, "lists_step": torch.tensor(self.step)}
        return lists

    def full_gradient(self) -> tuple[float, torch.Tensor | None]:
        """Set ``x.grad`` to the soft objective's gradient; return (its loss, each row's exact max dot on
        the steps the history logs, else None)."""
        c = self.config
        t = c.fast_temperature
        with torch.no_grad():
            u, norms = normalise(self.x.detach())
            lists = self._neighbour_lists(u)
            best = None
            if self.step % c.log_every == 0:  # the exact search only where the history needs it
                lower = self._lower_bounds(u, u, self.previous_neighbour)
                found: dict = {}
                neighbour, best = self_search(
                    u, self.backends["self"], self.self_block, lower=lower, stats=found
                )
                self._adapt("self", found, self.n)
                self.previous_neighbour = neighbour
            n, k = lists.shape
            cols = lists.reshape(-1)
            neighbours = u[cols].view(n, k, -1)
            logits = t * torch.bmm(neighbours, u.unsqueeze(2)).squeeze(2)
            p = torch.softmax(logits, dim=1)
            soft = torch.logsumexp(logits.double(), dim=1) / t
            grad_u = torch.bmm(p.unsqueeze(1), neighbours).squeeze(1)
            grad_u.index_add_(0, cols, (p.unsqueeze(2) * u.unsqueeze(1)).reshape(n * k, -1))
            loss = float(soft.mean())
            if self.gallery is not None and c.alpha:
                gindex, gdots = self.nearest_gallery(torch.arange(self.n, device=self.device), u)
                loss += c.alpha * float((1.0 - gdots).mean())
                grad_u.sub_(self.gallery[gindex], alpha=c.alpha)
            grad_u.div_(self.n)
            self.x.grad = tangent_gradient(grad_u, u, norms)
        return loss, best
