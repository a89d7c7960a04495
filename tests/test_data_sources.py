"""Data at scale: every source kind trains offline, hostile input ends in
counted rejections, streaming resumes exactly."""
import gzip, json, shutil
from collections import Counter
from pathlib import Path
import datasets
import pytest
import torch
from conftest import QUIET, cli, hub_layouts
from domain_canine.data import (SAMPLE_CORPUS, prepare_corpus,
                                load_corpus, is_validation, open_source)
from domain_canine.config import resolve_config
from domain_canine.training import Trainer

DOMAINS = SAMPLE_CORPUS.read_text().split()[:400]

@pytest.fixture(scope='module')
def sources(tmp_path_factory) -> Path:
    "The same 400 domains as every kind of source `--dataset` accepts."
    d = tmp_path_factory.mktemp('sources')
    table = datasets.Dataset.from_dict({'id': list(range(len(DOMAINS))), 'domain': DOMAINS})
    (d / 'plain.txt').write_text('\n'.join(DOMAINS) + '\n')
    with gzip.open(d / 'plain.txt.gz', 'wt') as f: f.write('\n'.join(DOMAINS))
    table.to_csv(d / 'table.csv', index=False)
    table.to_csv(d / 'table.tsv', sep='\t', index=False)
    table.to_parquet(d / 'table.parquet')
    table.to_json(d / 'table.jsonl')
    table.rename_column('domain', 'text').save_to_disk(d / 'saved')
    (d / 'hub-like').mkdir()
    table.to_parquet(d / 'hub-like' / 'train-00000.parquet')
    return d

@pytest.mark.parametrize('name, streaming', [('plain.txt', False), ('plain.txt.gz', False),
                                             ('table.csv', False),
                                             ('table.tsv', False), ('table.parquet', False),
                                             ('table.jsonl', False),
                                             ('saved', False), ('hub-like', False),
                                             ('hub-like', True), ('table.parquet', True)])
def test_every_source_kind_trains(sources, tmp_path, name, streaming):
    cfg = resolve_config('tiny', dataset=str(sources / name), streaming=streaming, max_steps=3,
                         output_dir=str(tmp_path),
                         eval_steps=3, save_steps=3)
    t = Trainer.from_config(cfg, **QUIET)
    t.fit()
    expected_valid = sum(is_validation(d) for d in DOMAINS)
    assert len(t.valid_enc) == expected_valid
    assert json.loads((tmp_path / 'final-model' / 'trainer_state.json').read_text())['step'] == 3

def test_missing_text_column_lists_the_columns(sources, tmp_path):
    # not converted before: datasets would show bars
    fresh = shutil.copy(sources / 'table.csv', tmp_path / 'table.csv')
    r = cli('train', '--preset', 'tiny', '--dataset', fresh, '--text_column', 'url')
    assert r.returncode == 1 and 'its columns: id, domain' in r.stderr and len(r.stderr.strip().splitlines()) == 1

HOSTILE = [b'', b'\r', b'Example.COM\r', b'\xef\xbb\xbfbom.example.org', b'\ttabbed.net\t',
           b'ctrl\x01char.com',
           b'bad\xff\xfeutf8.com', b'192.168.1.1', b'::1', b'2001:db8::1', b'a' * 64 + b'.com',
           (b'abcdefghi.' * 26) + b'com',
           b'-lead.com', b'trail-.com', b'b\xc3\xbccher.de', b'xn--bcher-kva.de',
           b'http://www.example.com/path',
           b'user@example.com', b'# a comment', b'; another', b'example.com', b'EXAMPLE.com.',
           b'single', b'a..b.com',
           b'under_score.com', b'good-one.io', b'\xe2\x98\x83.net', b'1.2.3.4.5']

def test_hostile_lines_all_end_counted(tmp_path):
    path = tmp_path / 'hostile.txt'
    path.write_bytes(b'\n'.join(HOSTILE * 3) + b'\n')
    c = prepare_corpus(str(path), validation_fraction=0.0, cache_dir=tmp_path / 'cache',
                       log=lambda *a: None)
    kept = [c.train[i] for i in range(len(c.train))]
    # every line is accounted for
    assert sum(c.rejected.values()) + len(kept) == c.lines_read == len(HOSTILE) * 3
    assert kept == ['example.com', 'bom.example.org', 'tabbed.net', 'xn--bcher-kva.de',
                    'good-one.io', 'xn--n3h.net']
    assert set(c.rejected) >= {'empty', 'whitespace_or_control', 'invalid_utf8', 'ip_address',
                               'label_too_long',
                               'name_too_long', 'hyphen_at_label_edge', 'invalid_character',
                               'comment', 'duplicate',
                               'single_label', 'empty_label', 'numeric_tld'}
    r = cli('train', '--preset', 'tiny', '--dataset', path, '--validation_fraction', 0,
            '--batch_size', 2,
            '--max_steps', 2, '--output_dir', tmp_path / 'run')
    assert r.returncode == 0, r.stderr
    run = json.loads((tmp_path / 'run' / 'run.json').read_text())
    assert run['rejected'] == dict(c.rejected)

def test_cache_is_reused_and_invalidated(tmp_path):
    path = tmp_path / 'd.txt'
    path.write_text('\n'.join(DOMAINS))
    first = prepare_corpus(str(path), cache_dir=tmp_path / 'cache', log=lambda *a: None)
    again = prepare_corpus(str(path), cache_dir=tmp_path / 'cache', log=lambda *a: None)
    assert again.cache == first.cache and len(again.train) == len(first.train)
    path.write_text('\n'.join(DOMAINS[:100]))  # the file changed: a new entry
    changed = prepare_corpus(str(path), cache_dir=tmp_path / 'cache', log=lambda *a: None)
    assert changed.cache != first.cache and len(changed.train) + len(changed.valid) == 100

def test_streaming_resume_is_exact(sources, tmp_path):
    def run(out, **kw):
        cfg = resolve_config('tiny', dataset=str(sources / 'hub-like'), streaming=True,
                             max_steps=12, save_steps=5,
                             eval_steps=100, logging_steps=2,
                             batch_size=8, output_dir=str(out), **kw)
        t = Trainer.from_config(cfg, **QUIET)
        t.fit()
        return t
    full = run(tmp_path / 'full')
    resumed = run(tmp_path / 'full-copy', resume_from=str(tmp_path / 'full' / 'checkpoint-step-5'))
    assert all(torch.equal(a, b) for a, b in zip(full.model.state_dict().values(),
                                                 resumed.model.state_dict().values()))

ROWS = [f'r{i:04d}.com' for i in range(203)]  # a domain that says which row of the stream it is

@pytest.mark.parametrize('layout', ['text file', 'one file', 'three files', 'four files'])
def test_a_shard_is_the_rows_numbered_its_index_modulo_the_count_from_any_start(tmp_path, layout):
    src = open_source(hub_layouts(tmp_path, ROWS)[layout], streaming=True)
    assert src.kind == ('text' if layout == 'text file' else 'datasets')
    for count in (1, 2, 3, 4):
        for start in (0, 1, 7, 16, 101, 202, 203):
            for i in range(count):
                got = [l.strip() for _, b in src.sharded(i, count).numbered_batches(16, start)
                       for l in b]
                assert got == ROWS[start + (i - start) % count::count], (count, start, i)

@pytest.mark.parametrize('layout', ['text file', 'one file', 'three files'])
def test_a_shard_resumes_exactly_at_each_of_its_positions(tmp_path, layout):
    shard = open_source(hub_layouts(tmp_path, ROWS)[layout], streaming=True).sharded(1, 3)
    items = list(shard.numbered_batches(16))
    assert len(items) > 5
    for k, (row, _) in enumerate(items): assert list(shard.numbered_batches(16, row)) == items[k:]
