"""Check a TOML table against a config dataclass before anything uses it.

Every key must be a field (or a known alias of one, which is named as the field to use) and
every value of its field's annotated type. Without this, ``lr = "fast"`` in ``robotd train
--config`` surfaced as a TypeError traceback from inside torch's optimiser, after the run
directory had been made; now it is one line naming the file, the key and the type wanted.
"""

from __future__ import annotations

import dataclasses
import difflib
import numbers
import types
import typing
from collections.abc import Mapping
from typing import Any


def check_table(cls: type, values: Mapping[str, Any], source: str, aliases: Mapping[str, str]) -> None:
    """Raise ValueError ``"SOURCE: ..."`` for the first unknown key or wrongly typed value.

    ``aliases`` maps names other tools use (``learning_rate``) to the field (``lr``): such a
    key, or a misspelling nearer to it than to any field, is answered with the field's name.
    """
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    for key, value in values.items():
        if key not in fields:
            near = difflib.get_close_matches(key, [*fields, *aliases], n=1)
            hint = f" (did you mean {aliases.get(near[0], near[0])!r}?)" if near else ""
            raise ValueError(f"{source}: unknown key {key!r}{hint}")
        if not _is_of(value, hints[key]):
            raise ValueError(f"{source}: {key} must be {_describe(hints[key])}, got {value!r}")


def _is_of(value: Any, tp: Any) -> bool:
    """Whether a TOML value fits an annotation (an int fits a float; a bool is no number)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_is_of(value, arg) for arg in args)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if origin is dict:
        return isinstance(value, dict) and all(_is_of(k, args[0]) and _is_of(v, args[1]) for k, v in value.items())
    return isinstance(value, origin or tp)


def _describe(tp: Any) -> str:
    """An annotation in words; None is the string "none" in TOML (which has no null)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in args)
    if tp is type(None):
        return '"none"'
    if origin is dict:
        return f"a table of name = {_describe(args[1]).removeprefix('a ').removeprefix('an ')}"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))
