"""Disks and files as they fail: every write path × every fault kind is one line naming the path and
the reason, leaves no temporary file and loses no earlier checkpoint or prepared corpus. Faults
are injected (runs everywhere); a small tmpfs, where the machine lets us mount one, checks the
real command end to end."""
import contextlib, errno, gzip, io, json, os, shutil, subprocess, sys, time
from pathlib import Path
import numpy as np
import pytest
import torch
from safetensors import SafetensorError
from conftest import ENTRY_POINT, ROOT, cli
import domain_canine.callbacks as callbacks_module
import domain_canine.core as core
import domain_canine.data as data_module
import domain_canine.model as model_module
from domain_canine.checkpoint import CheckpointError, TrainState, save_checkpoint, verify_checkpoint
from domain_canine.cli import _write_run_probes, main
from domain_canine.core import WriteError, write_atomic
from domain_canine.data import prepare_corpus
from domain_canine.evaluation import write_embeddings
from domain_canine.model import DomainCanineMLM, canine_config
from transformers import CanineModel

FAULTS = {  # errno: what the one line says
    errno.ENOSPC: 'no space left on the device', errno.EROFS: 'the file system is read-only',
    errno.EACCES: 'permission denied', errno.ENOTDIR: 'a part of the path is a file, not a folder',
    errno.EDQUOT: 'the disk quota is exceeded'}

def raiser(exc):
    def fail(*a, **k): raise exc
    return fail

def os_error(code): return OSError(code, os.strerror(code))

def failing_open(code, real=open):
    "`open` that fails for writing with `code`, and reads as usual."
    def fake(file, mode='r', *a, **k):
        if any(c in mode for c in 'wax+'): raise os_error(code)
        return real(file, mode, *a, **k)
    return fake

def hidden_leftovers(folder: Path) -> list[str]:
    "Temporaries anywhere below `folder` (hidden names, `.tmp-` and `.tmp` parts)."
    return sorted(str(p.relative_to(folder)) for p in folder.rglob('*') if p.name.startswith('.')
                  or '.tmp' in p.name)

# --- one fixture per write path: (write, earlier content check)
# -------------------------------------------------

@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    return DomainCanineMLM(CanineModel(canine_config('tiny')))

def corpus_case(tmp_path, monkeypatch, code, where):
    cache = tmp_path / 'cache'
    earlier = prepare_corpus('sample', 300, cache_dir=cache, log=lambda *a: None)
    if where == 'files': monkeypatch.setattr(data_module, 'open', failing_open(code), raising=False)
    else: monkeypatch.setattr(data_module.os, 'posix_fallocate', raiser(os_error(code)))
    with pytest.raises(WriteError) as e:
        prepare_corpus('sample', 400, cache_dir=cache, log=lambda *a: None)
    monkeypatch.undo()
    again = prepare_corpus('sample', 300, cache_dir=cache, log=lambda *a: None)
    # from the cache, intact
    assert again.cache == earlier.cache and len(again.train) == len(earlier.train)
    return str(e.value), cache

def checkpoint_case(tmp_path, monkeypatch, model, fault):
    opt = torch.optim.AdamW(model.parameters())
    for step in (4, 8):
        save_checkpoint(tmp_path / f'checkpoint-step-{step}', model, opt, TrainState(step=step), {})
    monkeypatch.setattr(torch, 'save', raiser(fault) if isinstance(fault, (OSError, RuntimeError))
                        else torch.save)
    if isinstance(fault, SafetensorError):
        monkeypatch.setattr(model_module, 'save_file', raiser(fault))
    # a library's error names no cause: the device has no space left
    if not isinstance(fault, OSError):
        monkeypatch.setattr(shutil, 'disk_usage',
                            lambda p: shutil._ntuple_diskusage(3 << 20, 3 << 20, 0))
    with pytest.raises(CheckpointError) as e:
        # replaces one: 8 stays
        save_checkpoint(tmp_path / 'checkpoint-step-8', model, opt, TrainState(step=12), {})
    monkeypatch.undo()
    for step in (4, 8):
        assert verify_checkpoint(tmp_path / f'checkpoint-step-{step}') is None
        assert json.loads((tmp_path / f'checkpoint-step-{step}'
                           / 'trainer_state.json').read_text())['step'] == step
    return str(e.value), tmp_path

def atomic_case(tmp_path, monkeypatch, code, name):
    """run.json, a resumed run's metrics.jsonl, probes.jsonl: replaced at
    once, the earlier version kept on failure."""
    target = tmp_path / name
    target.write_text('earlier\n')
    monkeypatch.setattr(core.os, 'replace', raiser(os_error(code)))
    with pytest.raises(WriteError) as e:
        if name == 'probes.jsonl':
            _write_run_probes([str(tmp_path)], [dict(model_path=str(tmp_path / 'final-model'))])
        else: write_atomic(target, 'new\n')
    monkeypatch.undo()
    assert target.read_text() == 'earlier\n'
    return str(e.value), tmp_path

def metrics_append_case(tmp_path, monkeypatch, code):
    from types import SimpleNamespace
    m = callbacks_module.MetricsFile()
    m.on_train_start(SimpleNamespace(cfg=SimpleNamespace(output_dir=str(tmp_path)),
                                     state=TrainState()))
    m.on_log(None, dict(step=1))
    monkeypatch.setattr(callbacks_module, 'open', failing_open(code), raising=False)
    with pytest.raises(WriteError) as e: m.on_log(None, dict(step=2))
    monkeypatch.undo()
    assert (tmp_path / 'metrics.jsonl').read_text() == '{"step": 1}\n'
    return str(e.value), tmp_path

def embeddings_case(tmp_path, monkeypatch, code, suffix):
    vecs = np.arange(6, dtype=np.float32).reshape(3, 2)
    write_embeddings(tmp_path / f'e{suffix}', ['a.io', 'b.io', 'c.io'], vecs)
    monkeypatch.setattr(os, 'replace', raiser(os_error(code)))
    with pytest.raises(WriteError) as e:
        write_embeddings(tmp_path / f'e{suffix}', ['a.io'], vecs[:1])
    monkeypatch.undo()
    if suffix == '.npy': assert np.load(tmp_path / 'e.npy').shape == (3, 2)
    return str(e.value), tmp_path

def make_corpus_case(tmp_path, monkeypatch, code):
    from domain_canine.synthetic import make_corpus
    make_corpus(20, tmp_path / 'c.txt')
    monkeypatch.setattr(os, 'replace', raiser(os_error(code)))
    with pytest.raises(WriteError) as e: make_corpus(30, tmp_path / 'c.txt')
    monkeypatch.undo()
    assert len((tmp_path / 'c.txt').read_text().splitlines()) == 20
    return str(e.value), tmp_path

def logger_case(tmp_path, monkeypatch, fault, which):
    "TensorBoard's event file or the W&B run: the logger's write fails after its first line."
    from types import SimpleNamespace
    from domain_canine.config import resolve_config
    trainer = SimpleNamespace(cfg=resolve_config('tiny', output_dir=str(tmp_path)),
                              state=TrainState())
    if which == 'wandb':  # a stand-in module: runs where wandb is not installed
        run = SimpleNamespace(log=raiser(fault), finish=lambda: None)
        monkeypatch.setitem(sys.modules, 'wandb', SimpleNamespace(init=lambda **k: run))
        logger = callbacks_module.WandbLogger()
    else: logger = callbacks_module.TensorBoardLogger()
    logger.on_train_start(trainer)
    if which == 'tensorboard':
        logger.on_log(trainer, dict(step=1, loss=1.0))
        monkeypatch.setattr(logger.writer, 'flush', raiser(fault))
    with pytest.raises(WriteError) as e: logger.on_log(trainer, dict(step=2, loss=0.5))
    monkeypatch.undo()
    if which == 'tensorboard': logger.on_train_end(trainer)
    return str(e.value), tmp_path

def import_original_case(tmp_path, monkeypatch, code):
    "import-original: written beside its target and renamed; a failed write leaves neither."
    source = model_module.write_original_checkpoint(tmp_path / 'original')
    monkeypatch.setattr(model_module, 'save_file', raiser(os_error(code)))
    with pytest.raises(WriteError) as e: model_module.import_original(source, tmp_path / 'imported')
    monkeypatch.undo()
    assert not (tmp_path / 'imported').exists()
    return str(e.value), tmp_path

def device_check_case(tmp_path, monkeypatch, code):
    """The device check's JSON: replaced after each phase; a failure
    is its one line, the earlier file kept."""
    from domain_canine.bench import DeviceCheck, device_check_main
    target = tmp_path / 'device_check.json'
    target.write_text('earlier\n')
    # the dry run's one thread: not for later tests
    monkeypatch.setattr(torch, 'set_num_threads', lambda n: None)
    every = ','.join(p.name for p in DeviceCheck(True).phases())
    monkeypatch.setattr(os, 'replace', raiser(os_error(code)))
    with contextlib.redirect_stderr(io.StringIO()) as err:
        assert device_check_main(['--dry_run', '--skip', every, '--out', str(target)]) == 1
    monkeypatch.undo()
    assert target.read_text() == 'earlier\n'
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('device check: '), lines
    return lines[0][len('device check: '):], tmp_path

PATHS = ['make-corpus', 'corpus-files', 'corpus-arrays', 'run.json', 'metrics.jsonl-rewrite',
         'metrics.jsonl-append', 'probes.jsonl',
         'embeddings.npy', 'embeddings.parquet', 'checkpoint', 'tensorboard', 'wandb',
         'import-original',
         'device_check.json']

def run_case(path, code, tmp_path, monkeypatch, model):
    if path == 'make-corpus': return make_corpus_case(tmp_path, monkeypatch, code)
    if path.startswith('corpus'):
        return corpus_case(tmp_path, monkeypatch, code, path.split('-')[1])
    if path == 'checkpoint': return checkpoint_case(tmp_path, monkeypatch, model, os_error(code))
    if path in ('tensorboard', 'wandb'):
        return logger_case(tmp_path, monkeypatch, os_error(code), path)
    if path == 'import-original': return import_original_case(tmp_path, monkeypatch, code)
    if path == 'device_check.json': return device_check_case(tmp_path, monkeypatch, code)
    if path == 'metrics.jsonl-append': return metrics_append_case(tmp_path, monkeypatch, code)
    if path.startswith('embeddings'):
        return embeddings_case(tmp_path, monkeypatch, code, path[len('embeddings'):])
    return atomic_case(tmp_path, monkeypatch, code, path.split('-')[0])

@pytest.mark.parametrize('fault', FAULTS, ids=[errno.errorcode[c] for c in FAULTS])
@pytest.mark.parametrize('path', PATHS)
def test_write_fault_is_one_line_and_leaves_nothing(path, fault, tmp_path, monkeypatch, model):
    message, folder = run_case(path, fault, tmp_path, monkeypatch, model)
    assert message.startswith('could not write ') and message.endswith(': ' + FAULTS[fault]), message
    assert '\n' not in message and str(tmp_path) in message  # the path, and the reason
    assert hidden_leftovers(folder) == [], hidden_leftovers(folder)

LIBRARY_FAULTS = {
    'safetensors': SafetensorError('Error while serializing: I/O error: No space left on device '
                                   '(os error 28)'),
    'torch': RuntimeError('[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0'),
    'safetensors-readonly': SafetensorError('Error while serializing: I/O error: Read-only file '
                                            'system (os error 30)')}

@pytest.mark.parametrize('library', LIBRARY_FAULTS)
def test_a_library_write_error_is_one_line(library, tmp_path, monkeypatch, model):
    message, folder = checkpoint_case(tmp_path, monkeypatch, model, LIBRARY_FAULTS[library])
    expected = ('the file system is read-only' if 'readonly' in library
                else 'no space left on the device')
    assert message.startswith(f'could not write checkpoint {tmp_path}/checkpoint-step-8: '
                              f'{expected}'), message
    assert '\n' not in message and hidden_leftovers(folder) == []

class LoggerLibraryError(Exception):
    "A logger library's own error, as W&B's and TensorBoard's are: no errno to read."

@pytest.mark.parametrize('which', ['tensorboard', 'wandb'])
def test_a_logger_library_error_is_one_line(which, tmp_path, monkeypatch):
    fault = LoggerLibraryError('the run file could not be written')
    message, folder = logger_case(tmp_path, monkeypatch, fault, which)
    what = 'TensorBoard events' if which == 'tensorboard' else 'the W&B run'
    assert message == f'could not write {what} {tmp_path}/{which}: LoggerLibraryError: the run file could not be ' \
                      'written', message
    assert hidden_leftovers(folder) == []

# --- the command: checked at start, and the I/O errors of inputs
# ------------------------------------------------

TINY = ['train', '--preset', 'tiny', '--num_samples', '300', '--max_steps', '4', '--save_steps',
        '2', '--eval_steps', '2']

def one_line_error(capsys, argv) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('domain-canine: error: '), err
    return err[0]

def truncated_gz(path: Path, lines: int) -> Path:
    whole = gzip.compress(b''.join(b'name%d.example.com\n' % i for i in range(lines)))
    path.write_bytes(whole[:len(whole) * 3 // 4])
    return path

def file_at(path: Path) -> Path:
    "An empty file at `path` (its folders made): where a folder should be."
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('')
    return path

# what a run meets before it prepares anything, and (for the large .gz) while preparing
START_CASES = {
    'output_dir-under-a-file': (lambda t: ['--output_dir', str(t / 'a-file' / 'run')],
                                'cannot write to --output_dir {t}/a-file/run: a part of the path '
                                'is a file, not a folder'),
    'cache_dir-a-file': (lambda t: ['--output_dir', str(t / 'run'), '--cache_dir',
                                    str(t / 'a-file')],
                         'cannot write to --cache_dir {t}/a-file: it is a file, not a folder'),
    'tensorboard-a-file': (lambda t: ['--output_dir',
                                      str(file_at(t / 'run' / 'tensorboard').parent),
                                      '--tensorboard'],
                           'cannot write to the TensorBoard folder {t}/run/tensorboard: it is a '
                           'file, not a folder'),
    'wandb-a-file': (lambda t: ['--output_dir',
                                str(file_at(t / 'run' / 'wandb').parent), '--use_wandb'],
                     'cannot write to the W&B folder {t}/run/wandb: it is a file, not a folder'),
    'truncated-gz-small': (lambda t: ['--output_dir', str(t / 'run'), '--dataset',
                                      str(truncated_gz(t / 's.txt.gz', 2000))],
                           '{t}/s.txt.gz is truncated or damaged'),
    'truncated-gz-large': (lambda t: ['--output_dir', str(t / 'run'), '--dataset',
                                      str(truncated_gz(t / 'l.txt.gz', 300_000)),
                                      '--num_samples', '1000000'],
                           '{t}/l.txt.gz is truncated or damaged'),
}

@pytest.mark.parametrize('case', START_CASES)
def test_bad_folders_and_inputs_are_one_line(case, tmp_path, capsys):
    (tmp_path / 'a-file').write_text('')
    args, expected = START_CASES[case]
    line = one_line_error(capsys, TINY + args(tmp_path))
    assert expected.format(t=tmp_path) in line, line
    assert hidden_leftovers(tmp_path) == []

def test_a_run_that_stops_at_its_data_leaves_no_output_folder(tmp_path, capsys):
    line = one_line_error(capsys, TINY + ['--output_dir', str(tmp_path / 'runs' / 'run'),
                                          '--dataset', str(tmp_path / 'missing.txt')])
    assert 'missing.txt' in line and not (tmp_path / 'runs').exists(), line

def test_the_start_sweeps_what_killed_runs_left(tmp_path, model):
    """What the README lists, each as a kill leaves it; one start check
    removes them and puts the set-aside checkpoint back."""
    from domain_canine.config import resolve_config
    from domain_canine.training import check_disk
    out, corpora = tmp_path / 'run', tmp_path / 'cache' / 'corpora'
    # set aside mid-rename
    save_checkpoint(out / '.old-best-model', model, None, TrainState(step=4), {})
    (out / '.tmp-checkpoint-step-8').mkdir()  # a checkpoint being written
    (out / '.metrics.jsonl.tmp-123').write_text('{"step": ')  # a file being replaced
    (corpora / 'sample-300.tmp-123').mkdir(parents=True)  # a preparation being built
    check_disk(resolve_config('tiny', output_dir=str(out), cache_dir=str(tmp_path / 'cache')))
    assert [p.name
            for p in out.iterdir()] == ['best-model'] and verify_checkpoint(out / 'best-model') is None
    assert not list(corpora.glob('*.tmp-*'))

def test_a_failing_logger_stops_the_run_in_one_line(tmp_path, capsys, monkeypatch):
    pytest.importorskip('tensorboard')
    from torch.utils.tensorboard import SummaryWriter
    monkeypatch.setattr(SummaryWriter, 'flush', raiser(os_error(errno.ENOSPC)))
    assert main(TINY + ['--output_dir', str(tmp_path / 'run'), '--tensorboard', '--logging_steps',
                        '1']) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == (f'domain-canine: error: could not write '
                                            f'TensorBoard events {tmp_path}/run/tensorboard: '
                                            f'no space left on the device') and \
        'Traceback' not in err, err
    assert not (tmp_path / 'run' / 'final-model').exists()

def test_import_original_refuses_a_target_that_is_not_empty(tmp_path, capsys):
    source = model_module.write_original_checkpoint(tmp_path / 'original')
    (tmp_path / 'taken').mkdir()
    (tmp_path / 'taken' / 'notes.txt').write_text('mine')
    line = one_line_error(capsys, ['import-original', str(source), str(tmp_path / 'taken')])
    assert line == f'domain-canine: error: {tmp_path}/taken already exists: give a new folder for the imported model'
    assert [p.name
            for p in (tmp_path
                      / 'taken').iterdir()] == ['notes.txt'] and hidden_leftovers(tmp_path) == []

def test_epoch_checkpoints_are_counted_once_the_epochs_are_known(tmp_path, capsys, monkeypatch):
    import domain_canine.training as training_module
    real = training_module.check_disk
    # room at the first check, not for 3 epochs' checkpoints more (17 steps each)
    def with_little_room(cfg, epochs=None):
        if epochs is not None:
            monkeypatch.setattr(shutil, 'disk_usage', lambda p: shutil._ntuple_diskusage(
            1 << 30, (1 << 30) - (8 << 20), 8 << 20))
        return real(cfg, epochs)
    monkeypatch.setattr(training_module, 'check_disk', with_little_room)
    monkeypatch.setenv('DOMAIN_CANINE_CACHE', str(tmp_path / 'cache'))
    line = one_line_error(capsys, ['train', '--preset', 'tiny', '--num_samples', '300',
                                   '--max_steps', '60',
                                   '--save_steps', '1000', '--output_dir', str(tmp_path / 'run')])
    assert line.endswith('8.0 MiB free; 8 checkpoints of 1.3 MiB (weights and optimizer '
                         'state), 3 of them at epoch ends needs about 10.4 MiB'), line
    assert not (tmp_path / 'run').exists()  # refused before the model was built or anything written

def test_too_little_space_is_refused_before_preparing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv('DOMAIN_CANINE_CACHE', str(tmp_path / 'cache'))
    monkeypatch.setattr(shutil, 'disk_usage',
                        lambda p: shutil._ntuple_diskusage(3 << 20, 2 << 20, 1 << 20))
    line = one_line_error(capsys, TINY + ['--output_dir', str(tmp_path / 'run')])
    assert line.endswith(f'--output_dir {tmp_path}/run has 1.0 MiB free; preparing the corpus and '
                         f'5 checkpoints of '
                         '1.3 MiB (weights and optimizer state) needs about 6.5 MiB'), line
    assert not (tmp_path / 'cache' / 'corpora').exists()  # nothing was prepared

@pytest.mark.parametrize('code', [errno.EROFS, errno.EACCES, errno.ENOSPC],
                         ids=['EROFS', 'EACCES', 'ENOSPC'])
def test_an_unwritable_output_dir_is_one_line(code, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(core.Path, 'write_bytes', raiser(os_error(code)))
    line = one_line_error(capsys, TINY + ['--output_dir', str(tmp_path / 'run')])
    assert line.endswith(f'cannot write to --output_dir {tmp_path}/run: {FAULTS[code]}'), line

# --- a real small disk (where the machine lets us mount one)
# ----------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    "A mount factory: (size, read_only) -> a fresh tmpfs folder, unmounted afterwards."
    mounted = []
    def mount(size: str, read_only: bool = False) -> Path:
        d = tmp_path / f'disk{len(mounted)}'
        d.mkdir()
        opts = f'size={size}' + (',ro' if read_only else '')
        r = subprocess.run(['mount', '-t', 'tmpfs', '-o', opts, 'tmpfs', str(d)],
                           capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f'this machine does not let the tests mount a tmpfs ({r.stderr.strip()})')
        mounted.append(d)
        return d
    yield mount
    for d in mounted: subprocess.run(['umount', str(d)], capture_output=True)

def test_real_read_only_output_dir(small_disk, capsys):
    disk = small_disk('1m', read_only=True)
    line = one_line_error(capsys, TINY + ['--output_dir', str(disk / 'run')])
    assert line.endswith(f'cannot write to --output_dir {disk}/run: the file system is '
                         f'read-only'), line

def fill_after_first_checkpoint(run: Path, proc: subprocess.Popen):
    """Once `run` holds a checkpoint, fill its disk to its last 64 KiB
    (another job's file), while `proc` runs."""
    while proc.poll() is None and not list(run.glob('checkpoint-step-*')): time.sleep(0.01)
    if proc.poll() is None:
        (run.parent / 'filler').write_bytes(bytes(max(shutil.disk_usage(run).free - (64 << 10), 0)))

def test_real_full_disk_at_start_and_during_a_run(small_disk, tmp_path):
    """The reported case (3 MB as --output_dir) is refused at start; on
    8 MB, another file fills the disk mid-run."""
    disk = small_disk('3m')
    r = cli(*TINY[:3], '--max_steps', 10, '--save_steps', 2,
            '--eval_steps', 2, '--output_dir', disk / 'run')
    assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == [f'domain-canine: error: --output_dir {disk}/run has '
                                             f'3.0 MiB free; '
                                             '5 checkpoints of 1.3 MiB (weights and optimizer '
                                             'state) needs about 6.5 MiB']
    assert not (disk / 'run').exists()  # checked where it would be made, nothing made
    # room for what the run keeps (2 epoch checkpoints counted), until another file takes it
    disk = small_disk('8m')
    args = [*TINY[:5], '--max_steps', 40, '--save_steps', 5, '--eval_steps', 5,
            '--save_total_limit', 1,
            '--output_dir', disk / 'run']
    proc = subprocess.Popen([str(ENTRY_POINT), *map(str, args)], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL,
                            text=True, cwd=ROOT)
    fill_after_first_checkpoint(disk / 'run', proc)
    stderr = proc.communicate(timeout=600)[1]
    assert proc.returncode == 1 and 'Traceback' not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f'domain-canine: error: could not write checkpoint {disk}/run/') and \
        ': no space left on the device' in last, stderr
    kept = [p for p in (disk / 'run').iterdir() if p.is_dir()]
    # the checkpoints before it are intact
    assert kept and all(verify_checkpoint(p) is None for p in kept), kept
    assert hidden_leftovers(disk / 'run') == []
