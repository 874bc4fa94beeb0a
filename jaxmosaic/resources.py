"""Estimate memory before starting work, and refuse what would not fit."""

from __future__ import annotations

import os

import jax

from jaxmosaic.errors import JaxmosaicError
from jaxmosaic.vgg import activation_floats, images_per_call

__all__ = ["available_bytes", "host_available_bytes", "memory_budget", "check_memory", "optimisation_bytes", "activation_bytes", "largest_tile",
           "images_at_once", "held_bytes", "check_disk", "format_bytes"]

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def format_bytes(count: float) -> str:
    """`count` bytes for people: in the largest unit of B, KiB, MiB, GiB and TiB that keeps the
    number at least 1, to 3 significant figures ("512 B", "1.50 KiB", "79.2 GiB"), so a figure
    never rounds to zero."""
    value, unit = float(count), 0
    while abs(value) >= 1024 and unit < len(_UNITS) - 1:
        value, unit = value / 1024, unit + 1
    if unit == 0:
        return f"{round(value)} B"
    decimals = 2 if abs(value) < 10 else 1 if abs(value) < 100 else 0
    return f"{value:.{decimals}f} {_UNITS[unit]}"


def available_bytes() -> int | None:
    """Free memory of the default device: the accelerator's limit, or the host's available RAM."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    return host_available_bytes()


def host_available_bytes() -> int | None:
    """The host memory a new allocation can have now: Linux's MemAvailable (free pages plus the
    page cache it can give back), within a cgroup's limit; elsewhere the free pages."""
    available = _meminfo_available()
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    limit = _cgroup_room()
    return available if limit is None else min(available, limit)


def _meminfo_available() -> int | None:
    """Linux's estimate of the memory a new process can have without swapping (MemAvailable:
    free pages plus the page cache and reclaimable memory it can give back), or None."""
    try:
        with open("/proc/meminfo") as lines:
            for line in lines:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_room() -> int | None:
    """What a cgroup v2 memory limit leaves (memory.max less memory.current), or None without one."""
    try:
        with open("/sys/fs/cgroup/memory.max") as file:
            limit = file.read().strip()
        if limit == "max":
            return None
        with open("/sys/fs/cgroup/memory.current") as file:
            return max(0, int(limit) - int(file.read().strip()))
    except (OSError, ValueError):
        return None


def memory_budget(max_memory: float | None = None) -> int | None:
    """Bytes a run may use: `max_memory` GiB when given, else what is free less a 10% margin
    (None when the system does not say)."""
    if max_memory is not None:
        return int(max_memory * 2**30)
    free = available_bytes()
    return None if free is None else int(free * 0.9)


def check_memory(needed: int, what: str, *, devices: int = 1, budget: int | None = None, hint: str = "") -> None:
    """Raise if `needed` bytes (an estimate of the peak) exceed `budget` (default: what is
    free). Shared over `devices` accelerators, each holds its share; host devices (CPU) share
    the host's memory. `hint` names a further way out (e.g. "--tile auto")."""
    free = available_bytes() if budget is None else budget
    if devices > 1 and jax.devices()[0].platform != "cpu":
        needed = -(-needed // devices)
    if free is not None and needed > free:
        limit = "is free" if budget is None else "is allowed"
        raise JaxmosaicError(
            f"{what} needs about {format_bytes(needed)} but only {format_bytes(free)} {limit}; "
            f"use a smaller size or fewer images at once{', or ' + hint if hint else ''}"
        )


def activation_bytes(height: int, width: int, layers, batch: int = 1) -> int:
    """float32 bytes of the VGG19 activations of `batch` images up to the deepest of `layers`."""
    return batch * activation_floats(height, width, layers) * 4


def optimisation_bytes(height: int, width: int, layers, batch: int = 1, channels: int = 3) -> int:
    """Bytes one L-BFGS step of a batch through VGG19 holds at its peak: every activation up to
    the deepest layer twice (forward and its gradient, float32) for the images in the network at
    once (`images_at_once`), plus the optimiser's image-sized buffers for the whole batch."""
    at_once = min(batch, images_at_once(height, width) or batch)
    return 2 * activation_bytes(height, width, layers, at_once) + batch * 30 * height * width * channels * 4 + 200 * 2**20


def images_at_once(height: int, width: int) -> int | None:
    """How many images of a batched optimisation at this size are in the network at once:
    `images_per_call` on each of this process's devices, which on a CPU all share the host's
    memory (forced host devices); None when the whole batch is."""
    per_call = images_per_call(height, width)
    return None if per_call is None else per_call * jax.local_device_count()


def held_bytes(height: int, width: int, count: int, *, channels: int = 3) -> int:
    """Bytes of whole images a tiled optimisation holds besides a tile's: the images, the
    content or targets, the blended copy, a view for the progress and the final picture."""
    return (5 * count + 2) * height * width * channels * 4


def largest_tile(budget: int | None, layers, batch: int = 1, *, fixed: int = 0, step: int = 64, most: int = 1024,
                 least: int = 64, halo: int = 0) -> int | None:
    """The largest square tile (a multiple of `step` from `least` to `most`) whose optimisation of
    a batch of tiles (`images_at_once` of them in the network at once), and the pass of the loss
    over the tile with `halo` px of context each side for the batch and its target, fit in
    `budget` bytes besides `fixed` bytes held anyway; None when none does."""
    if budget is None:
        return most

    def tile_bytes(side: int) -> int:
        return max(optimisation_bytes(side, side, layers, batch), activation_bytes(side + 2 * halo, side + 2 * halo, layers,
                                                                                   batch + 1))

    side = most
    while side >= max(least, step) and tile_bytes(side) + fixed > budget:
        side -= step
    return side if side >= max(least, step) else None


def check_disk(folder, needed: int, what: str) -> None:
    """Raise if the file system holding `folder` has less than `needed` bytes free."""
    import shutil
    from pathlib import Path

    folder = Path(folder).expanduser().absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise JaxmosaicError(f"{what} need about {format_bytes(needed)} on disk beside the library but only "
                             f"{format_bytes(free)} is free in {folder}")
