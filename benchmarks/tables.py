"""What the renderers of docs/benchmarks.md share: a Markdown document being built, level look-ups in the
run's results, number formatting."""

from __future__ import annotations

from typing import Any

H2LOAD_IN_FLIGHT = 128  # the h2load point 4x32: 4 connections x 32 streams


class Doc:
    def __init__(self, state: Any) -> None:
        self.state = state
        self.lines: list[str] = []

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.add("| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|")
        self.add(*("| " + " | ".join(row) + " |" for row in rows), "")

    def level(self, key: str, concurrency: int) -> dict[str, Any] | None:
        run = self.state.runs.get(key)
        return next((lv for lv in run["levels"] if lv["concurrency"] == concurrency), None) if run else None

    def rate(self, key: str, concurrency: int) -> float | None:
        level = self.level(key, concurrency)
        return level["items_per_s"] if level else None

    def h2load(self, server: str) -> dict[str, Any] | None:
        """The server's level at the h2load point (run key `h2load-<server>`)."""
        return self.level(f"h2load-{server}", H2LOAD_IN_FLIGHT)


def n(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def batching(state: Any) -> dict[str, Any]:
    return state.settings.get("mnist_batching") or {}


def server_field(level: dict[str, Any] | None, name: str) -> Any:
    """A ModelStatistics figure of a level (None for a server without statistics)."""
    return ((level or {}).get("server") or {}).get(name)
