#!/usr/bin/env bash
# Run the whole test suite against the ComfyUI host made by scripts/setup.sh (or COMFYUI_PATH).
# Extra arguments go to pytest, e.g. `scripts/test.sh -k iqa` or `scripts/test.sh tests/modules`.
# pytest runs from tests/ (its rootdir): the repository root is the pack's Python package, which pytest must not
# collect (its folder name need not be a valid module name), so paths given here are rewritten relative to tests/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ADAPTBIR_VENV:-$ROOT/.venv}"
args=()
for a in "$@"; do
  p="${a%%::*}"
  if [ -n "$p" ] && [ -e "$PWD/$p" ]; then
    rel="$(realpath --relative-to="$ROOT/tests" "$PWD/$p")"
    args+=("$rel${a:${#p}}")
  else
    args+=("$a")
  fi
done
cd "$ROOT/tests"
exec "$VENV/bin/python" -m pytest -c pytest.ini --rootdir . --durations=15 ${args[@]+"${args[@]}"}
