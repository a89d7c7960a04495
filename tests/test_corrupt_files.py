"""Nothing corrupt is ever used: each file of a checkpoint, damaged, on each command that loads a
model.

One small run is trained once (its final model is the checkpoint every case copies); each case
damages one file of a fresh copy and runs one command in-process: one line naming the file, exit 1,
no traceback. Two run through the real entry point. A directory without `checkpoint.json` still
loads, saying once that it cannot be verified."""
import json, os, shutil
from pathlib import Path
import pytest
import torch
from transformers import CanineModel
from conftest import cli
from domain_canine.cli import main
from domain_canine.checkpoint import MARKER, verify_checkpoint
from domain_canine.config import resolve_config
from domain_canine.data import load_corpus
from domain_canine.model import DomainCanineMLM
from domain_canine.training import Trainer

# the run's data settings: a resumed run must use the same
SETTINGS = dict(num_samples=300, max_length=32)
TRAIN_DATA = [f'--{k}={v}' for k, v in SETTINGS.items()]

def flip_last_byte(f: Path):
    """One bit of the file's last byte: in the weights a float that
    still loads, elsewhere a character."""
    data = bytearray(f.read_bytes())
    data[-1] ^= 1
    f.write_bytes(bytes(data))

def flip_first_byte(f: Path):
    data = bytearray(f.read_bytes())
    data[0] ^= 1
    f.write_bytes(bytes(data))

def swap_vocab(f: Path):
    """Two letters of the head's vocabulary exchanged: valid JSON, a
    model that answers with the wrong letters."""
    cfg = json.loads(f.read_text())
    cfg['vocab'] = cfg['vocab'].replace('a', '#').replace('b', 'a').replace('#', 'b')
    f.write_text(json.dumps(cfg, indent=2))

def flip_listed_digest(f: Path):
    """checkpoint.json still parses, but the checksum it lists for
    the weights changed in one hex digit."""
    marker = json.loads(f.read_text())
    digest = marker['files']['model.safetensors']
    marker['files']['model.safetensors'] = ('1' if digest[0] == '0' else '0') + digest[1:]
    f.write_text(json.dumps(marker, indent=2))

def truncate_half(f: Path):
    with open(f, 'r+b') as fh: fh.truncate(f.stat().st_size // 2)

def add_shard(f: Path):
    "A weights file that the marker does not list, written into the checkpoint after it."
    shutil.copy(f.parent / 'model.safetensors', f)

SHARD = 'model-00002-of-00002.safetensors'

# (case id, file, damage, what the error line must name)
KINDS = [
    ('weights-bitflip', 'model.safetensors', flip_last_byte, 'model.safetensors'),
    ('weights-truncated', 'model.safetensors', truncate_half, 'model.safetensors'),
    ('weights-missing', 'model.safetensors', Path.unlink, 'model.safetensors'),
    ('head-weights-bitflip', 'mlm_head.safetensors', flip_last_byte, 'mlm_head.safetensors'),
    ('encoder-config-bitflip', 'config.json', flip_last_byte, 'config.json'),
    ('encoder-config-missing', 'config.json', Path.unlink, 'config.json'),
    ('vocab-bitflip', 'mlm_head.json', flip_last_byte, 'mlm_head.json'),
    ('vocab-letters-swapped', 'mlm_head.json', swap_vocab, 'mlm_head.json'),
    ('vocab-missing', 'mlm_head.json', Path.unlink, 'mlm_head.json'),
    ('training-config-bitflip', 'training_config.json', flip_last_byte, 'training_config.json'),
    ('trainer-state-bitflip', 'trainer_state.json', flip_last_byte, 'trainer_state.json'),
    ('optimizer-bitflip', 'optimizer.pt', flip_last_byte, 'optimizer.pt'),
    ('rng-state-bitflip', 'rng_state.pt', flip_last_byte, 'rng_state.pt'),
    ('marker-unparseable', MARKER, flip_first_byte, MARKER),
    ('marker-digest-bitflip', MARKER, flip_listed_digest, MARKER),
    ('unlisted-shard-added', SHARD, add_shard, SHARD),
]

# (load path, arguments: {m} the model directory, {o} an output directory, {d} a file of domains)
PATHS = {
    'predict': ['predict', '--model_path', '{m}', 'goo?le.com'],
    'score': ['score', '--model_path', '{m}', '--no_progress', 'google.com'],
    'evaluate': ['evaluate', '--model_path', '{m}', '--dataset', 'sample', '--num_samples', '40',
                 '--ngram_order', '0', '--no_progress'],
    'embed': ['embed', '--model_path', '{m}', '--output',
              '{o}/e.npy', '--no_progress', 'google.com'],
    'probe': ['probe', '--model_path', '{m}', '--dataset', '{d}', '--split', 'all', '--tasks',
              'linear_probes',
              '--num_domains', '10', '--tld_domains', '100', '--top_tlds', '2', '--ngram_order',
              '0',
              '--no_progress'],
    'train-model_name_or_path': ['train', '--preset', 'tiny', '--model_name_or_path', '{m}',
                                 '--output_dir', '{o}', '--max_steps', '1', *TRAIN_DATA],
    'train-resume_from': ['train', '--preset', 'tiny', '--resume_from', '{m}', '--output_dir',
                          '{o}',
                          '--max_steps', '3', *TRAIN_DATA],
}

@pytest.fixture(scope='module')
def run(tmp_path_factory) -> Path:
    """A tiny run of 2 steps, evaluated and saved at each: step
    checkpoints, best-model and final-model."""
    out = tmp_path_factory.mktemp('run')
    cfg = resolve_config('tiny', output_dir=str(out), max_steps=2,
                         save_steps=1, eval_steps=1, **SETTINGS)
    Trainer.from_config(cfg, log=lambda *a: None).fit()
    return out

@pytest.fixture
def copy_of(run, tmp_path):
    "A fresh copy of the run's final model."
    return lambda name='model': Path(shutil.copytree(run / 'final-model', tmp_path / name))

def command(args: list[str], model: Path, tmp_path: Path) -> list[str]:
    """`args` for `model`, with an output directory and a small file
    of domains (for probe) in `tmp_path`."""
    if not (tmp_path / 'domains.txt').exists():
        (tmp_path / 'domains.txt').write_text('\n'.join(load_corpus('sample').valid[:300]) + '\n')
    return [a.format(m=model, o=tmp_path / 'out', d=tmp_path / 'domains.txt') for a in args]

def run_main(args: list[str], model: Path, tmp_path: Path, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(command(args, model, tmp_path))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err

def test_every_checkpoint_that_training_writes_carries_the_marker(run):
    dirs = sorted(p.name for p in run.iterdir() if p.is_dir() and not p.name.startswith('.'))
    assert {'best-model', 'final-model', 'checkpoint-step-2'} <= set(dirs), dirs
    assert all(verify_checkpoint(run / d) is None for d in dirs)

@pytest.mark.parametrize('path', PATHS)
def test_an_intact_checkpoint_loads_without_a_note(path, copy_of, tmp_path, capsys):
    """The control: the same command on an undamaged copy succeeds,
    so every refusal below is the damage's."""
    rc, _, err = run_main(PATHS[path], copy_of(), tmp_path, capsys)
    assert rc == 0, err
    assert 'error' not in err and 'cannot be verified' not in err

@pytest.mark.parametrize('kind', KINDS, ids=[k[0] for k in KINDS])
@pytest.mark.parametrize('path', PATHS)
def test_a_damaged_file_is_one_line_naming_it(kind, path, copy_of, tmp_path, capsys):
    _, name, damage, named = kind
    model = copy_of()
    damage(model / name)
    rc, _, err = run_main(PATHS[path], model, tmp_path, capsys)
    errors = [l for l in err.splitlines() if l.startswith('domain-canine: error:')]
    assert rc == 1 and 'Traceback' not in err, err
    assert len(errors) == 1 and named in errors[0], err
    assert str(model) in errors[0], err  # the directory too: a run has many checkpoints
    assert not (tmp_path / 'out' / 'final-model').exists()  # nothing was trained from it

@pytest.mark.parametrize('args, name, damage', [
    (PATHS['predict'], 'model.safetensors', flip_last_byte),
    (PATHS['train-resume_from'], 'optimizer.pt', flip_last_byte),
], ids=['predict-weights-bitflip', 'train-resume_from-optimizer-bitflip'])
def test_the_real_command_says_one_line_and_exits_1(args, name, damage, copy_of, tmp_path):
    model = copy_of()
    damage(model / name)
    r = cli(*command(args, model, tmp_path), timeout=120)
    assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and name in r.stderr, r.stderr

@pytest.fixture(scope='module')
def unsealed(run, tmp_path_factory) -> dict[str, Path]:
    """The final model saved without the marker (`model.save`) and its
    encoder as plain transformers saves it."""
    d = tmp_path_factory.mktemp('unsealed')
    model = DomainCanineMLM.load(run / 'final-model')
    model.encoder.save_pretrained(d / 'encoder')
    return dict(model=model.save(d / 'model'), encoder=d / 'encoder')

@pytest.mark.parametrize('path', [p for p in PATHS if p != 'train-resume_from'])
def test_a_directory_without_the_marker_loads_with_one_note(path, unsealed, tmp_path, capsys):
    rc, _, err = run_main(PATHS[path], unsealed['model'], tmp_path, capsys)
    assert rc == 0, err
    notes = [l for l in err.splitlines() if 'cannot be verified' in l]
    assert notes == [f"note: {unsealed['model']} has no {MARKER}; its files cannot be "
                     f"verified"], err

@pytest.mark.parametrize('path', ['probe', 'train-model_name_or_path'])
def test_a_plain_transformers_encoder_loads_with_one_note(path, unsealed, tmp_path, capsys):
    rc, _, err = run_main(PATHS[path], unsealed['encoder'], tmp_path, capsys)
    assert rc == 0, err
    assert [l for l in err.splitlines() if 'cannot be verified' in l] == [
        f"note: {unsealed['encoder']} has no {MARKER}; its files cannot be verified"], err

def test_probe_names_a_damaged_checkpoint_of_a_run_before_measuring(run, tmp_path, capsys):
    "A run directory: every step checkpoint is checked before the look-alikes are made."
    copy = Path(shutil.copytree(run, tmp_path / 'run'))
    flip_last_byte(copy / 'checkpoint-step-1' / 'model.safetensors')
    rc, out, err = run_main(['probe', '--model_path', '{m}', '--no_progress'],
                            copy, tmp_path, capsys)
    assert rc == 1 and out == ''
    assert err.strip() == (f'domain-canine: error: {copy}/checkpoint-step-1/model.safetensors '
                           f'is corrupt (checksum mismatch): {MARKER} lists another SHA-256')

@pytest.mark.parametrize('path', ['predict', 'train-model_name_or_path'])
def test_without_the_marker_a_damaged_file_still_fails_in_one_line(path, unsealed, tmp_path, capsys):
    """Nothing to check it against: the damage shows when the file
    is read, still as one line and exit 1."""
    model = Path(shutil.copytree(unsealed['model'], tmp_path / 'model'))
    truncate_half(model / 'model.safetensors')
    rc, _, err = run_main(PATHS[path], model, tmp_path, capsys)
    assert rc == 1 and 'Traceback' not in err, err
    note, error = err.strip().splitlines()
    assert note == f'note: {model} has no {MARKER}; its files cannot be verified', err
    assert error.startswith(f'domain-canine: error: cannot load the model in {model}: '), err

class Payload:
    "Unpickled, it would make a folder: proof that a load ran code from the file."
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return (os.mkdir, (str(self.marker),))

def test_a_pickle_that_would_run_code_is_refused_not_run(tmp_path, capsys):
    from domain_canine.model import ORIGINAL_STATE, write_original_checkpoint
    # the one format that holds a pickle: no checksums
    source = write_original_checkpoint(tmp_path / 'original')
    torch.save({'args': Payload(tmp_path / 'ran')}, source / ORIGINAL_STATE)
    assert main(['predict', '--model_path', str(source), 'example.c?m']) == 1
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f'domain-canine: error: cannot read {source}/{ORIGINAL_STATE} '
                           f'safely') and \
        'Traceback' not in err, err
    assert not (tmp_path / 'ran').exists()
