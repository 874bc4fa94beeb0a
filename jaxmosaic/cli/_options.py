"""Command-line options made from configuration dataclasses: one flag per field.

`@command(config=StyleConfig)` on a command whose signature has a parameter `config` replaces that
parameter by one Typer option per field of `StyleConfig` (the field's default, its help, its
flag), and calls the command with the `StyleConfig` built from them. Text becomes a field's
type here: comma-separated lists for tuples, a field's own `parse` for the rest. A `ConfigError`
raised while the config is built or the command runs names a field; it reaches the user as one
line naming the flag.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any

import typer

from jaxmosaic.config import ConfigError
from jaxmosaic.errors import JaxmosaicError

__all__ = ["command", "flag_of"]


def flag_of(field: dataclasses.Field) -> str:
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def _unwrap_optional(kind) -> tuple[Any, bool]:
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        if len(args) < len(typing.get_args(kind)):
            return (args[0] if len(args) == 1 else typing.Union[tuple(args)]), True
    return kind, False


_WORDS = {int: "whole numbers", float: "numbers", str: "names"}


def _converter(field: dataclasses.Field, kind) -> tuple[Any, Callable[[Any], Any], Callable[[Any], Any]]:
    """(the type Typer sees, text -> value, default value -> what Typer shows) for a field."""
    inner, optional = _unwrap_optional(kind)
    parse = field.metadata.get("parse")

    def wrap(convert, expected):
        def to_value(raw):
            if raw is None:
                return None
            try:
                return convert(raw)
            except (ValueError, TypeError):
                raise ConfigError(field.name, f"{raw!r}: expected {expected}") from None
        return to_value

    if parse is not None:
        cli_type = str | None if optional or field.default is None else str
        return cli_type, wrap(parse, field.metadata.get("example") or "a valid value"), lambda v: None if v is None else str(v)
    if typing.get_origin(inner) is tuple:
        item = typing.get_args(inner)[0]

        def split(text: str):
            return tuple(item(part.strip()) for part in text.split(",") if part.strip())

        cli_type = str | None if optional else str
        return cli_type, wrap(split, f"comma-separated {_WORDS.get(item, 'values')}"), \
            lambda v: None if v is None else ",".join(str(x) for x in v)
    cli_type = inner | None if optional else inner
    return cli_type, lambda raw: raw, lambda v: v


def _fields(cls) -> list[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return [(field, hints[field.name]) for field in dataclasses.fields(cls) if field.metadata.get("cli", True)]


def _parameters(cls) -> tuple[list[inspect.Parameter], dict[str, Callable], dict[str, str]]:
    params, converters, flags = [], {}, {}
    for field, kind in _fields(cls):
        cli_type, to_value, shown = _converter(field, kind)
        flag = flag_of(field)
        if kind is bool and field.default is True:  # a switch that is on needs a way to turn it off
            flag = f"{flag}/--no-{flag.removeprefix('--')}"
        option = typer.Option(flag, help=field.metadata.get("help", ""))
        params.append(inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=shown(field.default),
                                        annotation=Annotated[cli_type, option]))
        converters[field.name] = to_value
        flags[field.name] = flag_of(field)
    return params, converters, flags


def _flagged(error: ConfigError, flags: dict[str, str]) -> JaxmosaicError:
    flag = flags.get(error.field) or "--" + error.field.replace("_", "-")  # a plain option's field is its flag too
    return JaxmosaicError(f"{flag}: {error.reason}")


def command(**configs: type) -> Callable[[Callable], Callable]:
    """Give a command one option per field of each named config class (see the module doc)."""

    def decorate(function: Callable) -> Callable:
        signature = inspect.signature(function, eval_str=True)
        parameters, converters, flags = [], {}, {}
        for param in signature.parameters.values():
            if param.name in configs:
                made, convert, named = _parameters(configs[param.name])
                if set(convert) & set(converters):
                    raise TypeError(f"{function.__name__}: options {sorted(set(convert) & set(converters))} appear twice")
                parameters += made
                converters.update(convert)
                flags.update(named)
            else:
                parameters.append(param.replace(kind=inspect.Parameter.KEYWORD_ONLY))

        @functools.wraps(function)
        def wrapper(**kwargs):
            try:
                for name, cls in configs.items():
                    values = {field.name: converters[field.name](kwargs.pop(field.name)) for field, _ in _fields(cls)}
                    kwargs[name] = cls(**values)
                return function(**kwargs)
            except ConfigError as error:
                raise _flagged(error, flags) from None

        wrapper.__signature__ = signature.replace(parameters=parameters)
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        wrapper.flags = flags
        return wrapper

    return decorate

