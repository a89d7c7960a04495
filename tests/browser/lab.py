"""A throwaway JupyterLab on 127.0.0.1 and the steps a person takes in it, driven from headless
Chromium by Playwright.

The server gets a random free port, a random token and its own configuration folders (no news, no
update check, every cell rendered: `windowingMode: none`). Kernel readiness is read from the status
bar text, never from the toolbar's execution indicator, which says "idle" before the kernel exists."""
import json, os, re, secrets, signal, socket, subprocess, sys, time
import urllib.error, urllib.request
from pathlib import Path

CHROMIUM = os.environ.get('CHROMIUM_PATH', '/usr/bin/chromium')
CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                 '--disable-background-networking',
                 '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage',
                 # never resolve anything but loopback
                 '--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1']


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class Lab:
    """A JupyterLab server serving `root`, started by `start()` and
    stopped (kernels included) by `stop()`."""
    def __init__(self, root: Path):
        self.root, self.token, self.port = Path(root), secrets.token_hex(16), free_port()
        self.base = f'http://127.0.0.1:{self.port}'
        self.log, self.proc = self.root.parent / 'jupyterlab.log', None

    def url(self, path: str) -> str:
        return f"{self.base}{path}{'&' if '?' in path else '?'}token={self.token}"

    def api(self, method: str, path: str, timeout: float = 5):
        req = urllib.request.Request(self.base + path, method=method,
                                     headers={'Authorization': f'token {self.token}'})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read()
            return r.status, json.loads(body) if body and 'json' in (r.headers.get('Content-Type') or '') else body

    def _environment(self) -> dict:
        cfg = self.root.parent / 'jupyter-config'
        settings = {'apputils-extension/notification': {'fetchNews': 'false',
                                                        'checkForUpdates': False},
                    'notebook-extension/tracker': {'windowingMode': 'none'}}
        for name, value in settings.items():
            f = cfg / 'lab/user-settings/@jupyterlab' / f'{name}.jupyterlab-settings'
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(json.dumps(value))
        env = dict(os.environ, JUPYTER_CONFIG_DIR=str(cfg),
                   JUPYTER_RUNTIME_DIR=str(self.root.parent / 'jupyter-runtime'),
                   IPYTHONDIR=str(self.root.parent / 'ipython'), JUPYTER_PLATFORM_DIRS='1',
                   PYTHONUNBUFFERED='1')
        env.pop('JUPYTER_TOKEN', None)
        return env

    def start(self, timeout: float = 90):
        "Start the server and wait until its API answers."
        cmd = [sys.executable, '-m', 'jupyterlab', '--no-browser', '--allow-root', '--ip=127.0.0.1',
               f'--port={self.port}',
               '--port-retries=0', f'--ServerApp.root_dir={self.root}',
               f'--IdentityProvider.token={self.token}',
               '--LabApp.news_url=None',
               '--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate']
        # its own session: a Ctrl-C of pytest does not reach it, stop() does
        with open(self.log, 'wb') as fh:
            self.proc = subprocess.Popen(cmd, cwd=self.root, env=self._environment(), stdout=fh,
                                         stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f'JupyterLab exited '
                                   f'({self.proc.returncode}):\n{self.log.read_text()[-3000:]}')
            try:
                if self.api('GET', '/api/status', timeout=2)[0] == 200: return self
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.25)
        raise TimeoutError(f'JupyterLab not ready after '
                           f'{timeout}s:\n{self.log.read_text()[-3000:]}')

    def shutdown_kernels(self):
        "Delete every session (and so its kernel)."
        _, sessions = self.api('GET', '/api/sessions')
        for s in sessions or []: self.api('DELETE', f"/api/sessions/{s['id']}")

    def stop(self):
        "Shut down politely (kernels too), then SIGTERM and SIGKILL the server's own process group."
        if self.proc is None: return
        if self.proc.poll() is None:
            try: self.api('POST', '/api/shutdown')
            except Exception: pass
            try: self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired: pass
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            if self.proc.poll() is not None: break
            try: os.killpg(self.proc.pid, sig)
            except ProcessLookupError: break
            try: self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired: pass


# --- what a person does in the browser
# ---------------------------------------------------------------------

def wait_kernel_idle(page, timeout: float = 90_000):
    """The current notebook's kernel is connected and idle (status
    bar: 'Python 3 (ipykernel) | Idle')."""
    from playwright.sync_api import expect
    expect(page.locator('#jp-main-statusbar')).to_contain_text(re.compile(r'Python 3 \(ipykernel\) '
                                                                          r'\| Idle'),
                                                               timeout=timeout)


def open_notebook(page, lab: Lab, name: str):
    "Open `name` in a fresh workspace and wait for its kernel."
    page.goto(lab.url(f'/lab/tree/{name}?reset'))
    page.locator('.jp-NotebookPanel .jp-Notebook .jp-Cell').first.wait_for(timeout=90_000)
    page.locator(f".lm-TabBar-tab.lm-mod-current:has-text('{Path(name).name}')").wait_for()
    wait_kernel_idle(page)


def run_all_cells(page, n_code_cells: int, timeout: float = 180_000):
    """Run > Run All Cells, then wait until every code cell has an
    execution count and the kernel is idle again."""
    from playwright.sync_api import expect
    page.locator('.lm-MenuBar-item', has_text=re.compile(r'^Run$')).click()
    page.locator(".lm-Menu-item[data-command='runmenu:run-all']:not(.lm-mod-disabled)").click()
    prompts = page.locator('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell '
                           '.jp-InputArea-prompt')
    expect(prompts).to_have_count(n_code_cells)
    for i in range(n_code_cells):
        expect(prompts.nth(i)).to_have_text(re.compile(r'\[\d+\]'), timeout=timeout)
    wait_kernel_idle(page)


def set_parameters(notebook: Path, target: Path, **values):
    """Copy `notebook` to `target` with the assignments in its
    `parameters` cell replaced by `values`."""
    nb = json.loads(notebook.read_text())
    cell = next(c for c in nb['cells'] if 'parameters' in c.get('metadata', {}).get('tags', []))
    cell['source'] = [f'{k} = {v!r}\n' for k, v in values.items()]
    target.write_text(json.dumps(nb))
    return target
