"""Judging classifiers (13c_compare, and 13d_finetune's arms): metrics against hand numbers and
scikit-learn, arms, spread, finetune.jsonl, the compare command with fine-tuned arms."""
import json, os, shutil, subprocess, sys
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from domain_canine.analysis import read_finetune
from domain_canine.cli import main
from domain_canine.compare import (ARMS, Arm, append_finetune, classifier_metrics, compare,
                                   format_comparison,
                                   majority_predict, summarise, within_noise)
from domain_canine.core import WriteError
from domain_canine.tasks import LabelledTask, load_task

WORDS = {'com': ['shop', 'store', 'cloud', 'tech', 'online', 'market'],
         'de': ['laden', 'kaufen', 'schule', 'haus', 'welt', 'markt']}
PREFIXES = ('my', 'the', 'best', 'top', 'go', 'new', 'big', 'e', 'one', 'pro')

def toy_rows() -> tuple[list[str], list[str]]:
    "Names whose words tell their TLD: a task TF-IDF learns and the majority class does not."
    rows = [(f'{p}{w}', t) for t, ws in WORDS.items() for w in ws for p in PREFIXES]
    return [r[0] for r in rows], [r[1] for r in rows]

def write_toy(path, sides=None) -> str:
    """The toy rows as a CSV file with a split column: every fourth
    row tested, unless `sides` says otherwise."""
    texts, labels = toy_rows()
    sides = sides or ['test' if i % 4 == 0 else 'train' for i in range(len(texts))]
    path.write_text('domain,label,split\n' + ''.join(f'{t},{l},{s}\n' for t, l,
                                                     s in zip(texts, labels, sides)))
    return str(path)

@pytest.fixture(scope='module')
def toy(tmp_path_factory) -> LabelledTask:
    return load_task(write_toy(tmp_path_factory.mktemp('toy') / 'toy.csv'))

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
    with pytest.raises(ValueError, match=r'shape \(2, 2\)'):
        classifier_metrics([0, 1], [[1, 0]], ['no', 'yes'])

def test_tfidf_beats_majority_and_runs_are_deterministic(toy):
    first, again = (compare(toy, list(ARMS.values()), seeds=(0, 1, 2)) for _ in range(2))
    strip = lambda rs: [{k: v for k, v in r.items() if k != 'seconds'} for r in rs]
    assert strip(first) == strip(again)
    assert [r['arm'] for r in first] == ['tfidf', 'majority']  # deterministic arms: run once
    tfidf, majority = first
    assert tfidf['macro_f1'] > 0.9 > majority['macro_f1'] and majority['roc_auc'] == 0.5
    assert (tfidf['n_train'], tfidf['n_test']) == (90, 30)

def test_a_seeded_arm_runs_per_seed_and_the_spread_is_measured(toy):
    noisy = lambda task, seed: np.random.default_rng(seed).dirichlet([1, 1], len(task.test.texts))
    records = compare(toy, [Arm('noisy', noisy), ARMS['tfidf']], seeds=range(3))
    assert [r['seed'] for r in records] == [0, 1, 2, 0]
    s = summarise(records)
    f1 = [r['macro_f1'] for r in records[:3]]
    assert s['noisy']['seeds'] == 3 and s['noisy']['macro_f1']['std'] == pytest.approx(np.std(f1, ddof=1))
    assert (s['noisy']['macro_f1']['min'], s['noisy']['macro_f1']['max']) == (min(f1), max(f1))
    assert within_noise(s['noisy'], s['noisy']) and not within_noise(s['noisy'], s['tfidf'])
    table = format_comparison(s).splitlines()
    assert table[0] == '| arm | accuracy | macro-F1 | ROC-AUC | time (s) | seeds |' and ' ± ' in table[2]
    assert '(best)' in table[3]

def test_a_wrong_arm_and_a_task_without_two_classes_are_refused(toy, tmp_path):
    with pytest.raises(ValueError, match='expected'):
        compare(toy, [Arm('bad', lambda task, seed: np.ones((1, 2)))])
    _, labels = toy_rows()
    one_class = write_toy(tmp_path / 'one.csv', ['train' if l == 'com' else 'test' for l in labels])
    with pytest.raises(Exception, match='two classes on the train side'): load_task(one_class)
    untested = load_task(write_toy(tmp_path / 'untested.csv', ['train'] * len(labels)))
    with pytest.raises(Exception, match='a comparison needs a test side'):
        compare(untested, [ARMS['tfidf']])

def test_finetune_jsonl_round_trip_keeps_the_old_lines_on_failure(toy, tmp_path, monkeypatch):
    (tmp_path / 'checkpoint-40').mkdir()
    (tmp_path / 'checkpoint-40' / 'trainer_state.json').write_text(json.dumps(dict(step=40)))
    tuned = compare(toy, [Arm('majority', majority_predict, str(tmp_path / 'checkpoint-40'), 40)])
    base = compare(toy, [ARMS['majority']])
    assert tuned[0]['step'] == 40 and base[0]['step'] is None
    append_finetune(tmp_path, tuned)
    path = append_finetune(tmp_path, base)
    assert read_finetune(tmp_path) == json.loads(json.dumps(base + tuned))  # stepless first
    before = path.read_text()
    def refuse(*a): raise OSError(28, 'No space left on device')
    monkeypatch.setattr(os, 'replace', refuse)
    with pytest.raises(WriteError, match='no space left'): append_finetune(tmp_path, base)
    assert path.read_text() == before and sorted(p.name
                                                 for p in tmp_path.iterdir()) == ['checkpoint-40', path.name]

def test_compare_command_end_to_end(tmp_path):
    "The real command on a small file: the table, the records appended, one line for bad input."
    texts, labels = toy_rows()
    (tmp_path / 'toy.csv').write_text('domain,label\n'
                                      + ''.join(f'{t},{l}\n' for t, l in zip(texts, labels)))
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
    assert capsys.readouterr().err.strip().splitlines() == [f'domain-canine: error: dataset file '
                                                            f'not found: {tmp_path / "missing.csv"}']
    (tmp_path / 'toy.csv').write_text('domain,label\na.com,x\n')
    assert main(['compare', '--task', str(tmp_path / 'toy.csv'), '--limit', '5']) == 1
    assert 'a limit applies to the built-in tasks' in capsys.readouterr().err
    with pytest.raises(SystemExit) as e: main(['compare', '--task', 'tld', '--seeds', '0'])
    assert e.value.code == 2 and 'must be an integer >= 1' in capsys.readouterr().err

def test_fine_tuned_arms_from_every_checkpoint_of_a_run(tiny_run, tmp_path, capsys, monkeypatch):
    """The command with --models: per checkpoint a finetuned and a frozen
    arm, one scratch arm, the same test side."""
    import domain_canine.training as training_module
    def refuse(*a, **k): raise AssertionError('an arm wrote a checkpoint')  # an arm keeps nothing
    monkeypatch.setattr(training_module, 'save_checkpoint', refuse)
    run = shutil.copytree(tiny_run, tmp_path / 'run')
    steps = sorted(int(p.name.rpartition('-')[2]) for p in run.glob('checkpoint-step-*'))
    argv = ['compare', '--task', write_toy(tmp_path / 'toy.csv'), '--models', str(run), '--seeds',
            '2',
            '--max_steps', '3', '--batch_size', '8', '--device', 'cpu', '--json']
    assert main(argv) == 0
    out, err = capsys.readouterr()
    printed = [json.loads(line) for line in out.splitlines()]
    arms = [(r['arm'], r['step'], r['seed']) for r in printed]
    tuned = [(k, s, seed) for s in steps for k in ('finetuned', 'frozen') for seed in (0, 1)]
    assert sorted(arms, key=str) == sorted([('tfidf', None, 0), ('majority', None, 0), *tuned,
                                            ('scratch', None, 0), ('scratch', None, 1)], key=str)
    assert {r['n_test'] for r in printed} == {30} and 'records appended to' in err
    assert err.count(': macro-F1 ') == len(printed) and f'scratch {run}/checkpoint-step-{steps[0]}, seed 1' in err
    assert read_finetune(run) == sorted(printed,
                                        key=lambda r: (r['step'] is not None, r['step'] or 0))
    assert main(['compare', '--task', 'tld', '--arms', 'scratch']) == 1
    assert 'start from a model: give it with --models' in capsys.readouterr().err
