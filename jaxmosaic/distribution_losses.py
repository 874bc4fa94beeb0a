"""Losses that match whole feature distributions, not only their second moments: the sliced
Wasserstein loss (Heitz, Vanhoey, Chambon, Belcour 2021) and the histogram loss (Risser, Wilmot,
Barnes 2017).

Features are an M x N matrix (M positions, N channels), or any array with channels last (HWC)
flattened to one. With V (N x P) unit directions,

    L_sw   = 1/(M P) sum_p sum_i (sort(F v_p)_i - Q_p(i))^2
    L_hist = 1/(M N) sum_c sum_i (F_ic - sg(R_c(F_ic)))^2

where Q_p is the target's sorted projections on v_p, resampled to M quantiles ((i + 1/2) / M,
linear interpolation) when the target has another number of positions, R_c remaps a value to
the target histogram of channel c at the value's rank among the output's (histogram matching)
and sg is `jax.lax.stop_gradient`. Both are zero for a permutation of the target's positions;
the Gram loss is zero for any feature set with the target's second moments, whatever its
marginals. All functions are pure and work under `jit`, `grad` and `vmap`.

For regions (spatial control) only some positions count: `masked_sliced_wasserstein_loss` and
`masked_histogram_loss` are the two losses of the rows of an M x N matrix where a mask holds (a
region's positions), its k rows compared at k quantiles, whatever M; `region_positions` gives a
region's positions (its guide above 1/2) as a fixed index set and `region_distribution_terms`
the terms of several regions, each at its own positions.

For the techniques: `DistributionTargets` holds a layer's targets and `distribution_terms` the
per-image terms of a batch over several layers, for `--loss gram|sw|hist|gram+hist` (`Loss`) and
`--directions random|fixed` (`Directions`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxmosaic.config import choice
from jaxmosaic.errors import ConfigError
from jaxmosaic.losses import style_losses
from jaxmosaic.vgg import layer_stride, vgg19_features

__all__ = [
    "HISTOGRAM_BINS",
    "Loss",
    "Directions",
    "SortedProjections",
    "HistogramTarget",
    "random_directions",
    "quantiles",
    "sorted_projections",
    "sliced_wasserstein_loss",
    "histogram_target",
    "histogram_remap",
    "histogram_loss",
    "masked_sliced_wasserstein_loss",
    "masked_histogram_loss",
    "DistributionTargets",
    "distribution_targets",
    "image_distribution_targets",
    "stack_targets",
    "image_targets",
    "SEED_AXES",
    "distribution_terms",
    "region_positions",
    "region_distribution_terms",
    "check_loss",
]

HISTOGRAM_BINS = 256
"""Bins of each channel's target histogram (Risser et al. use 256)."""


class Loss(enum.StrEnum):
    """The statistic a synthesis matches: Gram matrices, sliced Wasserstein, histograms, or Gram plus histograms."""

    gram = "gram"
    sw = "sw"
    hist = "hist"
    gram_hist = "gram+hist"

    @property
    def terms(self) -> tuple[str, ...]:
        """The loss terms it reports: "gram", "sw", "hist"."""
        return ("gram", "hist") if self == Loss.gram_hist else (self.value,)


class Directions(enum.StrEnum):
    """Sliced Wasserstein directions: drawn once per stage ("fixed") or anew at every point ("random")."""

    fixed = "fixed"
    random = "random"


class SortedProjections(NamedTuple):
    """A target's projections on directions, sorted along positions: (M', P) ascending per column."""

    values: jax.Array


class HistogramTarget(NamedTuple):
    """A target's per-channel histograms as piecewise-linear cumulative distributions."""

    edges: jax.Array  # (bins + 1, N): bin edges, from the channel's minimum to its maximum
    cdf: jax.Array  # (bins + 1, N): the fraction of positions below each edge (0 ... 1)


def _flat(features: jax.Array) -> jax.Array:
    features = jnp.asarray(features)
    return features.reshape(-1, features.shape[-1])


def random_directions(key: jax.Array, channels: int, count: int, *, dtype=jnp.float32) -> jax.Array:
    """`count` directions uniform on the unit sphere of R^channels, as the columns of a
    (channels, count) matrix (normal draws normalised, as Heitz et al. draw them)."""
    draws = jax.random.normal(key, (channels, count), dtype)
    return draws / jnp.linalg.norm(draws, axis=0, keepdims=True)


def quantiles(sorted_values: jax.Array, count: int) -> jax.Array:
    """A sorted list of M' values per column, (M', P), as `count` quantiles (count, P): the
    values at levels (i + 1/2) / count, linearly interpolated between the levels (j + 1/2) / M'
    of the list (clamped at its ends). For count == M' the list itself."""
    sorted_values = jnp.asarray(sorted_values)
    size = sorted_values.shape[0]
    if size == count:
        return sorted_values
    dtype = sorted_values.dtype
    levels = (jnp.arange(count, dtype=dtype) + 0.5) / count
    grid = (jnp.arange(size, dtype=dtype) + 0.5) / size
    return jax.vmap(lambda column: jnp.interp(levels, grid, column), in_axes=1, out_axes=1)(sorted_values)


def sorted_projections(target: jax.Array, directions: jax.Array) -> SortedProjections:
    """A target's features (M', N, or channels last) projected on directions (N, P) and sorted
    along positions: what `sliced_wasserstein_loss` compares with, computed once."""
    projected = _flat(target) @ jnp.asarray(directions, jnp.asarray(target).dtype)
    return SortedProjections(jnp.sort(projected, axis=0))


def sliced_wasserstein_loss(features: jax.Array, target: jax.Array | SortedProjections, directions: jax.Array) -> jax.Array:
    """The sliced Wasserstein loss of features (M x N, or channels last) to a target's.

    Args:
      features: the output's features, M positions x N channels.
      target: the target's features (M' x N), or its `sorted_projections` on the same directions.
      directions: (N, P) unit columns (`random_directions`).

    Returns:
      The mean over the P directions and the M positions of the squared difference between
      the output's sorted projections and the target's, resampled to M quantiles when M' != M
      (`quantiles`). Matches the authors' `slicing_loss` per layer for equal sizes.
    """
    flat = _flat(features)
    directions = jnp.asarray(directions, flat.dtype)
    if not isinstance(target, SortedProjections):
        target = sorted_projections(jnp.asarray(target, flat.dtype), directions)
    mine = jnp.sort(flat @ directions, axis=0)
    theirs = quantiles(jnp.asarray(target.values, flat.dtype), flat.shape[0])
    return jnp.mean(jnp.square(mine - theirs))


def histogram_target(target: jax.Array, bins: int) -> HistogramTarget:
    """Each channel's histogram of a target's features (M' x N, or channels last): `bins`
    equal bins from the channel's minimum to its maximum (a constant channel gets a bin width of
    1e-12), as edges and cumulative fractions."""
    flat = _flat(target)
    low, high = jnp.min(flat, axis=0, keepdims=True), jnp.max(flat, axis=0, keepdims=True)
    width = jnp.maximum(high - low, jnp.asarray(1e-12, flat.dtype)) / bins
    index = jnp.clip(jnp.floor((flat - low) / width).astype(jnp.int32), 0, bins - 1)
    channels = jnp.broadcast_to(jnp.arange(flat.shape[1]), flat.shape)
    counts = jnp.zeros((bins, flat.shape[1]), flat.dtype).at[index, channels].add(1.0)
    cdf = jnp.concatenate([jnp.zeros((1, flat.shape[1]), flat.dtype), jnp.cumsum(counts, axis=0) / flat.shape[0]])
    edges = low + jnp.arange(bins + 1, dtype=flat.dtype)[:, None] * width
    return HistogramTarget(edges, cdf)


def histogram_remap(features: jax.Array, target: HistogramTarget) -> jax.Array:
    """Histogram matching of features (M x N) to a `HistogramTarget`: each value replaced by the
    target's inverse cumulative distribution at the value's level (rank + 1/2) / M among its
    channel's values (ties by position). Returns (M, N)."""
    flat = _flat(features)
    ranks = jnp.argsort(jnp.argsort(flat, axis=0), axis=0)
    return _inverse_cdf((ranks.astype(flat.dtype) + 0.5) / flat.shape[0], target)


def _inverse_cdf(levels: jax.Array, target: HistogramTarget) -> jax.Array:
    """Each column's levels (M, N) in [0, 1] mapped through its channel's inverse cumulative distribution."""
    edges, cdf = jnp.asarray(target.edges, levels.dtype), jnp.asarray(target.cdf, levels.dtype)
    return jax.vmap(jnp.interp, in_axes=(1, 1, 1), out_axes=1)(levels, cdf, edges)


def histogram_loss(features: jax.Array, target: jax.Array | HistogramTarget, bins: int) -> jax.Array:
    """The histogram loss of Risser et al.: features (M x N, or channels last) against a target's
    features (M' x N) or their `histogram_target` of `bins` bins.

    Returns 1/(M N) ||F - sg(R(F))||^2 with R = `histogram_remap` under `stop_gradient`: its
    gradient is 2/(M N) (F - R(F)), which pulls each value toward its remapped value."""
    flat = _flat(features)
    if not isinstance(target, HistogramTarget):
        target = histogram_target(jnp.asarray(target, flat.dtype), bins)
    elif target.edges.shape[0] != bins + 1:
        raise ValueError(f"the histogram target has {target.edges.shape[0] - 1} bins, not {bins}")
    remapped = jax.lax.stop_gradient(histogram_remap(flat, target))
    return jnp.mean(jnp.square(flat - remapped))


def _inside(inside: jax.Array, rows: int, dtype) -> tuple[jax.Array, jax.Array]:
    """The mask as (M,) booleans and its count k in `dtype`."""
    inside = jnp.asarray(inside).reshape(rows)
    inside = inside if inside.dtype == jnp.bool_ else inside > jnp.zeros((), inside.dtype)
    return inside, jnp.sum(inside, dtype=dtype)


def _at_least_one(count: jax.Array) -> jax.Array:
    """A count to divide by: an empty mask's terms are all zero, and so is its loss."""
    return jnp.maximum(count, jnp.ones((), count.dtype))


def masked_sliced_wasserstein_loss(features: jax.Array, inside: jax.Array, target: jax.Array | SortedProjections,
                                   directions: jax.Array) -> jax.Array:
    """`sliced_wasserstein_loss` of the k rows of features (M x N, or channels last) where
    `inside` (M,) holds, whatever M: their sorted projections against the target's at k
    quantiles (levels (i + 1/2) / k, `quantiles`). For `inside` all true this is
    `sliced_wasserstein_loss`; for none it is 0. The count k is data, so one compiled function
    serves masks of any count (e.g. a region's positions in each tile).

    Args:
      features: the output's features, M positions x N channels.
      inside: (M,) booleans (or anything > 0 inside): the positions that count.
      target: the target's features (M' x N), or its `sorted_projections` on the same directions.
      directions: (N, P) unit columns.

    Returns:
      mean over the P directions and the k positions of the squared differences (a scalar).
    """
    flat = _flat(features)
    inside, count = _inside(inside, flat.shape[0], flat.dtype)
    directions = jnp.asarray(directions, flat.dtype)
    if not isinstance(target, SortedProjections):
        target = sorted_projections(jnp.asarray(target, flat.dtype), directions)
    theirs = jnp.asarray(target.values, flat.dtype)
    # the positions outside sort last, behind the k inside, and are left out of the sum
    mine = jnp.sort(jnp.where(inside[:, None], flat @ directions, jnp.inf), axis=0)
    rows = jnp.arange(flat.shape[0], dtype=flat.dtype)
    levels = (rows + 0.5) / _at_least_one(count)
    grid = (jnp.arange(theirs.shape[0], dtype=flat.dtype) + 0.5) / theirs.shape[0]
    resampled = jax.vmap(lambda column: jnp.interp(levels, grid, column), in_axes=1, out_axes=1)(theirs)
    difference = jnp.where((rows < count)[:, None], mine - resampled, 0.0)
    return jnp.sum(jnp.square(difference)) / (_at_least_one(count) * directions.shape[1])


def masked_histogram_loss(features: jax.Array, inside: jax.Array, target: jax.Array | HistogramTarget, bins: int) -> jax.Array:
    """`histogram_loss` of the k rows of features (M x N, or channels last) where `inside` (M,)
    holds: each of their values remapped to the target's histogram at its level (rank + 1/2) / k
    among the k (ties by position), 1/(k N) ||F_k - sg(R(F_k))||^2. For `inside` all true this
    is `histogram_loss`; for none it is 0."""
    flat = _flat(features)
    inside, count = _inside(inside, flat.shape[0], flat.dtype)
    if not isinstance(target, HistogramTarget):
        target = histogram_target(jnp.asarray(target, flat.dtype), bins)
    elif target.edges.shape[0] != bins + 1:
        raise ValueError(f"the histogram target has {target.edges.shape[0] - 1} bins, not {bins}")
    ranks = jnp.argsort(jnp.argsort(jnp.where(inside[:, None], flat, jnp.inf), axis=0), axis=0)
    remapped = jax.lax.stop_gradient(_inverse_cdf((ranks.astype(flat.dtype) + 0.5) / _at_least_one(count), target))
    residual = jnp.where(inside[:, None], flat - remapped, 0.0)
    return jnp.sum(jnp.square(residual)) / (_at_least_one(count) * flat.shape[1])


class DistributionTargets(NamedTuple):
    """What `distribution_terms` compares a batch with, per layer (fields a loss does not use are
    None). Leaves may have a leading axis of one entry per image of the batch."""

    sorted: dict | None = None  # fixed directions: layer -> SortedProjections (M_out, P), resampled to the output's positions
    directions: dict | None = None  # fixed directions: layer -> (N, P)
    features: dict | None = None  # random directions: layer -> the target's features (M', N)
    key: jax.Array | None = None  # random directions: the key they are drawn from
    histograms: dict | None = None  # layer -> HistogramTarget


def distribution_targets(features: Mapping[str, jax.Array], positions: Mapping[str, int], *, loss: Loss | str,
                         directions: Directions | str = Directions.fixed, key: jax.Array | None = None,
                         bins: int = HISTOGRAM_BINS, masks: Mapping[str, jax.Array] | None = None) -> DistributionTargets:
    """The targets of one exemplar or style image for `loss` ("sw", "hist", "gram+hist"; "gram"
    needs none): `features` layer -> its features (H', W', N); `positions` layer -> the number
    of positions M of the output they are compared with. Fixed directions are drawn here from
    `key` folded with the layer's index (as many directions as channels, as Heitz et al.).

    With `masks` (layer -> a guide (H', W') at the layer's resolution, e.g.
    `jaxmosaic.layer_guides`), only the positions where the guide exceeds 1/2 count: the sorted
    lists and histograms of a region's positions. Not under `jit` (the count is the data's)."""
    loss, directions = Loss(loss), Directions(directions)
    if masks is not None:
        kept = {}
        for name, value in features.items():
            inside = np.asarray(masks[name]).reshape(-1) > 0.5
            if not inside.any():
                raise ValueError(f"the region has no position at layer {name}")
            kept[name] = _flat(value)[np.flatnonzero(inside)]
        features = kept
    out = {}
    if loss == Loss.sw:
        if key is None:
            raise ValueError("the sliced Wasserstein loss needs a key for its directions")
        if directions == Directions.fixed:
            drawn = {name: random_directions(jax.random.fold_in(key, index), value.shape[-1], value.shape[-1])
                     for index, (name, value) in enumerate(features.items())}
            out["directions"] = drawn
            out["sorted"] = {name: SortedProjections(_sorted_quantiles(value, drawn[name], int(positions[name])))
                             for name, value in features.items()}
        else:
            out["features"] = {name: _flat(value) for name, value in features.items()}
            out["key"] = key
    if loss in (Loss.hist, Loss.gram_hist):
        out["histograms"] = {name: _histogram_target(value, bins) for name, value in features.items()}
    return DistributionTargets(**out)


# one compiled program per shape for the targets (op by op, each of their many small operations compiles alone)
_sorted_quantiles = jax.jit(lambda value, directions, count: quantiles(sorted_projections(value, directions).values, count),
                            static_argnums=2)
_histogram_target = jax.jit(histogram_target, static_argnums=1)


SEED_AXES = DistributionTargets(sorted=0, directions=0, features=None, key=0, histograms=None)
"""`data_axes` of targets stacked by `stack_targets(..., shared=True)`: what depends on the seed
has one entry per image, the exemplar's features and histograms are shared."""


def stack_targets(targets, *, shared: bool) -> DistributionTargets:
    """Targets of several images as one batch: every field stacked, or with `shared` (one
    exemplar, a key per image) only the fields drawn from the key (`SEED_AXES`)."""
    targets = list(targets)
    stack = lambda *leaves: jnp.stack(leaves)  # noqa: E731
    if not shared:
        return jax.tree_util.tree_map(stack, *targets)
    first = targets[0]
    keyed = {name: jax.tree_util.tree_map(stack, *(getattr(t, name) for t in targets))
             for name in ("sorted", "directions", "key") if getattr(first, name) is not None}
    return first._replace(**keyed)


def image_targets(targets: DistributionTargets, index: int, *, shared: bool) -> DistributionTargets:
    """Image `index`'s entry of `stack_targets(..., shared=shared)`."""
    if not shared:
        return jax.tree_util.tree_map(lambda leaf: leaf[index], targets)
    keyed = {name: jax.tree_util.tree_map(lambda leaf: leaf[index], getattr(targets, name))
             for name in ("sorted", "directions", "key") if getattr(targets, name) is not None}
    return targets._replace(**keyed)


def _point_key(key: jax.Array, pixels: jax.Array) -> jax.Array:
    """`key` folded with a hash of one image's pixels: new directions at every new point of an
    optimisation, the same ones whenever the same point is evaluated again."""
    bits = jax.lax.bitcast_convert_type(jax.lax.stop_gradient(pixels).astype(jnp.float32), jnp.uint32).reshape(-1)
    weights = jnp.arange(bits.shape[0], dtype=jnp.uint32) * jnp.uint32(2654435761) + jnp.uint32(1)
    return jax.random.fold_in(key, jnp.sum(bits * weights, dtype=jnp.uint32))


def _image_axis(leaf, ndim: int):
    """0 when a target leaf has one entry per image (one axis more than a shared one), else None."""
    return 0 if jnp.ndim(leaf) == ndim + 1 else None


def distribution_terms(features: Mapping[str, jax.Array], grams: Mapping[str, jax.Array] | None,
                       targets: DistributionTargets | None, layer_weights: Mapping[str, float], *, loss: Loss | str,
                       pixels: jax.Array | None = None, bins: int = HISTOGRAM_BINS,
                       positions: Mapping[str, jax.Array] | None = None) -> dict:
    """The statistic terms of each image of a batch: {"gram"|"sw"|"hist": (B,)} as `loss` names
    them, each sum_l w_l of the layer's loss over the layers of `layer_weights`.

    Args:
      features: layer -> the batch's features (B, H, W, N).
      grams: layer -> Gram targets, for "gram" and "gram+hist" (`jaxmosaic.losses.style_losses`).
      targets: `distribution_targets` (shared, or stacked with one entry per image).
      layer_weights: w_l.
      loss: which statistic.
      pixels: the batch's images (B, H, W, C); random directions are drawn from the targets' key
        folded with a hash of each image.
      bins: the histograms' bins.
      positions: only these positions count (a region's, `region_positions`): layer -> (K,)
        indices into the layer's H * W positions, -1 for none (`masked_sliced_wasserstein_loss`,
        `masked_histogram_loss`); for "sw" and "hist" only.
    """
    loss = Loss(loss)
    if positions is not None and loss in (Loss.gram, Loss.gram_hist):
        raise ValueError("positions go with the sw and hist terms; a region's Gram term is `jaxmosaic.guided_style_losses`")
    terms = {}

    def at(name: str):
        """The layer's features of the batch and the sw and hist losses of one image of them."""
        if positions is None:
            return features[name], sliced_wasserstein_loss, lambda f, t: histogram_loss(f, t, bins)
        index = jnp.asarray(positions[name])
        batch = jnp.asarray(features[name])
        inside = index >= 0
        gathered = batch.reshape(batch.shape[0], -1, batch.shape[-1])[:, jnp.maximum(index, 0)]
        return (gathered, lambda f, t, d: masked_sliced_wasserstein_loss(f, inside, t, d),
                lambda f, t: masked_histogram_loss(f, inside, t, bins))

    if loss in (Loss.gram, Loss.gram_hist):
        terms["gram"] = style_losses({name: features[name] for name in layer_weights}, grams, layer_weights)
    if loss == Loss.sw:
        total = 0.0
        for index, (name, weight) in enumerate(layer_weights.items()):
            layer, sliced, _ = at(name)
            if targets.directions is not None:
                directions, target = targets.directions[name], targets.sorted[name]
                axes = (0, _image_axis(directions, 2), _image_axis(target.values, 2))
                value = jax.vmap(sliced, in_axes=axes)(layer, target, directions)
            else:
                def one(image, key, target, layer=index, sliced=sliced):
                    own = jax.random.fold_in(_point_key(key, image[0]), layer)
                    return sliced(image[1], target, random_directions(own, target.shape[-1], target.shape[-1]))

                target = targets.features[name]
                axes = (0, _image_axis(targets.key, 1), _image_axis(target, 2))
                value = jax.vmap(one, in_axes=axes)((pixels, layer), targets.key, target)
            total = total + weight * value
        terms["sw"] = total
    if loss in (Loss.hist, Loss.gram_hist):
        total = 0.0
        for name, weight in layer_weights.items():
            layer, _, histogram = at(name)
            target = targets.histograms[name]
            axes = (0, _image_axis(target.edges, 2))
            total = total + weight * jax.vmap(histogram, in_axes=axes)(layer, target)
        terms["hist"] = total
    return terms


def region_positions(guides: Mapping[str, jax.Array], *, padded: bool = False) -> dict:
    """A region's positions at each layer, where its guide (H, W) exceeds 1/2: {layer: indices
    into the H * W positions}, as `distribution_terms` takes them. A fixed index set of the
    positions (int32 (k,); numpy, not under `jit`: the count is the guide's), or with `padded`
    one index per position, -1 where the guide does not exceed 1/2 ((H * W,); under `jit`, for
    guides whose count varies, e.g. a tile's)."""
    if padded:
        return {name: jnp.where(jnp.asarray(guide).reshape(-1) > 0.5, jnp.arange(jnp.size(guide), dtype=jnp.int32), -1)
                for name, guide in guides.items()}
    return {name: np.flatnonzero(np.asarray(guide).reshape(-1) > 0.5).astype(np.int32) for name, guide in guides.items()}


def region_distribution_terms(features: Mapping[str, jax.Array], positions: Sequence[Mapping[str, jax.Array]],
                              targets: Sequence[DistributionTargets], layer_weights: Mapping[str, float],
                              region_weights: jax.Array | Mapping[str, jax.Array], *, loss: Loss | str,
                              pixels: jax.Array | None = None, bins: int = HISTOGRAM_BINS) -> dict:
    """The sw or hist terms of R regions of each image of a batch: {"sw"|"hist": (B,)}, each
    sum_r sum_l gw_r w_l of the layer's loss at region r's positions against region r's targets
    (`distribution_terms` with `positions`). For "gram+hist" the "hist" term (its Gram term is
    `jaxmosaic.guided_style_losses`').

    Args:
      features: layer -> the batch's features (B, H, W, N).
      positions: per region, `region_positions` of the output's guides.
      targets: per region, `distribution_targets` of its style image's positions (shared, or
        stacked with one entry per image).
      layer_weights: w_l.
      region_weights: gw_r (R,), or {layer: (R,)} one set per layer.
      loss: "sw", "hist" or "gram+hist".
      pixels: the batch's images, for random directions (`distribution_terms`).
      bins: the histograms' bins.
    """
    loss = Loss(loss)
    if loss == Loss.gram:
        raise ValueError("the Gram loss of regions is `jaxmosaic.guided_style_losses`")
    loss = Loss.hist if loss == Loss.gram_hist else loss

    def weight(region: int, name: str):
        return (region_weights[name] if isinstance(region_weights, Mapping) else region_weights)[region]

    terms = {}
    for region, (where, target) in enumerate(zip(positions, targets)):
        weights = {name: w * weight(region, name) for name, w in layer_weights.items()}
        for term, value in distribution_terms(features, None, target, weights, loss=loss, pixels=pixels, bins=bins,
                                              positions=where).items():
            terms[term] = terms.get(term, 0.0) + value
    return terms


def check_loss(config) -> None:
    """Validate a synthesis config's `loss` and `directions` (set on it, frozen or not) against
    its optimiser: one `ConfigError` naming the option and the reason. (In tiles, each tile's
    sorted lists and histograms are compared with the whole target's at the tile's number of
    positions, weighed by its share of them, as its Gram matrices are.)"""
    loss = _choice(config, "loss", Loss)
    directions = _choice(config, "directions", Directions)
    if loss == Loss.sw and directions == Directions.random and str(config.optimizer) == "lbfgs":
        raise ConfigError("directions", "random does not go with the lbfgs optimizer: its line search needs the same "
                                        "loss at every evaluation; use --directions fixed or --optimizer adam")


def _choice(config, name: str, kind: type[enum.Enum]):
    value = choice(name, getattr(config, name), kind)
    object.__setattr__(config, name, value)
    return value


def image_distribution_targets(params, images, size: tuple[int, int], layers, *, loss: Loss | str,
                               directions: Directions | str = Directions.fixed, key: jax.Array | None = None,
                               pooling: str = "max", stacked: bool = False) -> DistributionTargets:
    """`distribution_targets` of RGB HWC images' VGG19 features at `layers`, for an output of
    `size` (height, width): of one image, or with `stacked` of each image, stacked (one entry
    per image of a batch, the same key for all). Random directions need images of one size when
    stacked (their features are stacked as they are)."""
    layers = tuple(layers)
    height, width = size
    positions = {name: (height // layer_stride(name)) * (width // layer_stride(name)) for name in layers}
    each = []
    for image in images:
        features = vgg19_features(params, jnp.asarray(image, jnp.float32)[None], layers, pooling=pooling)
        each.append(distribution_targets({name: features[name][0] for name in layers}, positions, loss=loss,
                                         directions=directions, key=key))
    if not stacked:
        return each[0]
    return stack_targets(each, shared=False)
