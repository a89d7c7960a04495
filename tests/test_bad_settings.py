"""Bad settings and arguments are refused at the door: one line, exit status 2 or 1, no traceback,
nothing written.

The walks are generated from the declarations (`ACCEPTS` for training's settings, `ARGUMENTS` and
the signatures for the other commands): a new setting or flag is covered without touching this file,
and a number without a declaration fails here."""
import argparse, inspect, subprocess, sys, typing
from dataclasses import fields
import pytest
from conftest import cli
from domain_canine.config import ACCEPTS, TrainConfig, resolve_config
from domain_canine.core import ConfigError
from domain_canine.cli import ARGUMENTS, COMMANDS, build_parser, main, train_command

def run(capsys, *argv) -> tuple[int, str, str]:
    "Exit status, stdout and stderr of `domain-canine argv` run in this process."
    try: code = main([str(a) for a in argv])
    except SystemExit as e: code = e.code
    out, err = capsys.readouterr()
    return code, out, err

def assert_refused(code: int, err: str, *expected: str, codes=(1, 2)):
    assert code in codes, (code, err)
    assert len(err.strip().splitlines()) == 1, err
    assert 'Traceback' not in err and err.startswith('domain-canine'), err
    for e in expected: assert e in err, (e, err)

def train_flag(f) -> str:
    return f'--no_{f.name}' if f.default is True else f'--{f.name}'

# --- every setting of training, walked from its declaration

@pytest.mark.parametrize('setting', [f.name for f in fields(TrainConfig)])
def test_every_training_setting_refuses_a_bad_value_before_anything_is_written(setting, tmp_path, capsys):
    # undeclared: KeyError
    f, accepts = next(f for f in fields(TrainConfig) if f.name == setting), ACCEPTS[setting]
    bad = accepts.refused()
    out, cache = tmp_path / 'run', tmp_path / 'cache'
    places = {'output_dir': str(out), 'cache_dir': str(cache)}
    given = [a for k, v in places.items() if k != setting for a in (f'--{k}', v)]
    flag = [f'{train_flag(f)}=yes'] if f.type == 'bool' else [f'--{setting}', str(bad)]
    code, _, err = run(capsys, 'train', '--preset', 'tiny', *given, *flag)
    assert_refused(code, err, train_flag(f), *([] if f.type == 'bool' else [str(accepts)]))
    assert not out.exists() and not cache.exists() and list(tmp_path.iterdir()) == []

@pytest.mark.parametrize('setting', list(ACCEPTS))
def test_resolve_config_refuses_the_same_values_from_python(setting):
    with pytest.raises(ConfigError, match=f'--{setting} must be '):
        resolve_config('tiny', **{setting: ACCEPTS[setting].refused()})

@pytest.mark.parametrize('argv, expected', [  # the holes the issue names, each with its own value
    (['--max_steps', '0'], 'an integer >= 1'), (['--max_steps', '-5'], 'an integer >= 1'),
    (['--learning_rate', '-1'], 'a number >= 0'), (['--num_workers', '-1'], 'an integer >= 0'),
    (['--mask_replace_prob', '2'], 'a number in [0, 1]'),
    (['--validation_fraction', '1'], 'in [0, 1)'),
    (['--max_length', '3'], 'an integer in [5, 16,384]'), (['--warmup_steps', '-1'], '>= 0'),
    (['--weight_decay', '-0.1'], '>= 0'), (['--gradient_clip_val', '-1'], '>= 0'),
    (['--save_total_limit', '0'], '>= 1'),
    (['--eval_samples', '0'], '>= 1'), (['--ddp_timeout', '0'], '>= 1'),
    (['--stream_retries', '-1'], '>= 0'),
    (['--max_bad_steps', '-1'], '>= 0'), (['--early_stopping_patience', '0'], '>= 1'),
    (['--num_samples', '0'], '>= 1'),
    (['--dropout', '1'], 'in [0, 1)'), (['--seed', '-1'], 'in [0, 4,294,967,295]'),
    (['--seed', str(2**32)], '4,294,967,295'),
    (['--device', 'tpu'], 'one of cpu, cuda, mps'), (['--learning_rate', 'nan'], 'a number >= 0'),
    (['--batch_size', '1.5'], 'an integer'), (['--precision', 'fp8'], 'one of auto, bf16'), ])
def test_the_known_holes_are_closed(argv, expected, tmp_path, capsys):
    code, _, err = run(capsys, 'train', '--preset', 'tiny', '--output_dir', tmp_path / 'run', *argv)
    assert_refused(code, err, argv[0], expected, codes=(2,))
    assert not (tmp_path / 'run').exists()

@pytest.mark.parametrize('argv, expected', [  # settings each fine alone, wrong together
    (['--mask_replace_prob', '0.7', '--random_replace_prob', '0.5'], 'must be at most 1'),
    (['--model_config', 'tiny', '--max_length', '600'], '--max_length must be at most 512'),
    (['--cuda_graphs'], '--cuda_graphs needs --compile'),
    (['--compile', '--cuda_graphs', '--gradient_accumulation_steps', '2'],
     'needs --gradient_accumulation_steps 1'),
    (['--streaming', '--full_eval', '--max_steps', '3'], '--full_eval needs a prepared corpus'),
    (['--early_stopping_patience', '2', '--validation_fraction', '0'], 'needs a validation split'),
    (['--model_config', 'demo', '--model_name_or_path', 'google/canine-c'], 'not both'), ])
def test_contradicting_settings_are_one_line(argv, expected, tmp_path, capsys):
    code, _, err = run(capsys, 'train', '--preset', 'tiny', '--output_dir', tmp_path / 'run', *argv)
    assert_refused(code, err, expected, codes=(1,))
    assert not (tmp_path / 'run').exists()

def test_streaming_without_max_steps_is_refused_at_the_door(tmp_path, capsys):
    code, _, err = run(capsys, 'train', '--preset', 'demo', '--streaming', '--output_dir',
                       tmp_path / 'run')
    assert_refused(code, err, 'needs --max_steps', codes=(1,))

# --- the other commands' arguments, walked from their signatures

def _flag(p: inspect.Parameter, anno) -> str:
    return f'--no_{p.name}' if anno is bool and p.default is True else '--' + p.name.rstrip('_')

def _refused_argument(p: inspect.Parameter, anno) -> list[str]:
    "The arguments that give parameter `p` a value it refuses."
    if anno is bool: return [f'{_flag(p, anno)}=yes']
    literal = typing.get_origin(anno) is typing.Literal
    value = 'nope' if literal else (ARGUMENTS.get(p.name) or ACCEPTS['dataset']).refused()
    return [str(value)] if p.kind is p.POSITIONAL_OR_KEYWORD else [_flag(p, anno), str(value)]

def _command_cases():
    for command, (func, _) in COMMANDS.items():
        if func is train_command: continue
        params, hints = inspect.signature(func).parameters, typing.get_type_hints(func)
        for p in params.values():
            # finetune's training settings: train's flags, walked with ACCEPTS
            if p.kind is p.VAR_KEYWORD: continue
            anno = hints[p.name]
            if typing.get_origin(anno) in (typing.Union, type(int | None)):
                anno = typing.get_args(anno)[0]
            if typing.get_origin(anno) is list and typing.get_args(anno)[0] in (int, float):
                assert p.name in ARGUMENTS, f'{command} --{p.name}: a number without a declaration in ARGUMENTS'
            if anno in (int, float):
                assert p.name in ARGUMENTS, f'{command} --{p.name}: a number without a declaration'
            yield pytest.param(command, p, anno, id=f'{command}-{p.name}')

def _arguments(command: str, target: inspect.Parameter, bad: list[str], tmp) -> list[str]:
    """The command's arguments in order: `bad` for `target`, a value for
    each other required one (places under `tmp`)."""
    out, hints = [], typing.get_type_hints(COMMANDS[command][0])
    for p in inspect.signature(COMMANDS[command][0]).parameters.values():
        if p.name == target.name:
            out += bad
            continue
        if p.default is not p.empty or p.kind is p.VAR_KEYWORD: continue
        choices = (typing.get_args(hints[p.name])
                   if typing.get_origin(hints[p.name]) is typing.Literal else ())
        # never created
        value = (choices[0] if choices else '3' if p.name in ARGUMENTS
                 else str(tmp / f'{p.name}-place'))
        out += [value] if p.kind is p.POSITIONAL_OR_KEYWORD else ['--' + p.name.rstrip('_'), value]
    return out

@pytest.mark.parametrize('command, param, anno', list(_command_cases()))
def test_every_argument_of_every_command_refuses_a_bad_value(command, param, anno,
                                                             tmp_path, capsys):
    bad = _refused_argument(param, anno)
    code, _, err = run(capsys, command, *_arguments(command, param, bad, tmp_path))
    assert_refused(code, err, param.name.rstrip('_'), codes=(2,))
    assert list(tmp_path.iterdir()) == []

def test_every_number_of_every_command_is_declared():
    numbers = {p for _, p, a in (c.values for c in _command_cases()) if a in (int, float)
               or typing.get_origin(a) is list
               and typing.get_args(a)[0] in (int, float)}
    assert {p.name for p in numbers} <= set(ARGUMENTS) and len(numbers) >= 20

# --- help texts and suggestions

def _subparsers():
    sub = next(a for a in build_parser()._actions if a.choices and 'train' in a.choices)
    return sub.choices.items()

def test_help_says_each_default_once_and_switches_say_they_turn_off():
    for name, parser in _subparsers():
        for action in parser._actions:
            assert (action.help
                    or '').count('(default:') <= 1, (name, action.option_strings, action.help)
            if isinstance(action, argparse._StoreFalseAction):
                assert action.help.startswith('turn off (on by default)'), (name, action.help)
    probe = ' '.join(dict(_subparsers())['probe'].format_help().split())
    # 0 is a default, not False
    assert '--seed SEED decides the samples' in probe and '(default: 0)' in probe

def test_help_of_every_command_answers(capsys):
    for name, _ in [('', None), *_subparsers()]:
        code, out, err = run(capsys, *([name] if name else []), '--help')
        assert code == 0 and 'usage: domain-canine' in out and err == '', name

@pytest.mark.parametrize('argv, suggestion', [
    (['trian'], 'did you mean train?'), (['evalute'], 'did you mean evaluate?'),
    (['train', '--max_stpes', '3'], 'did you mean --max_steps?'),
    (['predict', '--modelpath', 'x', 'a?.com'], 'did you mean --model_path?'),
    (['evaluate', '--model_path', 'x', '--dataset', 'sample', '--split', 'vaild'],
     'did you mean valid?'),
])
def test_misspelt_commands_and_flags_get_a_suggestion(argv, suggestion, capsys):
    code, _, err = run(capsys, *argv)
    assert_refused(code, err, suggestion, codes=(2,))

def test_a_dataset_without_a_text_column_says_so_in_plain_words(tmp_path):
    from domain_canine.data import DataError, open_source
    (tmp_path / 'd.csv').write_text('rank,host\n1,example.com\n')
    with pytest.raises(DataError, match=r"has no text column \(domain, domains") as e:
        open_source(str(tmp_path / 'd.csv'))
    assert 'no a ' not in str(e.value)

# --- help and argument errors without torch, at once

LIGHT = '''
import sys, time
from domain_canine.cli import main
for argv in (['--help'], ['train', '--help'], ['train', '--max_steps', '0'], ['train', '--max_length', '600', '--config', 'tiny'],
             ['predict', '--top_k', '0', '--model_path', 'x', 'a?.com'], ['trian']):
    try: main(argv)
    except SystemExit: pass
print('torch' in sys.modules, 'transformers' in sys.modules)
'''

def test_help_and_bad_settings_never_load_torch_or_transformers():
    r = subprocess.run([sys.executable, '-c', LIGHT], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip().splitlines()[-1] == 'False False', r.stdout + r.stderr
    assert r.stderr.count('domain-canine') == 4 and 'Traceback' not in r.stderr, r.stderr

def test_the_real_command_refuses_bad_input_in_one_line(tmp_path):
    "Through the installed entry point: exit statuses and no traceback."
    for argv, code, expected in ((['train', '--max_steps', '-5', '--output_dir', tmp_path / 'run'],
                                  2, '--max_steps'),
                                 (['train', '--preset', 'tiny', '--mask_replace_prob', '0.9',
                                   '--random_replace_prob', '0.2',
                                   '--output_dir', tmp_path / 'run'], 1, 'at most 1'),
                                 (['score', '--batch_size', '0', '--model_path', tmp_path, 'a.io'],
                                  2, '--batch_size'),
                                 (['bench-scale', '--sizes', '10', '0'], 2, '--sizes'),
                                 (['trian'], 2, 'did you mean train?')):
        r = cli(*argv)
        assert r.returncode == code and len(r.stderr.strip().splitlines()) == 1 and expected in r.stderr, (argv, r.stderr)
        assert 'Traceback' not in r.stderr
    assert not (tmp_path / 'run').exists()

# --- what only the data or a checkpoint can tell

@pytest.fixture(scope='module')
def tiny_model(tmp_path_factory):
    import torch
    from transformers import CanineModel
    from domain_canine.checkpoint import TrainState, save_checkpoint
    from domain_canine.model import DomainCanineMLM, canine_config
    torch.manual_seed(0)
    # with checkpoint.json, as training writes it: loads without a note
    path = tmp_path_factory.mktemp('model') / 'model'
    save_checkpoint(path, DomainCanineMLM(CanineModel(canine_config('tiny'))),
                    None, TrainState(), {})
    return path

@pytest.mark.parametrize('query, reason', [('http://exa?ple.com/x', 'invalid character'),
                                           ('exa?ple..com', 'empty label'),
                                           ('?' * 200, 'label too long'),
                                           ('bücher.d?', 'punycode')])
def test_predict_refuses_what_training_would_reject(tiny_model, query, reason, capsys):
    code, out, err = run(capsys, 'predict', '--model_path', tiny_model, '--device', 'cpu', query)
    assert_refused(code, err, 'not a usable domain', reason, codes=(1,))
    assert out == ''

def test_score_of_a_file_with_no_usable_line_counts_the_skipped_lines(tiny_model, capsys):
    code, _, err = run(capsys, 'score', '--model_path', tiny_model, '--file', sys.executable)
    assert_refused(code, err, f'no usable domains in {sys.executable}: all ',
                   'lines skipped (', codes=(1,))

@pytest.fixture(scope='module')
def short_run(tmp_path_factory):
    "A 4-step tiny run with checkpoints at steps 2 and 4."
    out = tmp_path_factory.mktemp('short') / 'run'
    assert main(['train', '--preset', 'tiny', '--num_samples', '300', '--max_steps', '4',
                 '--save_steps', '2',
                 '--eval_steps', '100', '--output_dir', str(out)]) == 0
    return out

def test_resuming_below_the_checkpoints_step_is_refused_and_keeps_the_final_model(short_run, capsys):
    capsys.readouterr()
    before = (short_run / 'final-model' / 'checkpoint.json').read_text()
    code, _, err = run(capsys, 'train', '--preset', 'tiny', '--num_samples', '300', '--max_steps',
                       '2',
                       '--output_dir', short_run, '--resume_from', 'latest')
    assert_refused(code, err, "is at step 4, past this run's last step 2",
                   '--max_steps', codes=(1,))
    assert (short_run / 'final-model' / 'checkpoint.json').read_text() == before

def test_resuming_into_another_model_shape_names_both(short_run, capsys):
    capsys.readouterr()
    code, _, err = run(capsys, 'train', '--preset', 'tiny', '--num_samples', '300', '--max_steps',
                       '6', '--model_config', 'demo',
                       '--output_dir', short_run, '--resume_from',
                       str(short_run / 'checkpoint-step-2'))
    assert_refused(code, err,
                   'checkpoint-step-2 was trained with --model_config tiny (hidden size 32',
                   'this run asks for --model_config demo (hidden size 128', codes=(1,))

def _one_line_corpus(tmp_path):
    from domain_canine.data import is_validation
    domain = next(d for d in ('example.com', 'example.org', 'example.net') if not is_validation(d))
    (tmp_path / 'one.txt').write_text(domain + '\n')
    return tmp_path / 'one.txt'

def test_a_one_line_corpus_trains_and_says_nothing_is_evaluated(tmp_path, capsys):
    code, out, err = run(capsys, 'train', '--preset', 'tiny', '--dataset',
                         _one_line_corpus(tmp_path), '--max_steps', '2',
                         '--output_dir', tmp_path / 'run')
    assert code == 0, err
    assert 'warning: the validation split is empty (1 training domains' in out + err
    assert (tmp_path / 'run' / 'final-model').is_dir() and not (tmp_path / 'run'
                                                                / 'best-model').exists()

def test_a_one_line_corpus_refuses_early_stopping(tmp_path, capsys):
    code, _, err = run(capsys, 'train', '--preset', 'tiny', '--dataset', _one_line_corpus(tmp_path),
                       '--max_steps', '2',
                       '--early_stopping_patience', '2', '--output_dir', tmp_path / 'run')
    assert_refused(code, err, 'the validation split is empty', 'nothing to compare', codes=(1,))
