"""Read a PyTorch tensor state dict (`torch.save`) without torch and without running pickled code.

Two layouts are understood: the zip archive that `torch.save` writes since PyTorch 1.6, and the
older "legacy" stream (magic number, protocol, system info, the pickle, the storage keys, then the
raw storages), in which torchvision's original VGG19 checkpoint was saved.

The unpickler admits only the globals a state dict needs (an OrderedDict, tensor rebuild
functions, storage types); anything else, `os.system` for instance, stops the load with
`UnsafeCheckpointError` before it could be called.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np

from jaxmosaic.errors import UnsafeCheckpointError, WeightsError

__all__ = ["read_state_dict"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


_MAX_RANK = 8
_MAX_STORAGE_BYTES = 2**34  # 16 GiB: far beyond any VGG19 or AlexNet checkpoint


class _StorageType:
    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


def _count(value, what: str) -> int:
    """A non-negative whole number from a tensor record, or the record is refused."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _Malformed(f"{what} is {value!r}")
    return value


class _Malformed(Exception):
    """A tensor record that no `torch.save` writes (the message says which field)."""


class _Storage:
    """A storage whose bytes are read after the pickle (legacy) or from the archive (zip):
    `numel` elements as recorded, and for a legacy view the window (offset, size) into them."""

    def __init__(self, key: str, dtype: np.dtype, numel: int | None, offset: int = 0, size: int | None = None):
        self.key, self.dtype, self.numel, self.offset, self.size = key, dtype, numel, offset, size


class _Tensor:
    def __init__(self, storage: _Storage, offset: int, size, stride):
        if not isinstance(storage, _Storage):
            raise _Malformed("a tensor without a storage")
        if not isinstance(size, (tuple, list)) or not isinstance(stride, (tuple, list)) or len(size) != len(stride):
            raise _Malformed("size and stride are not sequences of one length")
        if len(size) > _MAX_RANK:
            raise _Malformed(f"a tensor of rank {len(size)}")
        self.storage, self.offset = storage, _count(offset, "a storage offset")
        self.size = tuple(_count(n, "a size") for n in size)
        self.stride = tuple(_count(n, "a stride") for n in stride)

    def materialise(self, data: dict[str, np.ndarray]) -> np.ndarray:
        """The tensor's values, after checking that every element it addresses lies inside its
        storage (offsets, sizes and strides all non-negative)."""
        flat = data[self.storage.key]
        start = self.storage.offset
        end = len(flat) if self.storage.size is None else start + self.storage.size
        if end > len(flat):
            raise _Malformed(f"a storage view reaching element {end} of {len(flat)}")
        flat = flat[start:end]
        if not all(self.size):
            return np.zeros(self.size, flat.dtype)
        extent = self.offset + 1 + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if extent > flat.size:
            raise _Malformed(f"a tensor of shape {self.size} reaching element {extent} of a storage of {flat.size}")
        strides = tuple(s * flat.itemsize for s in self.stride)
        return np.lib.stride_tricks.as_strided(flat[self.offset :], shape=self.size, strides=strides).copy()


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *_ignored):
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _SafeUnpickler(pickle.Unpickler):
    def __init__(self, file, source: Path, *, tensors: bool = True):
        super().__init__(file)
        self.source = source
        self.tensors = tensors  # headers of the legacy format admit no global at all
        self.storages: dict[str, tuple[np.dtype, int]] = {}

    def find_class(self, module: str, name: str):
        if self.tensors and (module, name) in _ALLOWED:
            return _ALLOWED[module, name]
        if self.tensors and module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise UnsafeCheckpointError(
            f"{self.source}: refusing to load: its pickle asks for {module}.{name}, which a tensor "
            "state dict never needs (the file may be malicious or not a plain state dict)"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise UnsafeCheckpointError(f"{self.source}: unexpected persistent id {pid!r:.80}")
        storage_type, key = pid[1], str(pid[2])
        try:
            numel = _count(pid[4], "a storage's element count")
        except _Malformed as err:
            raise UnsafeCheckpointError(f"{self.source}: refusing to load: {err}") from None
        known = self.storages.setdefault(key, (storage_type.dtype, numel))
        if known != (storage_type.dtype, numel):
            raise UnsafeCheckpointError(f"{self.source}: refusing to load: storage {key} is described twice, differently")
        view = pid[5] if len(pid) > 5 else None
        if view is not None:  # legacy views into a larger root storage: (view key, offset, size)
            try:
                _, offset, size = view
                return _Storage(key, storage_type.dtype, numel, _count(offset, "a view offset"), _count(size, "a view size"))
            except (_Malformed, TypeError, ValueError) as err:
                raise UnsafeCheckpointError(f"{self.source}: refusing to load: a malformed storage view ({err})") from None
        return _Storage(key, storage_type.dtype, numel)


def _plain_load(file, source: Path):
    """Unpickle a header object (ints, dicts, lists of str), admitting no global at all."""
    return _SafeUnpickler(file, source, tensors=False).load()


def _resolve(obj, data: dict[str, np.ndarray], source: Path) -> dict[str, np.ndarray]:
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise WeightsError(f"{source}: holds a {type(obj).__name__}, not a state dict")
    result = {}
    for name, value in obj.items():
        if isinstance(value, _Tensor):
            try:
                result[str(name)] = value.materialise(data)
            except _Malformed as err:
                raise UnsafeCheckpointError(f"{source}: refusing to load: tensor {str(name)[:60]!r} is {err}") from None
    return result


def _read_zip(path: Path, archive: zipfile.ZipFile) -> dict[str, np.ndarray]:
    pickles = [name for name in archive.namelist() if name.endswith("/data.pkl") or name == "data.pkl"]
    if len(pickles) != 1:
        raise WeightsError(f"{path}: a zip file, but not one written by torch.save (no single data.pkl)")
    prefix = pickles[0][: -len("data.pkl")]
    byteorder = "little"
    if f"{prefix}byteorder" in archive.namelist():
        byteorder = archive.read(f"{prefix}byteorder").decode().strip()
    try:
        unpickler = _SafeUnpickler(io.BytesIO(archive.read(pickles[0])), path)
        obj = unpickler.load()
    except _Malformed as err:
        raise UnsafeCheckpointError(f"{path}: refusing to load: {err}") from None
    data = {}
    for key, (dtype, numel) in unpickler.storages.items():
        name = f"{prefix}data/{key}"
        try:
            info = archive.getinfo(name)
        except KeyError:
            raise WeightsError(f"{path}: storage {key} is missing from the archive") from None
        expected = numel * dtype.itemsize
        if info.file_size != expected or expected > _MAX_STORAGE_BYTES:
            raise UnsafeCheckpointError(f"{path}: refusing to load: storage {key} holds {info.file_size} bytes, "
                                        f"its record says {expected}")
        array = np.frombuffer(archive.read(name), dtype=dtype.newbyteorder("<" if byteorder == "little" else ">"))
        data[key] = array.astype(dtype)
    return _resolve(obj, data, path)


def _read_legacy(path: Path, file) -> dict[str, np.ndarray]:
    try:
        magic = _plain_load(file, path)
    except UnsafeCheckpointError:
        raise
    except Exception:
        raise WeightsError(f"{path}: not a PyTorch checkpoint (neither a zip archive nor a legacy torch.save stream)") from None
    if magic != _LEGACY_MAGIC:
        raise WeightsError(f"{path}: not a PyTorch checkpoint (unknown header)")
    protocol = _plain_load(file, path)
    if protocol != _LEGACY_PROTOCOL:
        raise WeightsError(f"{path}: unsupported legacy checkpoint protocol {protocol}")
    info = _plain_load(file, path)
    little = info.get("little_endian", True) if isinstance(info, dict) else True
    unpickler = _SafeUnpickler(file, path)
    try:
        obj = unpickler.load()
    except _Malformed as err:
        raise UnsafeCheckpointError(f"{path}: refusing to load: {err}") from None
    keys = _plain_load(file, path)
    if not isinstance(keys, list):
        raise WeightsError(f"{path}: not a PyTorch checkpoint (no list of storages)")
    data = {}
    for key in keys:
        header = file.read(8)
        if len(header) != 8:
            raise WeightsError(f"{path}: truncated (storage {key} is missing)")
        count = int.from_bytes(header, "little" if little else "big")
        if str(key) not in unpickler.storages:
            raise UnsafeCheckpointError(f"{path}: refusing to load: storage {key} is not described by the pickle")
        dtype, numel = unpickler.storages[str(key)]
        if count != numel or count * dtype.itemsize > _MAX_STORAGE_BYTES:
            raise UnsafeCheckpointError(f"{path}: refusing to load: storage {key} holds {count} elements, its record says {numel}")
        raw = file.read(count * dtype.itemsize)
        if len(raw) != count * dtype.itemsize:
            raise WeightsError(f"{path}: truncated (storage {key} is short)")
        data[str(key)] = np.frombuffer(raw, dtype=dtype.newbyteorder("<" if little else ">")).astype(dtype)
    missing = set(unpickler.storages) - set(data)
    if missing:
        raise WeightsError(f"{path}: truncated (storage {sorted(missing)[0]} is missing)")
    return _resolve(obj, data, path)


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read the tensors of a `torch.save`d state dict as numpy arrays, without torch.

    Raises:
      UnsafeCheckpointError: the pickle asks for a global outside the allow-list.
      WeightsError: the file is missing, truncated or not a PyTorch checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return _read_zip(path, archive)
        with open(path, "rb") as file:
            return _read_legacy(path, file)
    except WeightsError:
        raise
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, TypeError, KeyError) as err:
        raise WeightsError(f"{path}: corrupt or truncated checkpoint ({type(err).__name__}: {err})") from None
