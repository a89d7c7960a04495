"The benchmarks and the device check script run (in their dry modes on the CPU) and print the promised JSON."
import json, os, shutil, subprocess, sys
from pathlib import Path
import torch
from conftest import ROOT, cli

def test_bench_json_keys():
    r = cli('bench', '--dry_run', '--device', 'cpu', '--batch_size', 16, '--json')
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    for key in ('pipeline_domains_per_s', 'train_domains_per_s', 'reference_train_domains_per_s', 'speedup', 'peak_memory_mb',
                'flops_per_domain', 'reference_flops_per_domain', 'padding_fraction', 'train_chars_per_s'):
        assert isinstance(out[key], (int, float)), key
    assert out['reference_flops_per_domain'] > out['flops_per_domain']

def test_device_check_dry_run_runs_as_on_a_bare_machine(tmp_path):
    "In a checkout without .venv, with PYTHON unset and only a python3 on PATH: as the GPU machine will run it."
    checkout = tmp_path / 'checkout'
    files = subprocess.run(['git', 'ls-files', '-co', '--exclude-standard'], cwd=ROOT, capture_output=True, text=True, check=True)
    for name in files.stdout.split():
        if (ROOT / name).is_file(): (checkout / name).parent.mkdir(parents=True, exist_ok=True); shutil.copy2(ROOT / name, checkout / name)
    assert not (checkout / '.venv').exists()
    env = {k: v for k, v in os.environ.items() if k != 'PYTHON'}
    env.update(PATH=f'{Path(sys.executable).parent}:/usr/bin:/bin', OUT=str(tmp_path))
    r = subprocess.run(['bash', str(checkout / 'bench' / 'device_check.sh'), '--dry_run'], capture_output=True, text=True,
                       env=env, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads([l for l in r.stdout.splitlines() if l.strip()][-1])
    assert json.loads((tmp_path / 'device_check.json').read_text()) == out
    assert out['dry_run'] and out['torch'] == torch.__version__ and out['sdpa_backend'] == 'math' and out['mfu'] is None
    assert (out['config'], out['batch_size'], out['precision'], out['cuda']) == ('tiny', 32, 'fp32', None)
    assert 0 < out['padding_fraction'] < 0.5  # length-bucketed batches of the sample
    assert out['pipeline_distinct_domains'] > 0.9 * out['pipeline_lines']  # the pipeline ran on distinct domains
    assert 1 < out['speedup_64'] < out['speedup_128']  # the reference pays for its padding, more at 128
    assert out['ablation_eager_attention_domains_per_s'] > 0 and 'target_met' not in out

def test_make_corpus(tmp_path):
    r = cli('make-corpus', '--n', 1000, '--output', tmp_path / 'c.txt')
    assert r.returncode == 0, r.stderr
    assert len((tmp_path / 'c.txt').read_text().splitlines()) == 1000

def test_bench_scale_runs_the_training_command_at_two_sizes(tmp_path):
    r = cli('bench-scale', '--sizes', 20_000, 60_000, '--train', '--steps', 6, '--evals', 2, '--repeats', 1, '--workdir', tmp_path, '--json')
    assert r.returncode == 0, r.stderr
    small, large = [json.loads(l) for l in r.stdout.strip().splitlines()]
    assert (small['lines'], large['lines']) == (20_000, 60_000)
    # below the default of 100,000 every evaluation takes the whole validation split: about a tenth of the lines
    assert 1_500 < small['eval_domains'] < 2_500 and 5_000 < large['eval_domains'] < 7_000
    for row in (small, large):
        assert row['evals'] == 2 and row['input_mb'] < row['prepared_disk_mb'] <= row['peak_disk_mb']
        assert 0 < row['first_step_s'] < 120 and 0 < row['marginal_s'] and 0 < row['eval_s'] < row['marginal_s']
    assert large['marginal_vs_smallest'] == large['marginal_s'] / small['marginal_s']
    late = json.loads((tmp_path / 'run-60000-resume-late' / 'metrics.jsonl').read_text().splitlines()[0])
    assert late['step'] == 900_001  # the late resume really continued at step 900,000
