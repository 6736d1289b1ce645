"""The nearest-neighbour cosine analysis: modes and valley of bimodal fixtures, none for unimodal ones, the plot."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from scipy.stats import norm

from facelake.clusters.nn_similarity import analyse_nn_cosines, nn_similarity_png
from facelake.lake.plots import png_markdown


def mixture(n: int, weight_low: float, seed: int, low=(0.25, 0.08), high=(0.8, 0.07)) -> np.ndarray:
    """NN cosines as on the card: a 'different person' mode near 0.25 and a 'same person' mode near 0.8."""
    rng = np.random.default_rng(seed)
    k = rng.binomial(n, weight_low)
    values = np.concatenate([rng.normal(*low, k), rng.normal(*high, n - k)])
    return np.clip(values, -1.0, 1.0)


def true_valley(weight_low: float, low=(0.25, 0.08), high=(0.8, 0.07)) -> float:
    """The minimum of the mixture's density between its means (the answer the analysis should find)."""
    grid = np.linspace(low[0], high[0], 200_001)
    density = weight_low * norm.pdf(grid, *low) + (1 - weight_low) * norm.pdf(grid, *high)
    return float(grid[np.argmin(density)])


@pytest.mark.parametrize("n", [500, 5_000, 50_000])
@pytest.mark.parametrize("weight_low", [0.5, 0.35, 0.8])
def test_recovers_the_valley_of_a_bimodal_fixture_within_0_05(n, weight_low):
    analysis = analyse_nn_cosines(mixture(n, weight_low, seed=n))
    assert analysis.bimodal
    low, high = analysis.modes
    assert abs(low - 0.25) < 0.05 and abs(high - 0.8) < 0.05
    assert abs(analysis.valley - true_valley(weight_low)) < 0.05
    assert analysis.suggested_eps == pytest.approx(1 - analysis.valley, abs=1e-4)


def test_the_cards_shape_suggests_an_eps_near_its_valley():
    # modes 0.8 and 0.25 as on the card, the 'same' mode wider and heavier: valley well between, eps = 1 - valley
    cosines = mixture(28_000, 0.4, seed=7, low=(0.25, 0.07), high=(0.8, 0.12))
    analysis = analyse_nn_cosines(cosines)
    valley = true_valley(0.4, low=(0.25, 0.07), high=(0.8, 0.12))
    assert abs(analysis.valley - valley) < 0.05
    assert 0.35 < analysis.valley < 0.6


def test_an_empty_gap_puts_the_valley_in_its_middle():
    rng = np.random.default_rng(0)
    cosines = np.concatenate([rng.uniform(0.1, 0.2, 300), rng.uniform(0.8, 0.9, 300)])
    analysis = analyse_nn_cosines(cosines, bandwidth=0.01)
    assert analysis.valley == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("seed", range(5))
def test_a_unimodal_sample_has_no_valley(seed):
    rng = np.random.default_rng(seed)
    analysis = analyse_nn_cosines(rng.normal(0.6, 0.1, 3_000))
    assert not analysis.bimodal and analysis.valley is None and analysis.suggested_eps is None
    assert len(analysis.modes) == 1 and abs(analysis.modes[0] - 0.6) < 0.05


def test_close_peaks_or_shallow_dips_are_not_two_modes():
    rng = np.random.default_rng(1)
    close = np.concatenate([rng.normal(0.5, 0.01, 1000), rng.normal(0.56, 0.01, 1000)])
    assert not analyse_nn_cosines(close, bandwidth=0.005).bimodal, "peaks 0.06 apart (< min_separation)"
    assert analyse_nn_cosines(close, bandwidth=0.005, min_separation=0.05).bimodal
    shoulder = np.concatenate([rng.normal(0.5, 0.1, 3000), rng.normal(0.75, 0.1, 600)])
    assert not analyse_nn_cosines(shoulder).bimodal, "a shoulder without a real dip is one mode"


def test_density_integrates_to_one_and_metadata_is_plain_json():
    analysis = analyse_nn_cosines(mixture(2_000, 0.5, seed=3))
    assert np.trapezoid(analysis.density, analysis.grid) == pytest.approx(1.0, abs=0.01)
    meta = analysis.metadata()
    assert meta["nn_points"] == 2_000 and meta["nn_bimodal"] is True
    assert meta["nn_modes"] == [round(m, 4) for m in analysis.modes]
    assert 0.9 < meta["nn_valley_depth"] <= 1.0
    assert set(meta["nn_cosine_quantiles"]) == {"p01", "p05", "p25", "p50", "p75", "p95", "p99"}


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="NaN or infinite"):
        analyse_nn_cosines(np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match="bandwidth"):
        analyse_nn_cosines(np.array([0.1, 0.2]), bandwidth=0.0)
    empty = analyse_nn_cosines(np.zeros(0))
    assert empty.n == 0 and not empty.bimodal and empty.modes == ()


def test_plot_is_a_png_with_the_histogram():
    cosines = mixture(1_000, 0.5, seed=4)
    analysis = analyse_nn_cosines(cosines)
    png = nn_similarity_png(cosines, analysis, eps=0.35, eps_label="(profile)")
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and image.size == (750, 400)
        pixels = np.asarray(image.convert("RGB"))
    assert (pixels != 255).any(axis=2).mean() > 0.05, "something is drawn"
    assert png_markdown(png, "nn").startswith("![nn](data:image/png;base64,iVBORw0KGgo")
    assert nn_similarity_png(np.zeros(0), analyse_nn_cosines(np.zeros(0)))[:8] == b"\x89PNG\r\n\x1a\n"
