"""Pytrees of a batch of independent problems: every leaf has a leading problem axis (B, ...).

Helpers for the optimisers: per-problem dot products, masks and finiteness, each problem's
arithmetic done apart from the others' (see `per_problem_dot`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

__all__ = ["count", "problem", "stack", "per_problem_dot", "broadcast", "select", "finite", "per_problem_leaves"]


def count(tree) -> int:
    """The number of problems (the leading size of the first leaf)."""
    return jax.tree_util.tree_leaves(tree)[0].shape[0]


def problem(tree, i: int):
    """Problem i's slice of every leaf."""
    return jax.tree_util.tree_map(lambda leaf: leaf[i], tree)


def stack(trees):
    """Problems' trees stacked into one batch tree."""
    return jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *trees)


def per_problem_dot(a, b) -> jax.Array:
    """<a_i, b_i> for each problem i of two pytrees with a leading problem axis: (B,).

    Each problem's sum is its own reduction, so it is bitwise the one it has alone (a batched
    reduction may sum in another order, and a line search amplifies the last bit).
    """
    return jnp.stack([optax.tree.vdot(problem(a, i), problem(b, i)) for i in range(count(a))])


def broadcast(values: jax.Array, leaf: jax.Array) -> jax.Array:
    """(B,) values shaped to broadcast against a (B, ...) leaf, in the leaf's dtype."""
    return values.reshape((values.shape[0],) + (1,) * (leaf.ndim - 1)).astype(leaf.dtype)


def select(mask: jax.Array, new, old):
    """Per problem: the `new` tree where mask, else the `old` one. Leaves without the problem
    axis (Adam's step count) take the new value."""
    batch = mask.shape[0]

    def choose(n, o):
        if jnp.ndim(n) == 0 or n.shape[0] != batch:
            return n
        return jnp.where(mask.reshape((batch,) + (1,) * (n.ndim - 1)), n, o)

    return jax.tree_util.tree_map(choose, new, old)


def finite(tree) -> jax.Array:
    """(B,) whether every value of each problem is finite."""
    leaves = [jnp.all(jnp.isfinite(leaf.reshape(leaf.shape[0], -1)), axis=1)
              for leaf in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves), axis=0)


def per_problem_leaves(data_axes, data):
    """`data_axes`, a prefix of data's structure (0: a leading problem axis; None: shared), as a
    full tree of booleans: which leaves of `data` have the problem axis."""
    return jax.tree_util.tree_map(lambda axis, sub: jax.tree_util.tree_map(lambda _: axis == 0, sub), data_axes, data,
                                  is_leaf=lambda x: x is None)
