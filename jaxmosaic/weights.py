"""VGG19 weights: torchvision checkpoints converted to an Orbax checkpoint, found, fetched, or random.

A converted weights folder holds `params/` (an Orbax checkpoint of the pytree
`{"conv1_1": {"kernel": HWIO, "bias": O}, ...}`) and `source.json` (where the weights came from
and the SHA-256 of the original file).

Environment variables:
  JAXMOSAIC_WEIGHTS     a weights folder (or a .pth) used when no path is given
  JAXMOSAIC_CACHE_DIR   the cache (default `$XDG_CACHE_HOME/jaxmosaic` or `~/.cache/jaxmosaic`)
  JAXMOSAIC_VGG19_URL   where `download` fetches torchvision's checkpoint from
  TORCH_HOME            torch hub's home, searched for an already downloaded checkpoint
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxmosaic._version import __version__
from jaxmosaic._pth import read_state_dict
from jaxmosaic.errors import JaxmosaicError, WeightsError
from jaxmosaic.io.checkpoints import load_tree, save_tree
from jaxmosaic.io.folders import check_folder, current_version
from jaxmosaic.vgg import VGG19, VGG19_CONVS, layer_channels

__all__ = [
    "VGG19_URL",
    "TORCHVISION_INDICES",
    "cache_dir",
    "default_weights_dir",
    "params_from_state_dict",
    "save_params",
    "load_params",
    "convert",
    "download",
    "find_weights",
    "load_vgg19",
    "random_vgg19",
    "weights_info",
    "is_weights_folder",
    "sha256_file",
]

VGG19_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
TORCHVISION_INDICES = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)
"""Index in torchvision's `vgg19().features` of each convolution in `VGG19_CONVS`."""

_HASH_IN_NAME = re.compile(r"-([a-f0-9]+)\.")  # torch hub's convention: name-<sha256 prefix>.pth
_GET_WEIGHTS = (
    "get them with `jaxmosaic weights download` (needs internet), or convert a copy of "
    "torchvision's vgg19-dcbb9e9d.pth with `jaxmosaic weights convert FILE.pth`, "
    "or run with `--weights random`"
)


def cache_dir() -> Path:
    """jaxmosaic's cache: `$JAXMOSAIC_CACHE_DIR`, else `$XDG_CACHE_HOME/jaxmosaic`, else `~/.cache/jaxmosaic`."""
    if os.environ.get("JAXMOSAIC_CACHE_DIR"):
        return Path(os.environ["JAXMOSAIC_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "jaxmosaic"


def default_weights_dir() -> Path:
    """Where converted VGG19 weights are cached."""
    return cache_dir() / "vgg19"


def _torch_hub_checkpoints() -> Path:
    if os.environ.get("TORCH_HOME"):
        home = Path(os.environ["TORCH_HOME"]).expanduser()
    else:
        home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "torch"
    return home / "hub" / "checkpoints"


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def params_from_state_dict(state_dict: dict[str, np.ndarray], *, source: str = "state dict") -> dict:
    """Map torchvision's `features.{i}.weight/bias` (OIHW) to the VGG19 pytree (HWIO); drop the classifier.

    A `module.` prefix (DataParallel) is stripped. Names and shapes are checked against VGG19.
    """
    state = {key.removeprefix("module."): value for key, value in state_dict.items()}
    params = {}
    in_channels = 3
    for name, index in zip(VGG19_CONVS, TORCHVISION_INDICES):
        out_channels = layer_channels(name)
        expected = {"weight": (out_channels, in_channels, 3, 3), "bias": (out_channels,)}
        found = {}
        for kind, shape in expected.items():
            key = f"features.{index}.{kind}"
            if key not in state:
                raise WeightsError(f"{source}: not a torchvision VGG19 state dict (missing {key})")
            value = np.asarray(state[key])
            if value.shape != shape:
                raise WeightsError(
                    f"{source}: not a torchvision VGG19 state dict ({key} has shape {value.shape}, "
                    f"VGG19 needs {shape})"
                )
            if not np.issubdtype(value.dtype, np.floating):
                raise WeightsError(f"{source}: {key} holds {value.dtype}, expected floating point")
            found[kind] = value.astype(np.float32)
        params[name] = {"kernel": np.ascontiguousarray(found["weight"].transpose(2, 3, 1, 0)), "bias": found["bias"]}
        in_channels = out_channels
    indices = {str(index) for index in TORCHVISION_INDICES}
    extra = sorted(key for key in state if key.startswith("features.") and key.split(".")[1] not in indices)
    if extra:
        raise WeightsError(f"{source}: not a plain VGG19 (unexpected {extra[0]}; vgg19_bn is not supported)")
    for leaf in jax.tree_util.tree_leaves(params):
        if not np.all(np.isfinite(leaf)):
            raise WeightsError(f"{source}: weights hold NaN or infinite values")
    return params


def save_params(params: dict, directory: str | os.PathLike, source: dict) -> Path:
    """Write params (an Orbax checkpoint) plus `source.json` as the new current version of the
    weights folder `directory`: a folder jaxmosaic made, or a new one (see `jaxmosaic.io.folders`)."""
    return save_tree(directory, params, kind="weights", name="params", sidecars={"source.json": source})


def is_weights_folder(directory: str | os.PathLike) -> bool:
    """Whether `directory` holds converted weights (a current version of a weights folder)."""
    try:
        return current_version(directory, "weights") is not None
    except JaxmosaicError:
        return False


def _weights_version(directory: Path) -> Path:
    try:
        version = current_version(directory, "weights")
    except JaxmosaicError as err:
        raise WeightsError(f"{err}; {_GET_WEIGHTS}") from None
    if version is None or not (version / "params").is_dir():
        raise WeightsError(f"{directory}: not a jaxmosaic weights folder; {_GET_WEIGHTS}")
    return version


def load_params(directory: str | os.PathLike) -> dict:
    """Read params written by `save_params` (or `jaxmosaic weights convert`), checked like a
    checkpoint's (names, shapes, finite values)."""
    directory = Path(directory).expanduser().absolute()
    try:
        params = load_tree(_weights_version(directory), "params", what="weights")
    except JaxmosaicError as err:
        raise WeightsError(str(err)) from None
    return params_from_state_dict(_as_state_dict(params, str(directory)), source=str(directory))


def _as_state_dict(params: dict, source: str = "weights") -> dict[str, np.ndarray]:
    """The inverse mapping, so a loaded checkpoint goes through the same validation."""
    state = {}
    for name, index in zip(VGG19_CONVS, TORCHVISION_INDICES):
        if not isinstance(params.get(name), dict) or not {"kernel", "bias"} <= set(params[name]):
            raise WeightsError(f"{source}: damaged weights folder (no {name})")
        state[f"features.{index}.weight"] = np.asarray(params[name]["kernel"]).transpose(3, 2, 0, 1)
        state[f"features.{index}.bias"] = np.asarray(params[name]["bias"])
    return state


def convert(pth: str | os.PathLike, out_dir: str | os.PathLike | None = None, *, url: str | None = None,
            name: str | None = None) -> Path:
    """Convert torchvision's VGG19 `.pth` to a jaxmosaic weights folder (default: the cache).
    `name` is the file's name to record, when `pth` is a download under a temporary name."""
    pth = Path(pth).expanduser()
    params = params_from_state_dict(read_state_dict(pth), source=str(pth))
    source = {
        "source": url or str(pth.absolute()),
        "file": name or pth.name,
        "sha256": sha256_file(pth),
        "format": "torchvision vgg19 state dict, features only (16 convolutions)",
        "converted": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "jaxmosaic": __version__,
    }
    return save_params(params, out_dir or default_weights_dir(), source)


def _expected_hash(name: str) -> str | None:
    match = _HASH_IN_NAME.search(name)
    return match.group(1) if match else None


def _fetch(url: str, part: Path, progress: Callable[[int, int | None], None] | None) -> None:
    """Download `url` into `part`, continuing a partial download there when the server allows
    (an HTTP range request), else starting over. A failure keeps what arrived, for the next try."""
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            resumed = bool(have) and response.status == 206
            length = response.headers.get("Content-Length")
            total = int(length) + (have if resumed else 0) if length else None
            done = have if resumed else 0
            with open(part, "ab" if resumed else "wb") as file:
                for block in iter(lambda: response.read(1 << 20), b""):
                    file.write(block)
                    done += len(block)
                    if progress:
                        progress(done, total)
        if total is not None and done < total:
            raise OSError(f"the connection closed after {done} of {total} bytes")
    except urllib.error.HTTPError as err:
        if err.code == 416:  # the partial download is already whole
            return
        raise WeightsError(f"cannot download {url} (HTTP {err.code}); {_GET_WEIGHTS}") from None
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise WeightsError(f"cannot download {url} ({reason}); run it again to continue, or {_GET_WEIGHTS}") from None


def download(
    url: str | None = None,
    out_dir: str | os.PathLike | None = None,
    *,
    progress: Callable[[int, int | None], None] | None = None,
    force: bool = False,
) -> Path:
    """Fetch torchvision's VGG19 checkpoint, check its SHA-256 prefix, convert and cache it.

    An already converted folder is kept unless `force`; a copy in torch hub's cache is used
    instead of downloading. `progress(done_bytes, total_bytes_or_None)` is called while fetching.
    An interrupted download continues where it stopped on the next call; the original file is
    not kept once converted: only the converted weights are cached.
    """
    url = url or os.environ.get("JAXMOSAIC_VGG19_URL") or VGG19_URL
    out_dir = Path(out_dir).expanduser() if out_dir else default_weights_dir()
    if is_weights_folder(out_dir) and not force:
        return out_dir
    check_folder(out_dir, "weights")
    name = url.rsplit("/", 1)[-1] or "vgg19.pth"
    expected = _expected_hash(name)
    hub_copy = _torch_hub_checkpoints() / name
    if hub_copy.is_file() and (expected is None or sha256_file(hub_copy).startswith(expected)):
        return convert(hub_copy, out_dir, url=url)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    part = out_dir.parent / f".{name}.jaxmosaic-download"
    _fetch(url, part, progress)
    actual = sha256_file(part)
    if expected and not actual.startswith(expected):
        part.unlink(missing_ok=True)
        raise WeightsError(f"{url}: checksum mismatch (SHA-256 {actual[:16]}..., expected a prefix {expected}); nothing was cached")
    try:
        return convert(part, out_dir, url=url, name=name)
    finally:
        part.unlink(missing_ok=True)


def find_weights(path: str | os.PathLike | None = None) -> Path | None:
    """The weights to use: `path`, else `$JAXMOSAIC_WEIGHTS`, else the cache; None if the cache is empty.

    Raises WeightsError when an explicitly named path does not exist.
    """
    for given, origin in ((path, "--weights"), (os.environ.get("JAXMOSAIC_WEIGHTS"), "$JAXMOSAIC_WEIGHTS")):
        if given:
            given = Path(given).expanduser()
            if not given.exists():
                raise WeightsError(f"{origin} {given}: no such file or folder; {_GET_WEIGHTS}")
            return given
    cached = default_weights_dir()
    return cached if is_weights_folder(cached) else None


def load_vgg19(path: str | os.PathLike | None = None, *, download_missing: bool = True, progress=None) -> dict:
    """VGG19 parameters from `path` (a weights folder or a torchvision `.pth`), else by lookup.

    Lookup order: `path`, `$JAXMOSAIC_WEIGHTS`, the cache; when none is there, torchvision's
    checkpoint is downloaded (or taken from torch hub's cache) and converted, unless
    `download_missing` is False. Fails with one message saying how to get weights.
    """
    found = find_weights(path)
    if found is None:
        if not download_missing:
            raise WeightsError(f"no VGG19 weights in {default_weights_dir()}; {_GET_WEIGHTS}")
        found = download(progress=progress)
    if found.is_file():
        return params_from_state_dict(read_state_dict(found), source=str(found))
    return load_params(found)


def random_vgg19(key: jax.Array, *, reference_size: int = 64) -> dict:
    """Seeded random VGG19 weights, He-normal and rescaled so each layer's mean activation is 1.

    Each convolution's kernel is drawn from N(0, 2 / fan_in) with zero bias; then, layer by layer,
    the kernel is divided by the mean of its ReLU output over a fixed reference input (uniform
    noise, `reference_size` square, max pooling), so every layer's mean activation is exactly 1.
    This is the "normalised VGG" of Gatys et al., applied to random filters: random networks
    give plausible textures and styles (Ustyuzhaninov et al. 2017; He, Wang and Hopcroft 2016),
    but not the semantics of trained weights.
    """
    keys = jax.random.split(key, len(VGG19_CONVS))
    params = {}
    in_channels = 3
    for name, layer_key in zip(VGG19_CONVS, keys):
        out_channels = layer_channels(name)
        std = np.sqrt(2.0 / (9 * in_channels))
        params[name] = {
            "kernel": jax.random.normal(layer_key, (3, 3, in_channels, out_channels), jnp.float32) * std,
            "bias": jnp.zeros((out_channels,), jnp.float32),
        }
        in_channels = out_channels
    reference = jax.random.uniform(jax.random.PRNGKey(0), (1, reference_size, reference_size, 3))
    relus = tuple(name.replace("conv", "relu") for name in VGG19_CONVS)
    for conv, relu in zip(VGG19_CONVS, relus):
        activation = VGG19(layers=(relu,)).apply({"params": params}, reference)[relu]
        scale = 1.0 / jnp.maximum(jnp.mean(activation), 1e-12)
        params[conv] = {"kernel": params[conv]["kernel"] * scale, "bias": params[conv]["bias"] * scale}
    return params


def weights_info(path: str | os.PathLike | None = None) -> dict:
    """Where the weights in use are, where they came from, and their checksums."""
    found = find_weights(path)
    if found is None:
        return {"found": False, "looked_in": str(default_weights_dir()), "how_to_get": _GET_WEIGHTS}
    info = {"found": True, "path": str(found.absolute())}
    if found.is_file():
        info.update(kind="torch checkpoint (converted on every load)", sha256=sha256_file(found))
        return info
    meta = _weights_version(found) / "source.json"
    info["kind"] = "jaxmosaic weights folder"
    try:
        info.update(json.loads(meta.read_text()))
    except (OSError, ValueError):
        info["source"] = "unknown (source.json is missing or damaged)"
    return info
