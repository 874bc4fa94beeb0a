"""What the techniques that optimise pixels share: settings of the optimiser and of tiling, and
the stages a synthesis through VGG19 is solved in (whole, or tile by tile).

`OptimizerConfig` (optimizer, learning rate) is the base of every such technique's settings;
`SynthesisConfig` adds the seed and the tiled refinement of outputs too large for the memory
(tile, overlap, steps per visit, memory budget), which style transfer and texture synthesis
share. A synthesis loss here is a function `losses(pixels, targets, network_params, **settings)
-> (totals (N,), terms)` whose settings hold the per-layer weights w_l as `layer_weights`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

from jaxmosaic.config import choice, number, parse_tile, setting, tile_setting, whole
from jaxmosaic.errors import ConfigError, JaxmosaicError
from jaxmosaic.optimize import Optimizer, learning_rate
from jaxmosaic.refine import Tiles, tiled_steps
from jaxmosaic.resources import format_bytes, largest_tile, memory_budget
from jaxmosaic.stages import Stage
from jaxmosaic.tiled_losses import HALO, statistic_tile, tile_weights, tiled_style_terms
from jaxmosaic.tiling import TilePlan, plan_tiles
from jaxmosaic.vgg import images_per_call

__all__ = ["OptimizerConfig", "SynthesisConfig", "tile_plan", "plan_steps", "tile_note", "StageLoss", "synthesis_stage",
           "tiled_terms"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimizerConfig:
    """The optimiser of a technique that optimises pixels."""

    optimizer: Optimizer = setting(Optimizer.lbfgs, "lbfgs (as in the paper), adam or sgd.")
    lr: float | None = setting(None, "Learning rate (adam, sgd: on the [0, 1] pixel scale, default 0.02; lbfgs: scales its step).")

    def __post_init__(self):
        object.__setattr__(self, "optimizer", choice("optimizer", self.optimizer, Optimizer))
        if self.lr is not None:
            object.__setattr__(self, "lr", number("lr", self.lr, above=0.0))

    @property
    def learning_rate(self) -> float | None:
        """The learning rate the optimiser runs with (`jaxmosaic.optimize.learning_rate`)."""
        return learning_rate(self.optimizer, self.lr)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SynthesisConfig(OptimizerConfig):
    """An optimiser, a seed and tiled refinement: what style transfer and texture synthesis share."""

    seed: int = setting(0, "Seed of the starting noise (and of --weights random).")
    tile: int | str | None = setting(
        None, "Refine an output (each scale of a style transfer) larger than T px, or too large for --max-memory, in "
              "overlapping tiles of T px (memory of one tile); 'auto' picks T from the memory.",
        parse=parse_tile, example="auto or a number")
    overlap: int = setting(64, "Overlap of neighbouring tiles in px, blended with a smooth window.")
    tile_steps: int = setting(10, "Steps a tile gets per visit; passes over all tiles repeat until each has had the steps asked for.")
    max_memory: float | None = setting(None, "Memory budget in GiB that decides what is tiled and --tile auto (default: what is free, less 10%).",
                                       resume=False)

    def __post_init__(self):
        super().__post_init__()
        whole("seed", self.seed, minimum=0)
        whole("overlap", self.overlap, minimum=0)
        object.__setattr__(self, "tile", tile_setting("tile", self.tile, self.overlap))
        whole("tile_steps", self.tile_steps, minimum=1)
        if self.max_memory is not None:
            object.__setattr__(self, "max_memory", number("max_memory", self.max_memory, above=0.0))

    @property
    def tiles(self) -> bool:
        """Whether a tile setting is given (a tile size or "auto")."""
        return self.tile is not None


_TILE_STEP = 64  # "auto" tiles are multiples of this


def tile_plan(config: SynthesisConfig, height: int, width: int, *, untiled: int, fixed: int, layers: Sequence[str],
              count: int) -> TilePlan:
    """Whether and how an output of (height, width) is tiled (`jaxmosaic.tiling.plan_tiles`): its
    `untiled` optimisation (bytes) against the memory budget, and for "auto" the largest tile,
    more than twice the overlap, whose optimisation of `count` images through `layers` and loss
    pass with its halo fit besides the `fixed` bytes; one line naming --max-memory and
    --overlap when none does."""
    budget = memory_budget(config.max_memory)
    least = (2 * config.overlap // _TILE_STEP + 1) * _TILE_STEP

    def largest() -> int:
        tile = largest_tile(budget, layers, count, fixed=fixed, step=_TILE_STEP, least=least, halo=HALO)
        if tile is not None:
            return tile
        reason = (f"no tile of {least} px or more (more than twice --overlap {config.overlap}) fits in "
                  f"{format_bytes(budget)}")
        if config.max_memory is None:
            raise JaxmosaicError(f"--tile auto: {reason}, the memory that is free; lower --overlap or free memory")
        raise ConfigError("max_memory", f"{reason}; raise --max-memory or lower --overlap")

    return plan_tiles(height, width, config.tile, config.overlap, fits=budget is None or untiled <= budget, largest=largest)


def plan_steps(plan: TilePlan, steps: int) -> int:
    """The steps a stage of this plan counts: `steps`, or `steps` for every tile."""
    return steps if plan.tile is None else tiled_steps(steps, plan.grid)


def tile_note(plan: TilePlan, overlap: int) -> str:
    """What a tiled plan is, for people: "N tiles of WxH px, O px overlap"."""
    return f"{len(plan.grid)} tiles of {plan.shape[1]}x{plan.shape[0]} px, {overlap} px overlap"


def _frozen(value):
    """A hashable stand-in for a setting's value (mappings and sequences by their items); an
    array raises TypeError, as it should: its value is not part of a compiled function."""
    if isinstance(value, Mapping):
        return ("mapping", tuple((key, _frozen(item)) for key, item in value.items()))
    if isinstance(value, (list, tuple)):
        return ("sequence", tuple(_frozen(item) for item in value))
    hash(value)
    return value


class StageLoss:
    """The value function of a synthesis stage, `losses(pixels, *data, **settings)[0]`. Two are
    equal when their losses function and settings are, so `jaxmosaic.optimize.minimize` reuses
    the steps it compiled for one with the other (e.g. a video's frames, window after window)."""

    reusable = True

    def __init__(self, losses: Callable, settings: Mapping[str, Any]):
        self.losses, self.settings = losses, dict(settings)
        try:
            self._key = (losses, _frozen(self.settings))
        except TypeError:
            self._key, self.reusable = None, False

    def __call__(self, pixels, data):
        return self.losses(pixels, *data, **self.settings)[0]

    def __eq__(self, other) -> bool:
        if not (isinstance(other, StageLoss) and self.reusable and other.reusable):
            return self is other
        return self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key) if self.reusable else id(self)


def synthesis_stage(config: SynthesisConfig, plan: TilePlan, *, start: Callable[[Any], Any], losses: Callable,
                    settings: Mapping[str, Any], data: Any = None, tile_data: Callable[[int, int], Any] | None = None,
                    data_axes: Any = None) -> Stage:
    """One stage of a synthesis through the network: the whole image, its loss `losses(pixels,
    *data, **settings)`, or for a tiled plan tile by tile, each tile's loss weighted as its
    share of the whole image's (content, spectrum and TV sum over the tile's own positions while
    E_l is per position, so w_l is scaled by the tile's share of the positions: the tile's
    gradient is then the whole loss's gradient there), with `tile_data(top, left)` as its data."""
    if plan.tile is not None:
        settings = {**settings, "layer_weights": tile_weights(plan, settings["layer_weights"])}

    value = StageLoss(losses, settings)
    if plan.tile is None:
        return Stage(label=f"{plan.width}x{plan.height}", start=start, value_fn=value, data=data, data_axes=data_axes,
                     group=images_per_call(plan.height, plan.width))
    tiles = Tiles(grid=plan.grid, shape=plan.shape, overlap=config.overlap, steps=config.tile_steps, data=tile_data,
                  seed=config.seed)
    return Stage(label=f"{plan.width}x{plan.height} in {len(plan.grid)} tiles", start=start, value_fn=value, data=None,
                 data_axes=data_axes, tiles=tiles, group=images_per_call(*plan.shape))


def tiled_terms(params, images: jax.Array, plan: TilePlan, grams: Mapping[str, jax.Array],
                layer_weights: Mapping[str, float], *, pooling: str, content=None, content_layers: Sequence[str] = ()) -> dict:
    """The unweighted content, style (Gram) and TV terms of a tiled plan's whole images, taken
    tile by tile (`jaxmosaic.tiled_losses.tiled_style_terms`)."""
    return tiled_style_terms(params, images, content, grams, layer_weights, content_layers,
                             tile=statistic_tile(plan.tile), halo=HALO, pooling=pooling)

