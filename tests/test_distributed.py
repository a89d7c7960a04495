"""torchrun data-parallel training on CPU (gloo): equivalence with one process,
exact resume, moving between world sizes, failures."""
import contextlib, json, os, signal, subprocess, sys, time
from pathlib import Path
import pytest, torch
from conftest import ROOT, cli, hub_layouts
from domain_canine.data import SAMPLE_CORPUS, is_validation
from domain_canine.model import DomainCanineMLM
from domain_canine.checkpoint import verify_checkpoint

# no dropout: a 2-process run and a 1-process run draw their dropout masks differently by design
FLAGS = ('--preset', 'tiny', '--max_steps', 8, '--dropout', 0, '--logging_steps', 1, '--save_steps',
         4, '--eval_steps', 4)

def torchrun_cmd(*args, nproc: int = 2) -> list[str]:
    return [sys.executable, '-m', 'torch.distributed.run', '--standalone',
            f'--nproc_per_node={nproc}',
            '-m', 'domain_canine', *map(str, args)]

# two processes on a small machine: one thread each; a process sent
# SIGABRT prints every thread's Python stack
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONFAULTHANDLER': '1'}

def torchrun(*args, nproc: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    """A torchrun job; one still running after `timeout` fails the test
    with where each of its processes stood."""
    job = subprocess.Popen(torchrun_cmd(*args, nproc=nproc), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True,
                           cwd=ROOT, env=ENV)
    try: out, err = job.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # the workers have sessions of their own: signalled one by one
        pids = [*_workers(job.pid).values(), job.pid]
        def send(sig):
            for pid in pids:
                # one may have ended meanwhile
                with contextlib.suppress(ProcessLookupError): os.kill(pid, sig)
        send(signal.SIGABRT)  # each prints its stacks on stderr and ends
        try: out, err = job.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            send(signal.SIGKILL)
            out, err = job.communicate()
        pytest.fail(f'the job still ran after {timeout} s; its stacks:\n{err[-20000:]}')
    return subprocess.CompletedProcess(job.args, job.returncode, out, err)

def train_losses(run: Path) -> dict[int, float]:
    return {m['step']: m['loss'] for m in map(json.loads,
                                              (run / 'metrics.jsonl').read_text().splitlines())
            if m['type'] == 'train'}

def val_losses(run: Path) -> dict[int, float]:
    return {m['step']: m['val_loss'] for m in map(json.loads,
                                                  (run / 'metrics.jsonl').read_text().splitlines())
            if m['type'] == 'eval'}

def weights(path: Path) -> dict[str, torch.Tensor]: return DomainCanineMLM.load(path).state_dict()

def max_difference(a: Path, b: Path) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)

@pytest.fixture(scope='module')
def runs(tmp_path_factory) -> Path:
    """A 2-process run (batch 16 per process) and a 1-process run with
    accumulation 2: the same global batch of 32."""
    base = tmp_path_factory.mktemp('ddp')
    two = torchrun('train', *FLAGS, '--output_dir', base / 'two')
    assert two.returncode == 0, two.stderr[-3000:]
    (base / 'two.log').write_text(two.stdout + two.stderr)
    one = cli('train', *FLAGS, '--gradient_accumulation_steps', 2, '--output_dir', base / 'one')
    assert one.returncode == 0, one.stderr[-3000:]
    return base

def test_two_processes_equal_one_process_with_the_same_global_batch(runs):
    one, two = train_losses(runs / 'one'), train_losses(runs / 'two')
    assert list(two) == list(range(1, 9))  # every step logged once: only rank 0 writes metrics
    for step in one: assert two[step] == pytest.approx(one[step], rel=1e-5, abs=1e-6), step
    assert val_losses(runs / 'two') == pytest.approx(val_losses(runs / 'one'), rel=1e-5)
    assert max_difference(runs / 'one' / 'final-model', runs / 'two' / 'final-model') < 1e-5
    log = (runs / 'two.log').read_text()
    # rank 1 stays quiet
    assert log.count('effective batch 32 = 16 × 1 accumulation × 2 processes') == 1
    assert log.count('final model:') == 1

def test_rank_0_writes_checkpoints_that_load_in_one_process(runs):
    ck = runs / 'two' / 'checkpoint-step-8'
    assert verify_checkpoint(ck) is None
    assert (ck / 'rng_state_rank_1.pt').is_file()  # rank 1's dropout stream is kept too
    assert json.loads((ck / 'trainer_state.json').read_text())['world_size'] == 2
    assert json.loads((runs / 'two' / 'run.json').read_text())['processes'] == 2
    r = cli('predict', '--model_path', ck, '--json', 'exampl?.com')
    assert r.returncode == 0, r.stderr

def test_resume_of_a_two_process_run_continues_exactly(runs):
    out = runs / 'two-resumed'
    r = torchrun('train', *FLAGS, '--output_dir', out, '--resume_from',
                 runs / 'two' / 'checkpoint-step-4')
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'warning' not in r.stdout + r.stderr
    resumed, full = train_losses(out), train_losses(runs / 'two')
    # bit for bit
    assert list(resumed) == [5, 6, 7, 8] and all(resumed[s] == full[s] for s in resumed)
    a, b = weights(out / 'final-model'), weights(runs / 'two' / 'final-model')
    assert all(torch.equal(a[k], b[k]) for k in a)

def test_resume_with_another_number_of_processes(runs):
    # same micro-batches per step (1 process × accumulation 2 = 2
    # processes × 1): continues the same run
    same = cli('train', *FLAGS, '--gradient_accumulation_steps', 2, '--output_dir',
               runs / 'one-from-two',
               '--resume_from', runs / 'two' / 'checkpoint-step-4')
    assert same.returncode == 0, same.stderr[-3000:]
    assert 'warning' not in same.stdout
    assert max_difference(runs / 'one-from-two' / 'final-model',
                          runs / 'two' / 'final-model') < 1e-5
    # a different layout: continues at the same step with the new effective batch, and says so
    other = cli('train', *FLAGS, '--output_dir', runs / 'one-alone', '--resume_from',
                runs / 'two' / 'checkpoint-step-4')
    assert other.returncode == 0, other.stderr[-3000:]
    assert 'micro-batches per step (accumulation × processes: 2 → 1)' in other.stdout
    assert list(train_losses(runs / 'one-alone')) == [5, 6, 7, 8]

def _workers(parent: int) -> dict[int, int]:
    "rank → pid of the worker processes torchrun started."
    ranks = {}
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try: pid, ppid = int(stat.parent.name), int(stat.read_text().rsplit(')', 1)[1].split()[1])
        except (OSError, ValueError, IndexError): continue  # a process that just ended
        if ppid != parent: continue
        env = Path(f'/proc/{pid}/environ').read_bytes().split(b'\0')
        rank = next((int(e.split(b'=')[1]) for e in env if e.startswith(b'RANK=')), None)
        if rank is not None: ranks[rank] = pid
    return ranks

def _start_long_job(out: Path) -> subprocess.Popen:
    "A job that would run for minutes, once both workers are training."
    job = subprocess.Popen(torchrun_cmd('train', '--preset', 'tiny', '--max_steps', 100_000,
                                        '--logging_steps', 1,
                                        '--save_steps', 100_000, '--output_dir', out),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, cwd=ROOT, env=ENV)
    deadline = time.monotonic() + 120
    while not ((out / 'metrics.jsonl').is_file()
               and (out / 'metrics.jsonl').read_text().count('\n') >= 3):
        assert job.poll() is None and time.monotonic() < deadline, job.stdout.read() if job.poll() is not None else 'no progress'
        time.sleep(0.2)
    return job

def test_a_dying_process_takes_the_job_down(tmp_path):
    job = _start_long_job(tmp_path / 'run')
    workers = _workers(job.pid)
    assert sorted(workers) == [0, 1]
    os.kill(workers[1], signal.SIGKILL)
    out, _ = job.communicate(timeout=120)  # no hang: torchrun stops the other worker and fails
    assert job.returncode != 0
    assert 'rank      : 1' in out and 'Signal 9 (SIGKILL)' in out, out[-2000:]

def test_a_signal_to_one_process_stops_the_whole_job_with_a_checkpoint(tmp_path):
    job = _start_long_job(tmp_path / 'run')
    os.kill(_workers(job.pid)[1], signal.SIGTERM)  # only rank 1 hears it
    out, _ = job.communicate(timeout=120)
    assert job.returncode == 0, out[-2000:]
    assert 'stopped by a signal to another process' in out
    saved = [p for p in (tmp_path / 'run').glob('checkpoint-step-*')
             if verify_checkpoint(p) is None]
    assert len(saved) == 1

def test_a_streaming_job_trains_on_shards(tmp_path):
    r = torchrun('train', '--preset', 'tiny', '--streaming', '--max_steps', 6, '--output_dir',
                 tmp_path / 'run')
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'effective batch 32 = 16 × 1 accumulation × 2 processes' in r.stdout
    assert verify_checkpoint(tmp_path / 'run' / 'final-model') is None

STOP_SCRIPT = '''
import sys
from domain_canine.callbacks import Callback
from domain_canine.config import resolve_config
from domain_canine.training import train
class StopAt(Callback):
    "Asks the run to stop after step 3 (callbacks live in rank 0 only)."
    def on_step(self, trainer):
        if trainer.state.step == 3: trainer.request_stop()
train(resolve_config('tiny', max_steps=50, logging_steps=2, eval_steps=100, save_steps=100, output_dir=sys.argv[1]), [StopAt()])
'''

def test_a_callback_stop_in_rank_0_ends_every_process_at_the_same_step(tmp_path):
    """Rank 0's request is agreed at the next report (step 4 here),
    so the job neither hangs nor splits."""
    script = tmp_path / 'stop_at.py'
    script.write_text(STOP_SCRIPT)
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
           str(script), str(tmp_path / 'run')]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp_path / 'run' / 'final-model'
                       / 'trainer_state.json').read_text())['step'] == 4
    assert max(train_losses(tmp_path / 'run')) == 4

SHARDS_SCRIPT = '''
import json, sys
import torch.distributed as dist
import domain_canine.run_data as run_data
from domain_canine.config import resolve_config
from domain_canine.data import DomainSource
dist.init_process_group('gloo')
rank, world = dist.get_rank(), dist.get_world_size()
run_data.STREAM_READ, run_data.STREAM_RETRY_PAUSE = 7, 0  # many small reads; retries at once
read, fail = DomainSource.numbered_batches, [False]
def flaky(self, *args, **kw):
    "The source's rows, but the stream breaks once after five reads while `fail` is set."
    for k, item in enumerate(read(self, *args, **kw)):
        if k == 5 and fail[0]: fail[0] = False; raise ConnectionError('the hub hung up')
        yield item
DomainSource.numbered_batches = flaky
def rows(dataset, start=(0, 0)):
    "(row, clean domains before, [rows]) of this process's stream of training domains, each domain named by its row."
    c = resolve_config('tiny', dataset=dataset, streaming=True, num_samples=None)
    return [[line, seen, [int(d[1:5]) for d in batch]]
            for line, seen, batch in run_data.retrying_stream(c, shard=(rank, world), start=start)]
out = {}
for dataset in sys.argv[2:]:
    whole = rows(dataset)
    resumed = rows(dataset, start=tuple(whole[3][:2]))
    fail[0] = True
    out[dataset] = dict(whole=whole, resumed=resumed, retried=rows(dataset), failed=not fail[0])
everyone = [None] * world
dist.all_gather_object(everyone, out)
if rank == 0: json.dump(everyone, open(sys.argv[1], 'w'))
dist.destroy_process_group()
'''

def test_streaming_processes_read_disjoint_rows_that_together_are_the_stream(tmp_path):
    """From the start, from a position (a resume) and after a failed read
    (a retry); one file as on the hub, or several."""
    rows = [f'r{i:04d}.com' for i in range(300)]
    layouts = hub_layouts(tmp_path, rows)
    script = tmp_path / 'shards.py'
    script.write_text(SHARDS_SCRIPT)
    cmd = [sys.executable, '-m', 'torch.distributed.run',
           '--standalone', '--nproc_per_node=2', str(script),
           str(tmp_path / 'rows.json'), *layouts.values()]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    # every process lived through its failure
    assert r.stdout.count('the hub hung up') == 2 * len(layouts)
    training = [i for i, d in enumerate(rows) if not is_validation(d)]
    for dataset in layouts.values():
        got = [rank[dataset] for rank in json.loads((tmp_path / 'rows.json').read_text())]
        for rank, g in enumerate(got):
            assert [i for _, _, b in g['whole'] for i in b] == [i for i in training
                                                                if i % 2 == rank], (dataset, rank)
            # a position is a row of the whole stream
            assert all(min(b) >= line for line, _, b in g['whole'])
            assert g['whole'][3][0] > 0 and g['resumed'] == g['whole'][3:], (dataset, rank)
            assert g['failed'] and g['retried'] == g['whole'], (dataset, rank)

RESUME_SCRIPT = '''
import sys
import domain_canine.run_data as run_data
from domain_canine.config import resolve_config
from domain_canine.training import train
run_data.STREAM_READ, run_data.STREAM_BLOCK = 10, 16  # so that step 4 stands well into the stream, not at its row 0
dataset, out, resume = sys.argv[1:]
train(resolve_config('tiny', dataset=dataset, streaming=True, num_samples=None, batch_size=8, max_steps=8, save_steps=4,
                     eval_steps=100, logging_steps=1, eval_samples=50, output_dir=out, resume_from=resume or None))
'''

def test_a_two_process_streaming_run_resumes_where_each_process_stood(tmp_path):
    """The corpus laid out as on the hub (one text file read by
    `datasets`): each process goes on with its own rows."""
    dataset = hub_layouts(tmp_path / 'data', SAMPLE_CORPUS.read_text().split()[:2000])['one file']
    script = tmp_path / 'stream.py'
    script.write_text(RESUME_SCRIPT)
    def run(out, resume=''):
        cmd = [sys.executable, '-m', 'torch.distributed.run',
               '--standalone', '--nproc_per_node=2', str(script),
               dataset, str(tmp_path / out), resume]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=ENV)
        assert r.returncode == 0, r.stderr[-3000:]
    run('full')
    state = lambda path: json.loads((path / 'trainer_state.json').read_text())
    positions = state(tmp_path / 'full' / 'checkpoint-step-4')['stream_positions']
    # both stand at a row past the stream's start
    assert len(positions) == 2 and all(p[2] > 0 for p in positions)
    run('resumed', str(tmp_path / 'full' / 'checkpoint-step-4'))
    resumed, full = train_losses(tmp_path / 'resumed'), train_losses(tmp_path / 'full')
    assert list(resumed) == [5, 6, 7, 8] and all(resumed[s] == full[s] for s in resumed)
    a, b = weights(tmp_path / 'resumed' / 'final-model'), weights(tmp_path / 'full' / 'final-model')
    assert all(torch.equal(a[k], b[k]) for k in a)
    ends = [state(tmp_path / run / 'final-model')['stream_positions']
            for run in ('resumed', 'full')]
    assert ends[0] == ends[1]

def test_a_two_process_finetune_equals_one_process_with_the_same_global_batch(tmp_path):
    """Fine-tuning runs on the same Trainer: a job of 2 processes gives the
    weights and losses of 1 with accumulation 2."""
    from transformers import CanineForSequenceClassification
    from domain_canine.finetune import finetune, finetune_config
    from domain_canine.tasks import write_task
    path, _ = write_task('tld', tmp_path / 'tld.csv', limit=600)
    flags = dict(model_config='tiny', max_steps=4, batch_size=16, dropout=0, learning_rate=3e-3,
                 eval_steps=2,
                 save_steps=2, logging_steps=1, device='cpu')
    two = torchrun('finetune', '--task', path, *(f'--{k}={v}' for k, v in flags.items()),
                   '--output_dir', tmp_path / 'two')
    assert two.returncode == 0, two.stderr[-3000:]
    finetune(finetune_config(dataset=str(path), gradient_accumulation_steps=2,
                             output_dir=str(tmp_path / 'one'), **flags),
             log=lambda *a: None)
    a, b = (CanineForSequenceClassification.from_pretrained(tmp_path / r
                                                            / 'final-model').state_dict()
            for r in ('two', 'one'))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    assert train_losses(tmp_path / 'two') == pytest.approx(train_losses(tmp_path / 'one'), abs=1e-5)
    assert val_losses(tmp_path / 'two') == pytest.approx(val_losses(tmp_path / 'one'), abs=1e-5)
