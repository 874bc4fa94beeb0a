"""Read a PyTorch tensor state dict (`torch.save`) without torch and without running pickled code.

Two layouts are understood: the zip archive that `torch.save` writes since PyTorch 1.6, and the
older "legacy" stream (magic number, protocol, system info, the pickle, the storage keys, then the
raw storages), in which torchvision's original VGG19 checkpoint was saved.

The unpickler admits only the globals a state dict needs (an OrderedDict, tensor rebuild
functions, storage types); anything else, `os.system` for instance, stops the load with
`UnsafeCheckpointError` before it could be called.

A file of a few kilobytes cannot make the reader take more memory than the tensors it returns:
every number a record gives is bounded before it sizes anything, a view must lie inside its
storage, storages that no returned tensor views are never inflated, and an archive member is
read only up to the bytes those views reach. Messages quote what the file holds in a short,
escaped excerpt.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import pickletools
import zipfile
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

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
_MAX_INDEX = 2**48  # any size, stride, offset or element count a record gives
_MAX_KEY_CHARS = 64  # torch.save's storage keys are short decimal numbers
_MAX_NAME_CHARS = 1024
_MAX_PICKLE_BYTES = 2**26  # a state dict's pickle holds names and records, not values
_MAX_BYTEORDER_BYTES = 16
_EXCERPT_CHARS = 80
_MAX_HASHING = 2**23  # elements a state dict's pickle may give dicts to hash, counted through shared references


def _excerpt(value) -> str:
    """A short, escaped excerpt of a value taken from the file, for a message.

    Strings, bytes and numbers are shown (cut short); of anything else only its type and length:
    a pickle of a few hundred bytes can hold lists that share their items, whose repr takes
    gigabytes.
    """
    if isinstance(value, (str, bytes)):
        text = repr(value[:_EXCERPT_CHARS])
    elif value is None or isinstance(value, (bool, float)) or (isinstance(value, int) and value.bit_length() <= 128):
        text = repr(value)
    elif isinstance(value, int):
        text = f"an integer of {value.bit_length()} bits"
    elif isinstance(value, (tuple, list, dict)):
        text = f"a {type(value).__name__} of {len(value)} items"
    else:
        text = f"a {type(value).__name__.lstrip('_')}"
    return text if len(text) <= _EXCERPT_CHARS else text[: _EXCERPT_CHARS - 3] + "..."


class _Malformed(Exception):
    """A tensor record that no `torch.save` writes (the message says which field)."""


def _count(value, what: str, limit: int = _MAX_INDEX) -> int:
    """A whole number from 0 to `limit` from a tensor record, or the record is refused."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise _Malformed(f"{what} is {_excerpt(value)}, not a whole number from 0 to {limit}")
    return value


class _StorageType:
    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage(NamedTuple):
    """The elements [start, start + length) of the storage `key` (a legacy view's window, else all)."""

    key: str
    dtype: np.dtype
    start: int
    length: int


class _View(NamedTuple):
    """A checked tensor: `shape` and element `strides` from element `start` of its root storage,
    whose elements before `end` hold every element it addresses."""

    storage: _Storage
    start: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    end: int

    def materialise(self, data: dict[str, np.ndarray]) -> np.ndarray:
        if not all(self.shape):
            return np.zeros(self.shape, self.storage.dtype)
        flat = data[self.storage.key]
        # a size-1 axis never moves, whatever stride the record gives it
        strides = tuple(s * flat.itemsize if n > 1 else 0 for n, s in zip(self.shape, self.strides))
        return np.lib.stride_tricks.as_strided(flat[self.start :], shape=self.shape, strides=strides).copy()


class _Tensor:
    """A tensor record as the pickle gives it, checked only when it is taken from the state dict."""

    def __init__(self, storage, offset, size, stride):
        self.record = (storage, offset, size, stride)

    def checked(self) -> _View:
        """The view, once its numbers are bounded, it lies inside its storage, it has zero strides
        on axes of size 1 only, and it holds no more elements than the storage span it covers
        (so copying it allocates no more than that span)."""
        storage, offset, size, stride = self.record
        if not isinstance(storage, _Storage):
            raise _Malformed("a tensor without a storage")
        if not isinstance(size, (tuple, list)) or not isinstance(stride, (tuple, list)) or len(size) != len(stride):
            raise _Malformed("size and stride are not sequences of one length")
        if len(size) > _MAX_RANK:
            raise _Malformed(f"a tensor of rank {len(size)}")
        offset = _count(offset, "a storage offset")
        shape = tuple(_count(n, "a size") for n in size)
        strides = tuple(_count(s, "a stride") for s in stride)
        if math.prod(max(n, 1) for n in shape) > _MAX_INDEX:
            raise _Malformed(f"a tensor of shape {shape}, more than {_MAX_INDEX} elements")
        for n, s in zip(shape, strides):
            if s == 0 and n > 1:
                raise _Malformed(f"a tensor of shape {shape} with a zero stride on an axis of size {n}")
        elements = math.prod(shape)
        span = 1 + sum((n - 1) * s for n, s in zip(shape, strides)) if elements else 0
        if offset + span > storage.length:
            raise _Malformed(f"a tensor of shape {shape} reaching element {offset + span} of a storage of {storage.length}")
        if elements > span:
            raise _Malformed(f"a tensor of shape {shape} overlapping itself ({elements} elements in {span} of its storage)")
        start = storage.start + offset
        return _View(storage, start, shape, strides, start + span)


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


def _storage_key(key, source: Path) -> str:
    if not isinstance(key, str) or not 0 < len(key) <= _MAX_KEY_CHARS:
        raise UnsafeCheckpointError(f"{source}: refusing to load: a storage key is {_excerpt(key)}, "
                                    f"not a string of 1 to {_MAX_KEY_CHARS} characters")
    return key


class _Node:
    """What the opcode pass knows of an object on the pickle's stack: how many elements hashing
    it (or a container of it) visits, shared references counted each time."""

    __slots__ = ("cost",)

    def __init__(self, cost: int):
        self.cost = cost


_MARK = object()
_TUPLES = {"EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3"}
_SETS = {"EMPTY_SET", "ADDITEMS", "FROZENSET"}


def _check_hashing(file, source: Path) -> None:
    """Refuse a pickle that would make the unpickler hash more than `_MAX_HASHING` elements.

    Python does not cache a tuple's hash: a key made of tuples nested a few levels deep, each
    level holding several references to the one below, costs exponentially many steps to hash
    from a file of a few hundred bytes. The opcodes are walked without building anything; a
    tuple's cost counts the elements its hash visits, and it is spent when the tuple is made and
    every time a reference to it is pushed again (memo, duplicate), the only ways it can reach a
    dict. A state dict needs no sets at all. A pickle the walk cannot follow is left to the
    unpickler, which refuses it itself."""
    start = file.tell()
    try:
        stack: list = []
        memo: dict = {}
        spent = 0
        for opcode, arg, _ in pickletools.genops(file):
            name = opcode.name
            if name in _SETS:
                raise UnsafeCheckpointError(f"{source}: refusing to load: its pickle builds a set, which a state dict never holds")
            if name == "STOP":
                break
            if name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = stack[-1]
                continue
            if name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
                continue
            if name in ("GET", "BINGET", "LONG_BINGET") or name == "DUP":
                node = memo[arg] if name != "DUP" else stack[-1]
                spent += node.cost
                stack.append(node)
            else:
                before, after = opcode.stack_before, opcode.stack_after
                if pickletools.markobject in before:
                    mark = len(stack) - 1 - stack[::-1].index(_MARK)
                    popped = stack[mark + 1:]
                    del stack[mark:]
                    below = before.index(pickletools.markobject)
                else:
                    popped, below = [], len(before)
                held = stack[len(stack) - below:] if below else []
                del stack[len(stack) - below:]
                popped = held + popped
                if name in _TUPLES:
                    cost = 1 + sum(node.cost for node in popped)
                    stack.append(_Node(cost))
                    spent += cost
                else:  # anything else hashes as one element (lists and dicts are never hashed)
                    stack.extend(_MARK if kind is pickletools.markobject else _Node(1) for kind in after)
            if spent > _MAX_HASHING:
                raise UnsafeCheckpointError(f"{source}: refusing to load: its pickle would hash more than "
                                            f"{_MAX_HASHING} elements (keys nested and shared to cost time, not memory)")
    except UnsafeCheckpointError:
        raise
    except Exception:  # noqa: BLE001  the unpickler refuses what the walk cannot follow
        pass
    finally:
        file.seek(start)


class _SafeUnpickler(pickle.Unpickler):
    def __init__(self, file, source: Path, *, tensors: bool = True):
        super().__init__(file)
        self.file = file
        self.source = source
        self.tensors = tensors  # headers of the legacy format admit no global at all
        self.storages: dict[str, tuple[np.dtype, int]] = {}  # key -> (dtype, element count)

    def find_class(self, module: str, name: str):
        if self.tensors and (module, name) in _ALLOWED:
            return _ALLOWED[module, name]
        if self.tensors and module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise UnsafeCheckpointError(
            f"{self.source}: refusing to load: its pickle asks for {_excerpt(f'{module}.{name}')}, "
            "which a tensor state dict never needs (the file may be malicious or not a plain state dict)"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise UnsafeCheckpointError(f"{self.source}: unexpected persistent id {_excerpt(pid)}")
        dtype, key = pid[1].dtype, _storage_key(pid[2], self.source)
        view = pid[5] if len(pid) > 5 else None
        try:
            numel = _count(pid[4], "a storage's element count", _MAX_STORAGE_BYTES // dtype.itemsize)
            start, length = 0, numel
            if view is not None:  # legacy views into a larger root storage: (view key, offset, size)
                if not isinstance(view, (tuple, list)) or len(view) != 3:
                    raise _Malformed(f"a storage view is {_excerpt(view)}")
                start = _count(view[1], "a storage view's offset", numel)
                length = _count(view[2], "a storage view's size", numel - start)
        except _Malformed as err:
            raise UnsafeCheckpointError(f"{self.source}: refusing to load: {err}") from None
        known = self.storages.setdefault(key, (dtype, numel))
        if known != (dtype, numel):
            raise UnsafeCheckpointError(f"{self.source}: refusing to load: storage {key!r} is described twice, differently")
        return _Storage(key, dtype, start, length)


def _load(unpickler: _SafeUnpickler, source: Path):
    try:
        _check_hashing(unpickler.file, source)
        return unpickler.load()
    except MemoryError:  # an opcode declaring a length it sizes a buffer by before reading it
        raise UnsafeCheckpointError(f"{source}: refusing to load: its pickle declares an object larger than memory") from None


def _plain_load(file, source: Path):
    """Unpickle a header object (ints, dicts, lists of str), admitting no global at all."""
    return _load(_SafeUnpickler(file, source, tensors=False), source)


def _views(obj, source: Path) -> dict[str, _View]:
    """Every tensor of the state dict, by name, each checked (no storage is read)."""
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise WeightsError(f"{source}: holds a {type(obj).__name__}, not a state dict")
    views = {}
    for name, value in obj.items():
        if not isinstance(value, _Tensor):
            continue
        if not isinstance(name, str) or len(name) > _MAX_NAME_CHARS:
            raise UnsafeCheckpointError(f"{source}: refusing to load: a tensor named by {_excerpt(name)}, "
                                        f"not a string of at most {_MAX_NAME_CHARS} characters")
        try:
            views[name] = value.checked()
        except _Malformed as err:
            raise UnsafeCheckpointError(f"{source}: refusing to load: tensor {_excerpt(name)}: {err}") from None
    return views


def _selected(views: dict[str, _View], select) -> dict[str, _View]:
    if select is None:
        return views
    return {name: views[name] for name in select({name: view.shape for name, view in views.items()})}


def _needs(views: dict[str, _View]) -> dict[str, int]:
    """For each storage the views read: how many of its elements, from its start, they reach."""
    needs: dict[str, int] = {}
    for view in views.values():
        if all(view.shape):
            needs[view.storage.key] = max(needs.get(view.storage.key, 0), view.end)
    return needs


def _read_member(source: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo, size: int, what: str) -> bytes:
    """The first `size` bytes of a member: the member is inflated no further than that."""
    with archive.open(info) as member:
        data = member.read(size)
    if len(data) != size:
        raise WeightsError(f"{source}: truncated ({what} is short)")
    return data


def _bounded_member(source: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, what: str) -> bytes:
    """A whole member that declares at most `limit` bytes (a small deflated member can declare gigabytes)."""
    if info.file_size > limit:
        raise UnsafeCheckpointError(f"{source}: refusing to load: {what} declares {info.file_size} bytes, "
                                    f"more than the {limit} it can need")
    return _read_member(source, archive, info, info.file_size, what)


def _read_zip(path: Path, archive: zipfile.ZipFile, select) -> dict[str, np.ndarray]:
    members = {info.filename: info for info in archive.infolist()}
    pickles = [name for name in members if name.endswith("/data.pkl") or name == "data.pkl"]
    if len(pickles) != 1:
        raise WeightsError(f"{path}: a zip file, but not one written by torch.save (no single data.pkl)")
    prefix = pickles[0][: -len("data.pkl")]
    order = "<"
    if f"{prefix}byteorder" in members:
        text = _bounded_member(path, archive, members[f"{prefix}byteorder"], _MAX_BYTEORDER_BYTES, "its byteorder").strip()
        if text not in (b"little", b"big"):
            raise WeightsError(f"{path}: unknown byte order {_excerpt(text)}")
        order = "<" if text == b"little" else ">"
    unpickler = _SafeUnpickler(io.BytesIO(_bounded_member(path, archive, members[pickles[0]], _MAX_PICKLE_BYTES, "its data.pkl")), path)
    views = _views(_load(unpickler, path), path)
    for key, (dtype, numel) in unpickler.storages.items():
        info = members.get(f"{prefix}data/{key}")
        if info is None:
            raise WeightsError(f"{path}: storage {key!r} is missing from the archive")
        if info.file_size != numel * dtype.itemsize:
            raise UnsafeCheckpointError(f"{path}: refusing to load: storage {key!r} holds {info.file_size} bytes, "
                                        f"its record says {numel * dtype.itemsize}")
    views = _selected(views, select)
    data = {}
    for key, count in _needs(views).items():
        dtype = unpickler.storages[key][0]
        raw = _read_member(path, archive, members[f"{prefix}data/{key}"], count * dtype.itemsize, f"storage {key!r}")
        data[key] = np.frombuffer(raw, dtype=dtype.newbyteorder(order)).astype(dtype, copy=False)
    return {name: view.materialise(data) for name, view in views.items()}


def _read_legacy(path: Path, file, select) -> dict[str, np.ndarray]:
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
        raise WeightsError(f"{path}: unsupported legacy checkpoint protocol {_excerpt(protocol)}")
    info = _plain_load(file, path)
    byteorder = "little" if not isinstance(info, dict) or info.get("little_endian", True) else "big"
    unpickler = _SafeUnpickler(file, path)
    views = _views(_load(unpickler, path), path)
    keys = _plain_load(file, path)
    if not isinstance(keys, list):
        raise WeightsError(f"{path}: not a PyTorch checkpoint (no list of storages)")
    keys = [_storage_key(key, path) for key in keys]
    views = _selected(views, select)
    needs = _needs(views)
    end = os.fstat(file.fileno()).st_size
    data, seen = {}, set()
    for key in keys:
        header = file.read(8)
        if len(header) != 8:
            raise WeightsError(f"{path}: truncated (storage {key!r} is missing)")
        count = int.from_bytes(header, byteorder)
        if key not in unpickler.storages:
            raise UnsafeCheckpointError(f"{path}: refusing to load: storage {key!r} is not described by the pickle")
        dtype, numel = unpickler.storages[key]
        if count != numel:
            raise UnsafeCheckpointError(f"{path}: refusing to load: storage {key!r} holds {count} elements, its record says {numel}")
        size, wanted = count * dtype.itemsize, needs.get(key, 0) * dtype.itemsize
        if file.tell() + size > end:
            raise WeightsError(f"{path}: truncated (storage {key!r} is short)")
        if key in needs:
            raw = file.read(wanted)
            data[key] = np.frombuffer(raw, dtype=dtype.newbyteorder("<" if byteorder == "little" else ">")).astype(dtype, copy=False)
        file.seek(size - wanted if key in needs else size, os.SEEK_CUR)
        seen.add(key)
    missing = set(unpickler.storages) - seen
    if missing:
        raise WeightsError(f"{path}: truncated (storage {min(missing)!r} is missing)")
    return {name: view.materialise(data) for name, view in views.items()}


def read_state_dict(path: str | os.PathLike, *,
                    select: Callable[[dict[str, tuple[int, ...]]], Iterable[str]] | None = None) -> dict[str, np.ndarray]:
    """Read the tensors of a `torch.save`d state dict as numpy arrays, without torch.

    Args:
      path: the checkpoint, a zip archive or a legacy stream.
      select: called with every tensor's name and shape before any storage is read; returns the
        names, among those, of the tensors to read. Only the storages they view are inflated, and
        of each only the elements they reach. It may raise to refuse the file. Default: every tensor.

    Returns:
      name -> array, in the tensor's shape and dtype.

    Raises:
      UnsafeCheckpointError: the pickle asks for a global outside the allow-list, or a record is
        malformed (a view outside its storage, a size no `torch.save` writes).
      WeightsError: the file is missing, truncated or not a PyTorch checkpoint.
    """
    path = Path(path)
    if path.is_dir():
        raise WeightsError(f"{path}: a folder, not a PyTorch checkpoint (.pth); a converted weights folder needs no "
                           "converting: give it to --weights as it is")
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return _read_zip(path, archive, select)
        with open(path, "rb") as file:
            return _read_legacy(path, file, select)
    except WeightsError:
        raise
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, zlib.error, ValueError, TypeError, KeyError,
            NotImplementedError, RuntimeError) as err:
        raise WeightsError(f"{path}: corrupt or truncated checkpoint ({type(err).__name__}: {_excerpt(str(err))})") from None
