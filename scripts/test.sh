#!/usr/bin/env bash
# Run the whole test suite (core, node and end-to-end tiers) after setting up .venv.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k prompt`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
set +e
.venv/bin/python -m pytest -q --timeout=900 "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
  echo "pytest collected no tests: treating as a failure" >&2
fi
exit "$rc"
