#!/usr/bin/env bash
# The device check: everything a GPU machine should tell us, in one call, as one JSON line (also written to
# $OUT/device_check.json when OUT is set). It runs on a bare machine as it is: with the project's .venv where there
# is one, else with the machine's own python3 (PYTHON overrides both); it needs torch >= 2.6, transformers >= 5,
# numpy, safetensors, tqdm and fastcore (pure Python: its wheel on PYTHONPATH will do), and imports nothing else
# (no datasets: it reads no hub dataset and no Parquet).
#   - versions of python, torch, CUDA, cuDNN, transformers; the GPU, its compute capability; the SDPA kernel it runs
#   - the dense bf16 matmul rate measured on this GPU, the denominator of the MFU reported
#   - the canine-c shape, batch 256, bf16: our training path against the original design (padding to 64 and 128,
#     16,384-way logits everywhere, per-example Python masking), domains/s and peak memory above the weights
#   - ablations, each one optimisation switched off (or on): eager attention, unfused AdamW, no length bucketing,
#     fp32 with and without TF32; at one fixed width, eager against torch.compile and against CUDA graphs
#   - the input pipeline on 1M distinct synthetic domains, one thread
# About 5-6 minutes on an H100-class GPU, most of it compiling the two compiled ablations.
#   bash bench/device_check.sh            # on a machine with a CUDA GPU
#   bash bench/device_check.sh --dry_run  # seconds on the CPU with the tiny model (the tests run this)
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
exec "$PYTHON" - "$@" <<'PY'
import json, os, sys, time
from pathlib import Path
sys.path.insert(0, os.getcwd())  # this checkout's package, installed or not
try: import fastcore
except ImportError: sys.exit('device check: fastcore is missing: pip install fastcore==1.14.5, or put its wheel on PYTHONPATH')
import torch
from domain_canine.bench import (bench_ablations, bench_pipeline, bench_training, device_versions, gpu_figures,
                                 measured_matmul_tflops)
from domain_canine.core import pick_device

started, dry = time.perf_counter(), '--dry_run' in sys.argv[1:]
if dry: device, config, batch, precision, steps, width = pick_device('cpu'), 'tiny', 32, 'fp32', dict(windows=2, window_steps=2), 24
else: device, config, batch, precision, steps, width = pick_device('cuda'), 'canine-c', 256, 'bf16', dict(windows=5, window_steps=10), 32
out = dict(date=time.strftime('%Y-%m-%d'), config=config, batch_size=batch, precision=precision, device=str(device), dry_run=dry)
out.update(device_versions(device))
peak = measured_matmul_tflops(device)
for max_length in (64, 128):
    r = bench_training(config, batch, max_length, device, precision, **steps)
    out.update(train_domains_per_s=r['train_domains_per_s'], train_chars_per_s=r['train_chars_per_s'],
               peak_memory_mb=r['peak_memory_mb'], flops_per_domain=r['flops_per_domain'], padding_fraction=r['padding_fraction'])
    out.update({f'reference_{max_length}_domains_per_s': r['reference_train_domains_per_s'],
                f'reference_{max_length}_peak_memory_mb': r['reference_peak_memory_mb'],
                f'speedup_{max_length}': r['speedup'],
                f'memory_ratio_{max_length}': r['peak_memory_mb'] / max(r['reference_peak_memory_mb'], 1e-9)})
out['peak_memory_measure'] = 'peak above the weights, the same for ours and the reference'
out.update(gpu_figures(out['flops_per_domain'], out['train_domains_per_s'], device, peak))
out.setdefault('mfu', None)
# each ablation switches one optimisation of the default path off; the compiled ones run at one fixed width, beside
# an eager run at that width, so that each compiles once
ablations = dict(eager_attention=dict(attention='eager'), unfused_adamw=dict(fused=False), no_length_bucketing=dict(bucket=False),
                 fp32_tf32=dict(precision='fp32'), fp32_no_tf32=dict(precision='fp32', tf32=False),
                 fixed_width_eager=dict(fixed_width=width), compiled=dict(compile=True, fixed_width=width),
                 cuda_graphs=dict(compile=True, cuda_graphs=True, fixed_width=width))
if dry:  # minutes of compiling on a CPU; the tests check that compiled losses equal eager ones
    for name in ('compiled', 'cuda_graphs'): ablations.pop(name)
a = bench_ablations(ablations, config, batch, device, precision, rounds=1, **steps)
out.update({f'ablation_{k}': v for k, v in a.items()})
for name in ('compiled', 'cuda_graphs'):
    if f'{name}_domains_per_s' in a:
        out[f'ablation_{name}_vs_fixed_width_eager'] = a[f'{name}_domains_per_s'] / a['fixed_width_eager_domains_per_s']
out['ddp_ablations'] = 'measured only with 2 or more GPUs' if torch.cuda.device_count() < 2 else 'not in this check'
out.update(bench_pipeline(20_000 if dry else 1_000_000, batch))
if not dry:
    name = torch.cuda.get_device_name(device)
    target = 50_000 if 'H100' in name or 'H200' in name else 25_000  # domains/s: the targets by card
    out.update(target_domains_per_s=target, target_met=out['train_domains_per_s'] >= target)  # memory is reported, not judged
out['check_seconds'] = time.perf_counter() - started
line = json.dumps(out)
print(line)
if os.environ.get('OUT'): Path(os.environ['OUT'], 'device_check.json').write_text(line + '\n')
PY
