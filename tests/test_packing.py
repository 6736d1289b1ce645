"""The HyperFace packer: exact sparse gradient = autograd, known optima, gallery pull, resume, determinism."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pydantic
import pytest
import torch

from facelake.hyperface.packing import (
    MemoryCheckpointer,
    PackingConfig,
    PackingRun,
    StorageCheckpointer,
    pack,
    packing_metrics,
)
from facelake.hyperface.packing_objective import dense_objective
from facelake.lake.errors import InputError
from facelake.lake.storage import Storage


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    """Tiny tensors on a shared 2-core machine: OpenMP barriers only cost time here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _unit(rng: np.random.Generator, n: int, d: int, shift: float = 0.0) -> np.ndarray:
    x = rng.standard_normal((n, d)) + shift * np.eye(1, d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _config(**overrides: object) -> PackingConfig:
    base = {
        "identities": 40,
        "algorithm": "full",
        "iterations": 30,
        "device": "cpu",
        "screen": "torch-bfloat16",
    }
    return PackingConfig(**{**base, **overrides})


# --- the gradient path equals autograd of the dense objective -----------------------------------
@pytest.mark.parametrize("alpha", [0.0, 0.7])
@pytest.mark.parametrize("screen", ["torch-bfloat16", "numpy-float32"])
def test_full_gradient_equals_autograd(alpha: float, screen: str) -> None:
    rng = np.random.default_rng(0)
    gallery = _unit(rng, 50, 12, shift=1.0)
    run = PackingRun(_config(identities=64, alpha=alpha, init="random", screen=screen, block=16), gallery, 12)
    with torch.no_grad():  # off the sphere, so the normalisation's backward matters
        run.x.mul_(torch.from_numpy(rng.uniform(0.5, 2.0, (64, 1)).astype(np.float32)))
    reference = run.x.detach().clone().requires_grad_(True)
    expected = dense_objective(reference, torch.from_numpy(gallery) if alpha else None, alpha)
    expected.backward()
    loss, _ = run.full_gradient()
    assert loss == pytest.approx(expected.item(), abs=1e-6)
    torch.testing.assert_close(run.x.grad, reference.grad, rtol=1e-5, atol=1e-7)
    assert float(reference.grad.abs().max()) > 1e-3


@pytest.mark.parametrize("against_all", [False, True])
def test_batch_gradient_equals_autograd(against_all: bool) -> None:
    rng = np.random.default_rng(1)
    gallery = _unit(rng, 30, 10)
    config = _config(
        identities=48, alpha=0.5, algorithm="stochastic", batch_size=16, against_all=against_all, block=8
    )
    run = PackingRun(config, gallery, 10)
    batch = run.next_batch()
    loss = run.batch_gradient(batch)
    x = run.x.detach().clone().requires_grad_(True)
    u = torch.nn.functional.normalize(x, dim=1)
    ub = u[batch]
    if against_all:  # the batch against every other point, the others held fixed
        others = u.detach().clone()
        others[batch] = ub
        gram = ub @ others.T
        gram[torch.arange(16), batch] = float("-inf")
    else:
        gram = (ub @ ub.T).masked_fill(torch.eye(16, dtype=torch.bool), float("-inf"))
    g = torch.from_numpy(gallery)
    expected = gram.max(1).values.mean() + 0.5 * (1.0 - ub @ g.T).min(1).values.mean()
    expected.backward()
    assert loss == pytest.approx(expected.item(), abs=1e-6)
    torch.testing.assert_close(run.x.grad, x.grad, rtol=1e-5, atol=1e-7)
    outside = torch.ones(48, dtype=torch.bool)
    outside[batch] = False
    assert float(run.x.grad[outside].abs().max()) == 0.0


# --- known optima -------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [5, 7, 12])
def test_circle_goes_to_the_regular_polygon(n: int) -> None:
    """From a perturbed polygon (random starts can collapse: coincident points feel no gradient)."""
    rng = np.random.default_rng(n)
    angles = 2 * np.pi * (np.arange(n) + rng.uniform(-0.3, 0.3, n)) / n
    start = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    config = _config(
        identities=n,
        alpha=0.0,
        iterations=1000,
        learning_rate=1e-2,
        lr_decay_every=200,
        screen="torch-float32",
    )
    lines: list[str] = []
    # init="gallery" with N = M: the start, permuted; α = 0 ignores it after
    result = pack(config, start, report=lines.append)
    assert result.initial_metrics["min_angle_deg"] < 360 / n - 5
    assert result.metrics["min_angle_deg"] == pytest.approx(360 / n, abs=0.1)
    # progress every 5 % (50 steps) or 30 s: at least the 20 fraction steps, the last one complete
    assert len(lines) >= 20 and lines[0].startswith(f"packing {n} identities: 50/1,000 steps (5.0%)")
    assert lines[-1].startswith(f"packing {n} identities: 1,000/1,000 steps (100.0%)")
    assert "min angle" in lines[-1]


@pytest.mark.parametrize(("n", "d"), [(8, 4), (16, 8), (5, 8)])
def test_orthoplex(n: int, d: int) -> None:
    config = _config(
        identities=n,
        alpha=0.0,
        init="random",
        iterations=2500,
        learning_rate=1e-2,
        lr_decay_every=400,
        seed=1,
    )
    result = pack(config, None, dim=d)
    assert result.metrics["max_nn_cosine"] <= 1e-3
    norms = np.linalg.norm(result.points, axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-6)


def test_alpha_pulls_toward_the_gallery() -> None:
    rng = np.random.default_rng(2)
    gallery = _unit(rng, 120, 16, shift=2.0)  # a cone around e_0, like face embeddings
    common = {"identities": 60, "init": "random", "iterations": 150, "learning_rate": 1e-2, "seed": 3}
    free = pack(_config(alpha=0.0, **common), gallery)
    pulled = pack(_config(alpha=0.5, **common), gallery)
    assert free.initial_metrics == pulled.initial_metrics
    assert pulled.metrics["mean_gallery_distance"] < 0.8 * free.metrics["mean_gallery_distance"]
    assert free.metrics["min_angle_deg"] > free.initial_metrics["min_angle_deg"]


def test_stochastic_and_against_all_spread_points() -> None:
    rng = np.random.default_rng(4)
    gallery = _unit(rng, 200, 16, shift=2.0)
    for against_all in (False, True):
        config = _config(
            identities=100, algorithm="stochastic", batch_size=25, iterations=20, learning_rate=1e-2,
            against_all=against_all, gallery_sample=50, log_every=5,
        )  # fmt: skip
        result = pack(config, gallery)
        assert [h["step"] for h in result.history] == [20, 40, 60, 80]
        assert result.metrics["min_angle_deg"] > result.initial_metrics["min_angle_deg"] + 5


# --- checkpoints and determinism ----------------------------------------------------------------
class _Crash(Exception):
    pass


def _crash_after(step: int):
    def progress(entry: dict) -> None:
        if entry["step"] >= step:
            raise _Crash

    return progress


def _without_clock(history: list[dict]) -> list[dict]:
    """The history's entries without their wall-clock field, the one thing a rerun may change."""
    return [{k: v for k, v in entry.items() if k != "seconds"} for entry in history]


def _same_history(a: list[dict], b: list[dict]) -> None:
    assert _without_clock(a) == _without_clock(b)


@pytest.mark.parametrize(
    "overrides",
    [
        {"algorithm": "full", "iterations": 40, "log_every": 5, "checkpoint_every": 10},
        {"algorithm": "stochastic", "iterations": 8, "batch_size": 15, "log_every": 1, "checkpoint_every": 7,
         "gallery_sample": 20},
    ],
)  # fmt: skip
def test_resume_reproduces_the_uninterrupted_run(overrides: dict, tmp_path) -> None:
    rng = np.random.default_rng(5)
    gallery = _unit(rng, 70, 24, shift=1.0)
    config = _config(identities=45, alpha=0.5, learning_rate=5e-3, **overrides)
    whole = pack(config, gallery)
    checkpointer = StorageCheckpointer(Storage(str(tmp_path)), str(tmp_path / "run" / "checkpoint.npz"))
    crash_at = whole.history[len(whole.history) // 2]["step"]
    with pytest.raises(_Crash):
        pack(config, gallery, checkpointer=checkpointer, progress=_crash_after(crash_at))
    saved = checkpointer.load()
    assert saved is not None and 0 < int(saved["step"]) <= crash_at
    resumed = pack(config, gallery, checkpointer=checkpointer)
    np.testing.assert_array_equal(resumed.points, whole.points)
    _same_history(resumed.history, whole.history)
    assert resumed.metrics == whole.metrics and resumed.initial_metrics == whole.initial_metrics
    again = pack(config, gallery, checkpointer=checkpointer)  # finished: nothing left to do
    np.testing.assert_array_equal(again.points, whole.points)


def test_checkpoint_of_another_run_is_refused(tmp_path) -> None:
    gallery = _unit(np.random.default_rng(6), 50, 8)
    checkpointer = MemoryCheckpointer()
    pack(_config(checkpoint_every=5, iterations=10), gallery, checkpointer=checkpointer)
    assert checkpointer.saves == 2
    with pytest.raises(ValueError, match="differs in: alpha"):
        pack(_config(checkpoint_every=5, iterations=10, alpha=0.1), gallery, checkpointer=checkpointer)
    with pytest.raises(ValueError, match="gallery"):
        pack(_config(checkpoint_every=5, iterations=10), gallery[::-1].copy(), checkpointer=checkpointer)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not an npz")
    with pytest.raises(InputError, match=r"bad\.npz"):
        StorageCheckpointer(Storage(str(tmp_path)), str(bad)).load()


def test_deterministic_under_a_seed() -> None:
    gallery = _unit(np.random.default_rng(7), 80, 16)
    config = _config(identities=50, algorithm="stochastic", batch_size=10, iterations=3, log_every=1)
    first, second = pack(config, gallery), pack(config, gallery)
    np.testing.assert_array_equal(first.points, second.points)
    _same_history(first.history, second.history)
    other = pack(config.model_copy(update={"seed": 1}), gallery)
    assert not np.array_equal(first.points, other.points)


# --- metrics and validation ---------------------------------------------------------------------
def test_metrics_equal_brute_force() -> None:
    rng = np.random.default_rng(8)
    points, gallery = _unit(rng, 300, 10), _unit(rng, 170, 10)
    metrics = packing_metrics(points, gallery, block=64)
    gram = points.astype(np.float64) @ points.T.astype(np.float64)
    np.fill_diagonal(gram, -np.inf)
    nn = gram.max(1)
    assert metrics["max_nn_cosine"] == np.float32(nn.max())
    assert metrics["min_angle_deg"] == pytest.approx(math.degrees(math.acos(nn.max())), abs=1e-9)
    assert metrics["mean_nn_cosine"] == pytest.approx(nn.mean(), abs=1e-12)
    assert metrics["nn_cosine_quantiles"]["p50"] == pytest.approx(np.median(nn), abs=1e-6)
    assert sum(metrics["nn_cosine_histogram"]["counts"]) == 300
    distance = (1.0 - points.astype(np.float64) @ gallery.T.astype(np.float64)).min(1).mean()
    assert metrics["mean_gallery_distance"] == pytest.approx(distance, abs=1e-9)
    assert packing_metrics(points)["mean_gallery_distance"] is None


def test_config_and_input_validation() -> None:
    with pytest.raises(pydantic.ValidationError, match="batch_size 100 exceeds identities 10"):
        PackingConfig(identities=10, batch_size=100)
    with pytest.raises(pydantic.ValidationError, match="unknown Gram screen"):
        PackingConfig(screen="float16")
    with pytest.raises(pydantic.ValidationError, match="full batch only"):
        PackingConfig(optimizer="fast", algorithm="stochastic")
    with pytest.raises(pydantic.ValidationError, match="extra"):
        PackingConfig(learning_rte=0.1)
    with pytest.raises(pydantic.ValidationError):
        PackingConfig(identities=1)
    with pytest.raises(pydantic.ValidationError):
        PackingConfig(lr_decay=1.5)
    gallery = _unit(np.random.default_rng(9), 20, 6)
    with pytest.raises(ValueError, match="needs a gallery"):
        pack(_config(), None, dim=6)
    with pytest.raises(ValueError, match="init='gallery' needs a gallery"):
        pack(_config(alpha=0.0), None, dim=6)
    with pytest.raises(ValueError, match="dim=7 but the gallery has dimension 6"):
        pack(_config(), gallery, dim=7)
    with pytest.raises(ValueError, match="gallery: contains NaN"):
        pack(_config(), np.full((20, 6), np.nan, np.float32))


@pytest.mark.parametrize("algorithm", ["full", "stochastic"])
def test_results_do_not_depend_on_screen_block_or_gallery_cache(algorithm: str, monkeypatch) -> None:
    """Screening and the gallery cache only find candidates: the chosen neighbours, hence every step, are exact."""
    monkeypatch.setattr(
        "facelake.hyperface.packing_run.CACHE_MIN_GALLERY", 0
    )  # use the cache on this small gallery
    gallery = _unit(np.random.default_rng(10), 90, 16, shift=1.0)
    common = {"identities": 60, "iterations": 25 if algorithm == "full" else 5, "algorithm": algorithm}
    runs = [
        pack(_config(screen=screen, block=block, gallery_cache=cache, batch_size=20, **common), gallery)
        for screen, block, cache in (
            ("torch-bfloat16", 16, 16),
            ("numpy-float32", 64, 0),
            ("torch-float32", 4096, 1),
            ("torch-bfloat16", 7, 3),
        )
    ]
    for other in runs[1:]:
        np.testing.assert_array_equal(other.points, runs[0].points)
        _same_history(other.history, runs[0].history)


def test_fast_optimizer_beats_adam_at_equal_steps_and_resumes() -> None:
    rng = np.random.default_rng(11)
    gallery = _unit(rng, 200, 24, shift=1.0)
    common = {"identities": 150, "iterations": 60, "log_every": 10, "screen": "auto"}
    adam = pack(_config(**common), gallery)
    fast = pack(_config(optimizer="fast", **common), gallery)
    assert fast.metrics["min_angle_deg"] > adam.metrics["min_angle_deg"]
    assert fast.history[-1]["min_angle_deg"] == pytest.approx(fast.metrics["min_angle_deg"], abs=1e-9)
    checkpointer = MemoryCheckpointer()
    config = _config(optimizer="fast", checkpoint_every=20, **common)
    with pytest.raises(_Crash):
        pack(config, gallery, checkpointer=checkpointer, progress=_crash_after(30))
    resumed = pack(config, gallery, checkpointer=checkpointer)
    np.testing.assert_array_equal(resumed.points, fast.points)
