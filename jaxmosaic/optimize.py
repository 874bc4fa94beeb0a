"""One optax loop for every technique that optimises pixels, and the stages it runs in.

`minimize`: a loss `value_fn(params, data) -> scalar` for one problem is minimised by gradient
descent, Adam or L-BFGS (with its zoom line search). Steps run in jitted chunks (a `lax.scan`
over `chunk` steps), so Python is visited once per chunk: for a progress bar, frames of a GIF,
checkpoints. A batch of independent problems is one `vmap` of the chunk: each problem keeps its
own optimiser state (and its own line search), so a batch gives the same results as separate runs.
A step whose loss or update is not finite is not applied, and the problem stops there: the
returned parameters are the last finite ones and `diverged_at` says where it happened.

`solve`: a technique describes its optimisation as a `Problem` (stages, e.g. coarse to fine
scales; how parameters become images; the loss terms of an image); `solve` runs the stages one
after another with `minimize`, reports a `Progress` after every chunk, resumes from a `Resume`,
and returns a `Solution`. Style transfer, texture synthesis and hybrid images are all solved so.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmosaic.errors import JaxmosaicError

__all__ = [
    "Optimizer",
    "make_optimizer",
    "learning_rate",
    "initial_state",
    "make_chunk",
    "minimize",
    "ChunkReport",
    "Outcome",
    "Stage",
    "Problem",
    "Progress",
    "Resume",
    "Solution",
    "Diverged",
    "solve",
    "per_image",
]


class Optimizer(enum.StrEnum):
    """"sgd" (plain gradient descent), "adam", or "lbfgs" (optax's, with zoom line search)."""

    sgd = "sgd"
    adam = "adam"
    lbfgs = "lbfgs"


def make_optimizer(name: str, learning_rate: float | None = None) -> optax.GradientTransformation:
    """The optax transformation for an `Optimizer` (or its name); for L-BFGS the learning rate,
    if given, scales its step before the line search."""
    try:
        name = Optimizer(name)
    except ValueError:
        raise ValueError(f"optimizer must be one of {', '.join(Optimizer)}, got {name!r}") from None
    if name == Optimizer.sgd:
        return optax.sgd(learning_rate)
    if name == Optimizer.adam:
        return optax.adam(learning_rate)
    return optax.lbfgs(learning_rate=learning_rate)


def learning_rate(optimizer: str, lr: float | None, default: float = 0.02) -> float | None:
    """The learning rate to use: `lr` when given; else none for L-BFGS (its line search sets the
    step) and `default` for the others (on the [0, 1] pixel scale)."""
    return lr if lr is not None or optimizer == Optimizer.lbfgs else default


def _optax_promotion():
    """optax mixes integer and float scalars (Adam's decay ** count, for one), which JAX's strict
    dtype promotion refuses; its updates are traced with the standard rules, whatever the caller's."""
    return jax.numpy_dtype_promotion("standard")


def initial_state(transform: optax.GradientTransformation, params, *, batched: bool = False):
    """A fresh optimiser state for `params` (one per problem when `batched`)."""
    with _optax_promotion():
        return jax.vmap(transform.init)(params) if batched else transform.init(params)


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
            with _optax_promotion():
                updates, opt_state = optimizer.update(grad, opt_state, params, value=loss, grad=grad, value_fn=value)
        else:
            loss, grad = jax.value_and_grad(value)(params)
            with _optax_promotion():
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
      optimizer: an `Optimizer` or its name; `learning_rate` as `make_optimizer` takes it.
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
    lbfgs = optimizer == Optimizer.lbfgs
    if opt_state is None:
        opt_state = initial_state(transform, params, batched=batched)
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


class Stage(NamedTuple):
    """One leg of an optimisation, e.g. one scale of a coarse-to-fine run."""

    label: str  # what it is, for people: e.g. "256x256"
    start: Callable[[Any], Any]  # the previous stage's final params (None before the first) -> start params
    value_fn: Callable  # loss of one problem: (params, data) -> scalar
    data: Any  # what the loss needs besides params
    data_axes: Any = 0  # for a batched problem: the `vmap` in_axes of data


class Problem(NamedTuple):
    """An optimisation as a technique describes it to `solve`."""

    stages: Sequence[Callable[[], Stage]]  # built one at a time, in order (a resumed run skips the first ones)
    steps: tuple[int, ...]  # steps of each stage
    optimizer: str
    learning_rate: float | None
    batched: bool  # params have a leading problem axis; each problem keeps its own optimiser state
    count: int  # images the problem produces
    view: Callable[[Any], Any]  # params -> images (count, H, W, C) in [0, 1]
    finish: Callable[[Any], Any]  # the last view -> the final images (e.g. original colours kept)
    terms: Callable[[Any], list]  # images -> per image {"total": ..., <term>: ...}, the reported losses
    initial: Any = None  # params before the first stage; for a problem without stages, the answer
    facts: dict = {}  # values the technique derived from its settings (reported in the metrics)
    notes: tuple = ()  # lines worth telling the user before the work starts


class Progress(NamedTuple):
    """What `solve`'s callback sees after every chunk of steps."""

    stage: int  # index of the current stage
    label: str  # the stage's label
    step: int  # steps done in this stage (counted from 0 when the stage started fresh)
    steps: int  # steps asked for in this stage
    done: int  # steps done over all stages
    total: int  # steps asked for over all stages
    losses: np.ndarray  # loss before each step of the chunk: (chunk,) or (chunk, count)
    params: Any
    opt_state: Any


class Resume(NamedTuple):
    """Where to pick an interrupted `solve` up: a stage, its step, and the optimiser's state there."""

    stage: int
    step: int
    params: Any
    opt_state: Any


class Solution(NamedTuple):
    images: np.ndarray  # (count, H, W, C) in [0, 1]
    loss: list[dict]  # per image: the technique's terms of the returned image, "total" included
    steps: int  # steps run by this call, over all stages
    history: list[np.ndarray]  # per stage run: the loss before each step, (steps,) or (steps, count)
    seconds: float  # wall time of the steps, compilation excluded
    compile_seconds: float
    params: Any  # the final parameters (the last finite ones of a diverged run)
    opt_state: Any
    stage: int  # the last stage run
    facts: dict = {}  # the problem's derived values (e.g. a calibrated loss weight)


class Diverged(JaxmosaicError, FloatingPointError):
    """A loss or update stopped being finite; `solution` holds the last finite images."""

    def __init__(self, message: str, solution: Solution):
        super().__init__(message)
        self.solution = solution


def solve(problem: Problem, *, callback: Callable[[Progress], None] | None = None, resume: Resume | None = None,
          chunk: int | None = None) -> Solution:
    """Run the problem's stages in order (each from the previous one's result) and return the
    final images with their loss terms.

    Args:
      problem: what to optimise.
      callback: called with a `Progress` after each chunk; it may raise to stop the run.
      resume: continue at this stage and step with this state instead of starting over.
      chunk: steps per compiled chunk (default: `minimize`'s).

    Raises:
      Diverged: a loss or update stopped being finite; the error holds the last finite images.
    """
    first = resume.stage if resume is not None else 0
    total = sum(problem.steps)
    params, opt_state = problem.initial, None
    history, steps, seconds, compile_seconds = [], 0, 0.0, 0.0
    index = first
    for index in range(first, len(problem.stages)):
        stage = problem.stages[index]()
        before = sum(problem.steps[:index])
        start_step, state = 0, None
        if resume is not None and index == first:
            x, start_step, state = resume.params, resume.step, resume.opt_state
        else:
            x = stage.start(params)

        def report(chunk_report: ChunkReport, stage=stage, index=index, before=before) -> None:
            if callback is not None:
                callback(Progress(index, stage.label, chunk_report.step, chunk_report.total, before + chunk_report.step,
                                  total, chunk_report.losses, chunk_report.params, chunk_report.opt_state))

        outcome = minimize(stage.value_fn, x, stage.data, optimizer=problem.optimizer, learning_rate=problem.learning_rate,
                           steps=problem.steps[index], chunk=chunk, batched=problem.batched, data_axes=stage.data_axes,
                           opt_state=state, start_step=start_step, callback=report)
        params, opt_state = outcome.params, outcome.opt_state
        history.append(outcome.history)
        steps += outcome.steps - start_step
        seconds += outcome.seconds
        compile_seconds += outcome.compile_seconds
        if outcome.diverged_at is not None:
            solution = _solution(problem, params, opt_state, steps, history, seconds, compile_seconds, index)
            where = int(np.max(outcome.diverged_at))
            place = f" of stage {stage.label}" if len(problem.stages) > 1 else ""
            raise Diverged(f"the optimisation diverged at step {where}{place} (loss not finite)", solution)
    return _solution(problem, params, opt_state, steps, history, seconds, compile_seconds, index)


def _solution(problem, params, opt_state, steps, history, seconds, compile_seconds, stage) -> Solution:
    images = problem.finish(problem.view(params))
    return Solution(np.asarray(images), problem.terms(images), steps, history, seconds, compile_seconds, params,
                    opt_state, stage, problem.facts)


def per_image(loss: tuple) -> list[dict]:
    """A vmapped loss's (totals (n,), {term: (n,)}) as [{"total": float, term: float}] per image."""
    totals, parts = loss
    values = {"total": np.asarray(totals), **{name: np.asarray(value) for name, value in parts.items()}}
    return [{name: float(value[i]) for name, value in values.items()} for i in range(len(values["total"]))]
