#!/usr/bin/env bash
# Run the test suite against the ComfyUI host made by scripts/setup.sh (or COMFYUI_PATH).
# Extra arguments go to pytest, e.g. `scripts/test.sh -k iqa` or `scripts/test.sh tests/modules`.
# Without arguments (what CI runs) it runs the whole suite on ComfyUI 0.3.75 and then the host-dependent tests
# (tests/comfy: graph, server and browser tests) on the second host, ComfyUI 0.12.1, when its tarball is beside the
# checkout (scripts/hosts.sh), or prints one "skipped: no second host" line. ADAPTBIR_TEST_HOST=second runs the
# given arguments (default: tests/comfy) on the second host only.
# pytest runs from tests/ (its rootdir): the repository root is the pack's Python package, which pytest must not
# collect (its folder name need not be a valid module name), so paths given here are rewritten relative to tests/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ADAPTBIR_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
. "$ROOT/scripts/hosts.sh"
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
pytest_run() { "$PY" -m pytest -c pytest.ini --rootdir . --durations=15 "$@"; }

second_host_run() {
  if ! second_host_ready; then
    echo "ERROR: the second host's tarball is at $SECOND_HOST_TARBALL but ComfyUI $SECOND_HOST_VERSION is not set up:" \
         "run scripts/setup.sh" >&2
    return 1
  fi
  echo "== second host: ComfyUI $SECOND_HOST_VERSION at $SECOND_HOST_DIR: $*"
  COMFYUI_PATH="$SECOND_HOST_DIR" PYTHONPATH="$SECOND_HOST_SITE${PYTHONPATH:+:$PYTHONPATH}" pytest_run "$@"
}

if [ "${ADAPTBIR_TEST_HOST:-}" = "second" ]; then
  if ! second_host_present; then echo "$SECOND_HOST_SKIPPED"; exit 0; fi
  if [ ${#args[@]} -eq 0 ]; then args=(comfy); fi
  second_host_run "${args[@]}"
  exit $?
fi
if [ ${#args[@]} -gt 0 ]; then
  exec "$PY" -m pytest -c pytest.ini --rootdir . --durations=15 "${args[@]}"
fi
first=0
pytest_run || first=$?
if ! second_host_present; then
  echo "$SECOND_HOST_SKIPPED"
  exit "$first"
fi
second=0
second_host_run comfy || second=$?
[ "$first" -ne 0 ] && exit "$first"
exit "$second"
