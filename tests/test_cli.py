"The command line as a user meets it: train, predict, and one-line errors for bad input."
import json, re
import pytest
from transformers import CanineModel
from conftest import cli, ENTRY_POINT
import subprocess, sys

def test_train_writes_checkpoints_metrics_and_run_info(tiny_run):
    from domain_canine.config import PRESETS
    tiny = PRESETS['tiny']
    steps, every = tiny['max_steps'], tiny['save_steps']
    info = json.loads((tiny_run / 'run.json').read_text())
    # the test run keeps 2 (save_total_limit)
    kept = [f'checkpoint-step-{s}' for s in range(every, steps + 1, every)][-2:]
    epochs = [f'checkpoint-epoch-{e}' for e in range(1, steps // info['steps_per_epoch'] + 1)]
    assert sorted(p.name for p in tiny_run.iterdir()
                  if p.is_dir()) == sorted(['best-model', *epochs, *kept, 'final-model'])
    metrics = [json.loads(l) for l in (tiny_run / 'metrics.jsonl').read_text().splitlines()]
    assert [m['step'] for m in metrics
            if m['type'] == 'train'] == list(range(tiny['logging_steps'], steps + 1,
                                                   tiny['logging_steps']))
    assert {m['step'] for m in metrics
            if m['type'] == 'eval'} >= set(range(tiny['eval_steps'], steps + 1, tiny['eval_steps']))
    assert (info['effective_batch'], info['total_steps'],
            info['config']['model_config']) == (tiny['batch_size'], steps, 'tiny')

def test_checkpoint_loads_in_plain_transformers(tiny_run):
    encoder = CanineModel.from_pretrained(tiny_run / 'final-model')
    assert encoder.config.hidden_size == 32

def test_predict_json(tiny_run):
    r = cli('predict', '--model_path', tiny_run / 'final-model', '--json', '--top_k', 3,
            'goo?le.com', 'ex[MASK]mpl?.org')
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [len(p['masks']) for p in out] == [1, 2]
    assert [m['position'] for m in out[1]['masks']] == [2, 6]
    assert all(len(m['top']) == 3 and sum(t['prob'] for t in m['top']) <= 1.0 + 1e-6 for p in out
               for m in p['masks'])
    assert out[0]['filled'][:3] == 'goo' and out[0]['filled'][4:] == 'le.com' and '?' not in out[0]['filled']

def test_predict_interactive_reports_bad_lines_and_continues(tiny_run):
    r = cli('predict', '--model_path', tiny_run / 'final-model', '--interactive',
            stdin='goo?le.com\nno mask here\na?.io\n\n')
    assert r.returncode == 0, r.stderr
    assert r.stdout.count(' → ') == 2
    assert 'error:' in r.stderr and 'Traceback' not in r.stderr

def test_python_m_matches_the_entry_point():
    a = subprocess.run([sys.executable, '-m', 'domain_canine', 'train', '--help'],
                       capture_output=True, text=True)
    b = subprocess.run([str(ENTRY_POINT), 'train', '--help'], capture_output=True, text=True)
    assert a.returncode == b.returncode == 0 and a.stdout == b.stdout and '--gradient_accumulation_steps' in a.stdout

@pytest.fixture(scope='module')
def bad_files(tmp_path_factory):
    d = tmp_path_factory.mktemp('bad')
    (d / 'only-junk.txt').write_text('\n# comment\nnot a domain\n192.168.1.1\n')
    (d / 'not-a-model').mkdir()
    from domain_canine.model import canine_config
    # an encoder without our MLM head
    CanineModel(canine_config('tiny')).save_pretrained(d / 'bare-encoder')
    return d

# (an unknown preset, a missing corpus and a folder that holds no model: the CLI chapter's checks)
@pytest.mark.parametrize('args, expected', [
    (['train', '--preset', 'tiny', '--dataset', '{d}/only-junk.txt'], 'no usable domains'),
    (['train', '--preset', 'tiny', '--model_config', 'huge'],
     'must be one of tiny, demo, small, canine-c'),
    (['train', '--preset', 'tiny', '--dataset', 'someone/unreachable-dataset'],
     'use --dataset FILE'),
    (['train', '--preset', 'tiny', '--model_name_or_path', 'google/canine-c'],
     'without network access'),
    (['train', '--preset', 'tiny', '--resume_from', '{d}/not-a-model'], 'not a checkpoint'),
    (['predict', '--model_path', '{d}/missing', 'a?.com'], 'not found'),
    (['train', '--batch_size', 'many'], "--batch_size: must be an integer >= 1, got 'many'"),
    (['probe', '--model_path', '{d}/missing'], 'neither a model directory nor a run directory'),
    (['probe', '--model_path', '{d}/bare-encoder'], 'has no MLM head'),
    (['probe', '--model_path', '{d}/bare-encoder', '--tasks', 'guessing'],
     'must be one of ranking, linear_probes'),
    (['probe', '--model_path', '{d}/bare-encoder', '--dataset', '{d}/only-junk.txt'],
     'no usable domains'),
])
def test_bad_input_is_one_line_on_stderr(bad_files, args, expected):
    r = cli(*[a.format(d=bad_files) for a in args])
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], r.stderr
    assert 'Traceback' not in r.stderr

def _readme_arguments() -> dict[str, list[str]]:
    "README's command reference: each command's arguments as listed there."
    from conftest import ROOT
    section = (ROOT / 'README.md').read_text().split('\n## Command reference',
                                                     1)[1].split('\n## ', 1)[0]
    rows = [l.split(' | ') for l in section.splitlines() if l.startswith('| `')]
    return {r[0].strip('| `'): re.findall(r'`([^`]+)`', r[2]) for r in rows}

def _help_arguments(help_text: str) -> list[str]:
    "The arguments a `--help` text lists: `<name>` for positionals, every spelling of each option."
    positional = help_text.split('positional arguments:\n',
                                 1)[1].split('\n\n')[0] if 'positional arguments:' in help_text else ''
    options = help_text.split('options:\n', 1)[1]
    names = [f'<{m}>' for m in re.findall(r'^  (\w+)', positional, re.M)]
    # '--a A, --b A   help': the spellings before the help
    for line in re.findall(r'^  (-.*)', options, re.M):
        names += [s for s in re.findall(r'(?:^|, )(-[\w-]+)', line.split('  ')[0])
                  if s not in ('-h', '--help')]
    return names

def test_readme_lists_every_argument_of_every_command():
    from domain_canine.cli import COMMANDS, build_parser
    sub = next(a for a in build_parser()._actions if a.choices and 'train' in a.choices)
    listed = _readme_arguments()
    assert list(listed) == list(COMMANDS)
    for name, parser in sub.choices.items():
        shown = _help_arguments(parser.format_help())
        assert sorted(listed[name]) == sorted(shown), name

def test_the_readme_check_reads_help_texts():
    """The parsing the check relies on: positionals, options with
    two spellings, options with a value."""
    text = ('usage: x\n\npositional arguments:\n  domains     some\n\noptions:\n  -h, '
            '--help  show\n  --a A       one, --x\n  --b B, --c B\n              two\n')
    assert _help_arguments(text) == ['<domains>', '--a', '--b', '--c']
