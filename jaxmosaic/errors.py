"""Typed errors: each carries one line that names the file or option and the reason."""

from __future__ import annotations

__all__ = ["JaxmosaicError", "ImageError", "WeightsError", "UnsafeCheckpointError"]


class JaxmosaicError(Exception):
    """Base class of every error jaxmosaic raises on purpose; its message is one line."""


class ImageError(JaxmosaicError, ValueError):
    """An image could not be read or written (names the file and the reason)."""


class WeightsError(JaxmosaicError):
    """VGG19 weights are missing, malformed or could not be fetched."""


class UnsafeCheckpointError(WeightsError):
    """A checkpoint's pickle asked for something a tensor state dict never needs."""
