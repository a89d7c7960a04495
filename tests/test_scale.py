"""Costs that must not grow with the corpus: what a training step, an epoch's first batch and an
evaluation touch; nothing written beside the corpus; bounded evaluation."""
import json
from pathlib import Path
import numpy as np
import pytest
import torch
from domain_canine.callbacks import Callback
from domain_canine.data import EncodedDomains
from domain_canine.masking import EpochOrder, Permutation, evaluation_order
from domain_canine.synthetic import make_corpus
from domain_canine.config import TrainConfig, resolve_config
from domain_canine.training import Trainer
from conftest import QUIET


class WholeCorpusTouched(AssertionError):
    "An operation read more of a corpus array at once than any batch may."

class Guarded(np.ndarray):
    """A corpus array that raises when one operation reads more than `limit` of
    its elements (a slice, a gather or arithmetic)."""
    limit = 0
    def __getitem__(self, key):
        out = super().__getitem__(key)
        if isinstance(out, np.ndarray) and out.size > self.limit:
            raise WholeCorpusTouched(f'{out.size:,} elements of a corpus array of {self.size:,} '
                                     f'read at once')
        return out.view(np.ndarray) if isinstance(out, np.ndarray) else out
    def __array_ufunc__(self, ufunc, method, *inputs, **kw):
        if any(isinstance(x, Guarded) and x.size > self.limit for x in inputs):
            raise WholeCorpusTouched(f'{ufunc.__name__} over a whole corpus '
                                     f'array of {self.size:,} elements')
        return getattr(ufunc, method)(*(x.view(np.ndarray) if isinstance(x, Guarded) else x
                                        for x in inputs), **kw)

def guarded(enc: EncodedDomains, limit: int) -> EncodedDomains:
    arrays = [np.asarray(a).view(Guarded) for a in (enc.codepoints, enc.offsets)]
    for a in arrays: a.limit = limit
    return EncodedDomains(*arrays)

@pytest.fixture(scope='module')
def corpus60k(tmp_path_factory) -> Path:
    return make_corpus(60_000, tmp_path_factory.mktemp('corpus') / 'synthetic-60k.txt', seed=1)

def test_the_guard_catches_whole_corpus_work():
    enc = guarded(EncodedDomains.from_strings(['ab.com', 'x.io', 'abc.net', 'd.org', 'e.de',
                                               'f.fr']), limit=4)
    with pytest.raises(WholeCorpusTouched): enc.lengths            # np.diff over every offset
    with pytest.raises(WholeCorpusTouched): enc.offsets + 1
    # what a batch does is allowed
    assert enc.lengths_of(np.array([2])).tolist() == [7] and enc[1] == 'x.io'

def test_training_steps_and_evaluations_never_touch_the_whole_corpus(corpus60k, tmp_path):
    cfg = resolve_config('tiny', dataset=str(corpus60k), num_samples=None, batch_size=256,
                         eval_steps=100, eval_samples=2_000,
                         save_steps=10_000, output_dir=str(tmp_path / 'run'), max_steps=1)
    t = Trainer.from_config(cfg, **QUIET)
    assert len(t.train_enc) > 50_000 and len(t.valid_enc) > 5_000
    # no single operation may read more than 20,000 elements: less than
    # either split, more than a bucketing pool (64 x 256)
    t.data.train_enc = t.run_batches.enc = guarded(t.train_enc, 20_000)
    t.data.valid_enc = guarded(t.valid_enc, 20_000)
    # into the second epoch: its first batch is drawn under the guard too
    t.data.total_steps = t.steps_per_epoch + 3
    t.fit()
    rows = [json.loads(l) for l in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
    evals = [r for r in rows if r['type'] == 'eval']
    assert t.state.step == t.steps_per_epoch + 3 and t.state.epoch == 1 and len(evals) >= 3
    assert {r['val_domains'] for r in evals} == {2_000}
    t.state.step = 7 * t.steps_per_epoch + 5  # as if resumed in epoch 7
    t.state.epoch, t.state.batch_in_epoch = 7, 5
    t.data.total_steps = t.state.step + 2
    t.fit()
    assert t.state.step == 7 * t.steps_per_epoch + 7

class GuardedLengths:
    """The lengths of a corpus of any size (3 to 39 characters),
    refusing to give more than `limit` at once."""
    def __init__(self, limit: int): self.limit, self.calls = limit, 0
    def __call__(self, idx):
        if len(idx) > self.limit:
            raise WholeCorpusTouched(f'{len(idx):,} lengths asked for at once')
        self.calls += 1
        return np.asarray(idx) % 37 + 3

def test_the_first_batch_of_any_epoch_costs_one_pool_whatever_the_corpus(monkeypatch):
    def guarded_call(self, positions, original=Permutation.__call__):
        if len(positions) > 20_000:
            raise WholeCorpusTouched(f'{len(positions):,} positions permuted at once')
        return original(self, positions)
    monkeypatch.setattr(Permutation, '__call__', guarded_call)
    n = 2_000_000_000  # far beyond the real corpus: an epoch-sized order would need 8 GB here
    # a fresh run, a late resume, an epoch's last batch
    for epoch, b in ((0, 0), (7, 3_000_000), (9, -(-n // 256) - 1)):
        lengths = GuardedLengths(20_000)
        order = EpochOrder(n, 256, seed=1, epoch=epoch, lengths_of=lengths)
        batch = order.batch(b)
        assert len(batch) == 256 and batch.min() >= 0 and batch.max() < n and len(set(batch.tolist())) == 256
        assert lengths.calls == 1  # one pool
        order.batch(b - 1 if b % 64 else b + 1)  # another batch of the same pool: no new work
        assert lengths.calls == 1

@pytest.mark.parametrize('n, batch_size, pool', [(1, 4, 2), (7, 4, 2), (1_000, 16, 4),
                                                 (1_003, 16, 4), (5_000, 256, 64)])
def test_every_domain_exactly_once_per_epoch_and_batches_bucketed(n, batch_size, pool):
    lengths = lambda idx: np.asarray(idx) % 37 + 3
    for bucket in (lengths, None):
        epochs = [EpochOrder(n, batch_size, seed=0, epoch=e, lengths_of=bucket, pool=pool)
                  for e in (0, 1)]
        whole = [o.to_array() for o in epochs]
        assert all(np.array_equal(np.sort(w), np.arange(n)) for w in whole)
        assert n < 8 or not np.array_equal(whole[0], whole[1])  # each epoch has its own order
    if n >= 1_000:  # bucketed: a batch spans few lengths; not bucketed: most of them
        spread = lambda o: np.mean([np.ptp(lengths(o.batch(b))) for b in range(o.batches())])
        assert spread(EpochOrder(n, batch_size, lengths_of=lengths,
                                 pool=pool)) < 0.3 * spread(EpochOrder(n, batch_size))

def _files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob('*') if p.is_file()}

class Crash(Callback):
    "Fails the run at step `at`, as a crash would."
    def __init__(self, at: int): self.at = at
    def on_step(self, trainer):
        if trainer.state.step == self.at: raise RuntimeError('simulated crash')

def test_workers_share_the_order_without_files_and_a_crash_leaves_nothing(tmp_path):
    cfg = resolve_config('tiny', output_dir=str(tmp_path / 'run'), num_workers=2, max_steps=1,
                         eval_steps=1_000,
                         save_steps=1_000, cache_dir=str(tmp_path / 'cache'))
    cache = Path(Trainer.from_config(cfg, **QUIET).corpus.cache)
    # what an earlier version left after a crash
    stale = cache / 'epoch-orders' / '0123456789abcdef-epoch-3.tmp-4242.npy'
    stale.parent.mkdir()
    stale.write_bytes(bytes(1_000))
    t = Trainer.from_config(cfg, [], **QUIET)
    assert not stale.parent.exists()  # swept when the corpus is opened
    before = _files(tmp_path / 'cache')
    rb, per = t.run_batches, t.run_batches.per_epoch
    micro = range(per - 3, per + 3)  # across the epoch boundary
    loaded = list(torch.utils.data.DataLoader(rb, batch_size=None, sampler=micro, num_workers=2))
    for g, batch in zip(micro, loaded):
        # what two workers computed, each for itself
        for k in batch: assert torch.equal(batch[k], rb[g][k])
    t.callbacks.append(Crash(t.steps_per_epoch + 2))
    # as if resumed near the end of epoch 0
    t.state.step = t.state.batch_in_epoch = t.steps_per_epoch - 2
    t.data.total_steps = t.steps_per_epoch + 5
    with pytest.raises(RuntimeError, match='simulated crash'): t.fit()
    # no order file, no temporary file: nothing to sweep after a crash
    assert _files(tmp_path / 'cache') == before

def test_periodic_evaluation_is_bounded_and_the_same_every_time(corpus60k, tmp_path):
    defaults = TrainConfig()
    trained_between = defaults.eval_steps * defaults.batch_size
    # a forward pass costs about a third of a training step: <= 5%
    assert defaults.eval_samples / trained_between <= 0.15
    cfg = resolve_config('tiny', dataset=str(corpus60k), num_samples=None, eval_samples=1_000,
                         output_dir=str(tmp_path / 'a'))
    t = Trainer.from_config(cfg, **QUIET)
    assert len(t.eval_order) == 1_000 < len(t.valid_enc)
    # fixed by the seed alone
    assert np.array_equal(t.eval_order, evaluation_order(t.valid_enc, 1_000, cfg.seed))
    first, again = t.evaluate(), t.evaluate()
    assert first['val_domains'] == 1_000 and first['val_loss'] == again['val_loss'] and first['val_masked_chars'] == again['val_masked_chars']
    other_seed = Trainer.from_config(resolve_config('tiny', dataset=str(corpus60k),
                                                    num_samples=None, eval_samples=1_000, seed=7,
                                        output_dir=str(tmp_path / 'b')), **QUIET)
    assert not np.array_equal(np.sort(other_seed.eval_order), np.sort(t.eval_order))
    full = Trainer.from_config(resolve_config('tiny', dataset=str(corpus60k), num_samples=None,
                                              full_eval=True,
                                  output_dir=str(tmp_path / 'c')), **QUIET)
    assert sorted(full.eval_order.tolist()) == list(range(len(full.valid_enc)))

def test_full_eval_is_refused_for_a_stream():
    from domain_canine.core import ConfigError
    with pytest.raises(ConfigError, match='full_eval'):
        resolve_config('tiny', streaming=True, full_eval=True)
