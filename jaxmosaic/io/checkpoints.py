"""Checkpoints of an optimisation (parameters, optimiser state, step) with Orbax.

A checkpoint is a versioned jaxmosaic folder (`jaxmosaic.io.folders`): each save writes a new
version, `state/` (an Orbax StandardCheckpointer tree) and `meta.json` (the step and whatever
settings the caller wants checked on resume), and then makes it current, so a save that is
interrupted or killed at any point leaves the previous checkpoint loadable. `meta.json` is read
back through a schema when the caller gives one (`jaxmosaic.io.schemas.CheckpointMeta` for a run).

Orbax reports a failure twice: as the exception the call raises, and from its own threads (records
of the `absl` logger with their tracebacks; "Event loop is closed" errors when tensorstore answers a
read the failure cancelled). Only the exception is kept: it becomes one line naming the folder.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import jax
import numpy as np
from pydantic import BaseModel

from jaxmosaic.errors import JaxmosaicError
from jaxmosaic.io.folders import current_version, save_version
from jaxmosaic.io.schemas import read_model

__all__ = ["save_tree", "load_tree", "save_checkpoint", "load_checkpoint", "checkpoint_meta_file", "read_checkpoint_meta"]


class _OrbaxRecords(logging.Filter):
    """Drops the records Orbax logs (through absl): what fails there reaches the caller as an exception."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "orbax" not in Path(record.pathname).parts


def _closed_loop(unraisable) -> bool:
    return (unraisable.object is None and isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == "Event loop is closed")


def _quiet_orbax() -> None:
    """Keep Orbax's thread reports off the console (see the module doc); any other unraisable
    error still reaches the hook that was there before."""
    absl = logging.getLogger("absl")
    if not any(isinstance(existing, _OrbaxRecords) for existing in absl.filters):
        absl.addFilter(_OrbaxRecords())
    previous = sys.unraisablehook
    if getattr(previous, "skips_closed_loops", False):
        return

    def hook(unraisable) -> None:
        if not _closed_loop(unraisable):
            previous(unraisable)

    hook.skips_closed_loops = True
    sys.unraisablehook = hook


def save_tree(directory: str | os.PathLike, tree, *, kind: str, name: str, sidecars: dict[str, dict]) -> Path:
    """Write `tree` (a pytree of arrays; NamedTuples allowed) as the Orbax folder `name` plus one
    JSON file per `sidecars` entry, as a new version of the versioned folder `directory`; a full
    disk is one `jaxmosaic.io.files.DiskFullError` naming `directory`, its current version kept."""
    import orbax.checkpoint as ocp

    _quiet_orbax()
    arrays = jax.tree_util.tree_map(np.asarray, tree)
    texts = {filename: json.dumps(content, indent=2) + "\n" for filename, content in sidecars.items()}
    needed = sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(arrays)) + sum(len(text) for text in texts.values())

    def write(folder: Path) -> None:
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(folder / name, arrays)
        checkpointer.wait_until_finished()
        for filename, text in texts.items():
            (folder / filename).write_text(text)

    save_version(directory, kind, write, needed=needed)
    return Path(directory).expanduser().absolute()


def load_tree(folder: Path, name: str, like=None, *, what: str):
    """Restore the Orbax tree `folder/name` (following `like`'s structure, shapes and dtypes)."""
    import orbax.checkpoint as ocp

    _quiet_orbax()
    abstract = None
    if like is not None:
        abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), like)
    try:
        return ocp.StandardCheckpointer().restore(folder / name, abstract)
    except Exception as err:  # orbax raises many types for a damaged or mismatched folder
        first = str(err).splitlines()[0].split(" [tensorstore_spec=")[0] if str(err) else ""
        raise JaxmosaicError(f"{folder}: cannot restore the {what} ({type(err).__name__}: {first})") from None


def save_checkpoint(directory: str | os.PathLike, state, meta: dict | BaseModel) -> Path:
    """Write `state` (a pytree of arrays; NamedTuples allowed) and `meta` (JSON, or a schema's
    model) as the new current version of the checkpoint folder `directory`."""
    if isinstance(meta, BaseModel):
        meta = meta.model_dump(mode="json")
    return save_tree(directory, state, kind="checkpoint", name="state", sidecars={"meta.json": meta})


def _version(directory: str | os.PathLike) -> Path:
    version = current_version(directory, "checkpoint")
    if version is None or not (version / "meta.json").is_file():
        raise JaxmosaicError(f"{directory}: no checkpoint there")
    return version


def checkpoint_meta_file(directory: str | os.PathLike) -> Path:
    """The `meta.json` of a checkpoint folder's current version."""
    return _version(directory) / "meta.json"


def read_checkpoint_meta(directory: str | os.PathLike, *, model: type[BaseModel] | None = None):
    """The `meta.json` of a checkpoint folder's current version: validated into `model`, or any
    JSON object without one; one line naming the file (and the field) when it does not fit."""
    path = checkpoint_meta_file(directory)
    if model is not None:
        return read_model(model, path)
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as err:
        raise JaxmosaicError(f"{path}: cannot read the checkpoint ({type(err).__name__})") from None
    if not isinstance(meta, dict):
        raise JaxmosaicError(f"{path}: damaged checkpoint (not a JSON object)")
    return meta


def load_checkpoint(directory: str | os.PathLike, like, *, model: type[BaseModel] | None = None) -> tuple:
    """(state, meta) from a checkpoint; `like` is a pytree of the same structure, shapes and dtypes
    (e.g. freshly initialised), which the restored arrays follow; `meta` as `read_checkpoint_meta`
    reads it with `model`."""
    meta = read_checkpoint_meta(directory, model=model)
    return load_tree(_version(directory), "state", like, what="checkpoint"), meta
