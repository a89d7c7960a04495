"""Fine-tuning: the saved classifier leaves the workbench, resume is
exact, bad input is one line, the comparison's arms."""
import io, json, re, subprocess, sys, textwrap
import numpy as np
import pytest
import torch
from transformers import CanineForSequenceClassification, CanineModel
from domain_canine.cli import main
from domain_canine.callbacks import Callback
from domain_canine.finetune import Classifier, build_classifier, finetune, finetune_config
from domain_canine.model import DomainCanineMLM, canine_config
from domain_canine.tasks import write_task
from conftest import QUIET


@pytest.fixture(scope='module')
def task(tmp_path_factory):
    """The bundled tld task (a few hundred rows) and a tiny pre-trained
    model whose weights no random start shares."""
    d = tmp_path_factory.mktemp('finetune')
    path, _ = write_task('tld', d / 'tld.csv', limit=600)
    torch.manual_seed(0)
    model = DomainCanineMLM(CanineModel(canine_config('tiny')))
    with torch.no_grad():
        # LayerNorm's ones and zeros too
        for p in model.encoder.parameters(): p.mul_(1.5).add_(0.25)
    model.save(d / 'pretrained')
    return d, path, d / 'pretrained'

def settings(task, out, **more) -> dict:
    d, path, pretrained = task
    return dict(dict(dataset=str(path), model_name_or_path=str(pretrained), output_dir=str(d / out),
                     max_steps=12,
                     batch_size=16, learning_rate=3e-3, eval_steps=4, save_steps=4, logging_steps=2,
                     device='cpu'), **more)

@pytest.fixture(scope='module')
def reference(task):
    "An uninterrupted run of 12 steps, through the command line (in process)."
    s = settings(task, 'reference')
    argv = ['finetune', '--task', s.pop('dataset')] + [f'--{k}={v}' for k, v in s.items()]
    assert main(argv) == 0
    return task[0] / 'reference'

def encoder_of(path) -> dict:
    return CanineForSequenceClassification.from_pretrained(path).canine.state_dict()

def train_losses(run) -> dict:
    lines = [json.loads(l) for l in (run / 'metrics.jsonl').read_text().splitlines()]
    return {m['step']: (m['loss'] if m['type'] == 'train' else m['val_loss']) for m in lines}

LOAD_WITH_TRANSFORMERS_ONLY = '''
import json, sys
from transformers import CanineForSequenceClassification, pipeline
model = CanineForSequenceClassification.from_pretrained(sys.argv[1])
out = pipeline('text-classification', model=sys.argv[1], device='cpu')(['example', 'shop-online'], top_k=None)
assert not [m for m in sys.modules if m.startswith('domain_canine')]
print(json.dumps(dict(id2label=model.config.id2label, out=out)))
'''

def test_the_saved_classifier_predicts_through_transformers_alone(reference):
    r = subprocess.run([sys.executable, '-c', textwrap.dedent(LOAD_WITH_TRANSFORMERS_ONLY),
                        str(reference / 'final-model')],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    classes = json.loads((reference / 'test_results.json').read_text())['classes']
    assert list(got['id2label'].values()) == classes == ['com', 'de', 'net', 'org', 'xyz']
    for scores in got['out']:
        assert sorted(s['label'] for s in scores) == classes
        assert abs(sum(s['score'] for s in scores) - 1) < 1e-5

def test_the_run_writes_evaluations_and_test_results(reference):
    evals = [json.loads(l) for l in (reference / 'metrics.jsonl').read_text().splitlines()
             if '"eval"' in l]
    assert [m['step'] for m in evals] == [4, 8, 12] and all(0 <= m['val_accuracy'] <= 1
                                                            for m in evals)
    r = json.loads((reference / 'test_results.json').read_text())
    assert r['test_rows'] == len(r['texts']) == len(r['labels']) == len(r['probabilities']) > 0
    assert 0 <= r['test_accuracy'] <= 1 and all(abs(sum(p) - 1) < 1e-4 for p in r['probabilities'])
    assert json.loads((reference / 'task.json').read_text())['report']['split_by'] == 'hash'

class StopAt(Callback):
    "Stops the run after step `n` as a signal would (a checkpoint of that step, no final model)."
    def __init__(self, n): self.n = n
    def on_step(self, trainer):
        if trainer.state.step == self.n: trainer.request_stop(by='a test')

def test_a_stopped_and_resumed_run_is_bit_for_bit_the_uninterrupted_one(task, reference):
    s = settings(task, 'stopped')
    stopped = finetune(finetune_config(**s), [StopAt(6)], **QUIET)
    assert stopped.name == 'checkpoint-step-6' and not (stopped.parent / 'final-model').exists()
    # its loggers too
    final = finetune(finetune_config(**s, resume_from='latest', tensorboard=True), **QUIET)
    assert list((stopped.parent / 'tensorboard').glob('events.out.tfevents.*'))
    a, b = (CanineForSequenceClassification.from_pretrained(p).state_dict()
            for p in (reference / 'final-model', final))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert train_losses(reference) == train_losses(stopped.parent)
    assert (json.loads((reference / 'test_results.json').read_text())['probabilities']
            == json.loads((stopped.parent / 'test_results.json').read_text())['probabilities'])

def bad_file(folder, name, rows) -> str:
    (folder / name).write_text('\n'.join(rows) + '\n')
    return str(folder / name)

def test_bad_input_is_one_line(task, tmp_path, capsys):
    d, path, pretrained = task
    domains = ['example.com', 'shop.net', 'news.org', 'mail.de', 'bank.com', 'cars.net']
    files = dict(
        no_label=(bad_file(tmp_path, 'a.csv', ['domain', *domains]), [], 'label'),
        unknown_label=(str(path), ['--label_column', 'nope'], 'nope'),
        one_class=(bad_file(tmp_path, 'b.csv', ['domain,label', *(f'{x},a' for x in domains)]),
                   [], 'single class'),
        single_example=(bad_file(tmp_path, 'c.csv', ['domain,label',
                                                     *(f'{x},a' for x in domains[:-1]),
                                                     f'{domains[-1]},b']), [], 'single example'),
        mixed=(bad_file(tmp_path, 'd.csv', ['domain,label',
                                            *(f'{x},{l}' for x, l in zip(domains, 'a1a1a1'))]),
               [], 'mix numbers and strings'),
        bad_model=(str(path), ['--model_name_or_path', str(tmp_path / 'nowhere')], 'nowhere'),
        no_validation=(bad_file(tmp_path, 'e.csv', ['domain,label,split',
                                                    *(f'{x},{l},{s}' for x, l, s in
                                                    zip(domains, 'ababab',
                                                        ['train'] * 4 + ['test'] * 2))]),
                       ['--early_stopping_patience', '2',
                        '--model_config', 'tiny', '--batch_size', '2'],
                       'validation split is empty'))
    for name, (file, extra, words) in files.items():
        code = run_main(['finetune', '--task', file, '--output_dir', str(tmp_path / name),
                         '--device', 'cpu', *extra])
        err = capsys.readouterr().err
        assert code in (1,
                        2) and err.startswith('domain-canine: error: ') and words in err, (name, err)
        assert len(err.strip().splitlines()) == 1, (name, err)

def test_bad_settings_are_refused_at_the_door(tmp_path, capsys):
    for argv in (['--output_dir', str(tmp_path)], ['--task', 'x.csv', '--output_dir', str(tmp_path),
                                                   '--split_by', 'rows'],
                 ['--task', 'x.csv', '--output_dir', str(tmp_path), '--test_fraction', '1'],
                 ['--task', 'x.csv', '--output_dir', str(tmp_path), '--model_config', 'tiny',
                  '--model_name_or_path', 'm']):
        code = run_main(['finetune', *argv])
        err = capsys.readouterr().err
        assert code in (1,
                        2) and err.startswith('domain-canine') and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / 'x.csv').exists() and not list(tmp_path.iterdir())  # nothing written

def run_main(argv) -> int:
    "The exit status of the command: main's for a user error, argparse's for a flag it refuses."
    try: return main(argv)
    except SystemExit as e: return e.code

def test_freeze_encoder_trains_only_the_head(task, reference):
    frozen = finetune(finetune_config(**settings(task, 'frozen', freeze_encoder=True, max_steps=4,
                                                 save_steps=2)), **QUIET)
    pretrained = DomainCanineMLM.load(task[2]).encoder.state_dict()
    assert all(torch.equal(v, pretrained[k]) for k, v in encoder_of(frozen).items())
    # without the switch the encoder does train: the check can fail
    tuned = encoder_of(reference / 'final-model')
    assert not all(torch.equal(v, pretrained[k]) for k, v in tuned.items())
    head = lambda p: CanineForSequenceClassification.from_pretrained(p).classifier.weight
    # the head does train
    assert not torch.equal(head(frozen), head(frozen.parent / 'checkpoint-step-2'))

def test_from_scratch_loads_none_of_the_pretrained_weights(task):
    pretrained = DomainCanineMLM.load(task[2]).encoder.state_dict()
    classes = ['com', 'de']
    loaded = build_classifier(finetune_config(**settings(task, 'x')), classes).encoder.state_dict()
    scratch = build_classifier(finetune_config(**settings(task, 'x', from_scratch=True)),
                               classes).encoder.state_dict()
    assert all(torch.equal(v, pretrained[k]) for k, v in loaded.items())
    assert not any(torch.equal(v, pretrained[k]) for k, v in scratch.items())
    assert {k: v.shape for k, v in scratch.items()} == {k: v.shape for k, v in pretrained.items()}


def test_predict_prints_a_classifiers_classes(reference, capsys, monkeypatch):
    """`predict` on a classifier directory: each domain's top classes, high
    to low; JSON; the prompt; bad input in one line."""
    final, results = str(reference
                         / 'final-model'), json.loads((reference / 'test_results.json').read_text())
    assert main(['predict', '--model_path', final, '--top_k', '3', 'Example', 'shop-online']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [l.split(' → ')[0] for l in lines] == ['Example', 'shop-online']
    for line in lines:  # Example → com  (com 31.2%  net 20.5%  xyz 17.2%)
        label, shown = re.fullmatch(r'\S+ → (\w+)  \((.*)\)', line).groups()
        top = [(c, float(p)) for c, p in re.findall(r'(\w+) ([\d.]+)%', shown)]
        probs = [p for _, p in top]
        assert len(top) == 3 and top[0][0] == label and probs == sorted(probs, reverse=True)
    assert main(['predict', '--model_path', final, '--json', '--top_k', '9', 'example']) == 0
    (answer,) = json.loads(capsys.readouterr().out)
    # --top_k above the classes: all of them
    assert sorted(t['label'] for t in answer['top']) == results['classes']
    assert answer['label'] == answer['top'][0]['label']
    assert answer['text'] == 'example' and abs(sum(t['prob'] for t in answer['top']) - 1) < 1e-5
    monkeypatch.setattr('sys.stdin', io.StringIO('example\nexa mple\nshop-online\n\n'))
    assert main(['predict', '--model_path', final, '--interactive']) == 0
    out, err = capsys.readouterr()
    assert 'a domain to classify' in err and 'not a domain fine-tuning would accept' in err and out.count(' → ') == 2
    # one refused: nothing printed
    assert run_main(['predict', '--model_path', final, 'example', 'goo?le']) == 1
    out, err = capsys.readouterr()
    assert out == '' and err.startswith('domain-canine: error: ') and len(err.strip().splitlines()) == 1
    assert "'goo?le' is not a domain fine-tuning would accept (invalid character)" in err

def test_the_classifier_reads_domains_as_fine_tuning_did(reference):
    """Its probabilities for the test side are the ones the run wrote:
    the same cleaning, encoding and class order."""
    results = json.loads((reference / 'test_results.json').read_text())
    classifier = Classifier.from_dir(reference / 'final-model', 'cpu')
    assert classifier.classes == results['classes']
    typed = [t.upper() + '.' for t in results['texts']]  # cleaned back to the texts
    probs = classifier.probabilities(typed, batch_size=16)
    assert probs.shape == (results['test_rows'],
                           5) and np.allclose(probs, results['probabilities'], atol=1e-5)

def test_a_run_without_room_for_its_checkpoints_is_refused_before_it_starts(task, capsys, monkeypatch):
    import shutil
    monkeypatch.setattr(shutil, 'disk_usage',
                        lambda p: shutil._ntuple_diskusage(1 << 30, (1 << 30) - (1 << 20), 1 << 20))
    s = settings(task, 'no-room')
    assert main(['finetune', '--task', s.pop('dataset')] + [f'--{k}={v}' for k,
                                                            v in s.items()]) == 1
    err = capsys.readouterr().err
    assert err.startswith('domain-canine: error: --output_dir') and 'of them at epoch ends needs about' in err, err
    assert len(err.strip().splitlines()) == 1 and not (task[0] / 'no-room').exists()

def test_resuming_with_other_task_settings_warns(task, reference, capsys):
    s = settings(task, 'other-split', test_fraction=0.3,
                 resume_from=str(reference / 'checkpoint-step-8'))
    assert main(['finetune', '--task', s.pop('dataset')] + [f'--{k}={v}' for k,
                                                            v in s.items()]) == 0
    assert 'warning: test_fraction changed since checkpoint-step-8' in capsys.readouterr().out
