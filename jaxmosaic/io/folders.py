"""Folders jaxmosaic writes: each carries a marker naming its kind, and only such a folder (or an
empty one) is ever written into, cleaned or replaced.

Two shapes:

- `OutputFolder` (tile sets, cluster montages, frames, library builds): files side by side; the
  marker lists the files jaxmosaic wrote there, so a run that writes fewer files removes the stale
  ones it wrote before, and nothing else: a listed name is removed only when it has the form that
  kind of folder writes and, for an image, carries jaxmosaic's signature.
- versioned folders (`save_version`, `current_version`; checkpoints and weights): each save is
  written completely into a new version inside the folder, then a pointer file is replaced
  atomically, then older versions are removed. A kill at any point leaves the old or the new
  version loadable under the folder's name; what a killed save left is removed by the next save.

The marker and the pointer are read through their schemas (`jaxmosaic.io.schemas`): a damaged one
is one line naming the file and the field, and nothing is written or removed.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from jaxmosaic.errors import JaxmosaicError
from jaxmosaic.io.files import atomic_path, disk_full, is_disk_full, process_alive
from jaxmosaic.io.images import IMAGE_SUFFIXES, written_by_jaxmosaic
from jaxmosaic.io.schemas import MARKER, POINTER, VERSION_NAME, Marker, Pointer, plain_name, read_model

__all__ = ["MARKER", "FolderError", "folder_kind", "check_folder", "OutputFolder", "save_version", "current_version"]

_VERSION = re.compile(VERSION_NAME)
_PARTIAL = re.compile(r"\.partial-(?P<pid>\d{1,20})-[0-9a-f]{8}")
# what a folder of each kind held before folders carried markers (read and replaced as jaxmosaic's own):
# (the entry that must be there, every entry that may be)
_LEGACY = {"weights": ("params", {"params", "source.json"}), "checkpoint": ("state", {"state", "meta.json"})}
# the names each kind of OutputFolder writes (tiles: jaxmosaic.techniques.mosaic.gabor_tile_name; clusters:
# `vq cluster`; frames: the runner's (scaleS-)stepNNNNN(-TAG).png; library builds: the streamed build's)
_WRITES = {
    "tiles": re.compile(r"gabor-\d{4,}[-.\w]*\.png|contact-sheet\.png"),
    "clusters": re.compile(r"clusters\.csv|cluster-\d+\.png|dendrogram\.png"),
    "frames": re.compile(r"(scale\d+-)?step\d{5,}[-.\w]*\.png"),
    "library-build": re.compile(r"plan\.json|chunk-\d{6,}\.npz"),
    "video-frames": re.compile(r"frame_\d{6,}\.png"),
    "video-checkpoint": re.compile(r"meta\.json|flows-[0-9a-f]{16}\.npz|pass\d+-frame\d{6,}\.npy"),
    "vq-compressed": re.compile(r"[\w.-]+\.(vq|side)\.png", re.ASCII),
}


class FolderError(JaxmosaicError):
    """A folder is not jaxmosaic's own of the expected kind, or is damaged."""


def _read_marker(path: Path) -> Marker | None:
    """The folder's marker; None when it has none; FolderError when it is damaged."""
    if not (path / MARKER).exists() and not (path / MARKER).is_symlink():
        return None
    return read_model(Marker, path / MARKER, error=FolderError)


def _write_marker(path: Path, kind: str, files: Iterable[str] = ()) -> None:
    marker = Marker(jaxmosaic=kind, version=1, files=sorted(set(files)))
    with atomic_path(path / MARKER) as tmp:
        tmp.write_text(marker.model_dump_json() + "\n")


def folder_kind(path: str | os.PathLike) -> str | None:
    """The kind jaxmosaic's marker gives a folder, or None (no folder, no marker)."""
    marker = _read_marker(Path(path))
    return None if marker is None else marker.jaxmosaic


def _legacy(path: Path, kind: str) -> bool:
    if kind not in _LEGACY:
        return False
    required, allowed = _LEGACY[kind]
    return (path / required).is_dir() and {entry.name for entry in path.iterdir()} <= allowed


def check_folder(path: str | os.PathLike, kind: str) -> None:
    """Raise unless jaxmosaic may write `path` as a folder of `kind`: absent, empty, or carrying
    the marker of that kind (a folder written before markers existed counts by its contents); a
    damaged marker, or a versioned folder's damaged pointer, is one line naming the file."""
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise FolderError(f"{path}: exists and is not a folder")
    found = folder_kind(path)
    if found == kind:
        if kind in _LEGACY:  # a versioned folder: its pointer must be readable before anything is written
            _pointer(path)
        return
    if found is None and (not any(path.iterdir()) or _legacy(path, kind)):
        return
    what = f"a jaxmosaic {found} folder" if found else "a folder jaxmosaic did not write"
    raise FolderError(f"{path}: {what}, not a {kind} folder; refusing to write into it (choose a new folder)")


def _claim(path: Path, kind: str) -> Marker:
    """Check, create if needed, and mark the folder; its marker as it was."""
    check_folder(path, kind)
    path.mkdir(parents=True, exist_ok=True)
    marker = _read_marker(path)
    if marker is None:
        marker = Marker(jaxmosaic=kind, version=1, files=[])
        _write_marker(path, kind)
    return marker


class OutputFolder:
    """A folder of files jaxmosaic writes and owns (see the module doc).

    Use `expect` for the names a run will write (so a killed run leaves them listed), `file(name)`
    for the path of each file written, and `finish` to drop the files of earlier runs that this
    run did not write again. A listed file that is not jaxmosaic's (see the module doc) is left in
    place, and `say` gets one line naming what was left.
    """

    def __init__(self, path: str | os.PathLike, kind: str, *, say: Callable[[str], None] = lambda line: None):
        if kind not in _WRITES:
            raise ValueError(f"{kind!r} is not a kind of folder of files (one of {', '.join(_WRITES)})")
        self.path, self.kind, self.say = Path(path), kind, say
        self.previous = set(_claim(self.path, kind).files)
        self.listed = set(self.previous)
        self.written: set[str] = set()

    def expect(self, names: Iterable[str]) -> None:
        new = {self._name(name) for name in names if name not in self.listed}
        if new:
            self.listed |= new
            _write_marker(self.path, self.kind, self.listed)

    def file(self, name: str) -> Path:
        self.expect([self._name(name)])
        self.written.add(name)
        return self.path / name

    def _name(self, name: str) -> str:
        plain_name(name)
        if not _WRITES[self.kind].fullmatch(name):
            raise ValueError(f"{name!r} is not a name a {self.kind} folder holds")
        return name

    def clear(self) -> None:
        """Remove every file the marker lists that jaxmosaic wrote here before, nothing else."""
        self._unlink(self.listed)
        self.listed, self.written = set(), set()
        _write_marker(self.path, self.kind)

    def remove(self) -> None:
        """`clear`, then the marker, then the folder itself if nothing else is left in it."""
        self.clear()
        (self.path / MARKER).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.path.rmdir()

    def ours(self, name: str) -> bool:
        """Whether the listed `name` is a file jaxmosaic wrote here: a regular file (not a link)
        with a name of this kind's form and, for an image, jaxmosaic's signature."""
        target = self.path / name
        if not _WRITES[self.kind].fullmatch(name) or target.is_symlink() or not target.is_file():
            return False
        return Path(name).suffix.lower() not in IMAGE_SUFFIXES or written_by_jaxmosaic(target)

    def _unlink(self, names: Iterable[str]) -> None:
        """Unlink those of these listed names that are jaxmosaic's files; tell of the others (a
        name no longer there is nothing to tell)."""
        left = []
        for name in sorted(names):
            if self.ours(name):
                (self.path / name).unlink()
            elif (self.path / name).exists() or (self.path / name).is_symlink():
                left.append(name)
        if left:
            shown = ", ".join(left[:5]) + (f" and {len(left) - 5} more" if len(left) > 5 else "")
            self.say(f"left {shown} in {self.path}: not a file jaxmosaic wrote")

    def finish(self) -> list[str]:
        """Remove the files earlier runs wrote that this one did not; the names that were stale."""
        stale = sorted(self.listed - self.written)
        self._unlink(stale)
        _write_marker(self.path, self.kind, self.written)
        return stale


def _remove_debris(path: Path) -> None:
    """Partial versions of saves whose process is gone, and versions no pointer names."""
    current = _pointer(path)
    for entry in path.iterdir():
        partial = _PARTIAL.fullmatch(entry.name)
        stale_partial = partial and not process_alive(int(partial["pid"]))
        old_version = _VERSION.fullmatch(entry.name) and entry.name != current
        if (stale_partial or old_version) and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)


def _pointer(path: Path) -> str | None:
    """The version the pointer names; None before the first save; FolderError when it is damaged."""
    if not (path / POINTER).exists():
        return None
    return read_model(Pointer, path / POINTER, error=FolderError).version


def _disk_usage(folder: Path) -> int:
    """Bytes the files under `folder` take on the disk (their allocated blocks)."""
    return sum(entry.lstat().st_blocks * 512 for entry in folder.rglob("*") if entry.is_file() and not entry.is_symlink())


def save_version(path: str | os.PathLike, kind: str, write: Callable[[Path], None], *, needed: int | None = None) -> Path:
    """Write a new version of the versioned folder `path` with `write(folder)` and make it the
    current one (see the module doc). Returns the version's folder. A disk that fills on the way
    (`write` may raise the OS's error or a library's that carries it) is one `DiskFullError`
    naming the folder and the space it `needed` (bytes, when the caller knows), and the current
    version stays current."""
    path = Path(path).expanduser().absolute()
    legacy = path.exists() and folder_kind(path) is None and any(path.iterdir())
    _claim(path, kind)
    _remove_debris(path)
    partial = path / f".partial-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        partial.mkdir()
        write(partial)
        version = path / f"v{time.time_ns():020d}"
        os.rename(partial, version)
    except Exception as err:
        if not is_disk_full(err):
            raise
        shutil.rmtree(partial, ignore_errors=True)  # before the free space is measured
        current = current_version(path, kind)
        if current is not None:  # what the disk holds of a version is the best guess of the next one's need
            needed = max(needed or 0, _disk_usage(current))
        kept = f"the current {kind} there is kept" if current is not None else ""
        raise disk_full(path, needed=needed, what=f"a new {kind} version", kept=kept) from None
    finally:
        if partial.exists():
            shutil.rmtree(partial)
    with atomic_path(path / POINTER) as tmp:
        tmp.write_text(Pointer(version=version.name).model_dump_json() + "\n")
    if legacy:
        for name in _LEGACY[kind][1]:
            target = path / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    _remove_debris(path)
    return version


def current_version(path: str | os.PathLike, kind: str) -> Path | None:
    """The folder of the current version of a versioned folder of `kind`; the folder itself for
    one written before versions existed; None when `path` holds no such version."""
    path = Path(path).expanduser().absolute()
    if not path.is_dir():
        return None
    found = folder_kind(path)
    if found is None:
        return path if _legacy(path, kind) else None
    if found != kind:
        raise FolderError(f"{path}: a jaxmosaic {found} folder, not a {kind} folder")
    name = _pointer(path)
    if name is None or not (path / name).is_dir():
        return None
    return path / name
