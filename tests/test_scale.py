"Costs that must not grow with the corpus: what a training step and an evaluation touch, epoch orders shared by workers, bounded evaluation."
import json
from pathlib import Path
import numpy as np
import pytest
from domain_canine.data import EncodedDomains
from domain_canine.masking import SharedEpochOrders
from domain_canine.synthetic import make_corpus
from domain_canine.config import TrainConfig, resolve_config
from domain_canine.training import Trainer
from domain_canine.masking import evaluation_order

QUIET = dict(log=lambda *a: None)

class WholeCorpusTouched(AssertionError):
    "An operation read more of a corpus array at once than any batch may."

class Guarded(np.ndarray):
    "A corpus array that raises when one operation reads more than `limit` of its elements (a slice, a gather or arithmetic)."
    limit = 0
    def __getitem__(self, key):
        out = super().__getitem__(key)
        if isinstance(out, np.ndarray) and out.size > self.limit:
            raise WholeCorpusTouched(f'{out.size:,} elements of a corpus array of {self.size:,} read at once')
        return out.view(np.ndarray) if isinstance(out, np.ndarray) else out
    def __array_ufunc__(self, ufunc, method, *inputs, **kw):
        if any(isinstance(x, Guarded) and x.size > self.limit for x in inputs):
            raise WholeCorpusTouched(f'{ufunc.__name__} over a whole corpus array of {self.size:,} elements')
        return getattr(ufunc, method)(*(x.view(np.ndarray) if isinstance(x, Guarded) else x for x in inputs), **kw)

def guarded(enc: EncodedDomains, limit: int) -> EncodedDomains:
    arrays = [np.asarray(a).view(Guarded) for a in (enc.codepoints, enc.offsets)]
    for a in arrays: a.limit = limit
    return EncodedDomains(*arrays)

@pytest.fixture(scope='module')
def corpus60k(tmp_path_factory) -> Path:
    return make_corpus(60_000, tmp_path_factory.mktemp('corpus') / 'synthetic-60k.txt', seed=1)

def test_the_guard_catches_whole_corpus_work():
    enc = guarded(EncodedDomains.from_strings(['ab.com', 'x.io', 'abc.net', 'd.org', 'e.de', 'f.fr']), limit=4)
    with pytest.raises(WholeCorpusTouched): enc.lengths            # np.diff over every offset
    with pytest.raises(WholeCorpusTouched): enc.offsets + 1
    assert enc.lengths_of(np.array([2])).tolist() == [7] and enc[1] == 'x.io'  # what a batch does is allowed

def test_training_steps_and_evaluations_never_touch_the_whole_corpus(corpus60k, tmp_path):
    cfg = resolve_config('tiny', dataset=str(corpus60k), num_samples=None, batch_size=256, eval_steps=100, eval_samples=2_000,
                         save_steps=10_000, output_dir=str(tmp_path / 'run'), max_steps=1)
    t = Trainer.from_config(cfg, **QUIET)
    assert len(t.train_enc) > 50_000 and len(t.valid_enc) > 5_000
    # no single operation may read more than 20,000 elements: less than either split, more than a bucketing pool (64 x 256)
    t.train_enc = t.run_batches.enc = t.run_batches.orders.enc = guarded(t.train_enc, 20_000)
    t.valid_enc = guarded(t.valid_enc, 20_000)
    t.total_steps = t.steps_per_epoch + 3  # into the second epoch: its order is computed under the guard too
    t.fit()
    rows = [json.loads(l) for l in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
    evals = [r for r in rows if r['type'] == 'eval']
    assert t.state.step == t.steps_per_epoch + 3 and t.state.epoch == 1 and len(evals) >= 3
    assert {r['val_domains'] for r in evals} == {2_000}

def test_epoch_orders_are_computed_once_per_epoch_whatever_the_workers(tmp_path, monkeypatch):
    computed = tmp_path / 'computed.txt'
    original = SharedEpochOrders.compute
    def counting(self, epoch):
        with open(computed, 'a') as f: f.write(f'{epoch}\n')
        return original(self, epoch)
    monkeypatch.setattr(SharedEpochOrders, 'compute', counting)  # forked workers inherit the patch
    t = Trainer.from_config(resolve_config('tiny', output_dir=str(tmp_path / 'run'), num_workers=2, max_steps=1, eval_steps=1_000,
                               save_steps=1_000, cache_dir=str(tmp_path / 'cache')), **QUIET)  # no order computed before
    t.total_steps = t.steps_per_epoch + 3
    t.fit()
    assert t.state.epoch == 1
    assert sorted(computed.read_text().split()) == ['0', '1']  # two workers and the main process, one computation each
    assert len(list(Path(t.corpus.cache, 'epoch-orders').glob('*.npy'))) == 2

def test_periodic_evaluation_is_bounded_and_the_same_every_time(corpus60k, tmp_path):
    defaults = TrainConfig()
    trained_between = defaults.eval_steps * defaults.batch_size
    assert defaults.eval_samples / trained_between <= 0.15  # a forward pass costs about a third of a training step: <= 5%
    cfg = resolve_config('tiny', dataset=str(corpus60k), num_samples=None, eval_samples=1_000, output_dir=str(tmp_path / 'a'))
    t = Trainer.from_config(cfg, **QUIET)
    assert len(t.eval_order) == 1_000 < len(t.valid_enc)
    assert np.array_equal(t.eval_order, evaluation_order(t.valid_enc, 1_000, cfg.seed))  # fixed by the seed alone
    first, again = t.evaluate(), t.evaluate()
    assert first['val_domains'] == 1_000 and first['val_loss'] == again['val_loss'] and first['val_masked_chars'] == again['val_masked_chars']
    other_seed = Trainer.from_config(resolve_config('tiny', dataset=str(corpus60k), num_samples=None, eval_samples=1_000, seed=7,
                                        output_dir=str(tmp_path / 'b')), **QUIET)
    assert not np.array_equal(np.sort(other_seed.eval_order), np.sort(t.eval_order))
    full = Trainer.from_config(resolve_config('tiny', dataset=str(corpus60k), num_samples=None, full_eval=True,
                                  output_dir=str(tmp_path / 'c')), **QUIET)
    assert sorted(full.eval_order.tolist()) == list(range(len(full.valid_enc)))

def test_full_eval_is_refused_for_a_stream():
    from domain_canine.core import ConfigError
    with pytest.raises(ConfigError, match='full_eval'): resolve_config('tiny', streaming=True, full_eval=True)
