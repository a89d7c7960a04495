"""Evaluation, scoring and embedding as a user meets them: the commands, end to end (the figures
checkable by hand are checked beside the code, in the evaluation chapter)."""
import json
import numpy as np
import pytest
from conftest import cli


def test_evaluate_reproduces_the_runs_own_validation(tiny_run):
    """With the run's seed, batch size and sample count, on its validation
    split, the figures are the ones it logged."""
    r = cli('evaluate', '--model_path', tiny_run / 'final-model', '--dataset', 'sample', '--split',
            'valid',
            '--num_samples', 300, '--batch_size', 16, '--seed', 42, '--json', '--no_progress')
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert 0 <= rep['masked_accuracy'] <= rep['masked_top5'] <= 1 and 0 <= rep['cloze_top1'] <= rep['cloze_top5'] <= 1
    assert set(rep['by_part']) == {'label', 'tld'} and rep['ngram_train_overlap'] == 0
    logged = [json.loads(l) for l in (tiny_run / 'metrics.jsonl').read_text().splitlines()]
    last = [m for m in logged if m['type'] == 'eval'][-1]
    assert rep['loss'] == pytest.approx(last['val_loss'], abs=1e-4)
    assert rep['masked_accuracy'] == pytest.approx(last['val_accuracy'], abs=1e-6)
    assert rep['n_masked'] == last['val_masked_chars']


def test_evaluate_table(tiny_run, tmp_path):
    f = tmp_path / 'mine.txt'
    f.write_text('example.com\ngoogle.com\nwikipedia.org\nmail.ru\n')
    r = cli('evaluate', '--model_path', tiny_run / 'final-model', '--dataset', f, '--ngram_order',
            3, '--no_progress')
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

    r = cli('embed', '--model_path', model, '--file', f, '--output', tmp_path / 'e.npy',
            '--batch_size', 2)
    assert r.returncode == 0, r.stderr
    vectors = np.load(tmp_path / 'e.npy')
    assert vectors.shape == (3, 32) and np.allclose(vectors[0], vectors[1], atol=1e-5)
    r = cli('embed', '--model_path', model, 'example.com', 'a.io', '--output',
            tmp_path / 'sub' / 'e.parquet', '--no_progress')
    assert r.returncode == 0, r.stderr
    import pyarrow.parquet as pq
    table = pq.read_table(tmp_path / 'sub' / 'e.parquet')
    assert table.column('domain').to_pylist() == ['example.com', 'a.io']
    assert np.array(table.column('embedding').to_pylist()).shape == (2, 32)


@pytest.mark.parametrize('args, expected', [
    (['evaluate', '--model_path', '{model}', '--dataset', '{d}/missing.txt'], 'not found'),
    (['evaluate', '--model_path', '{d}', '--dataset', 'sample'], 'not a domain-canine model'),
    (['evaluate', '--model_path', '{model}', '--dataset', 'sample', '--split', 'test'],
     'invalid choice'),
    (['evaluate', '--model_path', '{model}', '--dataset', 'sample', '--mlm_probability', '1.5'],
     '--mlm_probability: must be a number in (0, 1)'),
    (['evaluate', '--model_path', '{model}', '--dataset', 'sample', '--device', 'tpu'],
     '--device: must be one of cpu, cuda, mps'),
    (['score', '--model_path', '{model}', 'not a domain'], 'not a usable domain'),
    (['score', '--model_path', '{model}'], 'no domains to process'),
    (['score', '--model_path', '{model}', '--batch_size', '0', 'a.io'],
     '--batch_size: must be an integer >= 1'),
    (['embed', '--model_path', '{model}', 'a.io', '--output', '{d}/e.csv'], '.npy or .parquet'),
    (['embed', '--model_path', '{model}', '--file', '{d}/missing.txt', '--output', '{d}/e.npy'],
     'not found'),
])
def test_bad_input_is_one_line_on_stderr(tiny_run, tmp_path, args, expected):
    r = cli(*[a.format(d=tmp_path, model=tiny_run / 'final-model') for a in args])
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], r.stderr
