#!/usr/bin/env bash
# Every check: notebooks and package in sync, notebooks clean, the notebooks run with their stored outputs, then pytest.
# Run from anywhere after the quick start's setup command (it uses the project's .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# prepared corpora are cached per run of the tests, never taken from an earlier run
export DOMAIN_CANINE_CACHE="${DOMAIN_CANINE_CACHE:-$(mktemp -d)}"
fingerprint() { find "$@" -type f \( -name '*.py' -o -name '*.ipynb' \) -not -path '*/.ipynb_checkpoints/*' -print0 | sort -z | xargs -0 sha256sum; }

echo "== nbdev_export: the package must be exactly what the notebooks export"
before=$(fingerprint domain_canine); nbdev_export; after=$(fingerprint domain_canine)
if [[ $before != "$after" ]]; then echo "FAIL: domain_canine/ was out of sync with nbs/ (now re-exported: review and commit)"; exit 1; fi

echo "== nbdev_clean: notebooks must be stored clean"
before=$(fingerprint nbs); nbdev_clean; after=$(fingerprint nbs)
if [[ $before != "$after" ]]; then echo "FAIL: notebooks in nbs/ were not clean (now cleaned: review and commit)"; exit 1; fi

echo "== the notebooks run, and their stored outputs are what they print now (tests/refresh_outputs.py)"
before=$(fingerprint nbs)
out=$(python tests/refresh_outputs.py 2>&1) || { echo "$out"; exit 1; }
after=$(fingerprint nbs)
echo "$out" | grep -E '^(ok|FAILED) ' | awk '{n++; t+=$2} END {printf "%d notebooks ran in %.0f s of cell time\n", n, t; if (n == 0) exit 1}'
if [[ $before != "$after" ]]; then
  echo "FAIL: stored notebook outputs drifted (now refreshed: review with git diff nbs/ and commit)"; git status --short nbs; exit 1
fi

echo "== pytest"
set +e; python -m pytest tests "$@"; code=$?; set -e
if [[ $code == 5 ]]; then echo "FAIL: pytest collected no tests"; exit 1; fi
exit $code
