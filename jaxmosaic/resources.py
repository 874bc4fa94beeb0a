"""Estimate memory before starting work, and refuse what would not fit."""

from __future__ import annotations

import os

import jax

from jaxmosaic.errors import JaxmosaicError

__all__ = ["available_bytes", "check_memory"]


def available_bytes() -> int | None:
    """Free memory of the default device: the accelerator's limit, or the host's available RAM."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(needed: int, what: str) -> None:
    """Raise if `needed` bytes (an estimate of the peak) exceed what is free."""
    free = available_bytes()
    if free is not None and needed > free:
        raise JaxmosaicError(
            f"{what} needs about {needed / 2**30:.1f} GiB but only {free / 2**30:.1f} GiB is free; "
            "use a smaller --size or fewer images at once"
        )
