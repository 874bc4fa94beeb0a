"""One optax loop for every technique that optimises pixels.

A loss `value_fn(params, data) -> scalar` for one problem is minimised by gradient descent, Adam
or L-BFGS (with its zoom line search). Steps run in jitted chunks (a `lax.scan` over `chunk`
steps), so Python is visited once per chunk: for a progress bar, frames of a GIF, checkpoints.
A batch of independent problems is one `vmap` of the chunk: each problem keeps its own optimiser
state (and its own line search), so a batch gives the same results as separate runs.

A step whose loss or update is not finite is not applied, and the problem stops there: the
returned parameters are the last finite ones and `diverged_at` says where it happened.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = ["OPTIMIZERS", "make_optimizer", "make_chunk", "minimize", "ChunkReport", "Outcome"]

OPTIMIZERS = ("sgd", "adam", "lbfgs")


def make_optimizer(name: str, learning_rate: float | None = None) -> optax.GradientTransformation:
    """"sgd" (plain gradient descent), "adam", or "lbfgs" (optax's, with zoom line search; the
    learning rate, if given, scales its step before the line search)."""
    if name == "sgd":
        return optax.sgd(learning_rate)
    if name == "adam":
        return optax.adam(learning_rate)
    if name == "lbfgs":
        return optax.lbfgs(learning_rate=learning_rate)
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def make_chunk(value_fn: Callable, optimizer: optax.GradientTransformation, length: int, *, lbfgs: bool, batched: bool, data_axes=0):
    """A function (params, opt_state, good, data) -> (params, opt_state, good, losses) running
    `length` steps; `losses[i]` is the loss before step i (NaN once a problem has stopped).
    With `batched`, `data_axes` is the `vmap` in_axes of data (e.g. (0, None): shared weights).

    Not jitted here: callers jit (or lower and compile) it once per chunk length.
    """

    def step(params, opt_state, data):
        def value(p):
            return value_fn(p, data)

        if lbfgs:
            loss, grad = optax.value_and_grad_from_state(value)(params, state=opt_state)
            updates, opt_state = optimizer.update(grad, opt_state, params, value=loss, grad=grad, value_fn=value)
        else:
            loss, grad = jax.value_and_grad(value)(params)
            updates, opt_state = optimizer.update(grad, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def chunk(params, opt_state, good, data):
        def body(carry, _):
            params, opt_state, good = carry
            new_params, new_state, loss = step(params, opt_state, data)
            ok = good & jnp.isfinite(loss) & _all_finite(new_params)

            def keep(new, old):
                return jnp.where(ok, new, old)

            carry = (jax.tree_util.tree_map(keep, new_params, params), jax.tree_util.tree_map(keep, new_state, opt_state), ok)
            return carry, jnp.where(good, loss, jnp.nan)

        (params, opt_state, good), losses = jax.lax.scan(body, (params, opt_state, good), None, length=length)
        return params, opt_state, good, losses

    return jax.vmap(chunk, in_axes=(0, 0, 0, data_axes)) if batched else chunk


class ChunkReport(NamedTuple):
    """What a callback sees after each chunk."""

    step: int  # steps done so far
    total: int  # steps asked for
    losses: np.ndarray  # (chunk,) or (chunk, batch): loss before each step of the chunk
    params: Any  # current parameters (device arrays)
    opt_state: Any  # current optimiser state


class Outcome(NamedTuple):
    params: Any  # final parameters: the last finite ones where a problem diverged
    opt_state: Any
    steps: int  # steps run (a diverged problem stopped earlier: see diverged_at)
    history: np.ndarray  # (steps,) or (steps, batch): loss before each step
    diverged_at: np.ndarray | None  # per problem: the step whose loss or update was not finite, or -1
    seconds: float  # wall time of the steps, compilation excluded
    compile_seconds: float


def minimize(
    value_fn: Callable,
    params,
    data,
    *,
    optimizer: str = "sgd",
    learning_rate: float | None = None,
    steps: int,
    chunk: int | None = None,
    batched: bool = False,
    data_axes=0,
    opt_state=None,
    start_step: int = 0,
    callback: Callable[[ChunkReport], None] | None = None,
) -> Outcome:
    """Minimise `value_fn(params, data)` from `params`, in jitted chunks of steps.

    Args:
      value_fn: scalar loss of one problem.
      params: initial parameters (a pytree); with `batched`, every leaf has a leading batch axis.
      data: what the loss needs besides params (a pytree; batched like params when `batched`).
      data_axes: with `batched`, which parts of data have the batch axis (a `vmap` in_axes
        prefix, e.g. (0, None) for per-problem targets and shared network weights).
      optimizer: "sgd", "adam" or "lbfgs"; `learning_rate` as `make_optimizer` takes it.
      steps: number of steps to run from `start_step` to `steps` (steps counts from 0).
      chunk: steps per compiled chunk (default min(50, steps)); the callback runs after each.
      opt_state: resume from this optimiser state (default: a fresh one).
      callback: called with a `ChunkReport` after each chunk; it may raise to stop.

    Returns:
      An `Outcome`. Stops early, after the chunk in which any problem diverged.
    """
    if steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    transform = make_optimizer(optimizer, learning_rate)
    lbfgs = optimizer == "lbfgs"
    if opt_state is None:
        opt_state = jax.vmap(transform.init)(params) if batched else transform.init(params)
    batch = jax.tree_util.tree_leaves(params)[0].shape[0] if batched else None
    good = jnp.ones((batch,) if batched else (), bool)
    chunk = max(1, min(chunk or 50, steps))
    compiled: dict[int, Any] = {}
    compile_seconds = 0.0
    seconds = 0.0
    history = []
    done = start_step
    while done < steps:
        length = min(chunk, steps - done)
        if length not in compiled:
            start = time.perf_counter()
            function = jax.jit(make_chunk(value_fn, transform, length, lbfgs=lbfgs, batched=batched, data_axes=data_axes))
            compiled[length] = function.lower(params, opt_state, good, data).compile()
            compile_seconds += time.perf_counter() - start
        start = time.perf_counter()
        params, opt_state, good, losses = jax.block_until_ready(compiled[length](params, opt_state, good, data))
        seconds += time.perf_counter() - start
        losses = np.asarray(losses)
        if batched:
            losses = losses.T  # vmap puts the batch first: (batch, chunk) -> (chunk, batch)
        history.append(losses)
        done += length
        if callback is not None:
            callback(ChunkReport(done, steps, losses, params, opt_state))
        if not bool(np.all(np.asarray(good))):
            break
    full = np.concatenate(history, axis=0) if history else np.zeros((0,) if not batched else (0, batch))
    diverged = None
    if not bool(np.all(np.asarray(good))):
        bad = ~np.isfinite(full)
        hit = bad.any(axis=0)
        diverged = np.atleast_1d(np.where(hit, bad.argmax(axis=0) + start_step, -1))
    return Outcome(params, opt_state, done, full, diverged, seconds, compile_seconds)
