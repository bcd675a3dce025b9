"""Strict reading of config.yaml mappings: every error names the file and the key path, unknown keys are
refused up front, and YAML booleans are never taken for numbers."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from onnx_serve.core.errors import ConfigError


class Section:
    """One mapping of a config file. `name` is its key path ("" for the top level)."""

    def __init__(self, raw: object, where: str, name: str, allowed: Sequence[str]) -> None:
        self.where, self.name = where, name
        raw = {} if raw is None else raw
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where}: {name or 'the file'}: expected a mapping, got {describe(raw)}")
        unknown = [str(key) for key in raw if key not in allowed]
        if unknown:
            raise ConfigError(f"{where}: {self.path(unknown[0])}: unknown key (allowed: {', '.join(allowed)})")
        self.raw: Mapping[Any, Any] = raw

    def path(self, key: str) -> str:
        return f"{self.name}.{key}" if self.name else key

    def has(self, key: str) -> bool:
        return self.raw.get(key) is not None

    def error(self, key: str, expected: str) -> ConfigError:
        return ConfigError(f"{self.where}: {self.path(key)}: expected {expected}, got {describe(self.raw.get(key))}")

    def section(self, key: str, allowed: Sequence[str]) -> Section:
        return Section(self.raw.get(key), self.where, self.path(key), allowed)

    def choice(self, key: str, default: str, choices: Sequence[str]) -> Any:
        value = self.raw.get(key, default)
        if not isinstance(value, str) or value not in choices:
            raise self.error(key, "one of " + ", ".join(choices))
        return value

    def string(self, key: str) -> str | None:
        value = self.raw.get(key)
        if value is not None and not isinstance(value, str):
            raise self.error(key, "a string")
        return value

    def integer(self, key: str, default: int, minimum: int, maximum: int | None = None) -> int:
        value: int = self.raw.get(key, default)  # raw YAML (Any): an int only once in_range holds
        in_range = is_int(value) and value >= minimum and (maximum is None or value <= maximum)
        if not in_range:
            bounds = f"an integer >= {minimum}" if maximum is None else f"an integer in {minimum}..{maximum}"
            raise self.error(key, bounds)
        return value

    def integers(self, key: str, minimum: int, allow_single: bool = False) -> tuple[int, ...]:
        value = self.raw.get(key, [])
        if allow_single and is_int(value):
            value = [value]
        if not isinstance(value, list) or not all(is_int(v) and v >= minimum for v in value):
            raise self.error(key, f"a list of integers >= {minimum}")
        return tuple(value)

    def number(self, key: str, default: float, expected: str, valid: Callable[[float], bool]) -> float:
        value = self.raw.get(key, default)
        if not is_number(value) or not valid(value):
            raise self.error(key, expected)
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.raw.get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, "true or false")
        return value


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def describe(value: object) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"
