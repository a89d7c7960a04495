"""Training-loop promises: precision, checkpoint contents, early
stopping, W&B/TensorBoard sinks, original checkpoints."""
import json, os, subprocess, sys
from contextlib import nullcontext
from pathlib import Path
import pytest
import torch
from conftest import QUIET, cli, tiny_config
from domain_canine.checkpoint import verify_checkpoint
from domain_canine.inference import Predictor
from domain_canine.masking import MASK
from domain_canine.model import HEAD_CONFIG, ORIGINAL_MASK, is_model_dir, write_original_checkpoint
from domain_canine.config import resolve_config
from domain_canine.training import Trainer, round_width, COMPILE_WIDTH


def losses(out):
    return [m['loss']
            for m in map(json.loads, (Path(out) / 'metrics.jsonl').read_text().splitlines())
            if m['type'] == 'train']

def test_bf16_autocast_runs_on_cpu_and_changes_numerics(tmp_path):
    t32 = Trainer.from_config(tiny_config(tmp_path / 'fp32'), **QUIET)
    t32.fit()
    t16 = Trainer.from_config(tiny_config(tmp_path / 'bf16', precision='bf16'), **QUIET)
    t16.fit()
    assert t16.amp_dtype == torch.bfloat16 and t32.amp_dtype is None
    assert json.loads((tmp_path / 'bf16' / 'run.json').read_text())['precision'] == 'bfloat16'
    l32, l16 = losses(tmp_path / 'fp32'), losses(tmp_path / 'bf16')
    assert all(map(torch.isfinite, torch.tensor(l16))) and l16 != l32  # autocast really ran in bf16
    assert abs(l16[0] - l32[0]) < 0.05  # and stays close to fp32

def test_checkpoints_hold_everything_and_load_without_pickle(tiny_run):
    for ck in [p for p in tiny_run.iterdir() if p.is_dir()]:
        # every file its manifest lists (the checkpoint chapter)
        assert verify_checkpoint(ck) is None
        # raises if anything needs pickle
        for pt in ck.glob('*.pt'): torch.load(pt, weights_only=True)
        state = json.loads((ck / 'trainer_state.json').read_text())
        assert {'step', 'epoch', 'batch_in_epoch', 'best_val_loss', 'metrics'} <= set(state)
        assert json.loads((ck / 'training_config.json').read_text())['seed'] == 42
    final = json.loads((tiny_run / 'final-model' / 'trainer_state.json').read_text())
    assert final['step'] == 30 and final['epoch'] == 1 and final['metrics']['eval']['step'] == 30

def test_early_stopping(tmp_path):
    # with a learning rate of 0 the validation loss never improves: stop
    # after `patience` evaluations without a gain
    t = Trainer.from_config(tiny_config(tmp_path, learning_rate=0.0, warmup_steps=0, eval_steps=1,
                                        max_steps=20, early_stopping_patience=2), **QUIET)
    t.fit()
    assert t.state.step == 3 and (tmp_path / 'final-model').is_dir()

def test_failed_checkpoint_save_stops_the_run_with_one_line(tmp_path):
    out = tmp_path / 'run'
    out.mkdir()
    # swept at start: it is in nobody's way
    (out / '.tmp-checkpoint-step-10').write_text('left by a killed run')
    # the first checkpoint meets a full disk
    full = ("import errno, sys, torch\nfrom domain_canine.cli import main\n"
            "def full(*a, **k): raise OSError(errno.ENOSPC, 'No space left on device')\n"
            "torch.save = full\nsys.exit(main(sys.argv[1:]))")
    r = subprocess.run([sys.executable, '-c', full, 'train', '--preset', 'tiny', '--num_samples',
                        '300', '--output_dir', str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 1 and 'Traceback' not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith('domain-canine: error: could not write '
                                                        'checkpoint')
    assert not (out / 'final-model').exists() and not (out / 'checkpoint-step-20').exists()
    assert not list(out.glob('.*'))  # the stale temporary swept, the failed one removed

def test_wandb_offline_and_tensorboard_write_real_files(tmp_path, monkeypatch):
    monkeypatch.setenv('WANDB_MODE', 'offline')
    monkeypatch.setenv('WANDB_SILENT', 'true')
    cfg = tiny_config(tmp_path, use_wandb=True, tensorboard=True,
                      max_steps=10, save_steps=5, logging_steps=2)
    first = Trainer.from_config(cfg, **QUIET)
    first.fit()
    run_id = json.loads((tmp_path / 'final-model'
                         / 'trainer_state.json').read_text())['wandb_run_id']
    assert run_id and list((tmp_path / 'wandb').glob(f'offline-run-*-{run_id}/run-{run_id}.wandb'))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(tmp_path / 'tensorboard'))
    events.Reload()
    assert [e.step for e in events.Scalars('train/loss')] == [2, 4, 6, 8, 10]
    resumed = Trainer.from_config(resolve_config(**{**cfg.__dict__,
                                                    'resume_from': str(tmp_path / 'checkpoint-step-5')}), **QUIET)
    resumed.fit()
    assert resumed.state.wandb_run_id == run_id  # the resumed run continues the same W&B run

def test_missing_optional_package_is_one_line(tmp_path):
    fake = tmp_path / 'fake' / 'wandb'
    fake.mkdir(parents=True)
    (fake / '__init__.py').write_text('raise ImportError("no wandb here")')
    env = {**os.environ, 'PYTHONPATH': str(tmp_path / 'fake')}
    r = subprocess.run([sys.executable, '-m', 'domain_canine', 'train', '--preset', 'tiny',
                        '--use_wandb',
                        '--output_dir', str(tmp_path / 'run')],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 1 and r.stderr.strip() == 'domain-canine: error: --use_wandb needs the wandb package: pip install wandb'

@pytest.fixture
def original_dir(tmp_path):
    """A checkpoint in the original project's format (encoder,
    tokenizer files, pickled training_state.bin)."""
    return write_original_checkpoint(tmp_path / 'original')

def masks_fed(model_dir, query='a?.io') -> torch.Tensor:
    "What the predictor of `model_dir` puts where `query` has its ?."
    seen, p = [], Predictor.from_dir(model_dir, 'cpu')
    p.model.encoder.register_forward_pre_hook(lambda m, a, kw: seen.append(kw['input_ids']),
                                              with_kwargs=True)
    p.predict([query])
    return seen[0][0, 1 + query.index('?')].item()

def test_original_checkpoints_import_and_load_directly(original_dir, tmp_path):
    r = cli('import-original', original_dir, tmp_path / 'converted')
    assert r.returncode == 0, r.stderr
    assert is_model_dir(tmp_path / 'converted')
    assert json.loads((tmp_path / 'converted' / HEAD_CONFIG).read_text())['mask'] == ORIGINAL_MASK
    # as the original was trained
    assert masks_fed(original_dir) == masks_fed(tmp_path / 'converted') == ORIGINAL_MASK
    # no conversion step needed
    r = cli('predict', '--model_path', original_dir, '--json', 'example.c?m')
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)[0]['masks']) == 1
    r = cli('train', '--preset', 'tiny', '--num_samples', 300, '--max_steps', 2,
            '--model_name_or_path', original_dir,
            '--output_dir', tmp_path / 'continued')
    assert r.returncode == 0, r.stderr
    # continued with our masking: it records [MASK]
    assert masks_fed(tmp_path / 'continued' / 'final-model') == MASK
    r = cli('import-original', tmp_path / 'converted', tmp_path / 'again')
    assert r.returncode == 1 and 'not a checkpoint of the original project' in r.stderr

def test_compiled_and_sdpa_runs_give_the_losses_of_the_eager_path(tmp_path):
    # one eager reference (transformers' matmul attention) against SDPA, and
    # against SDPA compiled with torch.compile (both modes)
    runs = dict(eager=dict(attention='eager'), sdpa=dict(attention='sdpa'),
                compiled=dict(attention='sdpa', compile=True),
                # on a CPU: compiled without CUDA graphs
                graphs=dict(attention='sdpa', compile=True, cuda_graphs=True))
    out = {}
    for name, kw in runs.items():
        Trainer.from_config(tiny_config(tmp_path / name, max_steps=4, logging_steps=1, dropout=0.0,
                                        **kw), **QUIET).fit()
        out[name] = losses(tmp_path / name)
    assert len(out['eager']) == 4
    assert out['sdpa'] == pytest.approx(out['eager'], rel=1e-5)
    # inductor fuses differently: float drift over 4 steps
    assert out["compiled"] == pytest.approx(out["eager"], rel=1e-3)
    assert out["graphs"] == pytest.approx(out["eager"], rel=1e-3)

def test_fused_adamw_gives_the_updates_of_the_plain_one():
    # the trainer fuses AdamW on CUDA; torch's fused kernel also runs on
    # the CPU, so the numerics are checked here
    from domain_canine.model import build_model
    from domain_canine.training import make_optimizer
    weights = []
    for fused in (False, True):
        torch.manual_seed(0)
        m = build_model(None, 'tiny')
        opt = make_optimizer(m, 1e-2, 0.01, torch.device('cpu'), fused)
        data = torch.Generator().manual_seed(1)
        for _ in range(5):
            ids = torch.randint(97, 123, (4, 12), generator=data)
            m(ids, torch.ones_like(ids), labels=torch.randint(0, 39, (4, 12),
                                                              generator=data)).loss.backward()
            opt.step()
            opt.zero_grad()
        weights.append(torch.cat([p.detach().flatten() for p in m.parameters()]))
    # float rounding only: the steps moved weights by ~5e-2
    assert (weights[0] - weights[1]).abs().max() < 1e-4
    assert not torch.equal(weights[0], torch.cat([p.detach().flatten()
                                                  for p in build_model(None, 'tiny').parameters()]))

def test_cuda_graphs_with_gradient_accumulation_is_refused_in_one_line(tmp_path):
    r = cli('train', '--preset', 'tiny', '--compile', '--cuda_graphs',
            '--gradient_accumulation_steps', 2,
            '--output_dir', tmp_path / 'run')
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and 'Traceback' not in r.stderr
    assert '--cuda_graphs needs --gradient_accumulation_steps 1' in r.stderr and not (tmp_path / 'run').exists()

def test_compiled_loader_widens_batches_in_its_workers(tmp_path):
    # marked for compiling, never run
    t = Trainer.from_config(tiny_config(tmp_path, compile=True, num_workers=1), **QUIET)
    batches = [b for _, b in zip(range(6), t.loader())]
    # made in the worker: a tensor padded here is not shared
    assert all(b['input_ids'].is_shared() for b in batches)
    # each the run's micro-batch g, already widened: the trainer moves it as it is
    for g, b in enumerate(batches):
        expected = round_width(t.run_batches[g], COMPILE_WIDTH)
        assert b['input_ids'].shape[1] % COMPILE_WIDTH == 0 and all(torch.equal(b[k], v) for k, v in expected.items())
        assert t.on_device(b)['input_ids'].shape == b['input_ids'].shape
    # some needed widening
    assert {t.run_batches[g]['input_ids'].shape[1] % COMPILE_WIDTH for g in range(6)} != {0}

def test_compiled_run_compiles_once_per_width_and_never_for_evaluation(tmp_path, monkeypatch):
    # Dynamo makes and counts the graphs whatever backend compiles them:
    # training on the eager backend keeps this to
    # seconds (the inductor's losses are checked above); the
    # evaluation compared below is the inductor's
    with torch.compiler.set_stance(force_backend='eager'):
        t = Trainer.from_config(tiny_config(tmp_path, compile=True, max_steps=3, logging_steps=1,
                                            eval_steps=2, eval_samples=16,
                                     dropout=0.0), **QUIET)
        t.fit()
    logs = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
    widths = [round_width(t.run_batches[g], COMPILE_WIDTH)['input_ids'].shape[1] for g in range(3)]
    assert [m['compiles'] for m in logs
            if m['type'] == 'train'] == [len(set(widths[:k])) for k in range(1, 4)]
    assert len(set(widths)) < len(widths)  # a width met again reuses its graph
    assert [m['step'] for m in logs if m['type'] == 'eval'] == [2,
                                                                3] and t.compiles() == len(set(widths))
    eager = t.evaluate()  # the evaluation of the runs, eager...
    assert t.compiles() == len(set(widths))
    monkeypatch.setattr(torch.compiler, 'set_stance', lambda *a, **k: nullcontext())
    compiled = t.evaluate()  # ...and compiled: 16 domains are one batch, one width, one more graph
    assert t.compiles() == len(set(widths)) + 1
    assert compiled['val_loss'] == pytest.approx(eager['val_loss'], rel=1e-5)
    n = eager['val_masked_chars']
    # a tie at most
    assert compiled['val_masked_chars'] == n and abs(compiled['val_accuracy']
                                                     - eager['val_accuracy']) * n <= 1
