"""Optimal assignment under a reuse cap: totals against scipy's dense solver with each tile repeated
cap times, the prices that certify them, the certificate's repairs, refusals, and `--assign`."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from helpers import MOSAIC, SAMPLES, one_line_error, run_cli
from jaxmosaic import ConfigError, MosaicConfig, optimal_assignment
from jaxmosaic.techniques.mosaic import mosaic_memory


def dense_optimum(cost: np.ndarray, cap: int) -> float:
    """scipy's dense Jonker-Volgenant on the cost matrix with each tile's column repeated cap times."""
    repeated = np.repeat(cost, cap, axis=1)
    cell, column = linear_sum_assignment(repeated)
    return float(repeated[cell, column].sum())


def random_costs(seed: int, cells: int, tiles: int, kind: str) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "integer":
        return rng.integers(0, 12, (cells, tiles)).astype(np.float64)
    return rng.standard_normal((cells, tiles))


def contended_costs(seed: int, cells: int, tiles: int) -> np.ndarray:
    """Every cell prefers the same few tiles (a popularity ramp plus a little noise): the cap binds."""
    rng = np.random.default_rng(seed)
    return np.linspace(0.0, 1.0, tiles)[None, :] + 0.05 * rng.standard_normal((cells, tiles))


def assert_certified(result, cost: np.ndarray, cap: int, *, atol: float = 1e-9) -> None:
    """A feasible assignment whose prices are dual feasible with the same objective: optimal."""
    cells = len(cost)
    np.testing.assert_array_equal(result.uses, np.bincount(result.tiles, minlength=cost.shape[1]))
    assert result.uses.max() <= cap
    np.testing.assert_allclose(result.costs, cost[np.arange(cells), result.tiles])
    assert (result.prices >= 0).all() and (result.prices[result.uses < cap] == 0).all()
    assert (cost - result.values[:, None] + result.prices[None, :]).min() >= -atol
    assert result.values.sum() - cap * result.prices.sum() == pytest.approx(result.total, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("cells, tiles, cap", [(60, 25, 3), (300, 1000, 1)])
@pytest.mark.parametrize("kind", ["integer", "float"])
@pytest.mark.parametrize("seed", [0, 1])
def test_total_equals_scipy_with_tiles_repeated(cells, tiles, cap, kind, seed):
    cost = random_costs(seed, cells, tiles, kind)
    result = optimal_assignment(cost, cap)
    assert result.total == pytest.approx(dense_optimum(cost, cap), rel=1e-6, abs=1e-9)
    assert_certified(result, cost, cap)


@pytest.mark.parametrize("cells, tiles, cap", [(60, 25, 3), (300, 1000, 1)])
def test_dense_and_callable_costs_agree(cells, tiles, cap):
    cost = contended_costs(2, cells, tiles).astype(np.float32).astype(np.float64)
    dense = optimal_assignment(cost, cap, top_k=4)
    on_host = optimal_assignment(lambda start, stop: cost[start:stop], cap, shape=cost.shape, top_k=4, block=7 * tiles)
    device_cost = jnp.asarray(cost, jnp.float32)
    rows = jax.jit(lambda start: jax.lax.dynamic_slice_in_dim(device_cost, start, 7))
    on_device = optimal_assignment(lambda start, stop: rows(start), cap, shape=cost.shape, top_k=4, block=7 * tiles)
    assert on_host.total == dense.total
    np.testing.assert_array_equal(on_host.uses, dense.uses)
    assert on_device.total == pytest.approx(dense.total, rel=1e-6)
    assert dense.total == pytest.approx(dense_optimum(cost, cap), rel=1e-6)


@pytest.mark.parametrize("cells, tiles, cap", [(60, 25, 3), (300, 1000, 1)])
def test_the_certificate_adds_the_pairs_too_few_candidates_miss(cells, tiles, cap):
    cost = contended_costs(3, cells, tiles)
    result = optimal_assignment(cost, cap, top_k=1)
    assert result.rounds > 1 and result.pairs_added > 0
    assert result.total == pytest.approx(dense_optimum(cost, cap), rel=1e-6)
    assert_certified(result, cost, cap)
    # started from each cell's most expensive tiles, the certificate still finds the optimum
    worst = np.argsort(-cost, axis=1)[:, :3]
    result = optimal_assignment(cost, cap, candidates=worst, top_k=2)
    assert result.pairs_added > 0 and not np.isin(result.tiles, worst).any()
    assert result.total == pytest.approx(dense_optimum(cost, cap), rel=1e-6)


def test_candidates_too_few_for_the_cap_grow_until_every_cell_is_served():
    cost = contended_costs(4, 60, 20)  # 60 cells, 20 tiles x 3: every tile is full at the optimum
    result = optimal_assignment(cost, 3, top_k=1)
    assert (result.uses == 3).all()
    assert result.total == pytest.approx(dense_optimum(cost, 3), rel=1e-6)
    assert_certified(result, cost, 3)


def test_without_a_binding_cap_each_cell_takes_its_cheapest_tile():
    cost = random_costs(5, 40, 30, "float")
    result = optimal_assignment(cost, 40)
    np.testing.assert_array_equal(result.tiles, np.argmin(cost, axis=1))
    assert result.rounds == 1 and result.pairs_added == 0
    assert_certified(result, cost, 40)


def test_too_few_tiles_for_the_cap_are_refused_before_any_cost_is_computed():
    asked = []

    def cost_block(start, stop):
        asked.append((start, stop))
        return np.zeros((stop - start, 3))

    with pytest.raises(ConfigError) as error:
        optimal_assignment(cost_block, 3, shape=(10, 3))
    assert str(error.value) == "max_uses: 3 with 3 tiles covers only 9 of 10 cells" and asked == []


def test_mosaic_memory_counts_the_sparse_problem():
    greedy = MosaicConfig(cols=100, max_reuse=2)
    optimal = MosaicConfig(cols=100, max_reuse=2, assign="optimal")
    assert mosaic_memory(optimal, (1000, 1000, 3), 64) > mosaic_memory(greedy, (1000, 1000, 3), 64)


def test_mosaic_assign_optimal_reports_both_totals_and_the_default_stays_greedy(tmp_path):
    target = SAMPLES / "coffee.png"
    runs = {}
    for name, extra in [("optimal", ["--assign", "optimal"]), ("default", []), ("greedy", ["--assign", "greedy"])]:
        out, metrics = tmp_path / f"{name}.png", tmp_path / f"{name}.json"
        result = run_cli("mosaic", target, "-o", out, *MOSAIC, "--max-reuse", 1, "--render", 4, "--metrics", metrics, *extra)
        assert result.exit_code == 0, result.output
        runs[name] = (out.read_bytes(), json.loads(metrics.read_text()))
    figures = runs["optimal"][1]["mosaic"]["assignment"]
    cells, tiles = runs["optimal"][1]["mosaic"]["patches"], runs["optimal"][1]["mosaic"]["tiles"]
    assert figures["cost"] <= figures["greedy_cost"] + 1e-6 * abs(figures["greedy_cost"])
    assert figures["rounds"] >= 1 and figures["pairs_added"] >= 0
    for uses in (figures["uses"], figures["greedy_uses"]):  # tiles used 0, 1, ... times: at most the cap of 1
        assert len(uses) <= 2 and sum(uses) == tiles and sum(count * times for times, count in enumerate(uses)) == cells
    assert runs["optimal"][1]["mosaic"]["mean_score"] == pytest.approx(-figures["cost"] / cells, rel=1e-5)
    assert runs["default"][1]["settings"]["assign"] == "greedy" and "assignment" not in runs["default"][1]["mosaic"]
    assert runs["default"][0] == runs["greedy"][0]
    assert runs["default"][1]["mosaic"]["mean_score"] == pytest.approx(-figures["greedy_cost"] / cells, rel=1e-5)


@pytest.mark.parametrize("case", ["distance", "cap"])
def test_mosaic_assign_optimal_refusals_are_one_line(tmp_path, case):
    args = ["--min-distance", 2] if case == "distance" else ["--cols", 60, "--max-reuse", 1]
    result = run_cli("mosaic", SAMPLES / "coffee.png", "-o", tmp_path / "m.png", "--assign", "optimal", *args)
    expected = ["--min-distance", "--assign optimal"] if case == "distance" else ["--max-reuse: 1 with 384 tiles covers only 384"]
    one_line_error(result, *expected)
    assert not (tmp_path / "m.png").exists()
