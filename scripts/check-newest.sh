#!/usr/bin/env bash
# Do the newest versions that pyproject.toml allows still pass? CI installs the tested set (constraints.txt);
# this installs, into a throw-away venv, the newest release of every dependency within pyproject.toml's
# bounds (what a plain `pip install .` gets today), prints the versions that differ from constraints.txt, and
# runs the test command there. Run it by hand, or weekly from a scheduler:
#
#   bash scripts/check-newest.sh                 # the whole test command (scripts/test.sh's pytest part)
#   bash scripts/check-newest.sh tests/client    # or some tests only
#
# A failure here, not in CI, means a new release broke us: fix it, then raise the pins with
# scripts/lock-constraints.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
venv=$(mktemp -d)/venv
trap 'rm -rf "$(dirname "$venv")"' EXIT

python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade --upgrade-strategy eager ".[test]"
echo "== versions that differ from constraints.txt"
"$venv/bin/python" -m pip list --format=freeze | sort | comm -13 <(grep -v '^#' constraints.txt | sort) - |
    grep -i -F -f <(sed -n 's/==.*//p' constraints.txt) || echo "(none)"
echo "== tests"
"$venv/bin/python" -m pytest -q -p no:cacheprovider "${@:-tests}"
