"""Placement of a batch of independent problems on several devices.

A one-axis `jax.sharding.Mesh` ("devices") shares the work: the problem axis sharded over it
(padded to a multiple of the devices with copies of the first problem, each device running its
own problems under `jax.shard_map`), or one image's height (XLA's SPMD partitioner adds the
halos the convolutions need). Shared data is replicated. Nothing here knows what a problem is.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxmosaic._problems import count, per_problem_leaves

__all__ = ["device_mesh", "pad_problems", "unpad_problems", "distribute", "sharded_by_problem"]


def device_mesh(devices: int | None = None, *, local: bool = False) -> Mesh | None:
    """A one-axis mesh ("devices") over the first `devices` devices (default: all; with `local`,
    this process's own only), or None for one."""
    available = jax.local_devices() if local else jax.devices()
    wanted = len(available) if devices is None else devices
    if not 1 <= wanted <= len(available):
        raise ValueError(f"devices must be between 1 and the {len(available)} available, got {wanted}")
    return Mesh(np.asarray(available[:wanted]), ("devices",)) if wanted > 1 else None


def pad_problems(tree, size: int, *, batch: int | None = None):
    """Every leaf with the leading problem axis (of `batch`, default: any) padded to `size` with
    copies of its first problem; leaves without it (a step count) as they are."""
    def pad(leaf):
        leaf = jnp.asarray(leaf)
        if leaf.ndim == 0 or (batch is not None and leaf.shape[0] != batch) or leaf.shape[0] == size:
            return leaf
        return jnp.concatenate([leaf, jnp.repeat(leaf[:1], size - leaf.shape[0], axis=0)])
    return jax.tree_util.tree_map(pad, tree)


def unpad_problems(tree, batch: int, size: int):
    """Drop the padding copies from every leaf that has the (padded) problem axis."""
    if batch == size:
        return tree
    return jax.tree_util.tree_map(lambda leaf: leaf[:batch] if getattr(leaf, "ndim", 0) and leaf.shape[0] == size else leaf, tree)


def sharded_by_problem(chunk: Callable, mesh: Mesh, state, data, data_axes, size: int) -> Callable:
    """A chunk `(params, state, good, data) -> (params, state, good, losses)` run on each device
    for its own problems (`jax.shard_map`): independent problems need no communication, and
    each problem's arithmetic is what it is on one device."""
    problem, shared = PartitionSpec("devices"), PartitionSpec()

    def spec_of(leaf):
        return problem if getattr(leaf, "ndim", 0) and leaf.shape[0] == size else shared

    state_specs = jax.tree_util.tree_map(spec_of, state)
    data_specs = jax.tree_util.tree_map(lambda sharded: problem if sharded else shared, per_problem_leaves(data_axes, data))
    # check_vma off: the line search's loop starts from constants that become per-device values
    return jax.shard_map(chunk, mesh=mesh, in_specs=(problem, state_specs, problem, data_specs),
                         out_specs=(problem, state_specs, problem, PartitionSpec(None, "devices")), check_vma=False)


def distribute(params, data, data_axes, mesh: Mesh | None, split: str):
    """Put params and data on the mesh: the problem axis (padded) or one image's height sharded,
    everything shared replicated. Returns (params, data, padded batch size)."""
    batch = count(params)
    if mesh is None:
        return params, data, batch
    devices = mesh.size
    replicated = NamedSharding(mesh, PartitionSpec())
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
    params = jax.device_put(pad_problems(params, size), per_problem)
    data = jax.tree_util.tree_map(lambda sharded, leaf: jax.device_put(pad_problems(leaf, size), per_problem) if sharded
                                  else jax.device_put(leaf, replicated), per_problem_leaves(data_axes, data), data)
    return params, data, size
