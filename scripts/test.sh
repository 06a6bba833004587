#!/usr/bin/env bash
# Run the whole test suite against the ComfyUI host made by scripts/setup.sh (or COMFYUI_PATH).
# Extra arguments go to pytest, e.g. `scripts/test.sh -k iqa` or `scripts/test.sh tests/modules`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ADAPTBIR_VENV:-$ROOT/.venv}"
cd "$ROOT"
exec "$VENV/bin/python" -m pytest -c tests/pytest.ini --rootdir tests --durations=15 "$@"
