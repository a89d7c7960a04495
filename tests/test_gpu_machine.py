"""The package and the device check under exactly what the lent GPU machine's python holds
(environments/gpu-machine.txt: transformers 5.17, no fastcore, no datasets, no nbdev), from a
copy of the checkout without .venv, as that machine gets it.

The venv is built once per version of the requirements file (test-artifacts/venvs/, ignored) and
reused: the first build installs torch and transformers from the registry or pip's cache (4 min 38 s
on a loaded 2-core machine with a warm cache); later runs find it built."""
import hashlib, json, os, re, shutil, subprocess, sys
from pathlib import Path
import pytest
from conftest import ROOT

REQUIREMENTS = ROOT / 'environments' / 'gpu-machine.txt'
CAPTURED = dict(capture_output=True, text=True, timeout=900)

def pins(path: Path) -> dict[str, str]:
    "The `name==version` lines of a requirements file."
    return dict(re.findall(r'^([A-Za-z0-9_.-]+)==(\S+)', path.read_text(), flags=re.M))

def checkout_copy(dst: Path) -> Path:
    """The working tree as git sees it (tracked and untracked files, not
    the ignored ones: no .venv, no bench/wheels)."""
    files = subprocess.run(['git', 'ls-files', '-co', '--exclude-standard'], cwd=ROOT, check=True,
                           **CAPTURED).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dst / name)
    assert not (dst / '.venv').exists() and not (dst / 'bench' / 'wheels').exists()
    return dst

def bare_env(python: Path, **extra) -> dict:
    """The environment of the bare machine: its python3 first on PATH,
    PYTHON unset, nothing of ours on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHON', 'PYTHONPATH', 'VIRTUAL_ENV')}
    return dict(env, PATH=f'{python.parent}:/usr/bin:/bin', **extra)

@pytest.fixture(scope='session')
def gpu_python() -> Path:
    """The python of a venv holding only the GPU machine's packages
    (built once per requirements file and Python)."""
    key = hashlib.sha256(REQUIREMENTS.read_bytes()
                         + sys.version.split()[0].encode()).hexdigest()[:12]
    venv = ROOT / 'test-artifacts' / 'venvs' / f'gpu-machine-{key}'
    python = venv / 'bin' / 'python'
    if not (venv / 'complete').exists():  # a build that was interrupted is started again
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True, **CAPTURED)
        r = subprocess.run([str(python), '-m', 'pip', 'install', '-q', '-r', str(REQUIREMENTS)],
                           **dict(CAPTURED, timeout=1800))
        assert r.returncode == 0, r.stderr[-3000:]
        (venv / 'complete').write_text(REQUIREMENTS.read_text())
    return python

@pytest.fixture(scope='session')
def bare_checkout(tmp_path_factory, gpu_python) -> Path:
    """A copy of the checkout as the GPU machine gets it: no .venv,
    and bench/wheels/ written by `--prepare`."""
    checkout = checkout_copy(tmp_path_factory.mktemp('bare') / 'checkout')
    r = subprocess.run(['bash', 'bench/device_check.sh', '--prepare'], cwd=checkout,
                       env=bare_env(gpu_python), **CAPTURED)
    assert r.returncode == 0, r.stderr
    assert 'fastcore 1.14.5 and dnstwist 20250130 import from their wheels' in r.stdout
    return checkout

def test_the_venv_holds_what_the_machine_holds_and_the_floor_is_below_it(gpu_python):
    have = lambda module: subprocess.run([str(gpu_python), '-c', f'import {module}'],
                                         **CAPTURED).returncode == 0
    assert not any(have(m) for m in ('fastcore', 'datasets',
                                     'nbdev')) and all(have(m)
                                                       for m in ('torch', 'pyarrow', 'pandas'))
    floor = re.search(r'transformers>=([\d.]+)', (ROOT / 'settings.ini').read_text()).group(1)
    version = lambda v: tuple(int(x) for x in v.split('.'))
    for env in ('gpu-machine.txt', 'cpu.txt', 'cuda-a100.txt'):
        assert version(pins(ROOT / 'environments' / env)['transformers']) >= version(floor), env
    assert pins(REQUIREMENTS)['transformers'] == '5.17.0'

def test_the_package_imports_trains_a_step_and_predicts_there(bare_checkout, gpu_python, tmp_path):
    """The device check's imports, one training step through `train()`, then
    the CLI's `predict` (fastcore, dnstwist: wheels)."""
    wheels = ':'.join(map(str, sorted((bare_checkout / 'bench' / 'wheels').glob('*.whl'))))
    cfg = f'resolve_config("tiny", output_dir={str(tmp_path)!r}, max_steps=2, num_samples=300)'
    code = ('import transformers, domain_canine.bench, domain_canine.training, '
            'domain_canine.evaluation; from domain_canine.config import '
            'resolve_config; from domain_canine.training import train; '
            f'print(transformers.__version__, train({cfg}))')
    env = bare_env(gpu_python, PYTHONPATH=f'{bare_checkout}:{wheels}', OMP_NUM_THREADS='1')
    r = subprocess.run([str(gpu_python), '-c', code], cwd=bare_checkout, env=env, **CAPTURED)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == f'5.17.0 {tmp_path / "final-model"}'
    assert json.loads((tmp_path / 'final-model' / 'trainer_state.json').read_text())['step'] == 2
    cmd = [str(gpu_python), '-m', 'domain_canine', 'predict', '--model_path',
           str(tmp_path / 'final-model'), '--json', 'goo?le.com']
    r = subprocess.run(cmd, cwd=bare_checkout, env=env, **CAPTURED)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)[0]['query'] == 'goo?le.com' and len(json.loads(r.stdout)[0]['filled']) == 10

def test_device_check_dry_run_runs_as_on_the_bare_machine(bare_checkout, gpu_python, tmp_path):
    """`bash bench/device_check.sh --dry_run` with only the machine's
    python3 on PATH: every phase runs, its JSON is kept."""
    r = subprocess.run(['bash', str(bare_checkout / 'bench' / 'device_check.sh'), '--dry_run'],
                       cwd=tmp_path,
                       env=bare_env(gpu_python, OUT=str(tmp_path)), **CAPTURED)
    assert r.returncode == 0, r.stderr[-5000:]
    out = json.loads(r.stdout)  # one line: what the phases print goes to stderr
    assert json.loads((tmp_path / 'device_check.json').read_text()) == out
    status = {k: v['status'] for k, v in out['phases'].items()}
    assert status == dict(versions='ok', sdpa='ok', matmul_peak='ok', eager='ok', reference_64='ok',
                          reference_128='ok',
                          trainer='ok', pipeline='ok', ablations='ok', fixed_width_eager='ok',
                          compiled='skipped',
                          cuda_graphs='skipped'), out['phases']
    assert out['complete'] and out['dry_run'] and (out['transformers'],
                                                   out['fastcore']) == ('5.17.0', '1.14.5')
    assert (out['config'], out['batch_size'], out['precision'],
            out['cuda']) == ('tiny', 32, 'fp32', None)
    assert out['sdpa_backend'] == 'math' and out['sdpa_attention_dropout'] == 0.1 and out['mfu'] is None
    assert 0 < out['padding_fraction'] < 0.5  # length-bucketed batches of the sample
    flops = [out[k] for k in ('unpadded_flops_per_domain', 'flops_per_domain',
                              'reference_64_flops_per_domain',
                              'reference_128_flops_per_domain')]
    assert 0 < flops[0] and flops == sorted(flops) and len(set(flops)) == 4
    # the reference pays for its padding, more at 128
    assert 1 < out['speedup_64'] < out['speedup_128']
    # the pipeline ran on distinct domains
    assert out['pipeline_distinct_domains'] > 0.9 * out['pipeline_lines']
    assert out['ablation_default_domains_per_s'] == out['train_domains_per_s']  # ours measured once
    assert out['ablation_eager_attention_domains_per_s'] > 0
    # padded to 24, not to each batch's width
    assert out['fixed_width_eager_padding_fraction'] > out['padding_fraction']
    # the trainer: workers, a NaN step skipped on the device,
    # evaluation, a checkpoint and a resume from it
    assert out['trainer_workers'] == 2 and out['trainer_skipped_steps'] == 1 and out['trainer_weights_finite']
    assert (out['trainer_resumed_at'],
            out['trainer_final_step']) == (20, 24) and 0 < out['trainer_val_loss'] < 5
    assert out['syncs_per_step'] is None and out['syncs'] == 'not measurable on the CPU'
    assert 'target_met' not in out  # targets are for GPUs

def test_device_check_without_its_wheels_says_how_to_get_them(gpu_python, tmp_path):
    checkout = checkout_copy(tmp_path / 'checkout')
    r = subprocess.run(['bash', 'bench/device_check.sh', '--dry_run'], cwd=checkout,
                       env=bare_env(gpu_python), **CAPTURED)
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        'device check: fastcore is missing: run `bash bench/device_check.sh '
        '--prepare` where pip can download, and bring bench/wheels/ with the checkout']

def test_an_older_transformers_fails_at_import_in_one_line():
    """What transformers before 5.15 lacks (checked in their
    modeling_canine.py), taken away: the import says what to install."""
    code = ('from transformers.models.canine import modeling_canine as m; '
            'del m.create_bidirectional_mask; import domain_canine.model')
    r = subprocess.run([sys.executable, '-c', code], cwd=ROOT, **CAPTURED)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith('ImportError: domain-canine needs '
                                                        'transformers>=5.15, found ')
