"""The training and analysis notebooks run headless under
papermill, with parameters, writing outside nbs/."""
import json, subprocess, sys
from pathlib import Path
from conftest import ROOT

def papermill(nb: str, out: Path, *params: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, '-m', 'papermill', str(ROOT / 'nbs' / nb), str(out), '--kernel',
           'python3',
           '--execution-timeout', '600', *params]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900)

def images(nb: Path) -> list[int]:
    "How many PNG outputs each code cell of an executed notebook holds."
    cells = [c for c in json.loads(nb.read_text())['cells'] if c['cell_type'] == 'code']
    return [sum('image/png' in o.get('data', {}) for o in c.get('outputs', [])) for c in cells]

def test_training_then_analysis_notebook(tmp_path):
    run = tmp_path / 'run'
    r = papermill('experiments/train.ipynb', tmp_path / 'training.ipynb', '-p', 'preset', 'tiny',
                  '-p', 'max_steps', '20',
                  '-p', 'output_dir', str(run))
    assert r.returncode == 0, r.stderr[-3000:]
    assert (run / 'final-model' / 'model.safetensors').is_file()
    assert json.loads((run / 'checkpoint-step-20' / 'trainer_state.json').read_text())['step'] == 20
    assert not list((ROOT / 'nbs').glob('runs'))  # nothing written inside nbs/
    assert images(tmp_path / 'training.ipynb')[-1] == 1  # the run's curves

    r = papermill('12_analysis.ipynb', tmp_path / 'analysis.ipynb', '-y', f'run_dirs: [{run}]')
    assert r.returncode == 0, r.stderr[-3000:]
    # the run's curves (no probe or fine-tuning results)
    assert images(tmp_path / 'analysis.ipynb')[-1] == 1
