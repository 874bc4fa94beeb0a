"""Typed errors: each carries one line that names the file or option and the reason."""

from __future__ import annotations

__all__ = ["JaxmosaicError", "ImageError", "WeightsError", "UnsafeCheckpointError", "ConfigError"]


class JaxmosaicError(Exception):
    """Base class of every error jaxmosaic raises on purpose; its message is one line."""


class ImageError(JaxmosaicError, ValueError):
    """An image could not be read or written (names the file and the reason)."""


class WeightsError(JaxmosaicError):
    """VGG19 weights are missing, malformed or could not be fetched."""


class UnsafeCheckpointError(WeightsError):
    """A checkpoint's pickle asked for something a tensor state dict never needs."""


class ConfigError(JaxmosaicError, ValueError):
    """A setting is out of range or malformed; `field` names it in Python terms (the command line
    names the flag instead)."""

    def __init__(self, field: str, reason: str):
        self.field, self.reason = field, reason
        super().__init__(f"{field}: {reason}")
