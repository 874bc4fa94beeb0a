"""Staged solving: a technique's optimisation as a `Problem` of stages, run by `solve`.

A technique describes its optimisation as a `Problem`: stages (e.g. coarse to fine scales), how
parameters become images, the loss terms of images. `solve` runs the stages one after another
with `jaxmosaic.optimize.minimize` (or tile by tile, `jaxmosaic.refine`), reports a `Progress`
after every chunk, resumes from a `Resume`, and returns a `Solution`. Style transfer, texture
synthesis and hybrid images are all solved so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
from jax.sharding import Mesh

from jaxmosaic.errors import JaxmosaicError
from jaxmosaic.optimize import ChunkReport, Optimizer, merge_divergence, minimize
from jaxmosaic.refine import Tiles, refine_tiles

__all__ = ["Stage", "Problem", "Progress", "Resume", "Solution", "Diverged", "solve", "per_image"]


class Stage(NamedTuple):
    """One leg of an optimisation, e.g. one scale of a coarse-to-fine run."""

    label: str  # what it is, for people: e.g. "256x256"
    start: Callable[[Any], Any]  # the previous stage's final params (None before the first) -> start params
    value_fn: Callable  # the losses of the batch, natively: (params with a problem axis, data) -> (B,)
    data: Any  # what the loss needs besides params
    data_axes: Any = None  # which parts of data have the problem axis (0) or are shared (None)
    tiles: Tiles | None = None  # refine tile by tile (the stage's steps count per tile: see `jaxmosaic.refine.tiled_steps`)
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
    """What `solve` returns."""

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
      mesh: devices to share the work (`jaxmosaic.sharding.device_mesh`): the problems, or with
        `problem.split` one image's height, sharded over them.

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

        run = dict(optimizer=problem.optimizer, learning_rate=problem.learning_rate, steps=problem.steps[index],
                   start_step=start_step, data_axes=stage.data_axes, group=stage.group)
        if stage.tiles is not None:
            outcome = refine_tiles(stage.tiles, stage.value_fn, x, **run, report=report)
        else:
            outcome = minimize(stage.value_fn, x, stage.data, **run, chunk=chunk, batched=True, opt_state=state,
                               callback=report, mesh=mesh, split="height" if problem.split else "problems")
        params, opt_state = outcome.params, outcome.opt_state
        history.append(outcome.history)
        steps += outcome.steps - start_step
        seconds += outcome.seconds
        compile_seconds += outcome.compile_seconds
        if outcome.evaluations is not None:
            evaluations += outcome.evaluations
        diverged = merge_divergence(diverged, outcome.diverged_at, offset=before)
    images = problem.finish(problem.view(params))
    solution = Solution(images=np.asarray(images), loss=problem.terms(images), steps=steps, history=history, seconds=seconds,
                        compile_seconds=compile_seconds, params=params, opt_state=opt_state, stage=index, facts=problem.facts,
                        evaluations=evaluations if problem.optimizer == Optimizer.lbfgs else None)
    if np.any(diverged >= 0):
        which = ", ".join(f"image {i + 1} at step {int(step)}" for i, step in enumerate(diverged) if step >= 0)
        raise Diverged(f"the optimisation diverged ({which}; loss not finite)", solution)
    return solution


def per_image(loss: tuple) -> list[dict]:
    """A vmapped loss's (totals (n,), {term: (n,)}) as [{"total": float, term: float}] per image."""
    totals, parts = loss
    values = {"total": np.asarray(totals), **{name: np.asarray(value) for name, value in parts.items()}}
    return [{name: float(value[i]) for name, value in values.items()} for i in range(len(values["total"]))]
