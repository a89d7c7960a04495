"""Run every chapter and store its outputs, so a reader sees tables, examples and plots without running anything.

This is also the notebooks' test run: it executes the cells `nbdev_test` would (skipping `#| eval: false` and the
`tst_flags` of settings.ini, and folders holding a `.notest` file) and fails like it when a cell raises. What is kept:
- every output a cell writes, except cells marked `#| output: false` (timings, progress, anything that changes from
  run to run: the marker says so to the reader too);
- no stderr (progress bars and warnings) and no widget views (a widget needs a live kernel; its cell shows nothing).
`nbdev_clean` then strips execution counts and object ids, as it does for every notebook. `tests/run_all.sh` runs this
script and fails when the stored notebooks differ from what it wrote: outputs drift the way exports can.

    python tests/refresh_outputs.py [NOTEBOOK ...]   # default: every notebook under nbs/
"""
import json, os, sys, tempfile, time
from pathlib import Path
from execnb.shell import CaptureShell
from fastcore.parallel import parallel
from fastcore.xtras import working_directory
from nbdev.clean import nbdev_clean
from nbdev.config import get_config
from nbdev.doclinks import nbglob
from nbdev.process import NBProcessor
from nbdev.test import _keep_file

WIDGET = 'application/vnd.jupyter.widget-view+json'

def skipped(cell, flags: set) -> bool:
    """Cells `nbdev_test` would not run: markdown, `#| eval: false`,
    and cells carrying a skipped test flag."""
    if cell.cell_type != 'code': return True
    d = getattr(cell, 'directives_', {}) or {}
    return d.get('eval:', [''])[0].lower() == 'false' or bool(flags & d.keys())

def kept(cell) -> list:
    "The outputs of an executed cell that are stored."
    d = getattr(cell, 'directives_', {}) or {}
    if d.get('output:', [''])[0].lower() == 'false': return []
    keep = lambda o: not (o.get('name') == 'stderr' or WIDGET in o.get('data', {}))
    return [dict(o) for o in cell.get('outputs', []) if keep(o)]

def refresh(path: Path, flags: set, root: Path) -> tuple[bool, float]:
    "Execute the notebook at `path` and write its kept outputs into it; (succeeded, seconds)."
    os.environ['IN_TEST'] = '1'
    # each notebook prepares its corpora in its own fresh cache: what it
    # prints cannot depend on which notebook ran first
    os.environ['DOMAIN_CANINE_CACHE'] = tempfile.mkdtemp(prefix=f'{path.stem}-cache-')
    sys.path.insert(0, str(root))
    start, nb = time.time(), NBProcessor(path, rm_directives=False).nb
    shell = CaptureShell(path)
    try:
        with working_directory(path.parent):
            shell.run_all(nb, exc_stop=True, preproc=lambda c: skipped(c, flags))
    except Exception:
        sys.stderr.write(f'{path.name}: {shell.prettytb(fname=path)}\n')
        return False, time.time() - start
    outputs = {c.id: kept(c) for c in nb.cells if c.cell_type == 'code'}
    stored = json.loads(path.read_text())
    for c in stored['cells']:
        if c['cell_type'] == 'code': c['outputs'] = outputs.get(c['id'], [])
    path.write_text(json.dumps(stored, indent=1, ensure_ascii=False) + '\n')
    nbdev_clean(fname=str(path))
    return True, time.time() - start

def main(names: list[str]) -> int:
    cfg = get_config()
    files = [Path(n).absolute() for n in names] or [f.absolute()
                                                    for f in sorted(nbglob(cfg.nbs_path, as_path=True))]
    files = [f for f in files if _keep_file(f, '.notest')]
    flags = set(cfg.tst_flags.split())
    # by module name: a notebook run in a worker replaces that worker's __main__
    from refresh_outputs import refresh
    results = parallel(refresh, files, flags=flags, root=cfg.config_path,
                       n_workers=min(2, len(files)), pause=0.01)
    for f, (ok, secs) in zip(files, results):
        print(f'{"ok" if ok else "FAILED":6} {secs:6.1f} s  {f.name}')
    return 0 if all(ok for ok, _ in results) else 1

if __name__ == '__main__': sys.exit(main(sys.argv[1:]))
