"The chapters read in dependency order: no notebook imports a module that a later notebook exports."
import json, re
from conftest import ROOT

# 13_evaluation, then 13a_probes: an inserted chapter sorts after its neighbour
CHAPTERS = '[0-9][0-9]*_*.ipynb'
IMPORT = re.compile(r'^\s*(?:from domain_canine\.(\w+) import|import domain_canine\.(\w+))', re.M)

def chapters() -> list[tuple[str, str, set[str]]]:
    "(notebook, module it exports, modules it imports) of every numbered notebook, in file order."
    out = []
    for path in sorted((ROOT / 'nbs').glob(CHAPTERS)):
        text = '\n'.join(''.join(c['source']) for c in json.loads(path.read_text())['cells']
                         if c['cell_type'] == 'code')
        module = re.search(r'^#\| default_exp (\S+)', text, re.M)[1]
        out.append((path.name, module, {a or b for a, b in IMPORT.findall(text)}))
    return out

def test_every_notebook_imports_only_earlier_chapters():
    seen, late = set(), []
    for name, module, imports in chapters():
        late += [f'{name} imports domain_canine.{m}' for m in sorted(imports - seen - {module})]
        seen.add(module)
    assert not late, late

def test_every_module_comes_from_one_chapter():
    modules = [m for _, m, _ in chapters()]
    assert len(modules) == len(set(modules))
    package = {p.stem for p in (ROOT / 'domain_canine').glob('*.py')} - {'__init__', '_modidx'}
    assert package == set(modules)

def test_the_check_catches_a_late_import(tmp_path, monkeypatch):
    "A chapter that imports a later one is reported (the check can fail)."
    listing = chapters()
    first, last = listing[0], listing[-1]
    fake = [(first[0], first[1], first[2] | {last[1]}), *listing[1:]]
    monkeypatch.setattr(__import__(__name__), 'chapters', lambda: fake)
    try: test_every_notebook_imports_only_earlier_chapters()
    except AssertionError as e: assert f'{first[0]} imports domain_canine.{last[1]}' in str(e)
    else: raise AssertionError('a late import went unnoticed')

def code_cells(path) -> list[str]:
    return [''.join(c['source']) for c in json.loads(path.read_text())['cells']
            if c['cell_type'] == 'code']

def longest_unshown_run(cells: list[str]) -> int:
    "The most exported cells in a row with no cell between them that shows or checks something."
    run = best = 0
    for s in cells:
        if s.startswith('#| export'):
            run += 1
            best = max(best, run)
        elif s.strip() and not s.startswith(('#| hide', '#| default_exp')): run = 0
    return best

def test_every_few_exported_cells_are_followed_by_a_demonstration():
    runs = {p.name: longest_unshown_run(code_cells(p))
            for p in sorted((ROOT / 'nbs').glob(CHAPTERS))}
    assert {k: v for k, v in runs.items() if v > 3} == {}
    assert longest_unshown_run(['#| export\na', '#| export\nb', '#| hide\nc', '#| export\nd',
                                'check', '#| export\ne']) == 3

def test_exported_functions_are_short_and_methods_are_grown_with_patch():
    import ast
    long, assigned = [], []
    for path in sorted((ROOT / 'domain_canine').glob('*.py')):
        text = path.read_text()
        # statements, not lines: wrapping a long line must not make a
        # function longer, a `;` not shorter
        long += [f'{path.name}:{n.name} ({size} statements)' for n in ast.walk(ast.parse(text))
                 if isinstance(n, ast.FunctionDef)
                 and (size := sum(isinstance(s, ast.stmt) for s in ast.walk(n)) - 1) > 30]
        assigned += re.findall(r'^[A-Z]\w*\.\w+ = \w+', text, re.M)  # `Trainer.fit = _fit`
    assert long == [] and assigned == []

def test_package_lines_are_wrapped_near_100_characters_without_semicolon_chains():
    """nbdev's own lines (the module docstring from a chapter's
    summary, `__all__`, `_modidx.py`) excepted."""
    import io, tokenize
    long, chained = [], []
    for path in sorted((ROOT / 'domain_canine').glob('*.py')):
        if path.name == '_modidx.py': continue
        text = path.read_text()
        generated = re.search(r"^__all__ = \[.*?\]$", text, re.M | re.S)
        skip = (set(range(text[:generated.start()].count('\n'),
                          text[:generated.end()].count('\n') + 1)) if generated else set())
        long += [f'{path.name}:{i + 1}' for i, line in enumerate(text.splitlines())
                 if len(line) > 110 and i not in skip and not line.startswith('"""')]
        chained += [f'{path.name}:{t.start[0]}'
                    for t in tokenize.generate_tokens(io.StringIO(text).readline)
                    if t.type == tokenize.OP and t.string == ';']
    assert long == [] and chained == []
