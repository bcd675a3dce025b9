"""Regenerate the configuration table of README.md from the Settings dataclass.

    python scripts/gen_settings_table.py            # rewrite the table in README.md
    python scripts/gen_settings_table.py --check    # exit 1 if README.md's table is stale

The table runs from its header row to the next blank line; the prose around it is left as it is. Settings
(service/onnx_serve/core/settings.py) is the one definition of every flag; tests/core/test_settings.py fails
while README.md disagrees with it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from onnx_serve.core.settings import markdown_table

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def with_table(readme: str, table: str) -> str:
    """`readme` with the lines from the table's header row up to the next blank line replaced by `table`."""
    lines = readme.splitlines(keepends=True)
    header = table.splitlines(keepends=True)[0]
    start = lines.index(header)  # ValueError: README.md lost the table's header row
    end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    return "".join(lines[:start]) + table + "".join(lines[end:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md's table is stale")
    args = parser.parse_args(argv)
    current = README.read_text()
    wanted = with_table(current, markdown_table())
    if args.check:
        if current != wanted:
            print("README.md's configuration table is stale: run python scripts/gen_settings_table.py",
                  file=sys.stderr)
            return 1
        return 0
    README.write_text(wanted)
    print("wrote the configuration table of README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
