"""Network weights (VGG19, AlexNet): torchvision checkpoints converted to an Orbax checkpoint,
found, fetched, or random.

A converted weights folder holds `params/` (an Orbax checkpoint of the pytree
`{"conv1_1": {"kernel": HWIO, "bias": O}, ...}`, or `{"conv1": ...}` for AlexNet) and
`source.json` (the architecture, where the weights came from and the SHA-256 of the original file).
Every function takes `arch` ("vgg19", the default, or "alexnet").

Environment variables:
  JAXMOSAIC_WEIGHTS          VGG19: a weights folder (or a .pth) used when no path is given
  JAXMOSAIC_ALEXNET_WEIGHTS  the same for AlexNet
  JAXMOSAIC_CACHE_DIR        the cache (default `$XDG_CACHE_HOME/jaxmosaic` or `~/.cache/jaxmosaic`)
  JAXMOSAIC_VGG19_URL        where `download` fetches torchvision's VGG19 checkpoint from
  JAXMOSAIC_ALEXNET_URL      the same for AlexNet
  TORCH_HOME                 torch hub's home, searched for an already downloaded checkpoint
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import os
import re
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxmosaic._version import __version__
from jaxmosaic._pth import read_state_dict
from jaxmosaic.errors import JaxmosaicError, WeightsError
from jaxmosaic.io.checkpoints import load_tree, save_tree
from jaxmosaic.io.folders import check_folder, current_version
from jaxmosaic.io.locks import output_lock
from jaxmosaic.io.schemas import WeightsSource, read_model
from jaxmosaic.alexnet import ALEXNET_CONVS, ALEXNET_SHAPES, alexnet_features
from jaxmosaic.vgg import VGG19, VGG19_CONVS, layer_channels

__all__ = [
    "VGG19_URL",
    "ALEXNET_URL",
    "ARCHS",
    "Arch",
    "TORCHVISION_INDICES",
    "cache_dir",
    "cache_folder",
    "default_weights_dir",
    "params_from_state_dict",
    "read_state_dict",
    "save_params",
    "load_params",
    "convert",
    "download",
    "find_weights",
    "load_weights",
    "load_vgg19",
    "random_vgg19",
    "load_alexnet",
    "random_alexnet",
    "weights_info",
    "is_weights_folder",
    "weights_arch",
    "sha256_file",
]

VGG19_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
TORCHVISION_INDICES = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)
"""Index in torchvision's `vgg19().features` of each convolution in `VGG19_CONVS`."""


def _vgg19_shapes() -> dict[str, tuple[int, int, int, int]]:
    shapes, channels = {}, 3
    for name in VGG19_CONVS:
        shapes[name] = (layer_channels(name), channels, 3, 3)
        channels = layer_channels(name)
    return shapes


@dataclasses.dataclass(frozen=True)
class Arch:
    """A network whose torchvision checkpoint jaxmosaic converts: its convolutions' names, their
    index in torchvision's `features` and OIHW weight shapes, where to get it."""

    name: str  # "vgg19" or "alexnet": the --arch value and the cache folder's name
    label: str  # as the messages name it
    url: str
    url_variable: str
    weights_variable: str
    convs: tuple[str, ...]
    indices: tuple[int, ...]
    shapes: dict

    @property
    def file(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    def get_weights(self) -> str:
        flag = "" if self.name == "vgg19" else " --arch alexnet"
        return (f"get them with `jaxmosaic weights download{flag}` (needs internet), or convert a copy of "
                f"torchvision's {self.file} with `jaxmosaic weights convert{flag} FILE.pth`, or run with `--weights random`")


ARCHS = {
    "vgg19": Arch("vgg19", "VGG19", VGG19_URL, "JAXMOSAIC_VGG19_URL", "JAXMOSAIC_WEIGHTS", VGG19_CONVS, TORCHVISION_INDICES,
                  _vgg19_shapes()),
    "alexnet": Arch("alexnet", "AlexNet", ALEXNET_URL, "JAXMOSAIC_ALEXNET_URL", "JAXMOSAIC_ALEXNET_WEIGHTS", ALEXNET_CONVS,
                    (0, 3, 6, 8, 10), ALEXNET_SHAPES),
}


def _arch(arch: str | Arch) -> Arch:
    if isinstance(arch, Arch):
        return arch
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    return ARCHS[arch]


_HASH_IN_NAME = re.compile(r"-([a-f0-9]+)\.")  # torch hub's convention: name-<sha256 prefix>.pth


def cache_dir() -> Path:
    """jaxmosaic's cache: `$JAXMOSAIC_CACHE_DIR`, else `$XDG_CACHE_HOME/jaxmosaic`, else `~/.cache/jaxmosaic`."""
    if os.environ.get("JAXMOSAIC_CACHE_DIR"):
        return Path(os.environ["JAXMOSAIC_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "jaxmosaic"


def cache_folder(name: str, *, required: bool = False, create: bool = True) -> Path | None:
    """The cache's subfolder `name` once a file can be made in it: created if need be, or with
    `create=False` left to whoever writes there first (then the nearest folder that exists is
    tried). When it cannot be written: None (a cache that only saves time is skipped), or, when
    the command cannot do without it, one line naming JAXMOSAIC_CACHE_DIR and the folder."""
    folder = cache_dir() / name
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        existing = folder
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        if not required:
            return None
        other = ", or name the weights folder (-o, --weights)" if name in ARCHS else ""
        raise JaxmosaicError(f"JAXMOSAIC_CACHE_DIR: cannot write the cache folder {folder} ({err.strerror or err}); set "
                             f"JAXMOSAIC_CACHE_DIR to a folder you can write{other}") from None
    return folder


def default_weights_dir(arch: str = "vgg19") -> Path:
    """Where converted weights of `arch` are cached."""
    return cache_dir() / _arch(arch).name


def _torch_hub_checkpoints() -> Path:
    if os.environ.get("TORCH_HOME"):
        home = Path(os.environ["TORCH_HOME"]).expanduser()
    else:
        home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "torch"
    return home / "hub" / "checkpoints"


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's content, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _torchvision_names(shapes: Mapping[str, tuple[int, ...]], source: str, spec: Arch) -> list[str]:
    """The names, as the state dict spells them, of the tensors `spec` needs, once each is found
    with its shape and nothing else is in `features`. A `module.` prefix (DataParallel) is allowed."""
    names = {key.removeprefix("module."): key for key in shapes}
    needed = []
    for name, index in zip(spec.convs, spec.indices):
        weight_shape = spec.shapes[name]
        for kind, shape in (("weight", weight_shape), ("bias", weight_shape[:1])):
            key = f"features.{index}.{kind}"
            if key not in names:
                raise WeightsError(f"{source}: not a torchvision {spec.label} state dict (missing {key})")
            found = tuple(shapes[names[key]])
            if found != shape:
                raise WeightsError(
                    f"{source}: not a torchvision {spec.label} state dict ({key} has shape {found}, "
                    f"{spec.label} needs {shape})"
                )
            needed.append(names[key])
    indices = {str(index) for index in spec.indices}
    extra = sorted(key for key in names if key.startswith("features.") and key.split(".")[1] not in indices)
    if extra:
        raise WeightsError(f"{source}: not a plain {spec.label} (unexpected {extra[0]}; batch-norm variants are not supported)")
    return needed


def params_from_state_dict(state_dict: dict[str, np.ndarray], *, source: str = "state dict", arch: str = "vgg19") -> dict:
    """Map torchvision's `features.{i}.weight/bias` (OIHW) to the network's pytree (HWIO); drop
    the classifier.

    A `module.` prefix (DataParallel) is stripped. Names and shapes are checked against `arch`.
    """
    spec = _arch(arch)
    needed = _torchvision_names({key: np.shape(value) for key, value in state_dict.items()}, source, spec)
    state = {key.removeprefix("module."): np.asarray(state_dict[key]) for key in needed}
    params = {}
    for name, index in zip(spec.convs, spec.indices):
        found = {}
        for kind in ("weight", "bias"):
            key = f"features.{index}.{kind}"
            if not np.issubdtype(state[key].dtype, np.floating):
                raise WeightsError(f"{source}: {key} holds {state[key].dtype}, expected floating point")
            found[kind] = state[key].astype(np.float32)
        params[name] = {"kernel": np.ascontiguousarray(found["weight"].transpose(2, 3, 1, 0)), "bias": found["bias"]}
    for leaf in jax.tree_util.tree_leaves(params):
        if not np.all(np.isfinite(leaf)):
            raise WeightsError(f"{source}: weights hold NaN or infinite values")
    return params


def _read_checkpoint(pth: Path, spec: Arch) -> dict:
    """`spec`'s params from a torchvision `.pth`. Names and shapes are checked before any tensor is
    read, and only the tensors `spec` needs are: the classifier, most of the file, never is."""
    state = read_state_dict(pth, select=lambda shapes: _torchvision_names(shapes, str(pth), spec))
    return params_from_state_dict(state, source=str(pth), arch=spec.name)


def save_params(params: dict, directory: str | os.PathLike, source: dict | WeightsSource) -> Path:
    """Write params (an Orbax checkpoint) plus `source.json` (`source`, checked against its schema)
    as the new current version of the weights folder `directory`: a folder jaxmosaic made, or a new
    one (see `jaxmosaic.io.folders`)."""
    source = WeightsSource.model_validate(source)
    return save_tree(directory, params, kind="weights", name="params",
                     sidecars={"source.json": source.model_dump(mode="json", exclude_none=True)})


def is_weights_folder(directory: str | os.PathLike) -> bool:
    """Whether `directory` holds converted weights (a current version of a weights folder)."""
    try:
        return current_version(directory, "weights") is not None
    except JaxmosaicError:
        return False


def _weights_version(directory: Path, spec: Arch = ARCHS["vgg19"]) -> Path:
    try:
        version = current_version(directory, "weights")
    except JaxmosaicError as err:
        raise WeightsError(f"{err}; {spec.get_weights()}") from None
    if version is None or not (version / "params").is_dir():
        raise WeightsError(f"{directory}: not a jaxmosaic weights folder; {spec.get_weights()}")
    return version


def _source(version: Path) -> WeightsSource | None:
    """A weights folder version's source.json (None: a folder written without one); one line
    naming the file and the field when it does not fit its schema."""
    if not (version / "source.json").exists():
        return None
    return read_model(WeightsSource, version / "source.json", error=WeightsError)


def _folder_arch(version: Path) -> str:
    """The architecture a weights folder's source.json names (folders older than AlexNet support: vgg19)."""
    source = _source(version)
    return "vgg19" if source is None else source.arch


def weights_arch(directory: str | os.PathLike) -> str | None:
    """The architecture of the weights the folder `directory` holds; None when it holds none."""
    if not is_weights_folder(directory):
        return None
    return _folder_arch(_weights_version(Path(directory).expanduser().absolute()))


def load_params(directory: str | os.PathLike, arch: str = "vgg19") -> dict:
    """Read params written by `save_params` (or `jaxmosaic weights convert`), checked like a
    checkpoint's (architecture, names, shapes, finite values)."""
    spec = _arch(arch)
    directory = Path(directory).expanduser().absolute()
    version = _weights_version(directory, spec)
    held = _folder_arch(version)
    if held != spec.name:
        label = ARCHS[held].label if held in ARCHS else held
        raise WeightsError(f"{directory}: holds {label} weights, not {spec.label}; {spec.get_weights()}")
    try:
        params = load_tree(version, "params", what="weights")
    except JaxmosaicError as err:
        raise WeightsError(str(err)) from None
    return params_from_state_dict(_as_state_dict(params, str(directory), spec), source=str(directory), arch=spec.name)


def _as_state_dict(params: dict, source: str = "weights", spec: Arch = ARCHS["vgg19"]) -> dict[str, np.ndarray]:
    """The inverse mapping, so a loaded checkpoint goes through the same validation."""
    state = {}
    for name, index in zip(spec.convs, spec.indices):
        if not isinstance(params.get(name), dict) or not {"kernel", "bias"} <= set(params[name]):
            raise WeightsError(f"{source}: damaged weights folder (no {name})")
        state[f"features.{index}.weight"] = np.asarray(params[name]["kernel"]).transpose(3, 2, 0, 1)
        state[f"features.{index}.bias"] = np.asarray(params[name]["bias"])
    return state


def convert(pth: str | os.PathLike, out_dir: str | os.PathLike | None = None, *, url: str | None = None,
            name: str | None = None, arch: str = "vgg19") -> Path:
    """Convert torchvision's `.pth` of `arch` to a jaxmosaic weights folder (default: the cache).
    `name` is the file's name to record, when `pth` is a download under a temporary name."""
    spec = _arch(arch)
    pth = Path(pth).expanduser()
    params = _read_checkpoint(pth, spec)
    source = WeightsSource(
        arch=spec.name,
        source=url or str(pth.absolute()),
        file=name or pth.name,
        sha256=sha256_file(pth),
        format=f"torchvision {spec.name} state dict, features only ({len(spec.convs)} convolutions)",
        converted=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        jaxmosaic=__version__,
    )
    return save_params(params, out_dir or cache_folder(spec.name, required=True), source)


def _expected_hash(name: str) -> str | None:
    match = _HASH_IN_NAME.search(name)
    return match.group(1) if match else None


def _fetch(url: str, part: Path, progress: Callable[[int, int | None], None] | None, spec: Arch) -> None:
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
        raise WeightsError(f"cannot download {url} (HTTP {err.code}); {spec.get_weights()}") from None
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise WeightsError(f"cannot download {url} ({reason}); run it again to continue, or {spec.get_weights()}") from None


def download(
    url: str | None = None,
    out_dir: str | os.PathLike | None = None,
    *,
    progress: Callable[[int, int | None], None] | None = None,
    force: bool = False,
    arch: str = "vgg19",
    wait: bool = False,
    say: Callable[[str], None] | None = None,
) -> Path:
    """Fetch torchvision's checkpoint of `arch`, check its SHA-256 prefix, convert and cache it.

    An already converted folder is kept unless `force`; a copy in torch hub's cache is used
    instead of downloading. `progress(done_bytes, total_bytes_or_None)` is called while fetching.
    The folder is locked for the download and the conversion (`jaxmosaic.io.locks`): another run
    fetching into it is refused (`OutputInUse`), or with `wait` waited for (`say` gets one line)
    and its weights kept. The partial download is named after the folder, the file and the URL,
    `.FOLDER.FILE.URLHASH.jaxmosaic-download` beside the folder, so runs into two folders never
    share one; an interrupted download continues where it stopped on the next call into the same
    folder from the same URL. The original file is not kept once converted: only the converted weights are cached.
    """
    spec = _arch(arch)
    url = url or os.environ.get(spec.url_variable) or spec.url
    out_dir = Path(out_dir).expanduser() if out_dir else default_weights_dir(spec.name)
    if is_weights_folder(out_dir) and not force:
        return out_dir
    if out_dir == default_weights_dir(spec.name):
        cache_folder(spec.name, required=True)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(out_dir, wait=wait, say=say):
        if is_weights_folder(out_dir) and not force:  # fetched by the run this one waited for
            return out_dir
        check_folder(out_dir, "weights")
        return _download(url, out_dir, progress, spec)


def _download(url: str, out_dir: Path, progress: Callable[[int, int | None], None] | None, spec: Arch) -> Path:
    """`download` into the locked folder `out_dir`: from torch hub's cache, or fetched."""
    name = url.rsplit("/", 1)[-1] or f"{spec.name}.pth"
    expected = _expected_hash(name)
    hub_copy = _torch_hub_checkpoints() / name
    if hub_copy.is_file() and (expected is None or sha256_file(hub_copy).startswith(expected)):
        return convert(hub_copy, out_dir, url=url, arch=spec.name)
    source = hashlib.sha256(url.encode()).hexdigest()[:8]  # a partial file from another URL is never continued
    part = out_dir.parent / f".{out_dir.name}.{name}.{source}.jaxmosaic-download"
    _fetch(url, part, progress, spec)
    actual = sha256_file(part)
    if expected and not actual.startswith(expected):
        part.unlink(missing_ok=True)
        raise WeightsError(f"{url}: checksum mismatch (SHA-256 {actual[:16]}..., expected a prefix {expected}); nothing was cached")
    try:
        return convert(part, out_dir, url=url, name=name, arch=spec.name)
    finally:
        part.unlink(missing_ok=True)


def find_weights(path: str | os.PathLike | None = None, arch: str = "vgg19") -> Path | None:
    """The weights to use: `path`, else `$JAXMOSAIC_WEIGHTS` (`$JAXMOSAIC_ALEXNET_WEIGHTS`), else
    the cache; None if the cache is empty.

    Raises WeightsError when an explicitly named path does not exist.
    """
    spec = _arch(arch)
    variable = spec.weights_variable
    for given, origin in ((path, "--weights"), (os.environ.get(variable), f"${variable}")):
        if given:
            given = Path(given).expanduser()
            if not given.exists():
                raise WeightsError(f"{origin} {given}: no such file or folder; {spec.get_weights()}")
            return given
    cached = default_weights_dir(spec.name)
    return cached if is_weights_folder(cached) else None


def load_weights(path: str | os.PathLike | None = None, *, arch: str = "vgg19", download_missing: bool = True,
                 progress=None, say: Callable[[str], None] | None = None) -> dict:
    """Parameters of `arch` from `path` (a weights folder or a torchvision `.pth`), else by lookup
    (`find_weights`), else downloaded unless `download_missing` is False (waiting for another run
    downloading them into the cache: `say` gets one line when it waits)."""
    spec = _arch(arch)
    found = find_weights(path, spec.name)
    if found is None:
        if not download_missing:
            raise WeightsError(f"no {spec.label} weights in {default_weights_dir(spec.name)}; {spec.get_weights()}")
        found = download(progress=progress, arch=spec.name, wait=True, say=say)  # another run fetching them: use its weights
    if found.is_file():
        return _read_checkpoint(found, spec)
    return load_params(found, spec.name)


def load_vgg19(path: str | os.PathLike | None = None, *, download_missing: bool = True, progress=None) -> dict:
    """VGG19 parameters from `path` (a weights folder or a torchvision `.pth`), else by lookup.

    Lookup order: `path`, `$JAXMOSAIC_WEIGHTS`, the cache; when none is there, torchvision's
    checkpoint is downloaded (or taken from torch hub's cache) and converted, unless
    `download_missing` is False. Fails with one message saying how to get weights.
    """
    return load_weights(path, arch="vgg19", download_missing=download_missing, progress=progress)


def load_alexnet(path: str | os.PathLike | None = None, *, download_missing: bool = True, progress=None) -> dict:
    """AlexNet parameters from `path` (a weights folder or torchvision's `alexnet-owt-7be5be79.pth`),
    else `$JAXMOSAIC_ALEXNET_WEIGHTS`, else the cache, else downloaded (unless `download_missing` is False)."""
    return load_weights(path, arch="alexnet", download_missing=download_missing, progress=progress)


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


def random_alexnet(key: jax.Array, *, reference_size: int = 224) -> dict:
    """Seeded random AlexNet weights: He-normal kernels, zero biases, each convolution rescaled so
    its ReLU's mean activation over a fixed uniform-noise reference image is 1 (as `random_vgg19`)."""
    keys = jax.random.split(key, len(ALEXNET_CONVS))
    params = {}
    for name, layer_key in zip(ALEXNET_CONVS, keys):
        out_channels, in_channels, kh, kw = ALEXNET_SHAPES[name]
        std = np.sqrt(2.0 / (kh * kw * in_channels))
        params[name] = {"kernel": jax.random.normal(layer_key, (kh, kw, in_channels, out_channels), jnp.float32) * std,
                        "bias": jnp.zeros((out_channels,), jnp.float32)}
    # With zero biases every layer is positively homogeneous (ReLU, max pooling), so one pass of
    # the unscaled network gives all the scales: layer l's mean after rescaling the layers before
    # it is its unscaled mean divided by the layer before's.
    reference = jax.random.uniform(jax.random.PRNGKey(0), (1, reference_size, reference_size, 3))
    relus = tuple(f"relu{name[-1]}" for name in ALEXNET_CONVS)
    means = jax.jit(lambda p, x: [jnp.mean(a) for a in alexnet_features(p, x, relus).values()])(params, reference)
    previous = 1.0
    for name, mean in zip(ALEXNET_CONVS, means):
        scale = previous / jnp.maximum(mean, 1e-12)
        params[name] = {"kernel": params[name]["kernel"] * scale, "bias": params[name]["bias"]}
        previous = mean
    return params


def weights_info(path: str | os.PathLike | None = None, arch: str = "vgg19") -> dict:
    """Where the weights in use are, where they came from, and their checksums."""
    spec = _arch(arch)
    found = find_weights(path, spec.name)
    if found is None:
        return {"found": False, "looked_in": str(default_weights_dir(spec.name)), "how_to_get": spec.get_weights()}
    info = {"found": True, "path": str(found.absolute())}
    if found.is_file():
        info.update(kind="torch checkpoint (converted on every load)", sha256=sha256_file(found))
        return info
    source = _source(_weights_version(found, spec))
    info["kind"] = "jaxmosaic weights folder"
    if source is None:
        info["source"] = "unknown (no source.json)"
    else:
        info.update(source.model_dump(mode="json", exclude_none=True))
    return info
