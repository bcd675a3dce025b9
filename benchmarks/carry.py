"""The parts of docs/benchmarks.md that benchmarks.run does not measure, carried over from the file it replaces:

- the hand-written analysis, between ANALYSIS_BEGIN and ANALYSIS_END (markers included). A file without them
  takes docs/benchmarks-analysis.md (how the analysis was kept before), else a placeholder to fill in;
- everything from APPENDED_BEGIN to the end of the file, verbatim: the "HTTP edge" section (benchmarks/http.py
  --write-doc rewrites it between its own markers, wherever they are), the "INT8" and "tune" sections. A file
  without that marker keeps everything from the HTTP edge's begin marker on, if it has one.

Only the markers are ever hand-edited in the generated part of the file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from benchmarks.http_doc import BEGIN as HTTP_EDGE_BEGIN

ANALYSIS_BEGIN = "<!-- analysis:begin (hand-written; benchmarks.run carries it over, edit it in place) -->"
ANALYSIS_END = "<!-- analysis:end -->"
APPENDED_BEGIN = ("<!-- appended:begin (not measured by benchmarks.run, carried over verbatim to the end of the "
                  "file: benchmarks/http.py --write-doc, benchmarks/int8*.py, onnx-serve tune) -->")
PLACEHOLDER = ("### Why the missed targets are missed (hand-written; the figures are in the tables below)\n\n"
               "_To be written from this run's figures._")


@dataclass(frozen=True)
class Carried:
    analysis: str  # with its markers
    appended: str  # from APPENDED_BEGIN to the end, or ""


def _marker_prefix(marker: str) -> str:
    """`<!-- analysis:begin` of `<!-- analysis:begin (...) -->`: a marker is found by its name, so rewording
    the note in brackets does not lose the block."""
    return marker.split(" (", 1)[0].removesuffix(" -->")


def _between(text: str, begin: str, end: str) -> str | None:
    start = text.find(_marker_prefix(begin))
    if start < 0:
        return None
    stop = text.find(end, start)
    return None if stop < 0 else text[start:stop + len(end)]


def carried_blocks(existing: str, analysis_file: Path | None = None) -> Carried:
    start = existing.find(_marker_prefix(APPENDED_BEGIN))
    if start >= 0:
        appended = existing[start:]
    elif (start := existing.find(HTTP_EDGE_BEGIN)) >= 0:
        appended = f"{APPENDED_BEGIN}\n\n{existing[start:]}"
    else:
        appended = ""
    generated = existing[:start] if start >= 0 else existing  # an analysis marker quoted further on is not one
    analysis = _between(generated, ANALYSIS_BEGIN, ANALYSIS_END)
    if analysis is None:
        body = analysis_file.read_text().strip() if analysis_file and analysis_file.exists() else PLACEHOLDER
        analysis = f"{ANALYSIS_BEGIN}\n{body}\n{ANALYSIS_END}"
    return Carried(analysis.strip("\n"), appended.rstrip("\n") + "\n" if appended else "")
