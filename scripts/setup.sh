#!/usr/bin/env bash
# Creates ./.venv with Python 3.12 and installs munet_jax (editable) with its test
# extra at the exact versions of requirements/constraints.txt.
#   bash scripts/setup.sh            # reuse .venv if it exists
#   FRESH=1 bash scripts/setup.sh    # delete .venv first
# PYTHON may name the interpreter; by default python3.12 is looked up on the PATH,
# then through pyenv (whose shim refuses a bare python3.12 unless PYENV_VERSION is set).
set -euo pipefail
cd "$(dirname "$0")/.."

is_py312() { "$@" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' >/dev/null 2>&1; }

find_python312() {
  local cand="${PYTHON:-python3.12}"
  if is_py312 "$cand"; then echo "$cand"; return; fi
  if command -v pyenv >/dev/null 2>&1; then
    local v
    v=$(pyenv versions --bare 2>/dev/null | grep -E '^3\.12(\.[0-9]+)?$' | sort -V | tail -n 1 || true)
    if [ -n "$v" ]; then
      local prefix
      prefix=$(pyenv prefix "$v")
      if is_py312 "$prefix/bin/python3.12"; then echo "$prefix/bin/python3.12"; return; fi
    fi
  fi
  echo "error: Python 3.12 not found. Install it (e.g. 'pyenv install 3.12') or set PYTHON=/path/to/python3.12." >&2
  exit 1
}

if [ "${FRESH:-0}" = "1" ]; then rm -rf .venv; fi
if [ ! -x .venv/bin/python ]; then
  py=$(find_python312)
  echo "setup: creating .venv with $py ($("$py" --version))"
  "$py" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c requirements/constraints.txt -e '.[test]'
echo "setup: .venv ready ($(.venv/bin/python --version))"
