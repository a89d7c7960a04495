#!/usr/bin/env bash
# The device check: what a GPU machine should tell us, in one call, as one JSON line (also written to
# $OUT/device_check.json when OUT is set, rewritten after every phase). The phases, cheap ones first (README:
# "On a GPU: the device check", with their estimated seconds; code and tests: the benchmark chapter, nbs/15_bench):
#   versions, sdpa (the attention kernel a real step runs), matmul_peak, eager (canine-c, batch 256, bf16),
#   reference_64/128 (the original design), trainer (a short real run, a checkpoint, a resume, host syncs per step),
#   pipeline, ablations, fixed_width_eager, then the costly compiled and cuda_graphs (skipped past --deadline_s).
# It runs on a bare machine as it is: with the project's .venv where there is one, else with the machine's own
# python3 (PYTHON overrides both). Beyond torch, transformers, numpy, safetensors and tqdm the package needs fastcore
# and dnstwist, pure Python, which a bare machine lacks: `--prepare` downloads their pinned wheels into bench/wheels/
# (ignored by git), and the check puts every wheel there on sys.path (a wheel is a zip Python imports from). Carry
# that folder; the CLI runs there the same way: PYTHONPATH=$PWD:$(ls bench/wheels/*.whl | paste -sd:) python3 -m ...
#   bash bench/device_check.sh --prepare              # once, on a machine with pip and network: writes bench/wheels/
#   bash bench/device_check.sh                        # on the GPU machine (about 8 minutes on an H100-class GPU)
#   bash bench/device_check.sh --skip costly          # a rerun without the compiled phases
#   bash bench/device_check.sh --dry_run              # the tiny model on the CPU (the tests run this)
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if [[ "${1:-}" == --prepare ]]; then
  rm -rf bench/wheels
  for name in fastcore dnstwist; do  # at the versions every environment of the project pins
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --dest bench/wheels "$(grep -E "^$name==" environments/cpu.txt)"
  done
  "$PYTHON" - <<'PY'
import sys
from pathlib import Path
wheels = sorted(map(str, Path('bench/wheels').resolve().glob('*.whl')))
sys.path[:0] = wheels
import dnstwist, fastcore.basics, fastcore.docments
for m in (fastcore, dnstwist): assert any(m.__file__.startswith(w) for w in wheels), m.__file__
print(f'bench/wheels: fastcore {fastcore.__version__} and dnstwist {dnstwist.__version__} import from their wheels; '
      'carry bench/wheels to the GPU machine')
PY
  exit 0
fi
exec "$PYTHON" - "$@" <<'PY'
import os, sys, time
from pathlib import Path
started = time.perf_counter()
sys.path[:0] = [os.getcwd(), *map(str, sorted(Path('bench/wheels').resolve().glob('*.whl')))]  # this checkout's package
try: import fastcore, dnstwist
except ImportError as e: sys.exit(f'device check: {e.name} is missing: run `bash bench/device_check.sh --prepare` where '
                                  'pip can download, and bring bench/wheels/ with the checkout')
try: from domain_canine.bench import device_check_main
except ImportError as e: sys.exit(f'device check: {e}')
sys.exit(device_check_main(sys.argv[1:], started))
PY
