"""Checkpoints of an optimisation (pixels, optimiser state, step) with Orbax.

A checkpoint is a folder: `state/` (an Orbax StandardCheckpointer tree) and `meta.json` (the
step and whatever settings the caller wants checked on resume). It is replaced atomically: a
new checkpoint is written beside the old one and renamed over it, so an interrupted save never
leaves a damaged checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import jax
import numpy as np

from jaxmosaic.errors import JaxmosaicError
from jaxmosaic.io.files import replace_dir

__all__ = ["save_tree", "save_checkpoint", "load_checkpoint", "read_checkpoint_meta"]


def save_tree(directory: str | os.PathLike, tree, *, name: str, sidecars: dict[str, dict]) -> Path:
    """Write `tree` (a pytree of arrays; NamedTuples allowed) as the Orbax folder `directory/name`,
    plus one JSON file per `sidecars` entry, into a temporary folder renamed over `directory`."""
    import orbax.checkpoint as ocp

    directory = Path(directory).expanduser().absolute()
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(tmp / name, jax.tree_util.tree_map(np.asarray, tree))
        checkpointer.wait_until_finished()
        for filename, content in sidecars.items():
            (tmp / filename).write_text(json.dumps(content, indent=2) + "\n")
        replace_dir(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def save_checkpoint(directory: str | os.PathLike, state, meta: dict) -> Path:
    """Write `state` (a pytree of arrays; NamedTuples allowed) and `meta` (JSON) to `directory`."""
    return save_tree(directory, state, name="state", sidecars={"meta.json": meta})


def read_checkpoint_meta(directory: str | os.PathLike) -> dict:
    """The `meta.json` of a checkpoint folder."""
    directory = Path(directory)
    try:
        return json.loads((directory / "meta.json").read_text())
    except FileNotFoundError:
        raise JaxmosaicError(f"{directory}: no checkpoint there (meta.json is missing)") from None
    except (OSError, json.JSONDecodeError) as err:
        raise JaxmosaicError(f"{directory}: cannot read the checkpoint ({err})") from None


def load_checkpoint(directory: str | os.PathLike, like) -> tuple:
    """(state, meta) from a checkpoint; `like` is a pytree of the same structure, shapes and dtypes
    (e.g. freshly initialised), which the restored arrays follow."""
    import orbax.checkpoint as ocp

    directory = Path(directory).expanduser().absolute()
    meta = read_checkpoint_meta(directory)
    abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), like)
    try:
        state = ocp.StandardCheckpointer().restore(directory / "state", abstract)
    except Exception as err:  # orbax raises many types for a damaged or mismatched folder
        raise JaxmosaicError(f"{directory}: cannot restore the checkpoint ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
    return state, meta
