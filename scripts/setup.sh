#!/usr/bin/env bash
# Creates ./.venv with Python 3.12 and installs munet_jax (editable) with its test
# extra at the exact versions of requirements/constraints.txt.
#   bash scripts/setup.sh            # reuse .venv if it exists
#   FRESH=1 bash scripts/setup.sh    # delete .venv first
# PYTHON may name the interpreter; by default python3.12 is looked up on the PATH,
# then through pyenv (whose shim refuses a bare python3.12 unless PYENV_VERSION is set).
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/find_python312.sh

if [ "${FRESH:-0}" = "1" ]; then rm -rf .venv; fi
if [ ! -x .venv/bin/python ]; then
  py=$(find_python312)
  echo "setup: creating .venv with $py ($("$py" --version))"
  "$py" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c requirements/constraints.txt -e '.[test]'
echo "setup: .venv ready ($(.venv/bin/python --version))"
