#!/usr/bin/env bash
# Run every test under CPython and under PyPy (see tools/setup.sh), and
# once more under CPython with the fast path off (lvs/fastpath.py).
# Hypothesis uses its "ci" profile (fewer examples) when CI is set.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
status=0
for py in .venv/bin/python .venv-pypy/bin/python; do
    echo "== $($py -c 'import sys, platform; print(platform.python_implementation(), sys.version.split()[0])')"
    "$py" -m pytest "$@" || status=1
done
# The fast path must change nothing: the whole suite again without it.
echo "== CPython, PYLVS_FASTPATH=0"
PYLVS_FASTPATH=0 .venv/bin/python -m pytest "$@" || status=1
exit $status
