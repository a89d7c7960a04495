"""Labelled tasks (13b_tasks): file formats, one-line errors, splits
that never leak, make-task's files, the report."""
import csv, json
from collections import Counter
import numpy as np
import pytest
from conftest import cli
from domain_canine.cli import main, user_errors
from domain_canine.data import DataError
from domain_canine.tasks import (SIDES, format_split_report, labelled_data, leaked_groups,
                                 read_labelled,
                                 split_report, split_sides)

ROWS = dict(domain=['paypal.com', 'paypa1.com', 'Google.COM.', 'gooogle.com', 'not a domain',
                    'paypal.com',
                    'a.io', 'b.io', '', 'bücher.de'],
            label=['real', 'lookalike', 'real', 'lookalike', 'real',
                   'real', 'real', 'lookalike', 'real', 'real'],
            group=['paypal.com', 'paypal.com', 'google.com', 'google.com', 'x', 'paypal.com',
                   'a.io', 'a.io',
                   'y', 'bücher.de'])
CLEAN = ['paypal.com', 'paypa1.com', 'google.com', 'gooogle.com', 'a.io', 'b.io',
         'xn--bcher-kva.de']

def _write(table, folder, fmt: str) -> str:
    "The `datasets` table written in one format; the path `read_labelled` takes."
    path = folder / f'rows.{fmt}'
    if fmt == 'csv': table.to_csv(path, index=False)
    elif fmt == 'tsv': table.to_csv(path, index=False, sep='\t')
    elif fmt == 'jsonl': table.to_json(path)
    elif fmt == 'parquet': table.to_parquet(path)
    else: table.save_to_disk(str(path))
    return str(path)

@pytest.mark.parametrize('fmt', ['csv', 'tsv', 'jsonl', 'parquet', 'saved'])
def test_every_format_reads_the_same_rows_and_classes(tmp_path, fmt):
    import datasets
    data = read_labelled(_write(datasets.Dataset.from_dict(ROWS), tmp_path, fmt))
    assert data.texts == CLEAN and data.classes == ['lookalike', 'real']
    assert [data.classes[i] for i in data.labels] == ['real', 'lookalike'] * 3 + ['real']
    assert data.groups[:2] == ['paypal.com'] * 2 and data.rows_read == 10
    assert data.rejected == Counter(whitespace_or_control=1, duplicate=1, empty=1)

def _bad_files(folder) -> dict[str, tuple[str, list[str], str]]:
    "name: (file text, extra arguments of read_labelled, what its one-line error says)."
    return {'missing label column': ('domain,kind\na.com,x\nb.com,y\n', [],
                                     'has no label column (label, '),
            'unknown label column': ('domain,label\na.com,x\nb.com,y\n', ['kind'],
                                     "has no column 'kind'"),
            'one class': ('domain,label\na.com,x\nb.com,x\nnot a domain,y\n', [],
                          "a single class ('x')"),
            'a class with one example': ('domain,label\na.com,x\nb.com,x\nc.com,y\n',
                                         [], 'class y of'),
            'numbers and strings': ('domain,label\na.com,1\nb.com,spam\nc.com,1\nd.com,spam\n', [],
                                    "mix numbers and strings (e.g. 1 and 'spam')"),
            'no text column': ('host,label\na.com,x\nb.com,y\n', [], 'choose with --text_column'),
            'a split column with other values': ('domain,label,split\na.com,x,train\nb.com,y,holdout\n', [],
                                                 "the value 'holdout'")}

def test_each_bad_labelled_file_is_one_line(tmp_path):
    for name, (text, extra, expected) in _bad_files(tmp_path).items():
        path = tmp_path / f"{name.replace(' ', '-')}.csv"
        path.write_text(text)
        with pytest.raises(DataError) as e: read_labelled(str(path), None, *extra)
        assert isinstance(e.value, user_errors()) and expected in str(e.value), (name, str(e.value))
        assert '\n' not in str(e.value), name

def test_mixed_labels_of_a_json_lines_file_are_one_line(tmp_path):
    "JSON keeps the types: 1 and 'spam' in one column."
    path = tmp_path / 'mixed.jsonl'
    rows = [dict(domain=f'{c}.com', label=l) for c, l in zip('abcd', [1, 'spam'] * 2)]
    path.write_text(''.join(json.dumps(r) + '\n' for r in rows))
    with pytest.raises(DataError, match='mix numbers and strings'): read_labelled(str(path))

def test_a_hub_id_goes_through_load_dataset_and_fails_offline_in_one_line():
    """The hub path is the data chapter's (`datasets.load_dataset`);
    without network access it is one line."""
    with pytest.raises(DataError) as e: read_labelled('someone/labelled-domains')
    assert 'could not load dataset' in str(e.value) and '\n' not in str(e.value)

def test_integer_labels_keep_their_order(tmp_path):
    (tmp_path
     / 'ints.csv').write_text('domain,label\na.com,10\nb.com,2\nc.com,10\nd.com,2\ne.com,\n')
    data = read_labelled(str(tmp_path / 'ints.csv'))
    assert data.classes == ['2', '10'] and data.labels.tolist() == [1, 0, 1, 0]
    assert data.rejected == Counter(missing_label=1)

@pytest.mark.parametrize('seed', range(20))
def test_a_group_split_never_leaks_a_group(seed):
    """Random groups of random sizes at every seed: no group on two
    sides; a hash split of the same rows leaks."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 6, 300)
    groups = [f'g{g}.com' for g, n in enumerate(sizes) for _ in range(n)]
    texts = [f'{g[:-4]}-{i}.com' for i, g in enumerate(groups)]
    data = labelled_data(texts, rng.choice(['a', 'b', 'c'], len(texts)).tolist(), groups)
    sides, by = split_sides(data, seed=seed, test_fraction=0.3, validation_fraction=0.2)
    assert by == 'group' and leaked_groups(data.groups, sides) == []
    assert set(sides) == set(SIDES)
    assert leaked_groups(data.groups, split_sides(data, 'hash', seed=seed)[0])

def test_a_split_column_decides_the_sides():
    data = labelled_data(['a.com', 'b.com', 'c.com', 'd.com', 'e.com'], ['x', 'y', 'x', 'y', 'x'],
                         sides=['train', 'Valid', 'test', 'dev', ''])
    sides, by = split_sides(data)
    assert (by, sides.tolist(), data.rejected) == ('column',
                                                   ['train', 'validation', 'test', 'validation'],
                                                   Counter(missing_side=1))

def test_the_report_counts_classes_sides_and_rejections():
    texts = [f'd{i}.com' for i in range(10)] + ['bad name', 'd0.com', '']
    labels = ['x'] * 7 + ['y'] * 3 + ['x', 'x', 'y']
    data = labelled_data(texts, labels,
                         sides=['train'] * 6 + ['test'] * 4 + ['train'] * 3, source='toy')
    r = split_report(data, *split_sides(data))
    assert r['counts'] == dict(train=dict(x=6, y=0), validation=dict(x=0, y=0), test=dict(x=1, y=3))
    assert r['sizes'] == dict(train=6, validation=0, test=4)
    assert r['majority_share'] == dict(train=1.0, validation=None, test=0.75)
    assert r['missing'] == dict(train=['y'], test=[])
    assert r['rejected'] == dict(whitespace_or_control=1, duplicate=1, empty=1)
    text = format_split_report(r)
    assert text.splitlines()[0] == 'toy: 10 rows of 13 read, 2 classes, split by column'
    assert 'validation' not in text.splitlines()[1] and '100.0%' in text and 'no y on the train side' in text
    assert text.splitlines()[-1] == 'rejected: whitespace_or_control 1, empty 1, duplicate 1'

def test_make_task_writes_the_same_file_twice_in_and_out_of_process(tmp_path, capsys):
    """Two in-process runs and one run of the installed command
    (another hash seed) write the same bytes."""
    for name in ('a.csv', 'b.csv'):
        assert main(['make-task', 'lookalike', '--output', str(tmp_path / name), '--limit',
                     '40']) == 0
    assert 'wrote 80 rows' in capsys.readouterr().out
    r = cli('make-task', 'lookalike', '--output', tmp_path / 'c.csv', '--limit', 40)
    assert r.returncode == 0, r.stderr
    a = (tmp_path / 'a.csv').read_bytes()
    assert a == (tmp_path / 'b.csv').read_bytes() == (tmp_path / 'c.csv').read_bytes()
    data = read_labelled(str(tmp_path / 'a.csv'))
    assert (len(data.texts), data.classes, data.rejected) == (80, ['lookalike', 'real'], Counter())
    assert leaked_groups(data.groups, split_sides(data)[0]) == []
    main(['make-task', 'lookalike', '--output',
          str(tmp_path / 'd.csv'), '--limit', '40', '--seed', '1'])
    assert (tmp_path / 'd.csv').read_bytes() != a

def test_make_task_tld_reads_back_clean(tmp_path):
    assert main(['make-task', 'tld', '--output', str(tmp_path / 'tld.csv'), '--limit', '2000']) == 0
    data = read_labelled(str(tmp_path / 'tld.csv'))
    assert len(data.classes) == 5 and data.rejected == Counter() and data.groups is None
    with open(tmp_path / 'tld.csv', newline='') as f: rows = list(csv.reader(f))[1:]
    assert data.texts == [r[0] for r in rows] and [data.classes[i]
                                                   for i in data.labels] == [r[1] for r in rows]
    assert any(t.isdigit() for t in data.texts)  # a name like `163` (of 163.com) stays text

def _main(args, capsys) -> tuple[int, list[str]]:
    "Exit status and stderr lines of the command line run in this process."
    try: code = main(list(map(str, args)))
    except SystemExit as e: code = e.code
    return code, capsys.readouterr().err.strip().splitlines()

def test_make_task_bad_input_is_one_line(tmp_path, capsys):
    """Refusing to overwrite, a bad suffix, a bad limit (exit 1), an
    unknown task (exit 2); the real command too."""
    (tmp_path / 'there.csv').write_text('precious\n')
    cases = [(['lookalike', '--output', tmp_path / 'there.csv'], 1,
              'exists: choose another output'),
             (['tld', '--output', tmp_path / 'tld.txt'], 1, 'must be a .csv file'),
             (['tld', '--output', tmp_path / 'tld.csv', '--limit', '1'], 1, 'at least 2'),
             (['colour', '--output', tmp_path / 'x.csv'], 2, 'invalid choice')]
    for args, code, expected in cases:
        got, lines = _main(['make-task', *args], capsys)
        assert (got, len(lines)) == (code, 1) and expected in lines[0], lines
    r = cli('make-task', *cases[0][0])
    assert (r.returncode, r.stderr.count('\n')) == (1,
                                                    1) and 'domain-canine: error:' in r.stderr, r.stderr
    assert (tmp_path
            / 'there.csv').read_text() == 'precious\n' and not (tmp_path / 'tld.csv').exists()
