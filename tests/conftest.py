import os, subprocess, sys
from pathlib import Path
import pytest

os.environ.setdefault('HF_HUB_OFFLINE', '1')  # no test may need the network
os.environ.setdefault('HF_DATASETS_OFFLINE', '1')
# prepared corpora go to a fresh folder, not the user's cache
if 'DOMAIN_CANINE_CACHE' not in os.environ:
    import tempfile
    os.environ['DOMAIN_CANINE_CACHE'] = tempfile.mkdtemp(prefix='domain-canine-cache-')
ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINT = Path(sys.executable).parent / 'domain-canine'

QUIET = dict(log=lambda *a, **k: None)  # the `log` of a trainer or a run that prints nothing

def tiny_config(out, **settings):
    "The `tiny` preset on 300 domains for 6 steps, writing to `out`, with `settings` over it."
    from domain_canine.config import resolve_config
    return resolve_config('tiny', output_dir=str(out),
                          **{'num_samples': 300, 'max_steps': 6, **settings})

def cli(*args, stdin: str | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    "Run the installed `domain-canine` command."
    return subprocess.run([str(ENTRY_POINT), *map(str, args)], capture_output=True, text=True,
                          input=stdin,
                          timeout=timeout, cwd=ROOT)

@pytest.fixture(scope='session')
def tiny_run(tmp_path_factory) -> Path:
    """Output directory of one `train --preset tiny` run (30 steps, 17 per epoch)
    through the command line, shared by the tests that read it."""
    out = tmp_path_factory.mktemp('tiny')
    r = cli('train', '--preset', 'tiny', '--output_dir', out, '--save_total_limit', 2,
            '--num_samples', 300)
    assert r.returncode == 0, r.stderr
    return out

@pytest.fixture(scope='session')
def tiny_classifier(tmp_path_factory, tiny_run) -> Path:
    """Run folder of a classifier fine-tuned for 6 steps from the tiny run's
    final model on a small `make-task tld` file."""
    # in process: the command line is tested elsewhere, this saves a start-up
    from domain_canine.cli import main
    out = tmp_path_factory.mktemp('classifier')
    assert main(['make-task', 'tld', '--output', str(out / 'tld.csv'), '--limit', '300']) == 0
    assert main(['finetune', '--task', str(out / 'tld.csv'), '--model_name_or_path',
                 str(tiny_run / 'final-model'),
                 '--output_dir', str(out / 'tld'), '--max_steps', '6', '--batch_size', '16',
                 '--learning_rate', '3e-3',
                 '--eval_steps', '3', '--save_steps', '3', '--logging_steps', '3', '--device',
                 'cpu']) == 0
    return out / 'tld'

def pytest_configure(config):
    config.addinivalue_line('markers',
                            'browser: drives the widgets in JupyterLab from headless Chromium '
                            '(select with -m browser)')

def hub_layouts(folder: Path, rows: list[str]) -> dict[str, str]:
    """`rows` laid out as the hub lays out its corpus (one text file in a folder, read by
    `datasets`' text builder), as several files (4, a number 2 processes divide; 3, one they do
    not) and as the text file our reader reads."""
    layouts = {}
    for name, files in (('one file', 1), ('three files', 3), ('four files', 4)):
        (folder / name).mkdir(parents=True)
        size = -(-len(rows) // files)
        for f in range(files):
            (folder / name / f'part-{f}.txt').write_text('\n'.join(rows[f * size:(f + 1) * size])
                                                         + '\n')
        layouts[name] = str(folder / name)
    layouts['text file'] = str(folder / 'one file' / 'part-0.txt')
    return layouts
