"""KEY=VALUE settings: the one parser every command uses, and the one list of short names.

A command line such as `train BS=128 ACCUM=8 dry_run=yes` becomes {"batch_size": "128", ...}: keys are
case- and dash-insensitive, values are read against the type of the field they set (YAML scalars:
128, 3e-3, yes/no/true/false/on/off/1/0, null; a tuple of ints from "1 16 64" or "1,16,64").
A command takes the keys of its own settings dataclass first (`take`); what is left is config keys.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

import yaml

from .errors import UserError

# Short names a user types on the command line or through Make, mapped to config keys. Only names that
# differ from the key belong here: every key is also accepted as itself, in any case.
ALIASES = {"bs": "batch_size"}

TRUE, FALSE = ("1", "true", "yes", "on", "y"), ("0", "false", "no", "off", "n")


def normalize(key: str) -> str:
    """BS, Dry-Run and dry_run name the same setting."""
    return key.strip().lower().replace("-", "_")


def parse_items(items: list[str]) -> dict[str, str]:
    """["BS=128", "msg=a=b"] -> {"bs": "128", "msg": "a=b"}: normalized keys, raw string values."""
    out = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"setting '{item}' must look like KEY=VALUE (e.g. BS=128)")
        key, value = item.split("=", 1)
        out[normalize(key)] = value
    return out


def _allowed(hint: Any) -> tuple:
    return typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)


def _names(allowed: tuple) -> str:
    def name(t: Any) -> str:
        if t is type(None):
            return "null"
        return "whole numbers separated by spaces" if typing.get_origin(t) is tuple else t.__name__
    return " or ".join(name(t) for t in allowed)


def coerce(key: str, value: Any, hint: Any, source: str) -> Any:
    """`value` (a string from a command line, or what YAML read from a file) as the type `hint` of the
    setting `key`; a clear one-line error that names the setting and `source` otherwise."""
    allowed = _allowed(hint)
    if isinstance(value, str):
        text = value.strip()
        if any(typing.get_origin(t) is tuple for t in allowed):  # BATCH_SIZES="1 16 64 128"
            if not text and type(None) in allowed:
                return None
            try:
                numbers = tuple(int(v) for v in text.replace(",", " ").split())
            except ValueError:
                numbers = ()
            if not numbers or min(numbers) < 1:
                raise UserError(f"setting '{key}' in {source} must be whole numbers >= 1 separated by "
                                f"spaces, got {value!r}")
            return numbers
        if bool in allowed and text.lower() in TRUE + FALSE:
            return text.lower() in TRUE
        if int in allowed and text.lstrip("+-").isdigit():  # nets_per_step=4 beside nets_per_step=auto
            return int(text)
        if str in allowed:
            return value
        if not text:
            value = None
        else:
            try:
                value = yaml.safe_load(text)
            except yaml.YAMLError:
                raise UserError(f"setting '{key}' in {source}: cannot read the value {value!r}") from None
            if isinstance(value, str) and float in allowed:  # YAML 1.1 reads 1e-3 as a string; people type it
                try:
                    value = float(value)
                except ValueError:
                    pass
    if value is None and type(None) in allowed:
        return None
    if bool in allowed and value in (0, 1) and not isinstance(value, bool):  # record=1 in a YAML file
        return bool(value)
    for typ in allowed:
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if typing.get_origin(typ) is tuple and isinstance(value, list) and all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value) and value:
            return tuple(value)
        if typ is not type(None) and typing.get_origin(typ) is None and isinstance(value, typ) \
                and not (typ is int and isinstance(value, bool)):
            return value
    raise UserError(f"setting '{key}' in {source} must be {_names(allowed)}, got {value!r}")


def take(kind: type, items: dict[str, str], source: str = "the command line") -> Any:
    """Build dataclass `kind` from the items (normalized keys, from parse_items) that name its fields,
    removing them from items so the caller can hand the rest on (to the config)."""
    hints = typing.get_type_hints(kind)
    values = {f.name: coerce(f.name, items.pop(f.name), hints[f.name], source)
              for f in dataclasses.fields(kind) if f.name in items}
    return kind(**values)
