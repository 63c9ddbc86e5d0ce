# Sourced by scripts/setup.sh and scripts/test_lower_bounds.sh: `find_python312` prints a Python 3.12
# interpreter. PYTHON may name it; by default python3.12 is looked up on the PATH, then through
# pyenv (whose shim refuses a bare python3.12 unless PYENV_VERSION is set).

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
