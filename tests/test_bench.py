"""The benchmarks and the device check script run (in their dry
modes on the CPU) and print the promised JSON."""
import json, os, signal, subprocess, sys, time
import pytest
import torch
from conftest import ROOT, cli

def test_bench_json_keys():
    r = cli('bench', '--dry_run', '--device', 'cpu', '--batch_size', 16, '--json')
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    for key in ('pipeline_domains_per_s', 'train_domains_per_s', 'reference_train_domains_per_s',
                'speedup', 'peak_memory_mb',
                'flops_per_domain', 'reference_flops_per_domain', 'padding_fraction',
                'train_chars_per_s'):
        assert isinstance(out[key], (int, float)), key
    assert out['reference_flops_per_domain'] > out['flops_per_domain']

def test_a_killed_device_check_leaves_the_phases_it_finished(tmp_path):
    """SIGKILL once the cheap phases are written: the JSON on disk is whole and holds
    them (the run on the bare machine's python: test_gpu_machine)."""
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(tmp_path))
    proc = subprocess.Popen(['bash', str(ROOT / 'bench' / 'device_check.sh'), '--dry_run'], env=env,
                            cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    path, deadline = tmp_path / 'device_check.json', time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if (path.exists()
                and json.loads(path.read_text())['phases'].get('eager', {}).get('status') == 'ok'):
                break
            time.sleep(0.05)
    finally: os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    out = json.loads(path.read_text())
    done = [k for k, v in out['phases'].items() if v['status'] == 'ok']
    assert done[:4] == ['versions', 'sdpa', 'matmul_peak', 'eager'] and 'complete' not in out
    # the phase it died in, if it had begun
    assert [v['status'] for v in out['phases'].values()].count('running') <= 1
    assert out['train_domains_per_s'] > 0 and out['sdpa_backend'] == 'math' and out['torch'] == torch.__version__
    # no temporary file left beside it
    assert [p.name for p in tmp_path.iterdir()] == ['device_check.json']

def test_device_check_without_a_gpu_says_so_in_one_line(tmp_path):
    if torch.cuda.is_available(): pytest.skip('a GPU is here')
    r = subprocess.run(['bash', str(ROOT / 'bench' / 'device_check.sh')],
                       env=dict(os.environ, PYTHON=sys.executable),
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 2 and r.stdout == ''
    assert r.stderr.strip().splitlines()[-1] == ('device check: --device cuda was asked for but no '
                                                 'CUDA GPU is available '
                                                 '(--dry_run runs on the CPU)')

def test_make_corpus(tmp_path):
    r = cli('make-corpus', '--n', 1000, '--output', tmp_path / 'c.txt')
    assert r.returncode == 0, r.stderr
    assert len((tmp_path / 'c.txt').read_text().splitlines()) == 1000

def test_bench_scale_runs_the_training_command_at_two_sizes(tmp_path):
    r = cli('bench-scale', '--sizes', 20_000, 60_000, '--train', '--steps', 6, '--evals', 2,
            '--repeats', 1, '--workdir', tmp_path, '--json')
    assert r.returncode == 0, r.stderr
    small, large = [json.loads(l) for l in r.stdout.strip().splitlines()]
    assert (small['lines'], large['lines']) == (20_000, 60_000)
    # below the default of 100,000 every evaluation takes the whole
    # validation split: about a tenth of the lines
    assert 1_500 < small['eval_domains'] < 2_500 and 5_000 < large['eval_domains'] < 7_000
    for row in (small, large):
        assert row['evals'] == 2 and row['input_mb'] < row['prepared_disk_mb'] <= row['peak_disk_mb']
        assert 0 < row['first_step_s'] < 120 and 0 < row['marginal_s'] and 0 < row['eval_s'] < row['marginal_s']
    assert large['marginal_vs_smallest'] == large['marginal_s'] / small['marginal_s']
    late = json.loads((tmp_path / 'run-60000-resume-late'
                       / 'metrics.jsonl').read_text().splitlines()[0])
    # the late resume really was in epoch 10
    assert late['step'] == large['late_step'] + 1 and 9.5 <= late['epoch'] < 9.6
    # the first micro-batch of a fresh run and of a late resume: no epoch-sized work
    for row in (small, large):
        assert row['first_batch_s'] < 5 and row['late_batch_s'] < 5 and row['after_open_s'] < row['first_step_s']
