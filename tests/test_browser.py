"""The widgets as a person meets them: the demo notebook run in a real JupyterLab, driven from
headless Chromium.

Types a masked domain into the predictor and waits for its predictions, types a refused one and
waits for the reason; types a brand into the look-alike explorer and waits for both rankings, then a
refused one; types a domain into the classifier widget and waits for its class bars, then a refused
one; moves the smoothing slider of the loss curves and checks that the plot was redrawn. Screenshots
go to test-artifacts/browser/ (or $SHOT_DIR). Needs Debian's chromium (`apt-get install chromium`)
and the playwright package; without them it is skipped, except under CI=true, where it fails."""
import json, os, re, shutil, time
from pathlib import Path
import pytest
from conftest import ROOT
from browser.lab import (CHROMIUM, CHROMIUM_ARGS, Lab, open_notebook, run_all_cells, set_parameters,
                         wait_kernel_idle)

pytestmark = pytest.mark.browser
DEMO = ROOT / 'nbs' / 'experiments' / 'widgets_demo.ipynb'
SHOTS = Path(os.environ.get('SHOT_DIR', ROOT / 'test-artifacts' / 'browser'))


def _missing() -> str | None:
    if not Path(CHROMIUM).is_file(): return f'{CHROMIUM} not found (apt-get install chromium)'
    try: import playwright.sync_api  # noqa: F401
    except ImportError: return 'the playwright package is not installed (pip install playwright)'
    return None


# session scope: set up (or skipped) before the session's tiny run is trained
@pytest.fixture(scope='session')
def browser():
    if reason := _missing():
        if os.environ.get('CI') == 'true': pytest.fail(f'browser test cannot run in CI: {reason}')
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright
    # launch() gives Chromium a fresh temporary profile and removes it on close()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try: yield b
        finally: b.close()


@pytest.fixture(scope='module')
def lab(browser, tiny_run, tiny_classifier, tmp_path_factory):
    """JupyterLab serving a copy of the demo notebook pointed at a runs
    folder holding the tiny run and a tiny classifier."""
    work = tmp_path_factory.mktemp('lab')
    root, runs = work / 'notebooks', work / 'runs'
    root.mkdir()
    # whole models: a lost file is refused
    shutil.copytree(tiny_run, runs / 'tiny', ignore=shutil.ignore_patterns('checkpoint-*'))
    shutil.copytree(tiny_classifier, runs / 'tld', ignore=shutil.ignore_patterns('checkpoint-*'))
    set_parameters(DEMO, root / DEMO.name, runs_dir=str(runs), preset='tiny')
    server = Lab(root).start()
    try: yield server
    finally: server.stop()


@pytest.fixture
def page(browser, lab):
    """A fresh browser context (empty profile) per test; the
    kernels it started are shut down after it."""
    ctx = browser.new_context(viewport={'width': 1280, 'height': 1000})
    ctx.set_default_timeout(30_000)
    pg = ctx.new_page()
    pg.errors = []
    pg.on('pageerror', lambda e: pg.errors.append(str(e)))
    yield pg
    ctx.close()
    try: lab.shutdown_kernels()
    except Exception as e: print(f'kernel cleanup failed: {e}')


def _shot_on_failure(page, name: str, steps):
    "Run `steps(page)`; on a failure, save a screenshot of the page first."
    SHOTS.mkdir(parents=True, exist_ok=True)
    try: steps(page)
    except BaseException:
        try: page.screenshot(path=str(SHOTS / f'FAILED-{name}.png'))
        except Exception: pass
        raise


def _code_cells(nb: Path) -> int:
    import json
    return sum(c['cell_type'] == 'code' for c in json.loads(nb.read_text())['cells'])


def test_demo_notebook_widgets(lab, page, tiny_classifier):
    classes = json.loads((tiny_classifier / 'task.json').read_text())['classes']
    _shot_on_failure(page, 'demo-notebook', lambda page: _demo_steps(lab, page, classes))


def _classifier_steps(page, classes: list[str]):
    """A domain, then its classes as bars with percentages, most probable
    first, the first named; then a refused one."""
    from playwright.sync_api import expect
    widget = page.locator('.dc-classifier')
    typed, status = widget.locator('.dc-classify-input input'), widget.locator('.dc-status')
    bars = widget.locator('.dc-class-bars .dc-bar-row')
    expect(typed).to_have_value('example')
    expect(status).to_contain_text('example → ', timeout=60_000)
    typed.fill('shop-online')
    expect(status).to_contain_text('shop-online → ', timeout=30_000)  # set after the bars
    expect(bars).to_have_count(len(classes))
    shown = [re.fullmatch(r'(\S+)\s+([\d.]+)%', t.strip()).groups() for t in bars.all_inner_texts()]
    labels, percents = [c for c, _ in shown], [float(p) for _, p in shown]
    assert sorted(labels) == classes and percents == sorted(percents, reverse=True), shown
    assert abs(sum(percents) - 100) < 0.5, shown  # every class: all of the probability
    expect(widget.locator('.dc-predicted .dc-label')).to_have_text(labels[0])
    expect(widget.locator('.dc-message')).to_have_text('')
    widget.screenshot(path=str(SHOTS / 'classifier.png'))
    typed.fill('shop online')  # refused as fine-tuning refuses it: the reason, and no stale bars
    expect(widget.locator('.dc-message')).to_contain_text('not a domain fine-tuning would accept')
    expect(bars).to_have_count(0)
    expect(status).to_have_text('invalid input')


def _demo_steps(lab, page, classes: list[str]):
    from playwright.sync_api import expect
    t0 = time.monotonic()
    open_notebook(page, lab, DEMO.name)
    run_all_cells(page, _code_cells(DEMO))

    # the predictor: type a masked domain, the predictions follow after the pause
    domain = page.locator('.dc-domain-input input')
    expect(domain).to_have_value('goo?le.c?m', timeout=60_000)
    status = page.locator('.dc-mask-predictor .dc-status')
    message = page.locator('.dc-mask-predictor .dc-message')
    expect(status).to_contain_text('goo?le.c?m →')
    domain.fill('exampl?.com')  # one input event; the kernel predicts 0.3 s later
    expect(status).to_contain_text('exampl?.com → exampl', timeout=30_000)
    expect(page.locator('.dc-bars .dc-bar-row')).to_have_count(5)
    assert re.fullmatch(r'exampl[a-z0-9.-]\.com', page.locator('.dc-filled').inner_text().strip())
    expect(message).to_have_text('')
    page.locator('.dc-mask-predictor').screenshot(path=str(SHOTS / 'predictor.png'))

    domain.fill('example.com')  # nothing hidden: the reason, and no stale predictions
    expect(message).to_contain_text('nothing to predict')
    expect(page.locator('.dc-bars .dc-bar-row')).to_have_count(0)
    page.locator('.dc-mask-predictor').screenshot(path=str(SHOTS / 'predictor-invalid.png'))
    domain.fill('wikip?dia.o?g')
    expect(status).to_contain_text('wikip?dia.o?g →')
    expect(page.locator('.dc-bars .dc-bar-row')).to_have_count(10)

    # the look-alike explorer: a brand, then both rankings with the real domain highlighted in each
    explorer = page.locator('.dc-lookalike-explorer')
    brand, found = explorer.locator('.dc-brand-input input'), explorer.locator('.dc-status')
    expect(brand).to_have_value('example.com')
    expect(found).to_contain_text('example.com: ', timeout=60_000)
    brand.fill('wikipedia.org')
    expect(found).to_contain_text('wikipedia.org: ', timeout=30_000)
    expect(explorer.locator('table.dc-ranking')).to_have_count(2)
    expect(explorer.locator('tr.dc-real')).to_have_count(2)
    assert explorer.locator('table.dc-ranking-model tr.dc-lookalike-row').count() >= 10
    explorer.screenshot(path=str(SHOTS / 'lookalikes.png'))
    brand.fill('ab--cd.com')  # dnstwist cannot read it: the reason, and no stale rankings
    expect(explorer.locator('.dc-message')).to_contain_text('dnstwist cannot read')
    expect(explorer.locator('table.dc-ranking')).to_have_count(0)

    _classifier_steps(page, classes)

    # the loss curves: three steps of the smoothing slider redraw the plot
    plot_status, img = page.locator('.dc-plot-status'), page.locator('img.dc-plot')
    expect(plot_status).to_contain_text('smoothing 0.60')
    expect(img).to_have_attribute('src', re.compile(r'^blob:'))
    loaded = ("() => { const i = document.querySelector('img.dc-plot'); return i && i.complete && "
              "i.naturalWidth > 0; }")
    page.wait_for_function(loaded)
    before = img.get_attribute('src')
    handle = page.locator('.dc-smoothing .noUi-handle')
    handle.focus()
    for _ in range(3): handle.press('ArrowRight')
    expect(page.locator('.dc-smoothing .widget-readout')).to_have_text('0.63')
    expect(plot_status).to_contain_text('smoothing 0.63')  # set after the image of the last redraw
    expect(img).not_to_have_attribute('src', before)
    page.wait_for_function(loaded)
    page.locator('.dc-loss-curves').screenshot(path=str(SHOTS / 'loss-curves.png'))

    wait_kernel_idle(page)
    page.locator('.dc-mask-predictor').scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / 'page.png'))
    assert not [e for e in page.errors if 'widget' in e.lower()], page.errors
    print(f'browser test body: {time.monotonic() - t0:.1f}s')
