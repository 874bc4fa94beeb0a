"""Shared fixtures: strict JAX settings, the compilation cache, a torchvision-layout VGG19, the
plain / jit / vmap variants every pure function is checked under, and a folder of tiles. The
helpers they use live in helpers.py."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import ROOT, SAMPLES, cut_sample_tiles, random_vgg19_seed_zero

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_compilation_cache_dir", str(ROOT / ".cache" / "xla"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own jaxmosaic cache and no way to reach the real download URL."""
    monkeypatch.setenv("JAXMOSAIC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("JAXMOSAIC_VGG19_URL", "http://127.0.0.1:9/vgg19-dcbb9e9d.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv("JAXMOSAIC_NO_COMPILATION_CACHE", "1")
    monkeypatch.delenv("JAXMOSAIC_WEIGHTS", raising=False)


class Variant:
    """Runs a pure function plain, under `jax.jit`, or under `jax.vmap` over a batch of two
    copies of its arguments (both results must agree; the first is returned)."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, function, *args):
        if self.name == "plain":
            return function(*args)
        if self.name == "jit":
            return jax.jit(function)(*args)
        out = jax.vmap(function)(*(jnp.stack([jnp.asarray(a), jnp.asarray(a)]) for a in args))
        first, second = jax.tree_util.tree_map(lambda x: x[0], out), jax.tree_util.tree_map(lambda x: x[1], out)
        for a, b in zip(jax.tree_util.tree_leaves(first), jax.tree_util.tree_leaves(second)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        return first

    def __repr__(self) -> str:
        return self.name


@pytest.fixture(params=["plain", "jit", "vmap"])
def variant(request) -> Variant:
    return Variant(request.param)


@pytest.fixture(scope="session")
def torch_model():
    pytest.importorskip("torch", reason="PyTorch parity tests need torch (pip install torch)")
    from torch_reference import torch_vgg19

    return torch_vgg19()


@pytest.fixture(scope="session")
def torch_checkpoint(torch_model, tmp_path_factory) -> Path:
    """The random VGG19 saved by `torch.save(model.state_dict())` (zip format), named like torchvision's."""
    import torch

    path = tmp_path_factory.mktemp("torch") / "vgg19-random.pth"
    torch.save(torch_model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def torch_params(torch_checkpoint):
    """The converted parameters of `torch_model`, as jaxmosaic reads them."""
    from jaxmosaic.weights import read_state_dict
    from jaxmosaic.weights import params_from_state_dict

    return params_from_state_dict(read_state_dict(torch_checkpoint))


@pytest.fixture(scope="session")
def random_params():
    """random_vgg19(PRNGKey(0)), the very arrays in-process `--weights random` runs of seed 0 get."""
    return random_vgg19_seed_zero()


@pytest.fixture
def tile_folder(tmp_path) -> Path:
    """A folder of 60 tiles cut from the samples, in subfolders, plus files that are not images."""
    return cut_sample_tiles(tmp_path / "tiles")


@pytest.fixture(scope="session")
def rng():
    return np.random.default_rng(0)


# The files that take longest, about longest first (from a full run's durations). `--dist
# loadfile` hands whole files to the two workers in collection order, a file to whichever worker is
# free, and pyproject.toml turns off xdist's reordering by number of tests (which ran these files,
# a few slow tests each, last, one worker busy while the other waited): the long files start
# first and the short ones fill in around them.
SLOW_FILES = ("test_devices.py", "test_tiling.py", "test_regions_tiles.py", "test_safety.py", "test_texture.py", "test_bank.py",
              "test_locks.py", "test_video_stylize.py", "test_regions_distribution.py", "test_video_more.py", "test_style.py",
              "test_cli.py", "test_video_cli.py", "test_vq_folders.py", "test_distributed.py", "test_safety_schemas.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FILES)))  # stable: each file's own order kept


def pytest_report_header(config):
    return f"jax {jax.__version__} on {jax.default_backend()}; cpu count {os.cpu_count()}"


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A working folder holding copies of two samples (inputs whose bytes must never change)."""
    folder = tmp_path / "work"
    photos = folder / "p"
    photos.mkdir(parents=True)
    shutil.copy(SAMPLES / "astronaut.png", photos / "content.png")
    shutil.copy(SAMPLES / "brick.png", photos / "style.png")
    monkeypatch.chdir(folder)
    return folder
