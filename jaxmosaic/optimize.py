"""The loop every technique that optimises pixels runs: `minimize`.

A batch of independent problems is minimised by gradient descent, Adam (optax) or L-BFGS
(`jaxmosaic.lbfgs`: one curvature memory and one line search per problem). The loss is evaluated
natively for the whole batch, `value_fn(params, data) -> (B,)` with a leading problem axis on the
parameters, so a network sees one NHWC batch; the gradient of the summed losses is each
problem's own gradient. Steps run in jitted chunks (a `lax.scan` over `chunk` steps), so Python
is visited once per chunk: for a progress bar, frames of a GIF, checkpoints. A problem whose loss
or update stops being finite stops alone: its parameters stay the last finite ones and
`diverged_at` says where it happened. Placement on several devices is `jaxmosaic.sharding`'s;
stages of a technique are `jaxmosaic.stages`'s, tiles `jaxmosaic.refine`'s.
"""

from __future__ import annotations

import enum
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from jaxmosaic._problems import count, finite, per_problem_leaves, select
from jaxmosaic.lbfgs import batched_lbfgs
from jaxmosaic.sharding import distribute, pad_problems, sharded_by_problem, unpad_problems

__all__ = [
    "Optimizer",
    "make_optimizer",
    "learning_rate",
    "init_state",
    "state_like",
    "batched_value_and_grad",
    "problem_group",
    "make_chunk",
    "compile_timed",
    "compile_once",
    "divergence",
    "merge_divergence",
    "minimize",
    "ChunkReport",
    "Outcome",
]


class Optimizer(enum.StrEnum):
    """"sgd" (plain gradient descent), "adam", or "lbfgs" (batched, with a Wolfe line search)."""

    sgd = "sgd"
    adam = "adam"
    lbfgs = "lbfgs"


def make_optimizer(name: str, learning_rate: float | None = None):
    """optax's transformation for "sgd" or "adam", or the batched L-BFGS (`jaxmosaic.lbfgs`;
    the learning rate, if given, scales its direction before the line search)."""
    try:
        name = Optimizer(name)
    except ValueError:
        raise ValueError(f"optimizer must be one of {', '.join(Optimizer)}, got {name!r}") from None
    if name == Optimizer.sgd:
        return optax.sgd(learning_rate)
    if name == Optimizer.adam:
        return optax.adam(learning_rate)
    return batched_lbfgs(learning_rate)


def learning_rate(optimizer: str, lr: float | None, default: float = 0.02) -> float | None:
    """The learning rate to use: `lr` when given; else none for L-BFGS (its line search sets the
    step) and `default` for the others (on the [0, 1] pixel scale)."""
    return lr if lr is not None or optimizer == Optimizer.lbfgs else default


def _standard_promotion():
    """optax mixes integer and float scalars (Adam's decay ** count, for one), which JAX's strict
    dtype promotion refuses; its updates are traced with the standard rules, whatever the caller's."""
    return jax.numpy_dtype_promotion("standard")


def init_state(transform, params, *, value_and_grad: Callable | None = None):
    """A fresh optimiser state for a batch of `params`. L-BFGS (`value_and_grad` given) starts
    from the losses and gradients at `params`, and that evaluation is counted."""
    if value_and_grad is None:
        with _standard_promotion():
            return transform.init(params)
    value, grad = value_and_grad(params)
    with _standard_promotion():
        state = transform.init(params, value, grad)
    return state._replace(evaluations=state.evaluations + 1)


def state_like(optimizer: str, lr: float | None, params):
    """An optimiser state of the structure, shapes and dtypes `minimize` makes for `params`
    (a leading problem axis on every leaf): what a checkpoint is restored into."""
    transform = make_optimizer(optimizer, lr)
    zeros = None
    if Optimizer(optimizer) == Optimizer.lbfgs:
        first = jax.tree_util.tree_leaves(params)[0]
        zeros = lambda p: (jnp.zeros((count(p),), first.dtype), jax.tree_util.tree_map(jnp.zeros_like, p))  # noqa: E731
    return init_state(transform, params, value_and_grad=zeros)


def batched_value_and_grad(value_fn: Callable, data, *, data_axes=None, group: int | None = None) -> Callable:
    """params -> ((B,) losses, gradients): the gradient of the summed losses, which is each
    problem's own gradient since problem i's loss depends on its own parameters only.

    With `group` (a divisor of B below it, as `problem_group` gives), the batch is evaluated
    `group` problems at a time, one group after the other in a `lax.map`, each group's losses
    and gradients at once; the parts of data with the problem axis (`data_axes`) are split with
    the params."""

    def whole(params, data):
        def total(params):
            values = value_fn(params, data)
            return jnp.sum(values), values

        (_, values), grads = jax.value_and_grad(total, has_aux=True)(params)
        return values, grads

    def value_and_grad(params):
        if group is None:
            return whole(params, data)
        batch = count(params)
        per_problem = per_problem_leaves(data_axes, data)
        split = lambda leaf: leaf.reshape((batch // group, group) + leaf.shape[1:])  # noqa: E731
        own = jax.tree_util.tree_map(lambda sharded, leaf: split(leaf) if sharded else None, per_problem, data)
        merge = lambda sharded, mine, leaf: mine if sharded else leaf  # noqa: E731

        def evaluate(args):
            params, mine = args
            return whole(params, jax.tree_util.tree_map(merge, per_problem, mine, data, is_leaf=lambda x: x is None))

        values, grads = jax.lax.map(evaluate, (jax.tree_util.tree_map(split, params), own))
        return values.reshape(batch), jax.tree_util.tree_map(lambda g, p: g.reshape(p.shape), grads, params)

    return value_and_grad


def problem_group(group: int | None, batch: int) -> int | None:
    """The largest divisor of `batch` that is at most `group` (None: the whole batch at once)."""
    if group is None or group >= batch:
        return None
    if group < 1:
        raise ValueError(f"group must be a positive integer, got {group}")
    return max(k for k in range(1, group + 1) if batch % k == 0)


def make_chunk(value_fn: Callable, optimizer, length: int, *, lbfgs: bool, data_axes=None, group: int | None = None):
    """A function (params, opt_state, good, data) -> (params, opt_state, good, losses) running
    `length` steps of a batch of problems; `losses[i]` holds each problem's loss before step i
    (NaN once a problem has stopped); the loss evaluated `group` problems at a time (see
    `batched_value_and_grad`). Not jitted here: callers jit it once per chunk length."""

    def step(params, opt_state, good, data):
        value_and_grad = batched_value_and_grad(value_fn, data, data_axes=data_axes, group=group)
        if lbfgs:
            return optimizer.step(value_and_grad, params, opt_state, good)
        values, grads = value_and_grad(params)
        with _standard_promotion():
            updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, values

    def chunk(params, opt_state, good, data):
        def body(carry, _):
            params, opt_state, good = carry
            new_params, new_state, values = step(params, opt_state, good, data)
            ok = good & jnp.isfinite(values) & finite(new_params)
            carry = (select(ok, new_params, params), select(ok, new_state, opt_state), ok)
            return carry, jnp.where(good, values, jnp.nan)

        (params, opt_state, good), losses = jax.lax.scan(body, (params, opt_state, good), None, length=length)
        return params, opt_state, good, losses

    return chunk


def compile_timed(function: Callable, *args) -> tuple[Any, float]:
    """(`function` jitted and compiled for `args`, the seconds compiling took)."""
    start = time.perf_counter()
    compiled = jax.jit(function).lower(*args).compile()
    return compiled, time.perf_counter() - start


_COMPILED: OrderedDict = OrderedDict()  # (key, abstract arguments) -> compiled function
_COMPILED_KEEP = 16


def _abstract(tree) -> tuple:
    """What a compiled function is specialised to: the tree's structure and every leaf's shape,
    dtype, weak type and placement."""
    leaves, structure = jax.tree_util.tree_flatten(tree)
    return structure, tuple((np.shape(leaf), jnp.result_type(leaf), bool(getattr(leaf, "weak_type", False)),
                             getattr(leaf, "sharding", None)) for leaf in leaves)


def compile_once(key, build: Callable[[], Callable], *args) -> tuple[Any, float]:
    """(`build()` jitted and compiled for `args`, the seconds compiling took), reusing an earlier
    compilation for the same `key` and arguments of the same shapes, dtypes and placement (0
    seconds then). `key` must name everything the built function depends on besides its
    arguments; an unhashable key compiles every time. The last few compilations are kept."""
    try:
        whole = (key, _abstract(args))
        hash(whole)
    except TypeError:
        return compile_timed(build(), *args)
    if whole in _COMPILED:
        _COMPILED.move_to_end(whole)
        return _COMPILED[whole], 0.0
    compiled, took = compile_timed(build(), *args)
    _COMPILED[whole] = compiled
    while len(_COMPILED) > _COMPILED_KEEP:
        _COMPILED.popitem(last=False)
    return compiled, took


def _reuse_key(value_fn: Callable, *parts):
    """A `compile_once` key for steps of `value_fn`, or an unhashable one (compile every time)
    unless value_fn says it is equal to every value function that computes the same loss (a
    closure is not: keeping it alive in the cache would keep what it holds)."""
    return (value_fn, *parts) if getattr(value_fn, "reusable", False) else [value_fn]


def divergence(losses: np.ndarray, stopped: np.ndarray, *, offset: int = 0) -> np.ndarray:
    """Per problem of `losses` (steps, B): `offset` plus the first step whose loss was not finite
    where `stopped`, else -1."""
    return np.where(stopped, np.argmax(~np.isfinite(losses), axis=0) + offset, -1)


def merge_divergence(earlier: np.ndarray, later: np.ndarray | None, *, offset: int = 0) -> np.ndarray:
    """Where each problem first diverged: `earlier`, else `later` (shifted by `offset`), else -1."""
    if later is None:
        return earlier
    return np.where((earlier < 0) & (later >= 0), later + offset, earlier)


class ChunkReport(NamedTuple):
    """What a callback sees after each chunk."""

    step: int  # steps done so far
    total: int  # steps asked for
    losses: np.ndarray  # (chunk,) or (chunk, batch): loss before each step of the chunk
    params: Any  # current parameters (device arrays)
    opt_state: Any  # current optimiser state


class Outcome(NamedTuple):
    """What `minimize` returns."""

    params: Any  # final parameters: the last finite ones where a problem diverged
    opt_state: Any
    steps: int  # steps run (a diverged problem stopped earlier: see diverged_at)
    history: np.ndarray  # (steps,) or (steps, batch): loss before each step
    diverged_at: np.ndarray | None  # per problem: the step whose loss or update was not finite, or -1
    seconds: float  # wall time of the steps, compilation excluded
    compile_seconds: float
    evaluations: np.ndarray | None = None  # L-BFGS: loss-and-gradient evaluations of each problem in this call


def minimize(value_fn: Callable, params, data, *, optimizer: str = "sgd", learning_rate: float | None = None, steps: int,
             chunk: int | None = None, batched: bool = False, data_axes=None, opt_state=None, start_step: int = 0,
             callback: Callable[[ChunkReport], None] | None = None, mesh: Mesh | None = None, split: str = "problems",
             group: int | None = None) -> Outcome:
    """Minimise from `params`, in jitted chunks of steps.

    Args:
      value_fn: without `batched`, the scalar loss of one problem, `value_fn(params, data)`;
        with `batched`, the losses of a batch of problems at once: params with a leading
        problem axis -> (B,), problem i's loss depending on problem i's params only (a network
        then sees the batch natively).
      params: initial parameters (a pytree; with `batched`, every leaf has the problem axis).
      data: what the loss needs besides params (a pytree).
      data_axes: with `batched`, which parts of data have the problem axis (0) and which are
        shared (None), as a prefix of data's structure; used to pad and shard them.
      optimizer: an `Optimizer` or its name; `learning_rate` as `make_optimizer` takes it.
      steps: number of steps to run from `start_step` to `steps` (steps counts from 0).
      chunk: steps per compiled chunk (default min(50, steps)); the callback runs after each.
      opt_state: resume from this optimiser state (default: a fresh one).
      callback: called with a `ChunkReport` after each chunk; it may raise to stop.
      mesh: a `jax.sharding.Mesh` with one axis "devices" (see `jaxmosaic.sharding.device_mesh`):
        the problem axis is sharded over it, padded with copies of the first problem to a
        multiple of its size (the copies are dropped from what is returned); with
        split="height" the image's height is sharded instead (one problem; XLA adds the halos
        the convolutions need).
      group: evaluate the loss of at most this many problems at once (of each device's
        problems with a mesh), one group after another inside the jitted step; the group is
        the largest divisor of the batch not above it. None (default): all at once. On a CPU
        a network is faster on a few large images at a time (`jaxmosaic.vgg.images_per_call`).

    Returns:
      An `Outcome`. A problem whose loss or update stops being finite stops alone (the others
      go on); the loop ends early after the chunk in which every problem has stopped.
    """
    if steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    run = dict(optimizer=optimizer, learning_rate=learning_rate, steps=steps, chunk=chunk, start_step=start_step)
    if batched:
        return _minimize_batch(value_fn, params, data, **run, data_axes=data_axes, opt_state=opt_state, callback=callback,
                               mesh=mesh, split=split, group=group)
    one = jax.tree_util.tree_map(lambda leaf: jnp.asarray(leaf)[None], params)
    if opt_state is not None:  # the problem axis added where a batch's state has one
        like = state_like(optimizer, learning_rate, one)
        opt_state = jax.tree_util.tree_map(lambda leaf, model: jnp.asarray(leaf)[None] if jnp.ndim(model) == jnp.ndim(leaf) + 1
                                           else jnp.asarray(leaf), opt_state, like)
    report = None if callback is None else lambda r: callback(r._replace(losses=r.losses[:, 0], params=_first(r.params),
                                                                         opt_state=_first(r.opt_state)))
    outcome = _minimize_batch(lambda p, d: value_fn(_first(p), d)[None], one, data, **run, data_axes=None,
                              opt_state=opt_state, callback=report, mesh=None, split="problems", group=None)
    return outcome._replace(params=_first(outcome.params), opt_state=_first(outcome.opt_state), history=outcome.history[:, 0])


def _first(tree):
    """The first problem of every leaf with a problem axis."""
    return jax.tree_util.tree_map(lambda leaf: leaf[0] if getattr(leaf, "ndim", 0) else leaf, tree)


def _minimize_batch(value_fn: Callable, params, data, *, optimizer, learning_rate, steps, chunk, start_step, data_axes,
                    opt_state, callback, mesh, split, group) -> Outcome:
    """`minimize` of a batch of problems (every leaf of params with the problem axis)."""
    transform = make_optimizer(optimizer, learning_rate)
    lbfgs = Optimizer(optimizer) == Optimizer.lbfgs
    batch = count(params)
    params, data, size = distribute(params, data, data_axes, mesh, split)
    group = problem_group(group, size // mesh.size if mesh is not None and split == "problems" else size)
    compile_seconds, seconds = 0.0, 0.0
    evaluations_before = np.zeros(batch, np.int64)  # the evaluation of a fresh L-BFGS state counts
    if opt_state is None and lbfgs:
        fresh = lambda p, d: init_state(transform, p, value_and_grad=batched_value_and_grad(value_fn, d, data_axes=data_axes, group=group))  # noqa: E731
        key = _reuse_key(value_fn, "lbfgs-start", str(optimizer), learning_rate, data_axes, group)
        compiled, compile_seconds = compile_once(key, lambda: fresh, params, data)
        opt_state = compiled(params, data)
    elif opt_state is None:
        opt_state = init_state(transform, params)
    else:
        if lbfgs:
            evaluations_before = np.asarray(opt_state.evaluations)[:batch]
        if size != batch:
            opt_state = pad_problems(opt_state, size, batch=batch)
    good = jnp.ones((size,), bool)
    chunk = max(1, min(chunk or 50, steps))
    compiled: dict[int, Any] = {}
    history = []
    done = start_step
    while done < steps:
        length = min(chunk, steps - done)
        if length not in compiled:
            def build(length=length, opt_state=opt_state):
                function = make_chunk(value_fn, transform, length, lbfgs=lbfgs, data_axes=data_axes, group=group)
                if mesh is not None and split == "problems":
                    function = sharded_by_problem(function, mesh, opt_state, data, data_axes, size)
                return function

            key = _reuse_key(value_fn, "chunk", str(optimizer), learning_rate, length, data_axes, group, mesh, split, size)
            compiled[length], took = compile_once(key, build, params, opt_state, good, data)
            compile_seconds += took
        start = time.perf_counter()
        params, opt_state, good, losses = jax.block_until_ready(compiled[length](params, opt_state, good, data))
        seconds += time.perf_counter() - start
        losses = np.asarray(losses)[:, :batch]
        history.append(losses)
        done += length
        if callback is not None:
            callback(ChunkReport(done, steps, losses, unpad_problems(params, batch, size),
                                 unpad_problems(opt_state, batch, size)))
        if not bool(np.any(np.asarray(good)[:batch])):
            break  # every problem has stopped
    full = np.concatenate(history, axis=0) if history else np.zeros((0, batch))
    diverged = None
    if not bool(np.all(np.asarray(good)[:batch])):
        diverged = divergence(full, (~np.isfinite(full)).any(axis=0), offset=start_step)
    evaluations = np.asarray(opt_state.evaluations)[:batch] - evaluations_before if lbfgs else None
    return Outcome(unpad_problems(params, batch, size), unpad_problems(opt_state, batch, size), done, full, diverged,
                   seconds, compile_seconds, evaluations)
