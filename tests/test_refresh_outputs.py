"""What `tests/refresh_outputs.py` stores in a notebook, and that a
failing cell fails it (it is the notebooks' test run)."""
import json, subprocess, sys
from conftest import ROOT

def notebook(path, *sources: str):
    cells = [dict(cell_type='code', execution_count=None,
                  id=f'c{i}', metadata={}, outputs=[], source=s)
             for i, s in enumerate(sources)]
    path.write_text(json.dumps(dict(cells=cells,
                                    metadata=dict(kernelspec=dict(display_name='python3', language='python',
                                                                                  name='python3')),
                                    nbformat=4, nbformat_minor=5), indent=1))
    return path

def refresh(path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, 'tests/refresh_outputs.py', str(path)],
                          capture_output=True, text=True,
                          cwd=ROOT, timeout=300)

def outputs(path) -> list:
    return [c['outputs'] for c in json.loads(path.read_text())['cells']]

def test_kept_outputs(tmp_path):
    nb = notebook(tmp_path / 'a.ipynb',
                  "print('shown')",
                  "import sys; print('progress 3.2 it/s', file=sys.stderr)\n6 * 7",
                  "#| output: false\nprint('took 1.23 s')",
                  "#| eval: false\nraise SystemExit('not run')",
                  "#| notest\nraise SystemExit('not run either')")
    r = refresh(nb)
    assert r.returncode == 0, r.stdout + r.stderr
    shown, result, timing, not_run, not_tested = outputs(nb)
    assert [(o['name'], ''.join(o['text'])) for o in shown] == [('stdout', 'shown\n')]
    # the stderr line is not stored
    assert [''.join(o['data']['text/plain']) for o in result] == ['42']
    assert timing == not_run == not_tested == []
    # a second run writes the same
    assert refresh(nb).returncode == 0 and outputs(nb)[:2] == [shown, result]

def test_a_failing_cell_fails_and_leaves_the_notebook_as_it_was(tmp_path):
    nb = notebook(tmp_path / 'b.ipynb', "print('before')", "1 / 0")
    before = nb.read_text()
    r = refresh(nb)
    assert r.returncode == 1
    assert 'FAILED' in r.stdout and 'b.ipynb' in r.stdout and 'ZeroDivisionError' in r.stderr
    assert nb.read_text() == before
