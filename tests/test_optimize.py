"""The shared optax loop: against scipy, batched, the NaN guard, one compilation per chunk length."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from jaxmosaic.optimize import minimize


def rosenbrock(x, data):
    scale = data
    return jnp.sum(scale * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)


def test_lbfgs_reaches_scipy_minimum():
    start = np.array([-1.2, 1.0, -0.5, 0.8], np.float32)
    value_and_grad = jax.value_and_grad(rosenbrock)

    def scipy_objective(v):
        value, grad = value_and_grad(jnp.asarray(v, jnp.float32), 100.0)
        return float(value), np.asarray(grad, np.float64)

    expected = scipy.optimize.minimize(scipy_objective, start, jac=True, method="L-BFGS-B")
    assert expected.success
    ours = minimize(rosenbrock, jnp.asarray(start), 100.0, optimizer="lbfgs", steps=200, chunk=25)
    np.testing.assert_allclose(np.asarray(ours.params), expected.x, atol=2e-3)
    assert float(rosenbrock(ours.params, 100.0)) <= expected.fun + 1e-6
    finite = ours.history[np.isfinite(ours.history)]
    assert np.all(np.diff(finite) <= 1e-6)  # L-BFGS's accepted steps never raise the loss


def test_batched_problems_are_independent():
    starts = jnp.asarray([[-1.2, 1.0], [0.5, 0.5], [2.0, 2.0]], jnp.float32)
    scales = jnp.asarray([100.0, 10.0, 1.0])
    together = minimize(rosenbrock, starts, scales, optimizer="lbfgs", steps=40, batched=True, chunk=8)
    for i in range(3):
        alone = minimize(rosenbrock, starts[i], scales[i], optimizer="lbfgs", steps=40, chunk=8)
        np.testing.assert_allclose(np.asarray(together.params[i]), np.asarray(alone.params), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(together.history[:, i], alone.history, rtol=1e-5)


def test_nan_guard_keeps_the_last_finite_params():
    def explode(x, data):
        return jnp.sum(jnp.exp(x * data))

    seen = []
    out = minimize(explode, jnp.ones(2), 1.0, optimizer="sgd", learning_rate=-100.0, steps=50, chunk=10,
                   callback=lambda report: seen.append(report.step))
    assert out.diverged_at is not None and int(out.diverged_at[0]) == 1
    assert out.steps == 10 and seen == [10]  # stopped after the chunk where it happened
    assert np.all(np.isfinite(np.asarray(out.params)))
    assert float(out.params[0]) == pytest.approx(1 + 100 * np.e, rel=1e-5)  # the one finite step


def test_chunks_compile_once_per_length():
    traces = []

    def quadratic(x, data):
        traces.append(1)
        return jnp.sum((x - data) ** 2)

    minimize(quadratic, jnp.zeros(3), jnp.ones(3), optimizer="adam", learning_rate=0.1, steps=20, chunk=10)
    two_chunks = len(traces)
    traces.clear()
    minimize(quadratic, jnp.zeros(3), jnp.ones(3), optimizer="adam", learning_rate=0.1, steps=60, chunk=10)
    assert len(traces) == two_chunks  # six chunks, traced as often as two
    traces.clear()
    minimize(quadratic, jnp.zeros(3), jnp.ones(3), optimizer="adam", learning_rate=0.1, steps=25, chunk=10)
    assert len(traces) == 2 * two_chunks  # a shorter last chunk is a second program


def test_bad_arguments():
    with pytest.raises(ValueError, match="steps"):
        minimize(rosenbrock, jnp.zeros(2), 1.0, steps=0)
    with pytest.raises(ValueError, match="optimizer"):
        minimize(rosenbrock, jnp.zeros(2), 1.0, optimizer="newton", steps=3)
