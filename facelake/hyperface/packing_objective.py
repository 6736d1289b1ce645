"""The HyperFace objective and its exact sparse gradient.

For points ``x_i`` (rows of the optimised tensor) and ``u_i = x_i / ‖x_i‖``::

    L = (1/n) Σ_i max_{j≠i} u_i·u_j  +  α (1/n) Σ_i min_g (1 − u_i·g)

The max and the min select one neighbour ``j*(i)`` and one gallery point ``g*(i)`` per row (ties →
smallest index, as torch's ``max`` picks), so autograd of the dense objective reduces to::

    ∂L/∂u_i = (1/n) [u_{j*(i)} + Σ_{k: j*(k)=i} u_k] − (α/n) g*(i)
    ∂L/∂x_i = (∂L/∂u_i − (∂L/∂u_i · u_i) u_i) / ‖x_i‖        (the backward of F.normalize)

computed here with one gather and one scatter-add, never an N×N backward.
"""

from __future__ import annotations

import torch


def normalise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x / ‖x‖, ‖x‖)`` row-wise, exactly as ``torch.nn.functional.normalize`` computes it."""
    norms = torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-12)
    return x / norms, norms


def unit_gradient(
    u: torch.Tensor,
    neighbour: torch.Tensor,
    count: int,
    *,
    others: torch.Tensor | None = None,
    receivers: torch.Tensor | None = None,
    pulled_to: torch.Tensor | None = None,
    alpha: float = 0.0,
) -> torch.Tensor:
    """``∂L/∂u`` of the rows ``u`` [b, d] whose arg-max neighbours are ``neighbour`` [b].

    ``others``: the rows ``neighbour`` indexes (default ``u`` itself: a self search). ``receivers``: for
    each row, its neighbour's position in ``u`` or -1 when the neighbour is held fixed (default: the
    neighbour itself, all rows free). ``pulled_to`` [b, d]: each row's nearest gallery point.
    ``count``: the n of the mean.
    """
    grad = (u if others is None else others)[neighbour].clone()
    target = neighbour if receivers is None else receivers
    free = target >= 0
    if bool(free.all()):
        grad.index_add_(0, target, u)
    else:
        grad.index_add_(0, target[free], u[free])
    if pulled_to is not None and alpha:
        grad.sub_(pulled_to, alpha=alpha)
    return grad.div_(count)


def tangent_gradient(grad_u: torch.Tensor, u: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """``∂L/∂x`` from ``∂L/∂u`` through the normalisation (projection onto the tangent plane, / ‖x‖)."""
    radial = (grad_u * u).sum(dim=1, keepdim=True)
    return (grad_u - radial * u) / norms


def dense_objective(x: torch.Tensor, gallery: torch.Tensor | None, alpha: float) -> torch.Tensor:
    """The objective by dense autograd-able torch ops (small n only: tests and the benchmark's reference)."""
    u = torch.nn.functional.normalize(x, dim=1)
    gram = u @ u.T
    gram = gram.masked_fill(torch.eye(len(u), dtype=torch.bool, device=u.device), float("-inf"))
    loss = gram.max(dim=1).values.mean()
    if gallery is not None and alpha:
        g = torch.nn.functional.normalize(gallery, dim=1)
        loss = loss + alpha * (1.0 - u @ g.T).min(dim=1).values.mean()
    return loss
