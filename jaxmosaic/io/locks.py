"""One owner per output: an advisory lock on every file and folder a run writes.

A run locks each output before it checks or writes it (`jaxmosaic.io.outputs.check_outputs` does)
and keeps the lock until the command ends (`release_all`; an atexit hook is the backstop). The
lock is `fcntl.flock` from the standard library, on a lock file beside the output:
`.NAME.jaxmosaic-lock` in the output's folder. The kernel drops a flock when its process dies,
however it dies, so a lock file left by a killed run holds no lock and the next run takes it
over; nothing guesses whether a pid is still alive. The lock file records the holder's pid, host
and start time, so a second run refuses in one line naming the holder, or waits for it (`wait`).

A lock file is opened without following links, and only a regular file that is empty or holds a
holder record is taken (and rewritten): anything else at that name is refused, never truncated.
One created by this run is removed again where the file system cannot lock. One left by another
user that this run cannot write is locked read-only; it then keeps its old record.

Releasing unlinks the lock file and then unlocks it. A run that was blocked on the old file
finds that the name no longer leads to the file it locked, and starts again on the new one: two
runs never hold two different files under one name.

Locks belong to the process and are re-entrant per output: locking an output this process holds
is a no-op, and of two threads locking one output at once, one takes it and the other then finds
it held. Paths are resolved first, so two spellings of one output share one lock. flock keeps
jaxmosaic runs apart, not other programs; on a network file system it is only as good as the
server's support for it.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import errno
import fcntl
import hashlib
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from jaxmosaic.config import setting
from jaxmosaic.errors import JaxmosaicError

__all__ = [
    "WAIT_HELP",
    "OutputInUse",
    "lock_file",
    "lock_output",
    "output_lock",
    "release_all",
    "release_output",
    "wait_setting",
]

WAIT_HELP = "Wait for another run writing the same output to finish, instead of refusing."
"""The help of `--wait`, the option that makes a run wait for a held output."""

_SUFFIX = ".jaxmosaic-lock"
_LONGEST_NAME = 200  # an output name longer than this is hashed, so the lock file's name stays under 255 bytes
_RECORD_BYTES = 4096
# flock is refused outright (not "taken") by some network file systems: such an output goes unlocked
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL}
# no link is followed, and a FIFO at the lock file's name does not block the open
_OPEN = os.O_NOFOLLOW | os.O_NONBLOCK


class OutputInUse(JaxmosaicError):
    """Another jaxmosaic run holds the lock of an output (names the output and the holder)."""


class _Holder(BaseModel):
    """What a lock file records: who holds it."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    pid: int = Field(ge=1, le=2**31 - 1)
    host: str = Field(max_length=255)
    started: float = Field(ge=0)  # seconds since the epoch


class _Held(NamedTuple):
    lock: Path  # the lock file
    fd: int  # open on it, flocked


def wait_setting() -> Any:
    """The `wait` field of a command's settings: `--wait`, off by default (a resumed run may change it)."""
    return setting(False, WAIT_HELP, resume=False)


_held: dict[Path, _Held] = {}
_taking: set[Path] = set()  # outputs a thread of this process is locking now
_registry = threading.Condition()  # guards both; notified when a take ends


def lock_file(path: str | os.PathLike) -> Path:
    """The lock file of the output `path`: `.NAME.jaxmosaic-lock` beside it (after resolving links)."""
    target = Path(path).expanduser().resolve()
    name = target.name
    if len(name.encode()) > _LONGEST_NAME:
        name = hashlib.sha256(name.encode()).hexdigest()[:32]
    return target.parent / f".{name}{_SUFFIX}"


def _record(fd: int) -> _Holder | None:
    """The holder record in the lock file open as `fd`; None when it is empty.

    Raises:
      ValueError: it holds anything else (a ValidationError for bytes that are no record).
    """
    data = os.pread(fd, _RECORD_BYTES + 1, 0)
    if not data:
        return None
    if len(data) > _RECORD_BYTES:
        raise ValueError("longer than a holder record")
    return _Holder.model_validate_json(data)


def _describe(fd: int) -> str:
    """'in use by another jaxmosaic run (pid P on HOST since T)', as far as the lock file open as `fd` tells."""
    try:
        holder = _record(fd)
    except (OSError, ValueError):  # not written yet, or half: the holder is unknown, the lock is not
        holder = None
    if holder is None:
        return "in use by another jaxmosaic run"
    started = datetime.datetime.fromtimestamp(holder.started)
    since = started.strftime("%H:%M:%S" if started.date() == datetime.date.today() else "%Y-%m-%d %H:%M:%S")
    return f"in use by another jaxmosaic run (pid {holder.pid} on {holder.host} since {since})"


def _same_file(fd: int, lock: Path) -> bool:
    """Whether the name `lock` still leads to the file open as `fd` (a release unlinks it)."""
    try:
        named = os.lstat(lock)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def _not_a_lock(path: Path, lock: Path) -> JaxmosaicError:
    return JaxmosaicError(f"{path}: {lock} is not a jaxmosaic lock file; remove it or choose another output")


def _open(path: Path, lock: Path) -> tuple[int, bool] | None:
    """Open the regular file `lock`, creating it if need be: its descriptor and whether this call
    created it; None when it vanished between two tries."""
    try:
        try:
            return os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL | _OPEN, 0o666), True
        except FileExistsError:
            pass
        try:
            fd = os.open(lock, os.O_RDWR | _OPEN)
        except PermissionError:  # left by another user: a read-only descriptor locks as well
            fd = os.open(lock, os.O_RDONLY | _OPEN)
    except FileNotFoundError:
        return None
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.EISDIR):  # a link, or a folder
            raise _not_a_lock(path, lock) from None
        raise JaxmosaicError(f"{path}: cannot create its lock file {lock} ({err.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _not_a_lock(path, lock)
    return fd, False


def _take(path: Path, lock: Path, wait: bool, say: Callable[[str], None] | None) -> int | None:
    """Open and flock `lock` until the lock held is the file the name leads to; its descriptor, or
    None where the file system cannot lock."""
    told = False
    while True:
        opened = _open(path, lock)
        if opened is None:
            continue
        fd, created = opened
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _describe(fd)
                if not wait:
                    raise OutputInUse(f"{path}: {holder}; wait for it, or pass --wait") from None
                if say is not None and not told:
                    say(f"waiting for {path}: {holder}")
                    told = True
                fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as err:
            if err.errno in _UNSUPPORTED and created and _same_file(fd, lock):
                with contextlib.suppress(OSError):
                    lock.unlink()
            os.close(fd)
            if err.errno in _UNSUPPORTED:
                return None
            raise JaxmosaicError(f"{path}: cannot lock its lock file {lock} ({err.strerror})") from None
        except BaseException:
            os.close(fd)
            raise
        if not _same_file(fd, lock):
            os.close(fd)  # released (and unlinked) by its holder while this run waited: lock the new file
            continue
        try:
            _record(fd)
        except (OSError, ValueError):
            os.close(fd)
            raise _not_a_lock(path, lock) from None
        return fd


def lock_output(path: str | os.PathLike, *, wait: bool = False, say: Callable[[str], None] | None = None) -> bool:
    """Lock the output `path` for this process until `release_output` or `release_all`.

    A thread locking an output that another thread of this process is locking waits for that call
    to end first.

    Args:
      path: a file or folder to be written (it need not exist; its folder must).
      wait: block until another run holding it lets go, instead of raising `OutputInUse`.
      say: gets one line when the run starts waiting.

    Returns:
      True when this call took the lock; False when this process held it already (or the file
      system cannot lock).
    """
    target = Path(path).expanduser().resolve()
    with _registry:
        _registry.wait_for(lambda: target not in _taking)
        if target in _held:
            return False
        _taking.add(target)
    fd = None
    try:
        lock = lock_file(target)
        fd = _take(Path(path), lock, wait, say)
        if fd is None:
            return False
        record = _Holder(pid=os.getpid(), host=socket.gethostname()[:255], started=time.time()).model_dump_json()
        # a full disk, or a read-only descriptor: the lock holds all the same, a refusal just cannot name its holder
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, record.encode(), 0)
        return True
    finally:
        with _registry:
            _taking.discard(target)
            if fd is not None:
                _held[target] = _Held(lock, fd)
            _registry.notify_all()


def _unlock(held: _Held) -> None:
    """Unlink the lock file (while it is still this run's), then unlock it."""
    try:
        if _same_file(held.fd, held.lock):
            with contextlib.suppress(FileNotFoundError, PermissionError):  # another user's, in a sticky folder
                held.lock.unlink()
    finally:
        os.close(held.fd)


def release_output(path: str | os.PathLike) -> None:
    """Release this process's lock on the output `path` (nothing when it holds none)."""
    with _registry:
        held = _held.pop(Path(path).expanduser().resolve(), None)
    if held is not None:
        _unlock(held)


def release_all() -> None:
    """Release every output lock this process holds (at the end of a command, and at exit)."""
    with _registry:
        held = list(_held.values())
        _held.clear()
    for item in held:
        with contextlib.suppress(OSError):
            _unlock(item)


@contextlib.contextmanager
def output_lock(path: str | os.PathLike, *, wait: bool = False, say: Callable[[str], None] | None = None) -> Iterator[None]:
    """`lock_output` for the block; released after it unless this process held the lock before."""
    taken = lock_output(path, wait=wait, say=say)
    try:
        yield
    finally:
        if taken:
            release_output(path)


def _forget_in_child() -> None:
    """A forked child shares its parent's locks: it closes its copies and releases nothing (the
    lock stays until the parent closes its own)."""
    global _registry
    _registry = threading.Condition()  # another thread may have held it at the fork
    _taking.clear()
    for item in _held.values():
        with contextlib.suppress(OSError):
            os.close(item.fd)
    _held.clear()


atexit.register(release_all)
os.register_at_fork(after_in_child=_forget_in_child)
