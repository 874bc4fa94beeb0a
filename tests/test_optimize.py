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
    together = minimize(jax.vmap(rosenbrock), starts, scales, optimizer="lbfgs", steps=40, batched=True, data_axes=0, chunk=8)
    for i in range(3):
        alone = minimize(rosenbrock, starts[i], scales[i], optimizer="lbfgs", steps=40, chunk=8)
        np.testing.assert_allclose(np.asarray(together.params[i]), np.asarray(alone.params), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(together.history[:, i], alone.history, rtol=1e-5)
        assert together.evaluations[i] == alone.evaluations[0]


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_a_batch_evaluated_in_groups_equals_the_whole_batch(optimizer):
    # group k: the loss of k problems at a time, one group after another; per-problem data is
    # split with the problems, shared data is seen whole by every group
    starts = jnp.asarray([[-1.2, 1.0, 0.3], [0.5, 0.5, 0.5], [2.0, 2.0, -1.0], [0.0, -0.7, 1.1]], jnp.float32)
    data = (jnp.asarray([100.0, 10.0, 1.0, 30.0]), jnp.asarray([0.25, -0.5, 1.0]))

    def losses(x, data):  # each problem's sum its own (a vmap may sum in another order at another batch size)
        scales, offset = data
        return jnp.stack([rosenbrock(x[i] + offset, scales[i]) for i in range(x.shape[0])])

    settings = dict(optimizer=optimizer, learning_rate=0.05 if optimizer == "adam" else None,
                    steps=20 if optimizer == "adam" else 5, batched=True, data_axes=(0, None), chunk=10)
    whole = minimize(losses, starts, data, **settings)
    for group in (1, 2, 3):  # 3 does not divide 4: groups of 2
        grouped = minimize(losses, starts, data, group=group, **settings)
        if optimizer == "adam":
            np.testing.assert_allclose(np.asarray(grouped.params), np.asarray(whole.params), rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(grouped.history, whole.history, rtol=1e-6)
        else:  # XLA's CPU code rounds 3 elements and 12 differently in the last bit (1.2e-7 after
            # one step), which Rosenbrock's valley amplifies through the line searches (7e-5 after 20)
            np.testing.assert_allclose(np.asarray(grouped.params), np.asarray(whole.params), atol=1e-5)
            np.testing.assert_allclose(grouped.history, whole.history, rtol=1e-5)
            np.testing.assert_array_equal(grouped.evaluations, whole.evaluations)
    assert float(whole.history[-1].sum()) < 0.5 * float(whole.history[0].sum())  # it went somewhere


def test_group_is_the_largest_divisor_of_the_batch():
    from jaxmosaic.optimize import problem_group

    assert [problem_group(g, 8) for g in (None, 1, 2, 3, 4, 5, 7, 8, 9)] == [None, 1, 2, 2, 4, 4, 4, None, None]
    assert problem_group(2, 7) == 1
    with pytest.raises(ValueError, match="group"):
        problem_group(0, 4)


def test_images_per_call_on_a_cpu_make_up_256_by_256_pixels():
    from jaxmosaic.vgg import images_per_call

    assert jax.default_backend() == "cpu"
    assert [images_per_call(s, s) for s in (32, 64, 128, 192, 256, 512)] == [64, 16, 4, 1, 1, 1]
    assert images_per_call(128, 256) == 2


def test_lbfgs_evaluations_are_counted_as_the_loss_runs():
    calls = []

    def counted(x, data):
        jax.debug.callback(lambda: calls.append(1))
        return rosenbrock(x, data)

    alone = minimize(counted, jnp.asarray([-1.2, 1.0, -0.5]), 100.0, optimizer="lbfgs", steps=30, chunk=10)
    assert len(calls) == int(alone.evaluations[0])  # one problem: every evaluation is its own
    assert len(calls) <= 1.5 * 30 + 1
    calls.clear()
    batch = minimize(jax.vmap(counted), jnp.asarray([[-1.2, 1.0], [0.5, 0.5]]), jnp.asarray([100.0, 1.0]),
                     optimizer="lbfgs", steps=30, batched=True, data_axes=0, chunk=10)
    # a batch evaluates all its problems at once: as often as its most demanding problem needs, at most
    assert max(batch.evaluations) <= len(calls) <= sum(batch.evaluations)


def test_a_diverging_problem_stops_alone():
    def explode(x, data):
        return jnp.sum(jnp.exp(x * data), axis=1)

    out = minimize(explode, jnp.ones((2, 2)), jnp.asarray([[1.0], [0.0]]), optimizer="sgd", learning_rate=-100.0, steps=30,
                   chunk=10, batched=True, data_axes=0)
    assert out.diverged_at.tolist() == [1, -1] and out.steps == 30
    assert np.all(np.isfinite(out.history[:, 1])) and np.all(np.isnan(out.history[2:, 0]))
    assert np.all(np.isfinite(np.asarray(out.params)))


def test_nan_guard_keeps_the_last_finite_params():
    def explode(x, data):
        return jnp.sum(jnp.exp(x * data))

    seen = []
    out = minimize(explode, jnp.ones(2), 1.0, optimizer="sgd", learning_rate=-100.0, steps=50, chunk=10,
                   callback=lambda report: seen.append(report.step))
    assert out.diverged_at is not None and int(out.diverged_at[0]) == 1
    assert out.steps == 10 and seen == [10]  # stopped after the chunk where it happened: nothing else runs
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


def test_an_lbfgs_problem_that_stopped_costs_the_batch_nothing():
    calls = []

    def counted(x, data):
        jax.debug.callback(lambda: calls.append(1))
        return jax.vmap(rosenbrock)(x, data)

    starts = jnp.asarray([[-1.2, 1.0], [0.5, 0.5]], jnp.float32)
    out = minimize(counted, starts, jnp.asarray([jnp.nan, 1.0]), optimizer="lbfgs", steps=30, batched=True, data_axes=0,
                   chunk=10)
    assert out.diverged_at.tolist() == [0, -1]  # the NaN problem stops at once, the other runs on
    assert float(rosenbrock(out.params[1], 1.0)) < 1e-6
    # the stopped problem is never searched for again: the batch evaluates about as often as the healthy problem needs
    assert len(calls) <= int(out.evaluations[1]) + 2
