"""One loop for every technique that optimises pixels, and the stages it runs in.

`minimize`: a batch of independent problems is minimised by gradient descent, Adam (optax) or
L-BFGS (`jaxmosaic.lbfgs`: one curvature memory and one line search per problem). The loss is
evaluated natively for the whole batch, `value_fn(params, data) -> (B,)` with a leading problem
axis on the parameters, so a network sees one NHWC batch; the gradient of the summed losses is
each problem's own gradient. Steps run in jitted chunks (a `lax.scan` over `chunk` steps), so
Python is visited once per chunk: for a progress bar, frames of a GIF, checkpoints. A problem
whose loss or update stops being finite stops alone: its parameters stay the last finite ones
and `diverged_at` says where it happened. With a `jax.sharding.Mesh` of several devices the
problem axis is sharded over them (padded to a multiple of the devices; each device runs its
own problems, `jax.shard_map`), or with `split="height"` one image's height is (XLA's SPMD
partitioner adds the halos the convolutions need).

`solve`: a technique describes its optimisation as a `Problem` (stages, e.g. coarse to fine
scales; how parameters become images; the loss terms of images); `solve` runs the stages one
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
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxmosaic._problems import count, finite, select
from jaxmosaic.errors import JaxmosaicError
from jaxmosaic.lbfgs import batched_lbfgs
from jaxmosaic.tiling import blend_tile, tile_window, visit_order

__all__ = [
    "Optimizer",
    "make_optimizer",
    "learning_rate",
    "state_like",
    "make_chunk",
    "minimize",
    "ChunkReport",
    "Outcome",
    "Stage",
    "Tiles",
    "Problem",
    "Progress",
    "Resume",
    "Solution",
    "Diverged",
    "solve",
    "tiled_steps",
    "tiled_state",
    "per_image",
    "device_mesh",
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


def state_like(optimizer: str, lr: float | None, params):
    """A zero optimiser state of the structure, shapes and dtypes `minimize` makes for `params`
    (a leading problem axis on every leaf): what a checkpoint is restored into."""
    transform = make_optimizer(optimizer, lr)
    with _standard_promotion():
        if Optimizer(optimizer) == Optimizer.lbfgs:
            batch = jax.tree_util.tree_leaves(params)[0].shape[0]
            first = jax.tree_util.tree_leaves(params)[0]
            return transform.init(params, jnp.zeros((batch,), first.dtype), jax.tree_util.tree_map(jnp.zeros_like, params))
        return transform.init(params)


def _batched_value_and_grad(value_fn: Callable, data, data_axes=None, group: int | None = None) -> Callable:
    """params -> ((B,) losses, gradients): the gradient of the summed losses, which is each
    problem's own gradient since problem i's loss depends on its own parameters only.

    With `group` (a divisor of B below it, as `_group` gives), the batch is evaluated `group`
    problems at a time, one group after the other in a `lax.map`, each group's losses and
    gradients at once; the parts of data with the problem axis (`data_axes`) are split with the
    params."""

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
        per_problem = _per_problem_leaves(data_axes, data)
        split = lambda leaf: leaf.reshape((batch // group, group) + leaf.shape[1:])  # noqa: E731
        own = jax.tree_util.tree_map(lambda sharded, leaf: split(leaf) if sharded else None, per_problem, data)
        merge = lambda sharded, mine, leaf: mine if sharded else leaf  # noqa: E731

        def evaluate(args):
            params, mine = args
            return whole(params, jax.tree_util.tree_map(merge, per_problem, mine, data, is_leaf=lambda x: x is None))

        values, grads = jax.lax.map(evaluate, (jax.tree_util.tree_map(split, params), own))
        return values.reshape(batch), jax.tree_util.tree_map(lambda g, p: g.reshape(p.shape), grads, params)

    return value_and_grad


def _group(group: int | None, batch: int) -> int | None:
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
    `_batched_value_and_grad`). Not jitted here: callers jit it once per chunk length."""

    def step(params, opt_state, good, data):
        value_and_grad = _batched_value_and_grad(value_fn, data, data_axes, group)
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
    evaluations: np.ndarray | None = None  # L-BFGS: loss-and-gradient evaluations of each problem in this call


def device_mesh(devices: int | None = None, *, local: bool = False) -> Mesh | None:
    """A one-axis mesh ("devices") over the first `devices` devices (default: all; with `local`,
    this process's own only), or None for one."""
    available = jax.local_devices() if local else jax.devices()
    count = len(available) if devices is None else devices
    if not 1 <= count <= len(available):
        raise ValueError(f"devices must be between 1 and the {len(available)} available, got {count}")
    return Mesh(np.asarray(available[:count]), ("devices",)) if count > 1 else None


def _pad(tree, size: int, batch: int | None = None):
    """Every leaf with the leading problem axis (of `batch`, default: any) padded to `size` with
    copies of its first problem; leaves without it (a step count) as they are."""
    def pad(leaf):
        leaf = jnp.asarray(leaf)
        if leaf.ndim == 0 or (batch is not None and leaf.shape[0] != batch) or leaf.shape[0] == size:
            return leaf
        return jnp.concatenate([leaf, jnp.repeat(leaf[:1], size - leaf.shape[0], axis=0)])
    return jax.tree_util.tree_map(pad, tree)


def _per_problem_leaves(data_axes, data):
    """`data_axes`, a prefix of data's structure (0: a leading problem axis; None: shared), as a
    full tree of booleans: which leaves have the problem axis."""
    return jax.tree_util.tree_map(lambda axis, sub: jax.tree_util.tree_map(lambda _: axis == 0, sub), data_axes, data,
                                  is_leaf=lambda x: x is None)


def _sharded_by_problem(chunk: Callable, mesh: Mesh, state, data, data_axes, size: int) -> Callable:
    """The chunk run on each device for its own problems (`jax.shard_map`): independent problems
    need no communication, and each problem's arithmetic is what it is on one device."""
    problem, shared = PartitionSpec("devices"), PartitionSpec()

    def spec_of(leaf):
        return problem if getattr(leaf, "ndim", 0) and leaf.shape[0] == size else shared

    state_specs = jax.tree_util.tree_map(spec_of, state)
    data_specs = jax.tree_util.tree_map(lambda sharded: problem if sharded else shared, _per_problem_leaves(data_axes, data))
    # check_vma off: the line search's loop starts from constants that become per-device values
    return jax.shard_map(chunk, mesh=mesh, in_specs=(problem, state_specs, problem, data_specs),
                         out_specs=(problem, state_specs, problem, PartitionSpec(None, "devices")), check_vma=False)


def _distribute(params, data, data_axes, mesh: Mesh | None, split: str):
    """Put params and data on the mesh: the problem axis (padded) or one image's height sharded,
    everything shared replicated. Returns (params, data, padded batch size)."""
    batch = jax.tree_util.tree_leaves(params)[0].shape[0]
    if mesh is None:
        return params, data, batch
    devices = mesh.size
    replicated = NamedSharding(mesh, PartitionSpec())
    per_problem_leaves = _per_problem_leaves(data_axes, data)
    if split == "height":
        if batch != 1:
            raise ValueError(f"split='height' shards one image, not a batch of {batch}")
        for leaf in jax.tree_util.tree_leaves(params):
            if leaf.ndim < 2 or leaf.shape[1] % devices:
                raise ValueError(f"an image {leaf.shape[1]} px high does not split over {devices} devices; "
                                 f"use a height divisible by {devices}")
        spec = NamedSharding(mesh, PartitionSpec(None, "devices"))
        return jax.device_put(params, spec), jax.device_put(data, replicated), batch
    size = -(-batch // devices) * devices
    per_problem = NamedSharding(mesh, PartitionSpec("devices"))
    params = jax.device_put(_pad(params, size), per_problem)
    data = jax.tree_util.tree_map(lambda sharded, leaf: jax.device_put(_pad(leaf, size), per_problem) if sharded
                                  else jax.device_put(leaf, replicated), per_problem_leaves, data)
    return params, data, size


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
    data_axes=None,
    opt_state=None,
    start_step: int = 0,
    callback: Callable[[ChunkReport], None] | None = None,
    mesh: Mesh | None = None,
    split: str = "problems",
    group: int | None = None,
) -> Outcome:
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
      mesh: a `jax.sharding.Mesh` with one axis "devices" (see `device_mesh`): the problem axis
        is sharded over it, padded with copies of the first problem to a multiple of its size
        (the copies are dropped from what is returned); with split="height" the image's
        height is sharded instead (one problem; XLA adds the halos the convolutions need).
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
    if not batched:
        one = jax.tree_util.tree_map(lambda leaf: jnp.asarray(leaf)[None], params)
        outcome = minimize(lambda p, d: value_fn(jax.tree_util.tree_map(lambda leaf: leaf[0], p), d)[None], one, data,
                           optimizer=optimizer, learning_rate=learning_rate, steps=steps, chunk=chunk, batched=True,
                           data_axes=None, opt_state=_batch_state(opt_state, optimizer, learning_rate, one),
                           start_step=start_step, callback=None if callback is None else _unbatched(callback))
        first = lambda tree: jax.tree_util.tree_map(lambda leaf: leaf[0] if getattr(leaf, "ndim", 0) else leaf, tree)  # noqa: E731
        return outcome._replace(params=first(outcome.params), opt_state=first(outcome.opt_state),
                                history=outcome.history[:, 0])
    transform = make_optimizer(optimizer, learning_rate)
    lbfgs = Optimizer(optimizer) == Optimizer.lbfgs
    batch = jax.tree_util.tree_leaves(params)[0].shape[0]
    params, data, size = _distribute(params, data, data_axes, mesh, split)
    group = _group(group, size // mesh.size if mesh is not None and split == "problems" else size)
    compile_seconds, seconds = 0.0, 0.0
    evaluations_before = np.zeros(batch, np.int64)  # the evaluation of a fresh L-BFGS state counts
    if opt_state is None:
        opt_state, compile_seconds = _fresh_state(transform, lbfgs, value_fn, params, data, data_axes, group)
    else:
        if lbfgs:
            evaluations_before = np.asarray(opt_state.evaluations)[:batch]
        if size != batch:
            opt_state = _pad(opt_state, size, batch)
    good = jnp.ones((size,), bool)
    chunk = max(1, min(chunk or 50, steps))
    compiled: dict[int, Any] = {}
    history = []
    done = start_step
    while done < steps:
        length = min(chunk, steps - done)
        if length not in compiled:
            start = time.perf_counter()
            function = make_chunk(value_fn, transform, length, lbfgs=lbfgs, data_axes=data_axes, group=group)
            if mesh is not None and split == "problems":
                function = _sharded_by_problem(function, mesh, opt_state, data, data_axes, size)
            compiled[length] = jax.jit(function).lower(params, opt_state, good, data).compile()
            compile_seconds += time.perf_counter() - start
        start = time.perf_counter()
        params, opt_state, good, losses = jax.block_until_ready(compiled[length](params, opt_state, good, data))
        seconds += time.perf_counter() - start
        losses = np.asarray(losses)[:, :batch]
        history.append(losses)
        done += length
        if callback is not None:
            callback(ChunkReport(done, steps, losses, _unpad(params, batch, size), _unpad(opt_state, batch, size)))
        if not bool(np.any(np.asarray(good)[:batch])):
            break  # every problem has stopped
    full = np.concatenate(history, axis=0) if history else np.zeros((0, batch))
    diverged = None
    if not bool(np.all(np.asarray(good)[:batch])):
        bad = ~np.isfinite(full)
        diverged = np.where(bad.any(axis=0), bad.argmax(axis=0) + start_step, -1)
    evaluations = np.asarray(opt_state.evaluations)[:batch] - evaluations_before if lbfgs else None
    return Outcome(_unpad(params, batch, size), _unpad(opt_state, batch, size), done, full, diverged, seconds,
                   compile_seconds, evaluations)


def _unpad(tree, batch: int, size: int):
    """Drop the padding copies from every leaf that has the (padded) problem axis."""
    if batch == size:
        return tree
    return jax.tree_util.tree_map(lambda leaf: leaf[:batch] if getattr(leaf, "ndim", 0) and leaf.shape[0] == size else leaf, tree)


def _fresh_state(transform, lbfgs: bool, value_fn: Callable, params, data, data_axes, group: int | None):
    """(a fresh optimiser state, seconds spent compiling): L-BFGS starts from the loss and the
    gradient at the start, evaluated once (and counted)."""
    if not lbfgs:
        with _standard_promotion():
            return transform.init(params), 0.0
    start = time.perf_counter()
    evaluate = jax.jit(lambda p, d: _batched_value_and_grad(value_fn, d, data_axes, group)(p))
    compiled = evaluate.lower(params, data).compile()
    compile_seconds = time.perf_counter() - start
    value, grad = compiled(params, data)
    state = transform.init(params, value, grad)
    return state._replace(evaluations=state.evaluations + 1), compile_seconds


def _batch_state(opt_state, optimizer, lr, params):
    """A single problem's optimiser state given back to `minimize` without `batched`, with the
    problem axis added where the batched state has one."""
    if opt_state is None:
        return None
    like = state_like(optimizer, lr, params)
    return jax.tree_util.tree_map(lambda leaf, model: jnp.asarray(leaf)[None] if jnp.ndim(model) == jnp.ndim(leaf) + 1
                                  else jnp.asarray(leaf), opt_state, like)


def _unbatched(callback):
    def report(chunk_report: ChunkReport) -> None:
        first = lambda tree: jax.tree_util.tree_map(lambda leaf: leaf[0] if getattr(leaf, "ndim", 0) else leaf, tree)  # noqa: E731
        callback(chunk_report._replace(losses=chunk_report.losses[:, 0], params=first(chunk_report.params),
                                       opt_state=first(chunk_report.opt_state)))
    return report


class Tiles(NamedTuple):
    """How a stage too large for the memory is refined one overlapping tile at a time (see
    `jaxmosaic.tiling`): in passes, each visiting every tile once in a shuffled order and giving
    it up to `steps` steps from a fresh optimiser state, until every tile has had the stage's
    steps; each refined tile is blended back with its window. The stage's params are then the
    whole images (count, H, W, C); its value_fn takes tiles, and its data comes from `data`."""

    grid: Sequence[tuple[int, int]]  # (top, left) of every tile
    shape: tuple[int, int]  # (height, width) of a tile
    overlap: int  # px over which a tile's edge blends into its neighbours
    steps: int  # steps per visit
    data: Callable[[int, int], Any]  # (top, left) -> the data of the tile's loss there
    seed: int = 0  # of the visiting order


class Stage(NamedTuple):
    """One leg of an optimisation, e.g. one scale of a coarse-to-fine run."""

    label: str  # what it is, for people: e.g. "256x256"
    start: Callable[[Any], Any]  # the previous stage's final params (None before the first) -> start params
    value_fn: Callable  # the losses of the batch, natively: (params with a problem axis, data) -> (B,)
    data: Any  # what the loss needs besides params
    data_axes: Any = None  # which parts of data have the problem axis (0) or are shared (None)
    tiles: Tiles | None = None  # refine tile by tile (the stage's steps count per tile and tile: see `tiled_steps`)
    group: int | None = None  # problems whose loss is evaluated at once (`minimize`'s group)


class Problem(NamedTuple):
    """An optimisation as a technique describes it to `solve`: a batch of `count` problems (one
    image each), their parameters with a leading problem axis."""

    stages: Sequence[Callable[[], Stage]]  # built one at a time, in order (a resumed run skips the first ones)
    steps: tuple[int, ...]  # steps of each stage
    optimizer: str
    learning_rate: float | None
    count: int  # images the problem produces
    view: Callable[[Any], Any]  # params -> images (count, H, W, C) in [0, 1]
    finish: Callable[[Any], Any]  # the last view -> the final images (e.g. original colours kept)
    terms: Callable[[Any], list]  # images -> per image {"total": ..., <term>: ...}, the reported losses
    initial: Any = None  # params before the first stage; for a problem without stages, the answer
    facts: dict = {}  # values the technique derived from its settings (reported in the metrics)
    notes: tuple = ()  # lines worth telling the user before the work starts
    split: bool = False  # with a mesh: shard the image's height (one problem) instead of the problems


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
    tile: tuple[int, int, int] | None = None  # in a tiled stage: (the tile just refined, of tiles, pass)


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
    evaluations: np.ndarray | None = None  # L-BFGS: loss-and-gradient evaluations of each problem


class Diverged(JaxmosaicError, FloatingPointError):
    """A loss or update stopped being finite; `solution` holds the last finite images."""

    def __init__(self, message: str, solution: Solution):
        super().__init__(message)
        self.solution = solution


def solve(problem: Problem, *, callback: Callable[[Progress], None] | None = None, resume: Resume | None = None,
          chunk: int | None = None, mesh: Mesh | None = None) -> Solution:
    """Run the problem's stages in order (each from the previous one's result) and return the
    final images with their loss terms.

    Args:
      problem: what to optimise.
      callback: called with a `Progress` after each chunk; it may raise to stop the run.
      resume: continue at this stage and step with this state instead of starting over.
      chunk: steps per compiled chunk (default: `minimize`'s).
      mesh: devices to share the work (`device_mesh`): the problems, or with `problem.split`
        one image's height, sharded over them.

    Raises:
      Diverged: a problem's loss or update stopped being finite; the others ran to the end, and
        the error holds every image (the last finite ones of the problems that diverged).
    """
    first = resume.stage if resume is not None else 0
    total = sum(problem.steps)
    params, opt_state = problem.initial, None
    history, steps, seconds, compile_seconds = [], 0, 0.0, 0.0
    diverged = np.full(problem.count, -1)
    evaluations = np.zeros(problem.count, np.int64)
    index = first
    for index in range(first, len(problem.stages)):
        stage = problem.stages[index]()
        before = sum(problem.steps[:index])
        start_step, state = 0, None
        if resume is not None and index == first:
            x, start_step, state = resume.params, resume.step, resume.opt_state
        else:
            x = stage.start(params)

        def report(chunk_report: ChunkReport, stage=stage, index=index, before=before, tile=None) -> None:
            if callback is not None:
                callback(Progress(index, stage.label, chunk_report.step, chunk_report.total, before + chunk_report.step,
                                  total, chunk_report.losses, chunk_report.params, chunk_report.opt_state, tile))

        if stage.tiles is not None:
            outcome = _refine_tiles(stage, problem, x, problem.steps[index], start_step, report)
        else:
            outcome = minimize(stage.value_fn, x, stage.data, optimizer=problem.optimizer, learning_rate=problem.learning_rate,
                               steps=problem.steps[index], chunk=chunk, batched=True, data_axes=stage.data_axes,
                               opt_state=state, start_step=start_step, callback=report, mesh=mesh,
                               split="height" if problem.split else "problems", group=stage.group)
        params, opt_state = outcome.params, outcome.opt_state
        history.append(outcome.history)
        steps += outcome.steps - start_step
        seconds += outcome.seconds
        compile_seconds += outcome.compile_seconds
        if outcome.evaluations is not None:
            evaluations += outcome.evaluations
        if outcome.diverged_at is not None:
            diverged = np.where((diverged < 0) & (outcome.diverged_at >= 0), outcome.diverged_at + before, diverged)
    solution = _solution(problem, params, opt_state, steps, history, seconds, compile_seconds, index,
                         evaluations if problem.optimizer == Optimizer.lbfgs else None)
    if np.any(diverged >= 0):
        which = ", ".join(f"image {i + 1} at step {int(step)}" for i, step in enumerate(diverged) if step >= 0)
        raise Diverged(f"the optimisation diverged ({which}; loss not finite)", solution)
    return solution


def tiled_steps(steps: int, tiles: Tiles) -> int:
    """The steps a tiled stage counts (and reports, and checkpoints at): `steps` for every tile."""
    return steps * len(tiles.grid)


def tiled_state(count: int):
    """The optimiser state a tiled stage reports and checkpoints: none is kept between visits."""
    return jnp.zeros((count,), jnp.float32)


def _tile_visits(tiles: Tiles, steps: int) -> list[tuple[int, int, int]]:
    """(pass, tile, steps) of every visit, in order, for `steps` tiled steps."""
    per_tile, done, visits, index = steps // len(tiles.grid), 0, [], 0
    while done < per_tile:
        length = min(tiles.steps, per_tile - done)
        visits += [(index, tile, length) for tile in visit_order(len(tiles.grid), index, tiles.seed)]
        done, index = done + length, index + 1
    return visits


def _refiner(value_fn: Callable, optimizer: str, lr: float | None, length: int, data_axes, group: int | None):
    """A function (tiles, data) -> (tiles, losses, good, evaluations): `length` steps from a
    fresh optimiser state (the evaluation that starts L-BFGS counted), the loss evaluated
    `group` tiles at a time."""
    transform = make_optimizer(optimizer, lr)
    lbfgs = Optimizer(optimizer) == Optimizer.lbfgs
    chunk = make_chunk(value_fn, transform, length, lbfgs=lbfgs, data_axes=data_axes, group=group)

    def refine(params, data):
        with _standard_promotion():
            if lbfgs:
                value, grad = _batched_value_and_grad(value_fn, data, data_axes, group)(params)
                state = transform.init(params, value, grad)
            else:
                state = transform.init(params)
        good = jnp.ones((jax.tree_util.tree_leaves(params)[0].shape[0],), bool)
        params, state, good, losses = chunk(params, state, good, data)
        evaluations = state.evaluations + 1 if lbfgs else jnp.zeros(good.shape, jnp.int32)
        return params, losses, good, evaluations

    return refine


def _refine_tiles(stage: Stage, problem: Problem, images, steps: int, start_step: int, report: Callable) -> Outcome:
    """A tiled stage (see `Tiles`), as `minimize` reports a stage: after every visit."""
    tiles = stage.tiles
    images = jnp.asarray(images)
    count, height, width = images.shape[:3]
    compiled: dict[int, Any] = {}
    history, seconds, compile_seconds = [], 0.0, 0.0
    evaluations = np.zeros(count, np.int64)
    diverged = np.full(count, -1)
    done = 0
    visits = _tile_visits(tiles, steps)
    for pass_index, tile, length in visits:
        if done + length <= start_step:
            done += length
            continue
        top, left = tiles.grid[tile]
        before = images[:, top:top + tiles.shape[0], left:left + tiles.shape[1]]
        data = tiles.data(top, left)
        if length not in compiled:
            start = time.perf_counter()
            function = _refiner(stage.value_fn, problem.optimizer, problem.learning_rate, length, stage.data_axes,
                                _group(stage.group, count))
            compiled[length] = jax.jit(function).lower(before, data).compile()
            compile_seconds += time.perf_counter() - start
        start = time.perf_counter()
        after, losses, good, used = jax.block_until_ready(compiled[length](before, data))
        window = jnp.asarray(tile_window(top, left, tiles.shape, (height, width), tiles.overlap))
        images = jax.block_until_ready(blend_tile(images, before, after, window, top, left))
        seconds += time.perf_counter() - start
        losses = np.asarray(losses)
        history.append(losses)
        evaluations += np.asarray(used)
        bad = ~np.asarray(good)
        diverged = np.where((diverged < 0) & bad, done + np.argmax(~np.isfinite(losses), axis=0), diverged)
        done += length
        report(ChunkReport(done, steps, losses, images, tiled_state(count)), tile=(tile, len(tiles.grid), pass_index))
    full = np.concatenate(history, axis=0) if history else np.zeros((0, count))
    lbfgs = Optimizer(problem.optimizer) == Optimizer.lbfgs
    return Outcome(images, tiled_state(count), done, full, diverged if np.any(diverged >= 0) else None, seconds,
                   compile_seconds, evaluations if lbfgs else None)


def _solution(problem, params, opt_state, steps, history, seconds, compile_seconds, stage, evaluations) -> Solution:
    images = problem.finish(problem.view(params))
    return Solution(np.asarray(images), problem.terms(images), steps, history, seconds, compile_seconds, params,
                    opt_state, stage, problem.facts, evaluations)


def per_image(loss: tuple) -> list[dict]:
    """A vmapped loss's (totals (n,), {term: (n,)}) as [{"total": float, term: float}] per image."""
    totals, parts = loss
    values = {"total": np.asarray(totals), **{name: np.asarray(value) for name, value in parts.items()}}
    return [{name: float(value[i]) for name, value in values.items()} for i in range(len(values["total"]))]
