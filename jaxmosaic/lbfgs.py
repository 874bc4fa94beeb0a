"""L-BFGS for a batch of independent problems, each with its own curvature memory and step length.

Every problem of the batch is optimised as if it were alone: the preconditioner is optax's
`scale_by_lbfgs`, applied to each problem with its own memory, and the line search is a
bracketing search for the weak Wolfe conditions (Armijo's sufficient decrease, c1 = 1e-4, and
the curvature condition, c2 = 0.9) with one step length per problem, starting at 1, extrapolating
by 4 until the condition brackets and bisecting after that. All the trial points of a
line-search iteration are evaluated together, in one call of the natively batched loss, and the
loss and gradient at the accepted point are those the next step starts from, so a step whose
first trial is accepted costs one evaluation.

Parameters are pytrees whose leaves have a leading problem axis (B, ...); the loss of a batch is
`value_and_grad(params) -> ((B,) losses, gradients like params)`, where problem i's loss depends
on problem i's parameters only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from jaxmosaic._problems import broadcast, count, finite, per_problem_dot, problem, select, stack

__all__ = ["LBFGSState", "BatchedLBFGS", "batched_lbfgs"]


class LBFGSState(NamedTuple):
    """The batched L-BFGS state: a curvature memory, the loss and gradient, and a count per problem."""

    memory: Any  # optax's ScaleByLBFGSState, one per problem (a leading problem axis on every leaf)
    value: jax.Array  # (B,) float: the loss at the current parameters
    grad: Any  # like params: the gradient there
    evaluations: jax.Array  # (B,) int32: loss-and-gradient evaluations each problem has needed


class BatchedLBFGS(NamedTuple):
    """The batched L-BFGS's pure `init` and `step` (see the module doc)."""

    init: Callable  # (params, value (B,), grad) -> LBFGSState
    step: Callable  # (value_and_grad, params, state, active (B,)) -> (params, state, value before the step (B,))


def batched_lbfgs(learning_rate: float | None = None, memory_size: int = 10, *, max_linesearch_steps: int = 20,
                  slope_rtol: float = 1e-4, curv_rtol: float = 0.9) -> BatchedLBFGS:
    """The batched L-BFGS (see the module doc).

    Args:
      learning_rate: scales each direction before the line search (None: 1), as optax.lbfgs does.
      memory_size: curvature pairs kept per problem.
      max_linesearch_steps: trial points per step at most; a problem whose search finds no point
        of sufficient decrease stays where it is for that step.
      slope_rtol, curv_rtol: the Wolfe constants c1 and c2.
    """
    preconditioner = optax.scale_by_lbfgs(memory_size=memory_size)
    scale = 1.0 if learning_rate is None else learning_rate

    def init(params, value, grad) -> LBFGSState:
        with jax.numpy_dtype_promotion("standard"):  # optax mixes int and float scalars
            memory = stack([preconditioner.init(problem(params, i)) for i in range(count(params))])
        return LBFGSState(memory, value, grad, jnp.zeros(value.shape, jnp.int32))

    def search(value_and_grad, x, f, g, d, slope, active):
        """A bracketing search for the weak Wolfe conditions, all active problems at once."""
        batch = f.shape[0]

        def point(t):
            return jax.tree_util.tree_map(lambda xl, dl: xl + broadcast(t, xl) * dl, x, d)

        def condition(carry):
            k, done = carry[0], carry[4]
            return (k < max_linesearch_steps) & ~jnp.all(done)

        def body(carry):
            k, t, lo, hi, done, best, used = carry
            searching = ~done
            trial = point(t)
            f_try, g_try = value_and_grad(trial)
            finite_try = jnp.isfinite(f_try) & finite(g_try)
            armijo = finite_try & (f_try <= f + slope_rtol * t * slope)
            curvature = per_problem_dot(g_try, d) >= curv_rtol * slope
            better = searching & armijo  # a point of sufficient decrease: the best so far
            best = select(better, (trial, f_try, g_try), best)
            done = done | (better & curvature)
            hi = jnp.where(searching & ~armijo, t, hi)
            lo = jnp.where(searching & armijo & ~curvature, t, lo)
            t = jnp.where(done, t, jnp.where(jnp.isfinite(hi), 0.5 * (lo + hi), 4.0 * t))
            return k + 1, t, lo, hi, done, best, used + searching.astype(jnp.int32)

        ones = jnp.ones((batch,), f.dtype)
        carry = (0, ones, 0 * ones, jnp.full((batch,), jnp.inf, f.dtype), ~active, (x, f, g), jnp.zeros((batch,), jnp.int32))
        carry = lax.while_loop(condition, body, carry)
        return carry[5], carry[6]

    def step(value_and_grad, params, state: LBFGSState, active=None):
        """One step of every problem; problems not `active` (stopped), or without a finite loss, do
        not search."""
        active = jnp.isfinite(state.value) & (True if active is None else active)  # a problem with no finite loss cannot search
        value, grad = state.value, state.grad
        with jax.numpy_dtype_promotion("standard"):  # each problem's preconditioning on its own, as for `per_problem_dot`
            pairs = [preconditioner.update(problem(grad, i), problem(state.memory, i), problem(params, i))
                     for i in range(count(params))]
        preconditioned, memory = stack([pair[0] for pair in pairs]), stack([pair[1] for pair in pairs])
        direction = jax.tree_util.tree_map(lambda u: -scale * u, preconditioned)
        slope = per_problem_dot(grad, direction)
        # where the curvature memory gives no descent direction, fall back to scaled steepest descent
        norm = jnp.sqrt(per_problem_dot(grad, grad))
        descent = jnp.isfinite(slope) & (slope < 0)
        steepest = jax.tree_util.tree_map(lambda gl: -broadcast(jnp.minimum(1.0, 1.0 / norm), gl) * gl, grad)
        direction = select(descent, direction, steepest)
        slope = per_problem_dot(grad, direction)
        (params, value_new, grad_new), used = search(value_and_grad, params, value, grad, direction, slope, active)
        return params, LBFGSState(memory, value_new, grad_new, state.evaluations + used), value

    return BatchedLBFGS(init, step)
