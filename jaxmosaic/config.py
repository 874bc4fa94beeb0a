"""Typed settings: the frozen dataclass every technique's configuration is, and its checks.

A configuration is a frozen dataclass whose fields are declared with `setting(default, help)`:
the default lives there and nowhere else; the command line builds its options from the fields
(`jaxmosaic.cli._options`), metrics and resume checks read `settings_dict(config)`. Each class
validates itself in `__post_init__` with the checks below, which raise `ConfigError` naming the
field in Python terms; the command line translates the field into its flag.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from jaxmosaic.errors import ConfigError

__all__ = [
    "ConfigError",
    "setting",
    "settings_dict",
    "replace",
    "number",
    "whole",
    "choice",
    "numbers",
    "wholes",
    "names",
    "layer_weights",
    "MAX_INT",
    "parse_tile",
    "tile_setting",
]

MAX_INT = 2**31 - 1
"""The largest whole number a setting takes: what XLA's int32 indices and shapes can hold."""


def setting(default: Any, help: str, *, flag: str | None = None, cli: bool = True, resume: bool = True,
            parse: Callable[[str], Any] | None = None, example: str | None = None) -> Any:
    """A configuration field with its default and its one-line help.

    Args:
      default: the default value (immutable: tuples, not lists).
      help: what the setting does, shown by `--help`.
      flag: the command-line flag when it is not `--field-name`.
      cli: False for settings the command line does not offer.
      resume: False for settings a resumed run may change (e.g. the number of steps).
      parse: how the command line turns text into the value, for types it cannot infer;
        `example` then shows what it takes (e.g. "512 or 640x480").
    """
    metadata = {"help": help, "flag": flag, "cli": cli, "resume": resume, "parse": parse, "example": example}
    return dataclasses.field(default=default, metadata=metadata)


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (tuple, list)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    return value


def settings_dict(config, *, resumable_only: bool = False) -> dict:
    """The configuration as JSON-ready values (enums by value, tuples as lists, paths as text).
    With `resumable_only`, the fields a resumed run must keep (those declared with resume=True)."""
    return {
        field.name: _plain(getattr(config, field.name))
        for field in dataclasses.fields(config)
        if not (resumable_only and not field.metadata.get("resume", True))
    }


def replace(config, **changes):
    """A copy of `config` with some fields changed (validated again)."""
    return dataclasses.replace(config, **changes)


def number(name: str, value, *, minimum: float | None = None, maximum: float | None = None,
           above: float | None = None, below: float | None = None) -> float:
    """A finite float within the given bounds (minimum/maximum inclusive, above/below strict)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(name, f"expected a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError(name, f"must be a finite number, got {value}")
    if minimum is not None and value < minimum:
        raise ConfigError(name, f"must be at least {minimum:g}, got {value:g}")
    if maximum is not None and value > maximum:
        raise ConfigError(name, f"must be at most {maximum:g}, got {value:g}")
    if above is not None and not value > above:
        raise ConfigError(name, f"must be greater than {above:g}, got {value:g}")
    if below is not None and not value < below:
        raise ConfigError(name, f"must be less than {below:g}, got {value:g}")
    return value


def whole(name: str, value, *, minimum: int | None = None, maximum: int = MAX_INT, odd: bool = False) -> int:
    """A whole number within [minimum, maximum] (and odd, when asked)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, f"expected a whole number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(name, f"must be at least {minimum}, got {value}")
    if value > maximum:
        raise ConfigError(name, f"must be at most {maximum}, got {value}")
    if odd and value % 2 == 0:
        raise ConfigError(name, f"must be odd, got {value}")
    return value


def choice(name: str, value, kind: type[enum.Enum]):
    """`value` as a member of the enum `kind` (its members or their values are accepted)."""
    try:
        return kind(value)
    except ValueError:
        options = ", ".join(str(member.value) for member in kind)
        raise ConfigError(name, f"must be one of {options}, got {value!r}") from None


def numbers(name: str, values: Iterable, *, count: int | None = None, **bounds) -> tuple[float, ...]:
    """A non-empty tuple of finite numbers, each within `bounds` (as `number`)."""
    values = tuple(values)
    if not values:
        raise ConfigError(name, "no values given")
    if count is not None and len(values) != count:
        raise ConfigError(name, f"has {len(values)} values, expected {count}")
    return tuple(number(name, value, **bounds) for value in values)


def wholes(name: str, values: Iterable, **bounds) -> tuple[int, ...]:
    """A non-empty tuple of whole numbers, each within `bounds` (as `whole`)."""
    values = tuple(values)
    if not values:
        raise ConfigError(name, "no values given")
    return tuple(whole(name, value, **bounds) for value in values)


def names(name: str, values: Iterable[str]) -> tuple[str, ...]:
    """A non-empty tuple of non-empty strings."""
    values = tuple(str(value).strip() for value in values)
    if not values or not all(values):
        raise ConfigError(name, "no names given")
    return values


def layer_weights(name: str, layers: Sequence[str], weights: Sequence[float] | None) -> dict[str, float]:
    """{layer: w_l}: the given weights (finite, >= 0, not all zero) or 1 / number of layers each."""
    if weights is None:
        return {layer: 1.0 / len(layers) for layer in layers}
    weights = numbers(name, weights, count=len(layers), minimum=0.0)
    if sum(weights) <= 0:
        raise ConfigError(name, "the weights must not all be zero")
    return dict(zip(layers, weights))


def parse_tile(text: str) -> int | str:
    """"auto" or a number of pixels."""
    text = text.strip().lower()
    return "auto" if text == "auto" else int(text)


def tile_setting(name: str, value, overlap: int) -> int | str | None:
    """A tile size: None (untiled), "auto" or whole pixels (at least 64), with an overlap below
    half of it."""
    if value is None or value == "auto":
        return value
    value = whole(name, value, minimum=64)
    if overlap * 2 >= value:
        raise ConfigError("overlap", f"must be less than half the tile ({value} px), got {overlap}")
    return value
