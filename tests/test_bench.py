"The benchmark and the GPU check script run (in their dry modes on the CPU) and print the promised JSON."
import json, os, subprocess, sys
from conftest import ROOT, cli

def test_bench_json_keys():
    r = cli('bench', '--dry_run', '--device', 'cpu', '--batch_size', 16, '--json')
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    for key in ('pipeline_domains_per_s', 'train_domains_per_s', 'reference_train_domains_per_s', 'speedup', 'peak_memory_mb',
                'flops_per_domain', 'reference_flops_per_domain', 'padding_fraction', 'train_chars_per_s'):
        assert isinstance(out[key], (int, float)), key
    assert out['reference_flops_per_domain'] > out['flops_per_domain']

def test_gpu_check_dry_run_prints_one_json_line():
    r = subprocess.run(['bash', str(ROOT / 'bench' / 'gpu_check.sh'), '--dry_run'], capture_output=True, text=True,
                       env={**os.environ, 'PYTHON': sys.executable}, timeout=600)
    assert r.returncode == 0, r.stderr
    lines = [l for l in r.stdout.splitlines() if l.strip()]
    out = json.loads(lines[-1])
    assert out['dry_run'] and {'speedup_64', 'speedup_128', 'memory_ratio_64', 'pipeline_domains_per_s'} <= set(out)

def test_make_corpus(tmp_path):
    r = cli('make-corpus', '--n', 1000, '--output', tmp_path / 'c.txt')
    assert r.returncode == 0, r.stderr
    assert len((tmp_path / 'c.txt').read_text().splitlines()) == 1000
