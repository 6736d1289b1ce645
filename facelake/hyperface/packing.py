"""HyperFace packing: N reference embeddings spread over the unit hypersphere, near a gallery of real ones.

Minimises ``mean_i max_{j≠i} cos(x_i, x_j) + α · mean_i min_g (1 − cos(x_i, g))`` (seed 002, Eq. 2) with
the paper's optimizer (Adam, re-normalise after each step, step decay of the learning rate; Alg. 1 full
batch, Alg. 2 stochastic mini-batches), computed the way the hardware wants it:

- the arg-max neighbour and nearest gallery point of every row come from :mod:`facelake.vectors.neighbours`:
  blocked Gram products that never hold N×N, only the upper triangle for the points themselves,
  screened in the fastest measured precision and re-checked exactly (the chosen neighbours, the loss,
  the gradient and every metric are exact);
- the gradient is the objective's true gradient, which flows only through those arg-maxes
  (:mod:`facelake.hyperface.packing_objective`: a gather and a scatter-add, no dense backward);
- runs are deterministic under a seed on the CPU, checkpoint every ``checkpoint_every`` steps
  (:mod:`facelake.hyperface.packing_checkpoint`) and resume bit-for-bit.

``optimizer="fast"`` selects our own method (:mod:`facelake.hyperface.packing_fast`), reported separately.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from facelake.hyperface.packing_checkpoint import (
    Checkpointer,
    MemoryCheckpointer,
    StorageCheckpointer,
)
from facelake.hyperface.packing_config import PackingConfig, PackingResult
from facelake.hyperface.packing_fast import FastRun
from facelake.hyperface.packing_metrics import packing_metrics
from facelake.hyperface.packing_objective import normalise
from facelake.hyperface.packing_run import PackingRun, check_inputs, initial_points
from facelake.lake.progress import Progress, Report

__all__ = [
    "Checkpointer",
    "MemoryCheckpointer",
    "PackingConfig",
    "PackingResult",
    "PackingRun",
    "StorageCheckpointer",
    "initial_points",
    "pack",
    "packing_metrics",
]


def pack(
    config: PackingConfig,
    gallery: np.ndarray | None,
    *,
    dim: int | None = None,
    checkpointer: Checkpointer | None = None,
    progress: Callable[[dict], None] | None = None,
    report: Report | None = None,
) -> PackingResult:
    """Pack ``config.identities`` unit vectors (see the module docstring); resume from ``checkpointer``.

    ``gallery`` [M, d]: real embeddings (normalised here) for the init and the α term; None with
    ``init='random'``, ``alpha=0`` and ``dim``. ``progress`` receives every history entry as it is made.

    History entries: ``step`` (optimizer steps taken), ``seconds``, ``loss``, ``min_angle_deg``,
    ``mean_nn_cosine`` (both exact over all N points). Full batch: every ``log_every`` steps, the values of
    the points before that step's update, plus the final points; ``loss`` is the exact objective.
    Stochastic: at every ``log_every``-th epoch end and the last; ``loss`` is the mean batch objective over
    the epoch (an exact pass over all points costs one blocked N×N search per entry). ``report`` gets a
    progress line (steps done/total, rate, ETA, the last logged minimum angle) at least every 5 % or 30 s.
    """
    gallery_unit, dim = check_inputs(config, gallery, dim)
    if config.optimizer == "fast":
        run: PackingRun = FastRun(config, gallery_unit, dim)
    else:
        run = PackingRun(config, gallery_unit, dim)
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

    steps = Progress(f"packing {config.identities:,} identities", run.total_steps, report, unit="steps")
    steps.advance(run.step)  # resumed runs start where their checkpoint was

    def log(entry: dict[str, float]) -> None:
        record = {"step": run.step, "seconds": time.perf_counter() - started, **entry}
        run.history.append(record)
        if "min_angle_deg" in record:
            steps.note = f"min angle {record['min_angle_deg']:.3f} deg, loss {record['loss']:.5f}"
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
        steps.advance()
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
    steps.finish()
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
