"""Style transfer for videos (Ruder, Dosovitskiy and Brox 2016, "Artistic style transfer for
videos"; code manuelruder/artistic-videos): every frame is a Gatys style transfer with a temporal
term that ties it to its stylised neighbours, warped by the optical flow.

    L_i = alpha L_content + beta L_style + tv_weight TV + gamma H W sum_d L_temporal(x, warp(x_{i-d}), c'_{i,d})

with L_temporal = (1/D) sum_k c_k (x_k - w_k)^2 (`jaxmosaic.video.temporal.temporal_loss`), c' the
consistency masks of the flows i -> i-d weighted closest first (`long_term_weights`) and gamma
`VideoConfig.temporal_weight` per position (see `TEMPORAL_WEIGHT`). Frames are float32 (N, H, W, 3)
in [0, 1]; a flow is (H, W, 2), dx then dy, key (a, b) the flow from frame a to frame b.

    stylize_video(config, frames, styles, params, *, flows=None, done=None, callback=None,
                  mesh=None, segment=None, segments=None) -> VideoResult

Sequential (`passes=1`): frame 0 starts from noise, frame i from frame i-1's result warped
(`init="prev-warped"`) or the same noise (`init="noise"`, the per-frame baseline). Multi-pass
(`passes=N`): passes alternate direction; in a pass each frame starts from its own latest result
blended with its warped neighbour from the direction of the pass (x + blend c (w - x)), the
temporal term against that neighbour. A pass walks the frames in windows of `batch_frames`; the
frames of a window are independent problems given what is known before the window, so a window is
one native batch through VGG19 (sharded over `mesh` like a batch of styles). With
`batch_frames=1` this is the reference's multi-pass algorithm, and its first pass is the
sequential method.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxmosaic.color import match_luminance
from jaxmosaic.config import ConfigError, number, setting, whole, wholes
from jaxmosaic.distribution_losses import (
    Loss,
    distribution_terms,
    image_distribution_targets,
)
from jaxmosaic.image import fit_shape, resize
from jaxmosaic.losses import gram_targets
from jaxmosaic.resources import activation_bytes, held_bytes, optimisation_bytes
from jaxmosaic.stages import Problem, Solution, per_image, solve
from jaxmosaic.techniques.common import (
    StageLoss,
    plan_steps,
    synthesis_stage,
    tile_note,
    tile_plan,
)
from jaxmosaic.techniques.style import (
    ColorControl,
    StyleConfig,
    StyleInputs,
    StyleTargets,
    color_controlled,
    keep_colors,
    style_memory,
    style_transfer_losses,
)
from jaxmosaic.tiled_losses import (
    HALO,
    position_share,
    statistic_tile,
    tiled_features,
    tiled_grams,
    tiled_style_terms,
)
from jaxmosaic.tiling import TilePlan
from jaxmosaic.vgg import layer_channels, layer_stride, three_channels, vgg19_features
from jaxmosaic.video.flow import FLOW_METHODS, pair_flows
from jaxmosaic.video.temporal import (
    consistency_mask,
    inside,
    long_term_weights,
    temporal_loss,
    warp,
)

__all__ = [
    "FRAME_INITS",
    "TEMPORAL_WEIGHT",
    "VideoConfig",
    "VideoFlows",
    "VideoProgress",
    "VideoResult",
    "stylize_frames",
    "stylize_video",
    "tiled_video_losses",
    "video_flows",
    "video_losses",
    "video_memory",
    "video_tiles",
]

# The reference's weights are alpha 5, gamma 1000 on its normalisation: the content term the mean of
# (F - P)^2 over relu4_2's C M = 8 H W values of caffe's VGG19 (inputs 0..255, mean subtracted), the
# temporal term the mean of c (x - w)^2 over 3 H W pixels in 0..255. Here the content term is
# 1/2 sum (F - P)^2 of torchvision's VGG19, whose inputs are caffe's divided by s = 255 * 0.226
# (the ImageNet std), so its features are about 1/s of caffe's; the temporal term is on [0, 1]
# pixels. The reference's ratio gamma / alpha = 200 becomes
#     gamma_here / alpha_here = 200 * 255^2 * 4 H W / s^2 = 200 * 4 * 19.6 * H W ~ 1.6e4 H W,
# a weight per position (the content term grows with H W, the temporal term does not): the loss
# adds temporal_weight * H * W * L_temporal, so one setting means the same at every scale.
TEMPORAL_WEIGHT = 1.6e4
FRAME_INITS = ("prev-warped", "noise", "content", "style")
_MEAN_PIXEL = (0.485, 0.456, 0.406)  # what the reference fills pixels warped from outside the frame with
_RUNTIME = 512 * 2**20  # the process itself: Python, JAX and the compiled programs


@dataclasses.dataclass(frozen=True, kw_only=True)
class VideoConfig(StyleConfig):
    """Settings of a video style transfer: every style setting (per frame) plus the temporal ones;
    the defaults are the reference's sequential method with this project's style defaults."""

    init: str = setting("prev-warped", "prev-warped (frame 0 from seeded noise, each next frame from the previous result "
                                        "warped by the flow), noise (the same seeded noise for every frame), content or style.")
    temporal_weight: float = setting(TEMPORAL_WEIGHT, "gamma per position: the temporal loss is added as gamma * H * W * "
                                                       "(1/D) sum c (x - warped)^2 (the reference's ratio to the content weight).")
    long_term: tuple[int, ...] = setting((1,), "Earlier frames the temporal loss looks at, e.g. 1,2,4 (closest first weights).")
    passes: int = setting(1, "1: the sequential method; N > 1: the multi-pass method, passes in alternating directions.")
    batch_frames: int = setting(1, "Multi-pass: frames optimised together as one batch (a window of a pass), sharded over --devices.")
    blend: float = setting(0.5, "Multi-pass: delta, how much of the warped neighbour a frame's start takes where the flow is consistent.")
    flow: str = setting("dis", "Optical flow: dis or farneback (OpenCV).")

    def __post_init__(self):
        super().__post_init__()
        put = functools.partial(object.__setattr__, self)
        if self.init not in FRAME_INITS:
            raise ConfigError("init", f"{self.init!r}: a video starts from {', '.join(FRAME_INITS)}")
        put("temporal_weight", number("temporal_weight", self.temporal_weight, minimum=0.0))
        put("long_term", tuple(sorted(set(wholes("long_term", self.long_term, minimum=1, maximum=1000)))))
        whole("passes", self.passes, minimum=1, maximum=1000)
        whole("batch_frames", self.batch_frames, minimum=1, maximum=4096)
        put("blend", number("blend", self.blend, minimum=0.0, maximum=1.0))
        if self.flow not in FLOW_METHODS:
            raise ConfigError("flow", f"{self.flow!r}: expected one of {', '.join(FLOW_METHODS)}")
        if self.batch_frames > 1 and self.passes == 1:
            raise ConfigError("batch_frames", "goes with --passes 2 or more: the sequential method starts each frame "
                                              "from the one before, so its frames cannot be batched")
        if self.batch:
            raise ConfigError("batch", "does not go with video: give one style image, or several to blend")
        if self.style_layers_from is not None:
            raise ConfigError("style_layers_from", "is not offered for video")


class VideoFlows(NamedTuple):
    """The flows a video transfer needs and their consistency masks."""

    flows: dict  # (a, b) -> the flow from frame a to frame b, float32 (H, W, 2)
    masks: dict  # (a, b) -> consistency of frame a's flow to b, float32 (H, W) in [0, 1]


class VideoProgress(NamedTuple):
    """What `stylize_video`'s callback sees after every finished frame."""

    pass_index: int  # 0-based pass
    passes: int
    frame: int  # index of the frame just finished
    frames_done: int  # frames finished so far over all passes (frames taken from `done` included)
    frames_total: int  # passes * frames of this segment
    losses: dict  # the frame's {"total", "content", "style", "tv", "temporal"}
    image: np.ndarray | None  # the finished frame, (H, W, 3) float32 in [0, 1]
    finished: bool  # the last frame of the last pass


class VideoResult(NamedTuple):
    """What `stylize_video` returns."""

    frames: np.ndarray  # (N, H, W, 3) float32 in [0, 1], at the output size
    losses: list  # per frame: its terms in its last pass ({} for frames taken from `done`)


def _output_shape(config: VideoConfig, height: int, width: int) -> tuple[int, int]:
    return fit_shape(height, width, config.sizes[-1])


def _fit_field(field: np.ndarray, height: int, width: int, *, vectors: bool) -> np.ndarray:
    """A flow (H, W, 2; its vectors rescaled) or a mask (H, W) resized bilinearly to (height, width)."""
    field = np.asarray(field, np.float32)
    if field.shape[:2] == (height, width):
        return field
    resized = np.asarray(jax.image.resize(jnp.asarray(field), (height, width, *field.shape[2:]), "linear"))
    if vectors:
        return resized * np.asarray([width / field.shape[1], height / field.shape[0]], np.float32)
    return np.clip(resized, 0.0, 1.0)


def _flow_offsets(config: VideoConfig) -> tuple[int, ...]:
    return tuple(sorted({1, *config.long_term}))


def video_flows(frames: np.ndarray, config: VideoConfig, *, flows: Mapping | None = None) -> VideoFlows:
    """Every flow and consistency mask a transfer of these frames under `config` needs, at the
    output size: for each frame i and offset d in {1} and `config.long_term` with j = i - d >= 0,
    the flows (i, j) and (j, i) (`jaxmosaic.video.flow.pair_flows` with `config.flow`, or the
    given `flows`, resized to the output when they are of another size) and the masks
    consistency_mask(flow (a, b), flow (b, a)) of both.

    Args:
      frames: (N, H, W, 3), float32 in [0, 1] or uint8.
      config: the settings (output size, long-term offsets, flow method).
      flows: flows already at hand (e.g. a user's .flo files), keyed (a, b).

    Returns:
      A `VideoFlows` at the output size.
    """
    frames = np.asarray(frames)
    height, width = _output_shape(config, *frames.shape[1:3])
    if flows is None:
        pixels = frames.astype(np.float32) / 255.0 if frames.dtype == np.uint8 else frames.astype(np.float32)
        scaled = np.asarray(resize(jnp.asarray(pixels), height, width))
        flows = pair_flows(np.round(scaled * 255.0).astype(np.uint8), _flow_offsets(config), method=config.flow)
    fitted = {key: _fit_field(flow, height, width, vectors=True) for key, flow in flows.items()}
    mask_of = jax.jit(consistency_mask)
    masks = {(a, b): np.asarray(mask_of(flow, fitted[(b, a)])) for (a, b), flow in fitted.items() if (b, a) in fitted}
    return VideoFlows(fitted, masks)


def video_losses(x: jax.Array, targets: StyleTargets, temporal: tuple, params, *, temporal_weight: float = TEMPORAL_WEIGHT,
                 **settings) -> tuple[jax.Array, dict]:
    """The loss of each frame of an NHWC batch: `style_transfer_losses` (with `settings`) plus
    temporal_weight * H * W * sum_k temporal_loss(x, warped_k, mask_k).

    Args:
      x: (B, H, W, 3) pixels.
      targets: the frames' content features (B, ...) and the shared style targets.
      temporal: (warped (B, K, H, W, 3), masks (B, K, H, W)): the warped earlier results and
        their long-term weighted masks (a mask of zeros for none).
      params: VGG19 params.

    Returns:
      (totals (B,), {"content", "style", "tv", "temporal": (B,) each}), temporal unweighted.
    """
    totals, terms = style_transfer_losses(x, targets, params, **settings)
    warped, masks = temporal
    per_offset = jax.vmap(jax.vmap(temporal_loss, in_axes=(None, 0, 0)))(x, warped, masks)
    temporal_term = jnp.sum(per_offset, axis=1)
    height, width = x.shape[1:3]
    return totals + temporal_weight * height * width * temporal_term, {**terms, "temporal": temporal_term}


def _style_shape(config: VideoConfig, height: int, width: int) -> tuple[int, int]:
    """The size the style images are taken at for a scale of (height, width), as large as the frame (an estimate)."""
    return fit_shape(height, width, max(16, round(max(height, width) * config.style_scale)))


def _temporal_bytes(config: VideoConfig, height: int, width: int) -> int:
    """A window's warped earlier results and masks at a scale."""
    return config.batch_frames * len(config.long_term) * height * width * 4 * 4


def _style_bytes(config: VideoConfig, height: int, width: int, tile: int | None) -> int:
    """The style targets at a scale: the style image through VGG19 whole, or with a tile its Gram
    matrices taken tile by tile (sorted lists and histograms see the whole style image's features,
    and at a tiled scale the whole frames' features gathered from the tiles)."""
    shape = _style_shape(config, height, width)
    if tile is None:
        return activation_bytes(*shape, config.style_layers)
    if config.loss == Loss.gram:
        side = statistic_tile(tile) + 2 * HALO
        return activation_bytes(min(shape[0], side), min(shape[1], side), config.style_layers)
    features = sum((height // layer_stride(name)) * (width // layer_stride(name)) * layer_channels(name)
                   for name in config.style_layers) * 4 * 2
    return activation_bytes(*shape, config.style_layers) + 2 * (config.batch_frames + 1) * features


def video_tiles(config: VideoConfig, shape: tuple[int, int]) -> list[TilePlan]:
    """Which scales of frames of the output's `shape` (height, width) are refined tile by tile, and
    how (`jaxmosaic.techniques.common.tile_plan`, as `style_tiles` decides for an image): every
    scale larger than `config.tile`, or, with a tile setting, whose window of `batch_frames`
    frames does not fit `config.max_memory`; `tile="auto"` takes the largest tile that fits."""
    layers = (*config.content_layers, *config.style_layers)
    plans = []
    for size in config.sizes:
        height, width = fit_shape(*shape, size)
        temporal = _temporal_bytes(config, height, width)
        untiled = optimisation_bytes(height, width, layers, config.batch_frames) + temporal \
            + _style_bytes(config, height, width, None)
        fixed = held_bytes(height, width, config.batch_frames) + temporal + _style_bytes(config, height, width, 512) + _RUNTIME
        plans.append(tile_plan(config, height, width, untiled=untiled, fixed=fixed, layers=layers,
                               count=config.batch_frames))
    return plans


def video_memory(config: VideoConfig, shape: tuple[int, int], count: int) -> int:
    """Peak bytes of a transfer of `count` frames of `shape` (height, width): one window's
    optimisation (`batch_frames` frames through VGG19) at the largest scale, or at a tiled scale
    (`video_tiles`) of one tile of the window with the whole frames it holds and the loss taken
    tile by tile (as `style_memory` counts a tiled scale), its temporal data, the style targets,
    and the frames, results, flows and masks held."""
    layers = (*config.content_layers, *config.style_layers)
    offsets = len(_flow_offsets(config))
    peak = 0
    for plan in video_tiles(config, _output_shape(config, *shape)):
        height, width = plan.height, plan.width
        if plan.tile is None:
            window = optimisation_bytes(height, width, layers, config.batch_frames)
        else:
            side = statistic_tile(plan.tile) + 2 * HALO  # the reported loss: a frame and its content, tile by tile
            window = max(optimisation_bytes(*plan.shape, layers, config.batch_frames), activation_bytes(side, side, layers, 2)) \
                + held_bytes(height, width, config.batch_frames)
        window += _temporal_bytes(config, height, width) + _style_bytes(config, height, width, plan.tile)
        peak = max(peak, window)
    height, width = _output_shape(config, *shape)
    held = count * height * width * 4 * (3 * 4 + offsets * 2 * (2 + 1))  # frames, contents, two passes' results; flows, masks
    return peak + held + _RUNTIME


def tiled_video_losses(x: jax.Array, contents: jax.Array, grams: Mapping | None, temporal: tuple, params, *,
                       layer_weights: Mapping[str, float], content_layers: Sequence[str], alpha: float = 1.0,
                       beta: float = 1e3, tv_weight: float = 0.0, pooling: str = "max", loss: str = "gram",
                       statistics=None, temporal_weight: float = TEMPORAL_WEIGHT, tile: int = 512,
                       halo: int = HALO) -> tuple[jax.Array, dict]:
    """`video_losses` of whole frames too large for one pass through VGG19, taken tile by tile:
    the content, style and TV terms of each frame against its own content image
    (`jaxmosaic.tiled_losses.tiled_style_terms`, statistics tiles of `tile` px with `halo` px of
    context; sorted lists and histograms over the frame's features gathered from the tiles) and
    the temporal term, a sum over pixels, as it is. Equal to `video_losses` wherever the halo
    covers the layers' receptive field; differentiable.

    Args:
      x: (B, H, W, 3) pixels.
      contents: (B, H, W, 3) the frames the content loss compares with (one per frame).
      grams: layer -> the style Gram targets (C, C), shared by the frames ("gram", "gram+hist").
      temporal: (warped (B, K, H, W, 3), masks (B, K, H, W)), as `video_losses` takes them.
      params: VGG19 params.
      statistics: the style's distribution targets for the frame's size (other `loss` values).

    Returns:
      (totals (B,), {"content", "style", "tv", "temporal": (B,) each}), temporal unweighted.
    """
    tiling = {"tile": tile, "halo": halo, "pooling": pooling}
    parts = []
    for frame, content in zip(jnp.asarray(x, jnp.float32), jnp.asarray(contents, jnp.float32)):
        images = frame[None]
        if Loss(loss) == Loss.gram:
            parts.append(tiled_style_terms(params, images, content, grams, layer_weights, content_layers, **tiling))
            continue
        terms = tiled_style_terms(params, images, content, {}, {}, content_layers, **tiling)
        features = tiled_features(params, images, tuple(layer_weights), **tiling)
        terms["style"] = sum(distribution_terms(features, grams if Loss(loss) == Loss.gram_hist else None, statistics,
                                                layer_weights, loss=loss, pixels=images).values())
        parts.append(terms)
    terms = {name: jnp.concatenate([part[name] for part in parts]) for name in ("content", "style", "tv")}
    warped, masks = temporal
    terms["temporal"] = jnp.sum(jax.vmap(jax.vmap(temporal_loss, in_axes=(None, 0, 0)))(x, warped, masks), axis=1)
    height, width = x.shape[1:3]
    totals = alpha * terms["content"] + beta * terms["style"] + tv_weight * terms["tv"] \
        + temporal_weight * height * width * terms["temporal"]
    return totals, terms


def _window_problem(config: VideoConfig, contents: jax.Array, starts: jax.Array, temporal: tuple, params, *,
                    clip: _Clip, originals: jax.Array) -> Problem:
    """One window of frames as a `Problem`: `contents` (B, H, W, 3) the frames at the output size
    (colour-controlled), `starts` (B, h0, w0, 3) at the first scale, `temporal` (warped, masks) at
    the output size, `originals` the frames for --original-colors, `clip` the style targets and
    the tile plans. A tiled scale (`video_tiles`) is refined tile by tile as `style` refines
    one: each tile's loss is the content loss on its region of each frame, the style loss against
    the Gram matrices scaled to the tile's positions (w_l by the tile's share of them), and the
    temporal term of the tile's own pixels (a sum over pixels: the tile's share of the whole
    frame's, so its gradient is the whole loss's there); its reported losses are the whole
    frames', taken tile by tile (`tiled_video_losses`)."""
    plans = clip.plans
    count = contents.shape[0]
    settings = {"layer_weights": config.layer_weight_map, "alpha": config.content_weight, "beta": config.style_weight,
                "tv_weight": config.tv_weight, "pooling": config.pooling, "loss": config.loss,
                "temporal_weight": config.temporal_weight}
    axes = (StyleTargets(0, None, None, None, None), (0, 0), None)
    tile_of = {(plan.height, plan.width): plan for plan in plans}

    @functools.cache
    def temporal_at(height: int, width: int) -> tuple[jax.Array, jax.Array]:
        warped, masks = temporal
        batch, offsets = masks.shape[:2]
        if (height, width) != warped.shape[2:4]:
            warped = resize(warped.reshape(batch * offsets, *warped.shape[2:]), height, width).reshape(batch, offsets, height, width, 3)
            masks = resize(masks.reshape(batch * offsets, *masks.shape[2:], 1), height, width).reshape(batch, offsets, height, width)
        return warped, masks

    @functools.cache
    def data_at(height: int, width: int):
        scaled = resize(contents, height, width)
        features = vgg19_features(params, scaled, config.content_layers, pooling=config.pooling)
        targets = StyleTargets({name: features[name] for name in config.content_layers}, clip.grams_at(height, width),
                               clip.statistics_at(height, width))
        return targets, temporal_at(height, width), params

    def tile_data(plan: TilePlan) -> Callable:
        """(top, left) -> a tile's data: the content features of its region of each frame, the
        style targets as the tile compares with them, its crop of the warped results and masks."""
        scaled = resize(contents, plan.height, plan.width)
        warped, masks = temporal_at(plan.height, plan.width)
        grams = None
        if config.loss in (Loss.gram, Loss.gram_hist):
            grams = {name: value * position_share(plan, name) for name, value in clip.grams_at(plan.height, plan.width).items()}
        statistics = None if config.loss == Loss.gram else clip.statistics_at(plan.height, plan.width, plan.shape)
        features = jax.jit(lambda crops: vgg19_features(params, crops, config.content_layers, pooling=config.pooling))
        rows, columns = plan.shape

        def data(top: int, left: int):
            region = features(scaled[:, top:top + rows, left:left + columns])
            targets = StyleTargets({name: region[name] for name in config.content_layers}, grams, statistics)
            return targets, (warped[:, :, top:top + rows, left:left + columns], masks[:, :, top:top + rows, left:left + columns]), params

        return data

    def stage(index: int):
        plan = plans[index]

        def start(previous):
            return starts if previous is None else resize(previous, plan.height, plan.width)

        if plan.tile is not None:
            return synthesis_stage(config, plan, start=start, losses=video_losses, settings=settings,
                                   tile_data=tile_data(plan), data_axes=axes)
        return synthesis_stage(config, plan, start=start, losses=video_losses, settings=settings,
                               data=data_at(plan.height, plan.width), data_axes=axes)

    def finish(images):
        if config.color_control != ColorControl.luminance:
            return images
        return keep_colors(images, resize(originals, *images.shape[1:3]))

    terms_of = _terms_function(StageLoss(video_losses, settings))

    def terms(images):
        height, width = images.shape[1:3]
        plan = tile_of.get((height, width))
        if plan is None or plan.tile is None:
            return per_image(terms_of(jnp.asarray(images), *data_at(height, width)))
        statistics = None if config.loss == Loss.gram else clip.statistics_at(height, width)
        grams = clip.grams_at(height, width)
        return per_image(tiled_video_losses(jnp.asarray(images), resize(contents, height, width), grams,
                                            temporal_at(height, width), params, content_layers=config.content_layers,
                                            statistics=statistics, tile=statistic_tile(plan.tile), halo=HALO, **settings))

    tiled = [plan for plan in plans if plan.tile is not None]
    return Problem(stages=tuple(functools.partial(stage, i) for i in range(len(plans))),
                   steps=tuple(plan_steps(plan, steps) for plan, steps in zip(plans, config.step_counts)),
                   optimizer=config.optimizer, learning_rate=config.learning_rate, count=count,
                   view=lambda pixels: jnp.clip(pixels, 0.0, 1.0), finish=finish, terms=terms,
                   facts={"tiles": [{"scale": f"{plan.width}x{plan.height}", "tile": plan.tile, "count": len(plan.grid)}
                                    for plan in tiled]} if tiled else {},
                   notes=tuple(f"scale {plan.width}x{plan.height}: {tile_note(plan, config.overlap)}" for plan in tiled))


@functools.lru_cache(maxsize=8)
def _terms_function(loss: StageLoss) -> Callable:
    """The jitted losses and terms of a batch, one per loss and settings, so that every window
    of a clip reuses one compilation."""
    return jax.jit(lambda x, *data: loss.losses(x, *data, **loss.settings))


class _Clip(NamedTuple):
    """A clip prepared for its windows: the frames at the output size and the shared style targets."""

    originals: jax.Array  # (N, H, W, 3) the frames at the output size
    contents: jax.Array  # (N, H, W, 3) what the content loss sees (luminance under --original-colors)
    styles: list  # the style images (colour-controlled against the clip)
    grams_at: Callable  # (h, w) -> the blended style Gram targets (taken tile by tile at a tiled scale)
    statistics_at: Callable  # (h, w[, size]) -> distribution targets for outputs of size (default (h, w)), or None
    plans: list  # the scales' `TilePlan`s (`video_tiles`)


def _prepare(config: VideoConfig, frames: np.ndarray, styles: Sequence[np.ndarray], params) -> _Clip:
    frames = jnp.asarray(frames, jnp.float32)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"frames must be (N, H, W, 3), got {tuple(frames.shape)}")
    height, width = _output_shape(config, *frames.shape[1:3])
    originals = frames if frames.shape[1:3] == (height, width) else resize(frames, height, width)
    # colour control against the clip as one picture (evenly spaced frames stacked), so the
    # recoloured style, and with it the style targets, is the same for every frame
    sample = originals[np.unique(np.linspace(0, len(originals) - 1, min(16, len(originals))).round().astype(int))]
    clip = color_controlled(config, StyleInputs(sample.reshape(-1, width, 3), list(styles)))
    if ColorControl(config.color_control) == ColorControl.luminance:
        contents = jax.vmap(lambda frame: three_channels(match_luminance(frame, frame)))(originals)
    else:
        contents = originals
    recoloured = [jnp.asarray(style, jnp.float32) for style in clip.styles]
    plans = video_tiles(config, (height, width))
    tile_of = {(plan.height, plan.width): plan.tile for plan in plans if plan.tile is not None}
    layers = tuple(config.layer_weight_map)

    def scaled_styles(h: int, w: int) -> list:
        side = max(16, round(max(h, w) * config.style_scale))
        return [resize(style, *fit_shape(*style.shape[:2], side)) for style in recoloured]

    @functools.cache
    def grams_at(h: int, w: int):
        if config.loss not in (Loss.gram, Loss.gram_hist):
            return None
        blend = np.full(len(recoloured), 1.0 / len(recoloured)) if config.style_blend is None \
            else np.asarray(config.style_blend) / sum(config.style_blend)
        tile = tile_of.get((h, w))
        if tile is None:
            each = [gram_targets(params, style, layers, size=(h, w), pooling=config.pooling) for style in scaled_styles(h, w)]
        else:
            each = [tiled_grams(params, style, layers, tile=statistic_tile(tile), halo=HALO, pooling=config.pooling, size=(h, w))
                    for style in scaled_styles(h, w)]
        return {name: sum(float(b) * grams[name] for b, grams in zip(blend, each)) for name in layers}

    @functools.cache
    def statistics_at(h: int, w: int, shape: tuple[int, int] | None = None):
        if config.loss == Loss.gram:
            return None
        scale = [fit_shape(height, width, size) for size in config.sizes].index((h, w))
        return image_distribution_targets(params, scaled_styles(h, w), shape or (h, w), layers, loss=config.loss,
                                          directions=config.directions, pooling=config.pooling,
                                          key=jax.random.fold_in(jax.random.PRNGKey(config.seed), scale))

    return _Clip(originals, contents, recoloured, grams_at, statistics_at, plans)


def stylize_frames(config: VideoConfig, frames: np.ndarray, styles: Sequence[np.ndarray], params, *, starts: np.ndarray,
                   warped: np.ndarray | None = None, masks: np.ndarray | None = None, mesh=None) -> Solution:
    """Stylise a batch of frames as independent problems, each with its own start and temporal
    term: the step `stylize_video` takes for every window (one frame in the sequential method).

    Args:
      config: the settings.
      frames: (B, H, W, 3) float32 in [0, 1], resized to the output size.
      styles: the style images, HWC.
      params: VGG19 params.
      starts: (B, h, w, 3) the starting images (resized to the first scale when of another size).
      warped: (B, K, H, W, 3) earlier results warped into each frame (default: none).
      masks: (B, K, H, W) their weights c' (long-term weighted; zeros where there is none).
      mesh: devices the frames are sharded over, as `style_transfer` shards a batch of styles.

    Returns:
      The `Solution` of the batch: images (B, H', W', 3) at the output size and per frame
      {"total", "content", "style", "tv", "temporal"}.
    """
    clip = _prepare(config, frames, styles, params)
    return _solve_window(config, clip, np.arange(len(clip.originals)), starts, warped, masks, params, mesh)


def _solve_window(config: VideoConfig, clip: _Clip, indices: np.ndarray, starts, warped, masks, params, mesh) -> Solution:
    contents, originals = clip.contents[indices], clip.originals[indices]
    height, width = contents.shape[1:3]
    first = fit_shape(height, width, config.sizes[0])
    if warped is None or masks is None:
        warped = jnp.zeros((len(indices), 1, height, width, 3), jnp.float32)
        masks = jnp.zeros((len(indices), 1, height, width), jnp.float32)
    starts = jnp.asarray(starts, jnp.float32)
    if starts.shape[1:3] != first:
        starts = resize(starts, *first)
    problem = _window_problem(config, contents, starts,
                              (jnp.asarray(warped, jnp.float32), jnp.asarray(masks, jnp.float32)), params,
                              clip=clip, originals=originals)
    return solve(problem, mesh=mesh)


_warp = jax.jit(warp)
_inside = jax.jit(inside)
_weights = jax.jit(long_term_weights)


def _segments(config: VideoConfig, count: int, segment: tuple[int, int] | None, segments: int | None) -> list[tuple[int, int]]:
    """The (start, stop) of every segment this process stylises: its own share over several
    processes (or `segment`), or the `segments` shares N processes would take, all in this one."""
    processes = jax.process_count()
    split = processes if segments is None else segments
    if split > 1 and config.passes == 1:
        raise ConfigError("passes", f"the sequential method chains every frame to the one before and cannot be split "
                                    f"over {split} {'processes' if segments is None else 'segments'}: use --passes 2 or more")
    if segments is not None:
        if segment is not None or processes > 1:
            raise ValueError("segments runs the segments of several processes in one process: give it without segment, "
                             "in one process")
        if not 1 <= segments <= count:
            raise ValueError(f"segments must be 1 to the {count} frames, got {segments}")
        return [(count * index // segments, count * (index + 1) // segments) for index in range(segments)]
    if segment is None:
        index = jax.process_index()
        return [(count * index // processes, count * (index + 1) // processes)]
    start, stop = int(segment[0]), int(segment[1])
    if not 0 <= start < stop <= count:
        raise ValueError(f"segment {segment} is not within the {count} frames")
    return [(start, stop)]


def _done_by_pass(done: Mapping | None, passes: int) -> dict[int, dict[int, np.ndarray]]:
    """`done` as {pass: {frame: image}} (a key i is frame i of pass 0, a key (p, i) frame i of pass p)."""
    by_pass: dict[int, dict[int, np.ndarray]] = {}
    for key, image in (done or {}).items():
        pass_index, frame = (0, key) if np.ndim(key) == 0 else key
        if not 0 <= int(pass_index) < passes:
            raise ValueError(f"done holds a frame of pass {pass_index}, but there are {passes} passes")
        by_pass.setdefault(int(pass_index), {})[int(frame)] = np.asarray(image, np.float32)
    return by_pass


def stylize_video(config: VideoConfig, frames: np.ndarray, styles: Sequence[np.ndarray], params, *,
                  flows: VideoFlows | None = None, done: Mapping | None = None,
                  callback: Callable[[VideoProgress], None] | None = None, mesh=None,
                  segment: tuple[int, int] | None = None, segments: int | None = None) -> VideoResult:
    """Stylise a video's frames with temporal consistency (sequential or multi-pass, `config.passes`).

    Args:
      config: the settings (`VideoConfig()` is the reference's sequential method).
      frames: (N, H, W, 3) float32 in [0, 1]; resized to the output size (`config.size`).
      styles: the style images, HWC float32 (blended into one target).
      params: VGG19 params.
      flows: the flows and masks (`video_flows`; computed with `config.flow` when not given).
      done: finished frames that are not recomputed (their images used as results): a key i is
        frame i of the first pass (of the only one in the sequential method), a key (p, i) frame
        i of pass p. A multi-pass run resumes at the latest pass in `done`: the frames of that
        pass not in it start from their results of the pass before, which `done` must hold.
      callback: called with a `VideoProgress` after every finished frame, with its image; it may
        raise (e.g. KeyboardInterrupt) to stop the run after that frame.
      mesh: devices a window of frames is sharded over (`jaxmosaic.sharding.device_mesh`).
      segment: (start, stop): the frames this process stylises (default: over several processes
        each its contiguous share, the segments' border frames exchanged between passes; the
        sequential method is refused there). Frames outside it are returned as the processes'
        shares gathered, or, in one process, as `done` (its last pass) gives them, else zeros.
      segments: N: run, in this one process, the algorithm N processes run: the frames split
        into the N contiguous segments N processes would take, each pass's segments one after
        the other, each seeing its own results and the segments' border frames exchanged after
        the pass before (as `process_allgather` exchanges them), so its frames are those of N
        processes. Not with `segment`, nor over several processes.

    Returns:
      A `VideoResult`: the frames (N, H', W', 3) and each frame's loss terms.
    """
    if not styles:
        raise ValueError("at least one style image is needed")
    clip = _prepare(config, frames, styles, params)
    count, height, width = clip.originals.shape[:3]
    style_memory(dataclasses.replace(config, init="noise"), StyleInputs(np.asarray(clip.contents[0]), clip.styles))
    spans = _segments(config, count, segment, segments)
    needs_flows = count > 1 and (config.temporal_weight > 0 or config.init == "prev-warped" or config.passes > 1)
    if needs_flows and flows is None:
        flows = video_flows(np.asarray(clip.originals), config)
    elif needs_flows and any(np.shape(flow)[:2] != (height, width) for flow in flows.flows.values()):
        flows = video_flows(np.asarray(clip.originals), config, flows=flows.flows)
    if needs_flows:
        _check_flows(flows, count, _flow_offsets(config))
    by_pass = _done_by_pass(done, config.passes)
    first_pass = max(by_pass, default=0)
    before = dict(by_pass.get(first_pass - 1, {})) if first_pass > 0 else {}
    # what each segment sees: the results of its own frames and the others' borders (exchanged between passes)
    views = [{**{i: image for images in by_pass.values() for i, image in images.items() if not start <= i < stop}, **before}
             for start, stop in spans]
    losses: list[dict] = [{} for _ in range(count)]
    first = fit_shape(height, width, config.sizes[0])
    noise = np.asarray(jax.random.uniform(jax.random.PRNGKey(config.seed), (*first, 3), jnp.float32))
    mean_pixel = np.asarray(_MEAN_PIXEL, np.float32)
    offsets = config.long_term
    frames_total = config.passes * sum(stop - start for start, stop in spans)
    frames_done = first_pass * sum(stop - start for start, stop in spans)
    originals = np.asarray(clip.originals)

    for pass_index in range(first_pass, config.passes):
        direction = 1 if pass_index % 2 == 0 else -1
        for (start, stop), results in zip(spans, views):
            previous = before if pass_index == first_pass else dict(results)
            order = list(range(start, stop))[::direction]
            finished_here = by_pass.get(pass_index, {})
            current: dict[int, np.ndarray] = {}
            missing = [i for i in order if pass_index > 0 and i not in previous and i not in finished_here]
            if missing:
                raise ValueError(f"done has no result of pass {pass_index - 1} for frame {missing[0]} to resume pass {pass_index} from")
            # the first pass solves the clip's first frame alone, so that every later window has a
            # result to carry along the flows (see _window_start)
            alone = 1 if pass_index == 0 and config.batch_frames > 1 and order[0] - direction not in previous else 0
            bounds = [0, *range(alone, len(order), config.batch_frames)] if alone else list(range(0, len(order), config.batch_frames))
            for at, end in zip(bounds, [*bounds[1:], len(order)]):
                window = order[at:end]
                # known before the window: this pass's results of the earlier windows, else the pass before's
                known = {**previous, **{j: current[j] for j in order[:at]}}
                todo = []
                for i in window:
                    if i in finished_here:
                        current[i] = finished_here[i]
                        frames_done += 1
                    else:
                        todo.append(i)
                if not todo:
                    continue
                starts, warped_all, masks_all = [], [], []
                carried: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # window frames: (carried image, its confidence)
                for i in window:  # the finished frames too: what they carry is what the others start from
                    warped, masks = [], []
                    for d in offsets:
                        j = i - direction * d
                        image, trust = known.get(j), None
                        if image is None and j in carried:
                            image, trust = carried[j]
                        if image is None or config.temporal_weight == 0:
                            warped.append(np.zeros((height, width, 3), np.float32))
                            masks.append(np.zeros((height, width), np.float32))
                        else:
                            warped.append(np.asarray(_warp(image, flows.flows[(i, j)])))
                            masks.append(flows.masks[(i, j)] if trust is None else
                                         flows.masks[(i, j)] * np.asarray(_warp(trust[..., None], flows.flows[(i, j)]))[..., 0])
                    warped_all.append(np.stack(warped))
                    masks_all.append(np.asarray(_weights(np.stack(masks))))
                    starts.append(_window_start(config, i, direction, pass_index, known, previous, flows, noise, originals,
                                                clip, mean_pixel, carried))
                rows = [window.index(i) for i in todo]
                solution = _solve_window(config, clip, np.asarray(todo), np.stack(starts)[rows], np.stack(warped_all)[rows],
                                         np.stack(masks_all)[rows], params, mesh)
                stopped = None
                for k, i in enumerate(todo):
                    current[i] = np.asarray(solution.images[k], np.float32)
                    losses[i] = solution.loss[k]
                    frames_done += 1
                    if callback is not None:
                        try:
                            callback(VideoProgress(pass_index, config.passes, i, frames_done, frames_total, losses[i],
                                                   current[i], frames_done == frames_total))
                        except KeyboardInterrupt as interrupt:  # every finished frame of the window is still handed over
                            stopped = interrupt
                if stopped is not None:
                    raise stopped
            results.update(current)
        last = pass_index == config.passes - 1
        if jax.process_count() > 1:
            views[0].update(_exchange(views[0], *spans[0], gather_all=last))
        elif len(spans) > 1:  # what the processes exchange, in one
            shared = {i: results[i] for (start, stop), results in zip(spans, views)
                      for i in (range(start, stop) if last else sorted({start, stop - 1}))}
            for results in views:
                results.update(shared)
    output = np.zeros((count, height, width, 3), np.float32)
    for i, image in views[0].items():
        output[i] = image
    return VideoResult(output, losses)


def _check_flows(flows: VideoFlows, count: int, offsets: Sequence[int]) -> None:
    for d in offsets:
        for i in range(d, count):
            for key in ((i, i - d), (i - d, i)):
                if key not in flows.flows or key not in flows.masks:
                    raise ValueError(f"the flows lack the flow (or mask) from frame {key[0]} to frame {key[1]}")


def _frame_start(config: VideoConfig, i: int, direction: int, pass_index: int, known: dict, previous: dict,
                 flows: VideoFlows, noise: np.ndarray, originals: np.ndarray, clip: _Clip, mean_pixel: np.ndarray) -> np.ndarray:
    """Frame i's starting image: in the first pass from the initialisation (the previous result
    warped, noise, the content or the style), later its own result blended with the neighbour
    from the pass's direction warped, x + blend c (w - x) (the paper's multi-pass start)."""
    j = i - direction
    image = known.get(j)
    if pass_index > 0:
        own = previous[i]
        if image is None:
            return own
        weight = config.blend * flows.masks[(i, j)][..., None]
        return _at(own + weight * (np.asarray(_warp(image, flows.flows[(i, j)])) - own), noise.shape[:2])
    if config.init == "prev-warped" and image is not None:
        warped = np.asarray(_warp(image, flows.flows[(i, j)]))
        return _at(np.where(np.asarray(_inside(flows.flows[(i, j)]))[..., None] > 0, warped, mean_pixel), noise.shape[:2])
    if config.init == "content":
        return np.asarray(resize(jnp.asarray(originals[i]), *noise.shape[:2]))
    if config.init == "style":
        return np.asarray(resize(clip.styles[0], *noise.shape[:2]))
    return noise


def _window_start(config: VideoConfig, i: int, direction: int, pass_index: int, known: dict, previous: dict,
                  flows: VideoFlows | None, noise: np.ndarray, originals: np.ndarray, clip: _Clip, mean_pixel: np.ndarray,
                  carried: dict) -> np.ndarray:
    """Frame i's start in a window. In the first pass a neighbour in the same window is solved
    beside frame i, not before it: its stand-in is what came before it carried along the flows
    (the last result known before the window, or the first frame's start), with the product of
    the masks on the way as its confidence (0 for a carried start: the temporal term aims only
    at results). So a window starts, and aims, as one frame at a time would as far as the motion
    can be followed; `carried` gathers the stand-ins (frame -> (image, confidence))."""
    neighbour = i - direction
    if pass_index > 0 or flows is None:
        return _frame_start(config, i, direction, pass_index, known, previous, flows, noise, originals, clip, mean_pixel)
    start = None
    if neighbour not in known and neighbour in carried:
        image, trust = carried[neighbour]
        flow = flows.flows[(i, neighbour)]
        moved = np.where(np.asarray(_inside(flow))[..., None] > 0, np.asarray(_warp(image, flow)), mean_pixel)
        carried[i] = (moved, flows.masks[(i, neighbour)] * np.asarray(_warp(trust[..., None], flow))[..., 0])
        if config.init == "prev-warped":
            start = _at(moved, noise.shape[:2])
    if start is None:
        start = _frame_start(config, i, direction, pass_index, known, previous, flows, noise, originals, clip, mean_pixel)
    if i not in carried:
        shape = originals.shape[1:3]
        if neighbour in known:
            flow = flows.flows[(i, neighbour)]
            moved = np.where(np.asarray(_inside(flow))[..., None] > 0, np.asarray(_warp(known[neighbour], flow)), mean_pixel)
            carried[i] = (moved, np.asarray(flows.masks[(i, neighbour)], np.float32))
        else:
            carried[i] = (_at(start, shape), np.zeros(shape, np.float32))
    return start


def _at(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """An image at the first scale's size (as it is when it has that size already)."""
    return image if image.shape[:2] == tuple(shape) else np.asarray(resize(jnp.asarray(image), *shape))


def _exchange(results: dict, start: int, stop: int, *, gather_all: bool) -> dict:
    """Over processes: every process's border frames (or with `gather_all` all its frames) as
    {frame: image}, gathered with `process_allgather` (segments padded to one length)."""
    from jax.experimental import multihost_utils

    own = list(range(start, stop)) if gather_all else sorted({start, stop - 1})
    longest = int(np.max(multihost_utils.process_allgather(np.asarray([len(own)]))))
    shape = results[own[0]].shape
    images = np.zeros((longest, *shape), np.float32)
    indices = np.full(longest, -1, np.int64)
    for k, i in enumerate(own):
        images[k], indices[k] = results[i], i
    all_images = np.asarray(multihost_utils.process_allgather(images))
    all_indices = np.asarray(multihost_utils.process_allgather(indices))
    return {int(i): all_images[p, k] for p in range(all_indices.shape[0]) for k, i in enumerate(all_indices[p]) if i >= 0}
