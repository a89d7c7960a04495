"""The notebook widgets without a browser: their methods, as the user
interface calls them, on a real tiny run."""
import json, re, shutil
import numpy as np
import pytest
import domain_canine.widgets as widgets_module
from domain_canine.model import build_model
from domain_canine.analysis import draw_curves, ema, read_metrics
from domain_canine.ngram import CharNgramLM
from domain_canine.finetune import Classifier, is_classifier_dir
from domain_canine.widgets import (ClassifierWidget, LookalikeExplorer, LossCurves, MaskPredictor,
                                   find_models,
                                   find_runs)


@pytest.fixture(scope='module')
def runs(tmp_path_factory, tiny_run, tiny_classifier):
    """A runs folder: the tiny run (final and best models, checkpoints),
    a model without metrics, a fine-tuning run."""
    root = tmp_path_factory.mktemp('runs')
    # whole: a checkpoint missing a file its checkpoint.json lists is refused
    shutil.copytree(tiny_run, root / 'tiny')
    shutil.copytree(tiny_classifier, root / 'tld')
    build_model(None, 'tiny').save(root / 'other' / 'final-model')
    return root


class FakeTimer:
    "`threading.Timer` on a clock the test turns: nothing fires until `fire_pending` is called."
    made: list['FakeTimer'] = []
    def __init__(self, delay, fn):
        self.delay, self.fn, self.started, self.cancelled = delay, fn, False, False
        FakeTimer.made.append(self)
    def start(self): self.started = True
    def cancel(self): self.cancelled = True
    def join(self): pass
    @classmethod
    def fire_pending(cls) -> int:
        "Run every started, uncancelled timer once (as if its delay had passed); how many ran."
        due = [t for t in cls.made if t.started and not t.cancelled]
        for t in due:
            t.cancelled = True
            t.fn()
        return len(due)

@pytest.fixture
def fake_timers(monkeypatch):
    FakeTimer.made = []
    monkeypatch.setattr(widgets_module.threading, 'Timer', FakeTimer)
    return FakeTimer


def test_find_models_and_runs(runs):
    found = [str(p.relative_to(runs)) for p in find_models(runs)]
    assert found[:3] == ['other/final-model', 'tiny/final-model', 'tiny/best-model']
    assert found[3:] == ['tiny/checkpoint-step-30', 'tiny/checkpoint-step-20',
                         'tiny/checkpoint-epoch-1']
    # the loss curves show fine-tuning runs too
    assert find_runs(runs) == [runs / 'tiny', runs / 'tld']
    assert find_models(runs / 'missing') == [] and find_runs(runs / 'missing') == []


def test_predictor_fills_and_reports(runs):
    w = MaskPredictor(runs, model_path=runs / 'tiny' / 'final-model', text='goo?le.c?m', top_k=4,
                      delay=0, device='cpu')
    assert w.model_select.value == str(runs / 'tiny' / 'final-model')
    p = w.predict()
    assert [m.position for m in p.masks] == [3, 8] and len(p.filled) == 10 and '?' not in p.filled
    assert w.bars.value.count('class="dc-bar-row"') == 8 and w.filled.value.count('dc-hit') == 2
    assert w.status.value.startswith(f'goo?le.c?m → {p.filled}')
    w.domain_input.value = 'goo gle.?om'  # refused: the reason instead of predictions
    assert 'whitespace' in w.message.value and w.bars.value == '' and w.filled.value == ''
    w.domain_input.value = ''
    assert w.message.value == '' and 'type a domain' in w.status.value
    w.domain_input.value = 'a?.io'
    w.top_k_slider.value = 2
    assert w.bars.value.count('class="dc-bar-row"') == 2 and w.message.value == ''


def test_predictor_model_choice(runs):
    w = MaskPredictor(runs, text='a?.io', delay=0, device='cpu')
    assert w.model_select.value == str(runs / 'other' / 'final-model')
    # choosing a checkpoint predicts with it
    w.model_select.value = str(runs / 'tiny' / 'checkpoint-step-20')
    assert w.status.value.startswith('a?.io → ') and set(w._predictors) == {str(runs / 'other' / 'final-model'),
                                                                          str(runs / 'tiny' / 'checkpoint-step-20')}
    w.path_input.value = str(runs / 'tiny')  # a run folder is not a model directory
    w.load_path()
    assert 'not a model directory' in w.message.value
    empty = MaskPredictor(runs / 'missing', text='a?.io', delay=0)
    assert 'no model directory' in empty.message.value


def test_predictor_waits_for_a_pause(runs, fake_timers):
    w = MaskPredictor(runs, delay=0.15, device='cpu')
    seen = []
    w.predict = lambda: seen.append(w.domain_input.value)
    # typed faster than the delay
    for text in ('e', 'ex', 'ex?', 'ex?.com'): w.domain_input.value = text
    assert seen == [] and [t.delay for t in fake_timers.made] == [0.15] * 4
    assert fake_timers.fire_pending() == 1  # each keystroke cancelled the previous timer
    assert seen == ['ex?.com']


def test_ema_and_draw_curves(tiny_run):
    assert ema([2.0, 4.0], 0.0).tolist() == [2.0, 4.0]
    assert np.allclose(ema([3.0] * 5, 0.8), 3.0)
    m = read_metrics(tiny_run)
    fig = draw_curves({'tiny': m}, ['loss', 'accuracy', 'learning rate'], smoothing=0.5,
                      log_scale=True, steps=(10, 25))
    loss, accuracy, lr = fig.axes
    # lr is never smoothed
    assert len(loss.lines) == 3 and len(accuracy.lines) == 1 and len(lr.lines) == 1
    assert all(10 <= x <= 25 for line in fig.axes[0].lines for x in line.get_xdata())
    assert loss.get_yscale() == 'log' and accuracy.get_yscale() == 'linear'
    no_eval = draw_curves({'tiny': m}, ['loss'], smoothing=0.0, show_eval=False)
    assert len(no_eval.axes[0].lines) == 1


def test_loss_curves_follow_a_run_that_is_still_training(tmp_path, tiny_run):
    "Copy a finished run's metrics line by line into a new run, reloading as they arrive."
    lines = (tiny_run / 'metrics.jsonl').read_text().splitlines()
    live = tmp_path / 'live'
    live.mkdir()
    (live / 'metrics.jsonl').write_text('\n'.join(lines[:3]) + '\n')
    w = LossCurves(tmp_path)
    first = w.step_range.max
    assert w.run_select.value == (str(live),) and first == max(json.loads(l)['step']
                                                               for l in lines[:3])
    before = w.plot.value
    with open(live / 'metrics.jsonl', 'a') as f: f.write('\n'.join(lines[3:]) + '\n')
    w.reload()
    assert w.step_range.max == 30 and w.step_range.value == (0, 30) and w.plot.value != before
    w.smoothing.value = 0.9
    assert 'smoothing 0.90' in w.status.value
    w.show_eval.value, w.log_scale.value = False, True
    w.metric_select.value = ['perplexity']
    assert w.status.value.startswith('1 run · perplexity')


def test_loss_curves_auto_reload(tmp_path, tiny_run, fake_timers):
    lines = (tiny_run / 'metrics.jsonl').read_text().splitlines()
    run = tmp_path / 'run'
    run.mkdir()
    (run / 'metrics.jsonl').write_text(lines[0] + '\n')
    w = LossCurves(tmp_path, interval=0.05)
    w.auto_reload.value = True
    assert [t.delay for t in fake_timers.made] == [0.05] and w.step_range.max < 30
    (run / 'metrics.jsonl').write_text('\n'.join(lines) + '\n')
    # the interval passes: a reload, and the timer is armed again
    assert fake_timers.fire_pending() == 1
    assert w.step_range.max == 30 and len(fake_timers.made) == 2 and w._timer is fake_timers.made[-1]
    w.auto_reload.value = False
    assert w._timer is None and fake_timers.made[-1].cancelled and fake_timers.fire_pending() == 0


CLASSIFIERS = ['tld/final-model', 'tld/best-model', 'tld/checkpoint-step-6',
               'tld/checkpoint-step-3']

def test_each_tool_offers_only_the_directories_it_can_use(runs):
    assert [str(p.relative_to(runs)) for p in find_models(runs, is_classifier_dir)] == CLASSIFIERS
    masks = MaskPredictor(runs, delay=0, device='cpu')
    lookalikes = LookalikeExplorer(runs, ngram=CharNgramLM(2).fit(['example.com']),
                                   delay=0, device='cpu')
    classes = ClassifierWidget(runs, delay=0, device='cpu')
    offered = lambda w: [label for label, _ in w.model_select.options]
    assert offered(masks) == offered(lookalikes) == [str(p.relative_to(runs))
                                                     for p in find_models(runs)]
    assert not [o for o in offered(masks)
                if o.startswith('tld/')] and offered(classes) == CLASSIFIERS
    masks.path_input.value = classes.path_input.value = str(runs / 'tld' / 'final-model')
    masks.load_path()
    assert 'is not a model directory' in masks.message.value and masks.model_select.value != classes.path_input.value
    # a masked-language model is no classifier
    classes.path_input.value = str(runs / 'tiny' / 'final-model')
    classes.load_path()
    assert 'is not a classifier directory' in classes.message.value
    assert 'no classifier directory under' in ClassifierWidget(runs / 'tiny', delay=0).message.value


def shown_bars(w: ClassifierWidget) -> list[tuple[str, float]]:
    "The (class, percentage) of every bar the widget shows, top to bottom."
    return [(c, float(p)) for c,
            p in re.findall(r'<code>([^<]*)</code>.*?<span>([\d.]+)%</span>', w.bars.value)]


def test_classifier_widget_shows_the_classes_most_probable_first(runs):
    classes = json.loads((runs / 'tld' / 'task.json').read_text())['classes']
    w = ClassifierWidget(runs, text=' Example ', delay=0, device='cpu')
    answer, bars = w.predict(), shown_bars(w)
    assert w.model_select.value == str(runs / 'tld' / 'final-model') and answer.text == 'example'
    assert sorted(c for c, _ in bars) == classes  # all of them: 5 classes, 10 shown at most
    assert abs(sum(p for _, p in bars) - 100) < 0.5
    probs = Classifier.from_dir(runs / 'tld' / 'final-model', 'cpu').probabilities(['example'])[0]
    # high to low
    assert [c for c, _ in bars] == [classes[i] for i in np.argsort(-probs, kind='stable')]
    assert [p for _, p in bars] == [round(100 * float(probs[classes.index(c)]), 1) for c, _ in bars]
    assert f'<b class="dc-label">{bars[0][0]}</b>' in w.predicted.value and w.message.value == ''
    assert re.fullmatch(rf'example → {bars[0][0]} \(5 of 5 classes shown\)  \(\d+ ms\)',
                        w.status.value)
    w.top_k_slider.value = 2
    assert shown_bars(w) == bars[:2]
    # another checkpoint: loaded, and asked
    w.model_select.value = str(runs / 'tld' / 'checkpoint-step-3')
    assert set(w._predictors) == {str(runs / 'tld' / n)
                                  for n in ('final-model', 'checkpoint-step-3')}


def test_classifier_widget_refuses_what_fine_tuning_would(runs):
    w = ClassifierWidget(runs, text='example', delay=0, device='cpu')
    for typed, reason in (('exa mple', 'whitespace or control'), ('goo?le', 'invalid character'),
                          ('a' * 64 + '.com', 'label too long'), ('-shop', 'hyphen at label edge')):
        w.domain_input.value = typed
        assert reason in w.message.value and 'fine-tuning would accept' in w.message.value, (typed, w.message.value)
        assert w.bars.value == w.predicted.value == '' and w.status.value == 'invalid input'
    w.domain_input.value = '  '
    assert w.message.value == w.bars.value == '' and w.status.value.startswith('type a domain')
    w.domain_input.value = 'shop-online'
    assert len(shown_bars(w)) == 5 and w.message.value == ''
