"Evaluation, scoring and embedding: figures checkable by hand, the n-gram baseline, and the commands as a user meets them."
import json, math
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import cli
from domain_canine.data import EncodedDomains
from domain_canine.masking import CharVocab, DOMAIN_CHARS
from domain_canine.model import MLMOutput
from domain_canine.evaluation import (CharNgramLM, cloze_eval, cloze_positions, evaluate, masked_eval,
                                      ngram_cloze_eval, pseudo_log_likelihood, read_domains)
from domain_canine.inference import InputError


class FixedLogits(torch.nn.Module):
    "Predicts the same logits everywhere: the characters of `preference` first, in that order, then the rest."
    def __init__(self, preference='ocm.x'):
        super().__init__()
        self.vocab = CharVocab()
        order = [self.vocab.chars.index(c) for c in preference]
        order += [i for i in range(len(self.vocab)) if i not in order]
        self.z = torch.zeros(len(self.vocab))
        self.z[order] = -torch.arange(len(self.vocab), dtype=torch.float)

    def forward(self, input_ids, attention_mask, labels=None, masked_index=None, positions=None):
        if masked_index is None:
            masked_index = (positions if positions is not None else labels != -100).flatten().nonzero().squeeze(1)
        logits = self.z.repeat(len(masked_index), 1)
        targets = None if labels is None else labels.flatten()[masked_index]
        return MLMOutput(None if labels is None else F.cross_entropy(logits, targets), logits, targets)


WORDS = ['foo.com', 'xoxo.co', 'moo.io', 'ab.com']
CHARS = ''.join(WORDS)


def test_masked_figures_by_hand():
    m = masked_eval(FixedLogits(), EncodedDomains.from_strings(WORDS), batch_size=3, mlm_probability=1.0, progress=False)
    assert len(m['rank']) == len(CHARS)  # every character masked exactly once
    assert (m['rank'] == 0).mean() == pytest.approx(CHARS.count('o') / len(CHARS))
    assert (m['rank'] < 5).mean() == pytest.approx(sum(CHARS.count(c) for c in 'ocm.x') / len(CHARS))
    expected_loss = -FixedLogits().z.log_softmax(0)[CharVocab().chars.index('o')].item()
    assert m['loss'][m['rank'] == 0] == pytest.approx(np.full((m['rank'] == 0).sum(), expected_loss))


def test_report_and_breakdowns_by_hand():
    rep = evaluate(FixedLogits(), WORDS, None, batch_size=3, mlm_probability=1.0, top_tlds=1, progress=False)
    assert rep['n_domains'] == 4 and rep['n_masked'] == len(CHARS) and rep['n_cloze'] == 4
    assert rep['perplexity'] == pytest.approx(math.exp(rep['loss']))
    tld = rep['by_part']['tld']
    assert tld['n_masked'] == 3 + 2 + 2 + 3 and tld['masked_accuracy'] == pytest.approx(4 / 10)  # the o of com, co, io, com
    assert list(rep['by_tld']) == ['com', 'other']
    assert rep['by_tld']['com']['n_masked'] == 7 + 6 and rep['by_tld']['com']['masked_accuracy'] == pytest.approx(4 / 13)
    assert list(rep['by_length']) == ['1-8']
    assert 'ngram_cloze_top1' not in rep


def test_cloze_ranks_by_hand():
    enc = EncodedDomains.from_strings(WORDS)
    pos = cloze_positions(enc.lengths, seed=3)
    cz = cloze_eval(FixedLogits(), enc, pos, batch_size=3, progress=False)
    rest = ''.join(c for c in DOMAIN_CHARS if c not in 'ocm.x')
    hidden = [w[p] for w, p in zip(WORDS, pos)]
    assert cz['rank'].tolist() == ['ocm.x'.index(h) if h in 'ocm.x' else 5 + rest.index(h) for h in hidden]
    assert (cloze_positions(enc.lengths, seed=3) == pos).all()  # the seed alone decides


def test_ngram_finds_the_known_answer():
    lm = CharNgramLM(order=4).fit(['xyz.com', 'xyz.net', 'axyz.org', 'shop.com', 'blog.net', 'mail.com'])
    best = lambda d, i: DOMAIN_CHARS[lm.cloze(d, i).argmax()]
    assert best('xyq.io', 2) == 'z'       # left context
    assert best('new.qom', 4) == 'c'      # right context
    assert best('shop.neq', 7) == 't'     # the end marker
    for h in ('^^^', 'xyz', 'qqq', '.ne'):
        assert sum(lm.prob(h, c) for c in DOMAIN_CHARS + '$') == pytest.approx(1.0)
    ng = ngram_cloze_eval(lm, ['xyz.com', 'blog.net'], np.array([2, 7]), progress=False)
    assert ng['rank'].tolist() == [0, 0]


def test_pseudo_log_likelihood_by_hand():
    fake = FixedLogits()
    logp = fake.z.clone(); logp[fake.vocab.unk] = float('-inf'); logp = logp.log_softmax(0)
    lp = lambda s: sum(logp[fake.vocab.chars.index(c)].item() for c in s)
    for batch_size in (1, 4, 100):
        pll = pseudo_log_likelihood(fake, ['oo.oo', 'ox.co', 'a.io'], batch_size=batch_size, progress=False)
        assert pll == pytest.approx([lp('oo.oo'), lp('ox.co'), lp('a.io')])


def test_read_domains_keeps_order_and_duplicates(tmp_path):
    f = tmp_path / 'd.txt'
    f.write_text('B.com\n\nnot a domain\nb.com\n')
    domains, skipped = read_domains(['a.io'], str(f))
    assert domains == ['a.io', 'b.com', 'b.com'] and sum(skipped.values()) == 2
    with pytest.raises(InputError, match='not a usable domain'): read_domains(['a b.com'])


def test_evaluate_reproduces_the_runs_own_validation(tiny_run):
    "With the run's seed, batch size and sample count, on its validation split, the figures are the ones it logged."
    r = cli('evaluate', '--model_path', tiny_run / 'final-model', '--dataset', 'sample', '--split', 'valid',
            '--num_samples', 300, '--batch_size', 16, '--seed', 42, '--json', '--no_progress')
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    for key in ('masked_accuracy', 'masked_top5', 'cloze_top1', 'cloze_top5', 'loss', 'perplexity', 'ngram_cloze_top1',
                'n_domains', 'by_part', 'by_length', 'by_tld'):
        assert key in rep, key
    assert set(rep['by_part']) == {'label', 'tld'} and rep['ngram_train_overlap'] == 0
    logged = [json.loads(l) for l in (tiny_run / 'metrics.jsonl').read_text().splitlines()]
    last = [m for m in logged if m['type'] == 'eval'][-1]
    assert rep['loss'] == pytest.approx(last['val_loss'], abs=1e-4)
    assert rep['masked_accuracy'] == pytest.approx(last['val_accuracy'], abs=1e-6)
    assert rep['n_masked'] == last['val_masked_chars']


def test_evaluate_table(tiny_run, tmp_path):
    f = tmp_path / 'mine.txt'
    f.write_text('example.com\ngoogle.com\nwikipedia.org\nmail.ru\n')
    r = cli('evaluate', '--model_path', tiny_run / 'final-model', '--dataset', f, '--ngram_order', 3, '--no_progress')
    assert r.returncode == 0, r.stderr
    assert '4 domains' in r.stdout and '3-gram baseline' in r.stdout
    assert 'part tld' in r.stdout and 'length 9-12' in r.stdout and 'tld com' in r.stdout


def test_score_and_embed_shapes(tiny_run, tmp_path):
    model = tiny_run / 'final-model'
    f = tmp_path / 'd.txt'
    f.write_text('example.com\nnot a domain\nexample.com\na.io\n')
    r = cli('score', '--model_path', model, '--file', f, '--json', '--batch_size', 5)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(l) for l in r.stdout.splitlines()]
    assert [x['domain'] for x in rows] == ['example.com', 'example.com', 'a.io']
    assert rows[0]['pll'] == pytest.approx(rows[1]['pll']) and all(x['pll'] < 0 for x in rows)
    assert rows[2]['pll_per_char'] == pytest.approx(rows[2]['pll'] / 4)
    assert 'skipped 1 lines' in r.stderr
    r = cli('score', '--model_path', model, 'example.com', 'a.io', '--no_progress')
    assert [l.split('\t')[2] for l in r.stdout.splitlines()] == ['example.com', 'a.io']

    r = cli('embed', '--model_path', model, '--file', f, '--output', tmp_path / 'e.npy', '--batch_size', 2)
    assert r.returncode == 0, r.stderr
    vectors = np.load(tmp_path / 'e.npy')
    assert vectors.shape == (3, 32) and np.allclose(vectors[0], vectors[1], atol=1e-5)
    r = cli('embed', '--model_path', model, 'example.com', 'a.io', '--output', tmp_path / 'sub' / 'e.parquet', '--no_progress')
    assert r.returncode == 0, r.stderr
    import pyarrow.parquet as pq
    table = pq.read_table(tmp_path / 'sub' / 'e.parquet')
    assert table.column('domain').to_pylist() == ['example.com', 'a.io']
    assert np.array(table.column('embedding').to_pylist()).shape == (2, 32)


@pytest.mark.parametrize('args, expected', [
    (['evaluate', '--model_path', '{model}', '--dataset', '{d}/missing.txt'], 'not found'),
    (['evaluate', '--model_path', '{d}', '--dataset', 'sample'], 'not a domain-canine model'),
    (['evaluate', '--model_path', '{model}', '--dataset', 'sample', '--split', 'test'], 'invalid choice'),
    (['evaluate', '--model_path', '{model}', '--dataset', 'sample', '--mlm_probability', '1.5'], 'between 0 and 1'),
    (['evaluate', '--model_path', '{model}', '--dataset', 'sample', '--device', 'tpu'], 'unknown device'),
    (['score', '--model_path', '{model}', 'not a domain'], 'not a usable domain'),
    (['score', '--model_path', '{model}'], 'no domains to process'),
    (['score', '--model_path', '{model}', '--batch_size', '0', 'a.io'], 'at least 1'),
    (['embed', '--model_path', '{model}', 'a.io', '--output', '{d}/e.csv'], '.npy or .parquet'),
    (['embed', '--model_path', '{model}', '--file', '{d}/missing.txt', '--output', '{d}/e.npy'], 'not found'),
])
def test_bad_input_is_one_line_on_stderr(tiny_run, tmp_path, args, expected):
    r = cli(*[a.format(d=tmp_path, model=tiny_run / 'final-model') for a in args])
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], r.stderr
