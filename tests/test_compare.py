"Judging classifiers (13c_compare): metrics against hand numbers and scikit-learn, arms, spread, finetune.jsonl, compare."
import json, os, subprocess, sys
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from domain_canine.analysis import read_finetune
from domain_canine.cli import main
from domain_canine.compare import (ARMS, TaskSplit, append_finetune, classifier_metrics, compare, format_comparison,
                                   load_task, majority_arm, summarise, task_split, tfidf_arm, within_noise)
from domain_canine.core import WriteError
from domain_canine.tasks import labelled_data

WORDS = {'com': ['shop', 'store', 'cloud', 'tech', 'online', 'market'],
         'de': ['laden', 'kaufen', 'schule', 'haus', 'welt', 'markt']}
PREFIXES = ('my', 'the', 'best', 'top', 'go', 'new', 'big', 'e', 'one', 'pro')

def toy_rows() -> tuple[list[str], list[str]]:
    "Names whose words tell their TLD: a task TF-IDF learns and the majority class does not."
    rows = [(f'{p}{w}', t) for t, ws in WORDS.items() for w in ws for p in PREFIXES]
    return [r[0] for r in rows], [r[1] for r in rows]

@pytest.fixture(scope='module')
def toy() -> TaskSplit:
    texts, labels = toy_rows()
    sides = np.array(['test' if i % 4 == 0 else 'train' for i in range(len(texts))])
    return task_split(labelled_data(texts, labels), sides, 'toy', 'column')

def test_metrics_on_a_hand_made_binary_case():
    m = classifier_metrics([0, 0, 1, 1], [[.8, .2], [.2, .8], [.3, .7], [.1, .9]], ['no', 'yes'])
    assert m['accuracy'] == pytest.approx(3 / 4) and m['macro_f1'] == pytest.approx(11 / 15)
    assert m['roc_auc'] == pytest.approx(3 / 4)
    assert m['per_class']['no'] == dict(precision=1.0, recall=0.5, support=2)
    assert m['per_class']['yes']['precision'] == pytest.approx(2 / 3)

def test_metrics_match_scikit_learn_on_random_multiclass():
    rng = np.random.default_rng(0)
    truth, proba = rng.integers(0, 4, 200), rng.dirichlet(np.ones(4), 200)
    m = classifier_metrics(truth, proba, list('abcd'))
    assert m['accuracy'] == pytest.approx(accuracy_score(truth, proba.argmax(1)))
    assert m['macro_f1'] == pytest.approx(f1_score(truth, proba.argmax(1), average='macro'))
    assert m['roc_auc'] is None and sum(c['support'] for c in m['per_class'].values()) == 200
    binary = classifier_metrics(truth % 2, np.c_[1 - proba[:, 0], proba[:, 0]], ['x', 'y'])
    assert binary['roc_auc'] == pytest.approx(roc_auc_score(truth % 2, proba[:, 0]))

def test_metrics_edge_cases():
    absent = classifier_metrics([0, 1, 1], np.eye(3)[[0, 1, 2]], ['a', 'b', 'c'])
    assert absent['per_class']['c'] == dict(precision=0.0, recall=None, support=0)
    one = classifier_metrics([0, 1, 1], np.eye(3)[[1, 1, 1]], ['a', 'b', 'c'])
    assert one['per_class']['a']['precision'] is None and one['macro_f1'] == pytest.approx(0.4)
    assert classifier_metrics([1, 1], [[.4, .6], [.7, .3]], ['no', 'yes'])['roc_auc'] is None
    with pytest.raises(ValueError, match=r'shape \(2, 2\)'): classifier_metrics([0, 1], [[1, 0]], ['no', 'yes'])

def test_tfidf_beats_majority_and_runs_are_deterministic(toy):
    first, again = compare(toy, ARMS, seeds=(0, 1, 2)), compare(toy, ARMS, seeds=(0, 1, 2))
    strip = lambda rs: [{k: v for k, v in r.items() if k != 'seconds'} for r in rs]
    assert strip(first) == strip(again)
    assert [r['arm'] for r in first] == ['tfidf', 'majority']  # deterministic arms: run once
    tfidf, majority = first
    assert tfidf['macro_f1'] > 0.9 > majority['macro_f1'] and majority['roc_auc'] == 0.5
    assert (tfidf['n_train'], tfidf['n_test']) == (90, 30)

def test_a_seeded_arm_runs_per_seed_and_the_spread_is_measured(toy):
    noisy = lambda task, seed: np.random.default_rng(seed).dirichlet([1, 1], len(task.test.texts))
    records = compare(toy, dict(noisy=noisy, tfidf=tfidf_arm), seeds=range(3))
    assert [r['seed'] for r in records] == [0, 1, 2, 0]
    s = summarise(records)
    f1 = [r['macro_f1'] for r in records[:3]]
    assert s['noisy']['seeds'] == 3 and s['noisy']['macro_f1']['std'] == pytest.approx(np.std(f1, ddof=1))
    assert (s['noisy']['macro_f1']['min'], s['noisy']['macro_f1']['max']) == (min(f1), max(f1))
    assert within_noise(s['noisy'], s['noisy']) and not within_noise(s['noisy'], s['tfidf'])
    table = format_comparison(s).splitlines()
    assert table[0] == '| arm | accuracy | macro-F1 | ROC-AUC | time (s) | seeds |' and ' ± ' in table[2]
    assert '(best)' in table[3]

def test_a_wrong_arm_and_a_task_without_two_classes_are_refused(toy):
    with pytest.raises(ValueError, match='expected'): compare(toy, dict(bad=lambda task, seed: np.ones((1, 2))))
    texts, labels = toy_rows()
    with pytest.raises(Exception, match='two classes on the train side'):
        task_split(labelled_data(texts, labels), np.where(np.array(labels) == 'com', 'train', 'test'))

def test_finetune_jsonl_round_trip_keeps_the_old_lines_on_failure(toy, tmp_path, monkeypatch):
    (tmp_path / 'checkpoint-40').mkdir()
    (tmp_path / 'checkpoint-40' / 'trainer_state.json').write_text(json.dumps(dict(step=40)))
    tuned = compare(toy, dict(majority=majority_arm), model=tmp_path / 'checkpoint-40')
    base = compare(toy, dict(majority=majority_arm))
    assert tuned[0]['step'] == 40 and base[0]['step'] is None
    append_finetune(tmp_path, tuned)
    path = append_finetune(tmp_path, base)
    assert read_finetune(tmp_path) == json.loads(json.dumps(base + tuned))  # stepless first
    before = path.read_text()
    def refuse(*a): raise OSError(28, 'No space left on device')
    monkeypatch.setattr(os, 'replace', refuse)
    with pytest.raises(WriteError, match='no space left'): append_finetune(tmp_path, base)
    assert path.read_text() == before and sorted(p.name for p in tmp_path.iterdir()) == ['checkpoint-40', path.name]

def test_compare_command_end_to_end(tmp_path):
    "The real command on a small file: the table, the records appended, one line for bad input."
    texts, labels = toy_rows()
    (tmp_path / 'toy.csv').write_text('domain,label\n' + ''.join(f'{t},{l}\n' for t, l in zip(texts, labels)))
    cmd = [sys.executable, '-m', 'domain_canine', 'compare', '--task', str(tmp_path / 'toy.csv'),
           '--output_dir', str(tmp_path / 'run')]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith('| arm |') and lines[2].startswith('| tfidf') and len(lines) == 4
    assert 'split by hash' in done.stderr and 'records appended to' in done.stderr
    assert [r['arm'] for r in read_finetune(tmp_path / 'run')] == ['tfidf', 'majority']

def test_compare_command_bad_input_is_one_line(tmp_path, capsys):
    assert main(['compare', '--task', str(tmp_path / 'missing.csv')]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [f'domain-canine: error: dataset file not found: {tmp_path / "missing.csv"}']
    (tmp_path / 'toy.csv').write_text('domain,label\na.com,x\n')
    assert main(['compare', '--task', str(tmp_path / 'toy.csv'), '--limit', '5']) == 1
    assert 'a limit applies to the built-in tasks' in capsys.readouterr().err
    with pytest.raises(SystemExit) as e: main(['compare', '--task', 'tld', '--seeds', '0'])
    assert e.value.code == 2 and 'must be an integer >= 1' in capsys.readouterr().err
