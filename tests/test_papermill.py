"""The papermill engine `conkernelclient` with real components: the `papermill` command in a subprocess and
`pm.execute_notebook` in this process, on a local kernel, on a `jupyter server` and on a `jupyter kernelgateway`
(started by `LocalServer`). A parameterized notebook runs with its outputs saved; a failing cell, a timed-out cell
(interrupted: the kernel is free for the next run), a kernel killed or deleted mid-run and SIGTERM to papermill each
end the run with a named error and the notebook saved; no kernel is left on the server, and the token is in no output."""
from __future__ import annotations
import os, re, signal, subprocess, sys
from pathlib import Path

import nbformat, psutil, pytest
import papermill as pm
from papermill.exceptions import PapermillExecutionError

from conkernelclient.core import ConKernelManager
from conkernelclient.remote import LocalServer, RemoteKernelManager, Server, call

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

READY = re.compile(r'ready (\d+) (?:kernel-)?(\S+)\.json') # a server's kernel has connection file kernel-<id>.json
# a cell that says which kernel runs it (its pid, and the kernel id in its connection file's name), then sleeps
SAY_READY = ("import os, sys, time\nprint('ready', os.getpid(), os.path.basename(sys.argv[sys.argv.index('-f') + 1]), "
             "flush=True)\ntime.sleep(600)")


class Where:
    "Where a run's kernel is: locally (`url` None), or on a `LocalServer`"
    def __init__(self, name:str, srv:LocalServer|None=None):
        self.name, self.srv = name, srv
        self.url, self.token = (srv.url, srv.token) if srv else (None, None)

    def __repr__(self): return self.name

    def env(self) -> dict[str,str]:
        "The environment of a run: `JUPYTER_GATEWAY_URL` and the token for a server, neither locally"
        env = {k: v for k, v in os.environ.items() if not k.startswith('JUPYTER_GATEWAY_')}
        if self.srv: env |= {'JUPYTER_GATEWAY_URL': self.url, 'JUPYTER_GATEWAY_AUTH_TOKEN': self.token}
        return env

    def kernels(self, loop) -> list[dict]:
        "The kernels the server has (none locally)"
        return loop.run_until_complete(call(Server(self.url, self.token), '/api/kernels')) if self.srv else []

    def no_token_in(self, *texts:str):
        "Check that the token appears in none of `texts`"
        if self.srv: assert not any(self.token in t for t in texts), "the token leaked into an output"


@pytest.fixture(scope='module', params=['local', 'server', 'gateway'])
def where(request, aio_loop):
    "A local kernel, then a real jupyter server, then a kernel gateway (which lists its kernels) on loopback"
    if request.param == 'local':
        yield Where('local')
        return
    srv = LocalServer(request.param, args=('--JupyterWebsocketPersonality.list_kernels=True',) if request.param == 'gateway' else ())
    aio_loop.run_until_complete(srv.__aenter__())
    try: yield Where(request.param, srv)
    finally: aio_loop.run_until_complete(srv.__aexit__())


@pytest.fixture
def clean(where, aio_loop):
    "After the test: the server has no kernel left"
    yield
    assert where.kernels(aio_loop) == [], "a kernel was left on the server"


def notebook(path:Path, *sources:str) -> Path:
    "Write a notebook to `path`: a `parameters` cell setting `alpha = 0.1`, then a code cell per source"
    nb = nbformat.v4.new_notebook(metadata={'kernelspec': {'name': 'python3', 'language': 'python', 'display_name': 'Python 3'}})
    nb.cells = [nbformat.v4.new_code_cell('alpha = 0.1', metadata={'tags': ['parameters']}),
                *(nbformat.v4.new_code_cell(s) for s in sources)]
    nbformat.write(nb, path)
    return path


def code_cells(path:Path) -> list[nbformat.NotebookNode]:
    "The code cells of the saved notebook at `path` after the parameters (the notebook's, and those papermill injected)"
    params = {'parameters', 'injected-parameters'}
    return [c for c in nbformat.read(path, 4).cells if c.cell_type == 'code' and not params & set(c.metadata.get('tags', []))]


def papermill(where:Where, *args:str, cwd:Path) -> subprocess.Popen:
    "The `papermill` command with the engine, started in `cwd`, its stderr merged into its stdout"
    return subprocess.Popen([sys.executable, '-m', 'papermill', '--engine', 'conkernelclient', *args], cwd=cwd,
                            env=where.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finished(proc:subprocess.Popen, timeout:float=60) -> tuple[int,str]:
    "Exit code and output of `proc`, which must end within `timeout` s"
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def ready(proc:subprocess.Popen) -> re.Match:
    "Read the output of `proc`, streamed by `--log-output` as it comes, up to the line of `SAY_READY`: its match"
    for line in proc.stdout:
        if m := READY.search(line): return m
    raise AssertionError(f"the run ended (exit code {proc.wait()}) before its cell said it was ready")


def error_outputs(cell) -> list[tuple[str,str]]:
    return [(o.ename, o.evalue) for o in cell.outputs if o.output_type == 'error']


def test_command_runs_a_parameterized_notebook(where, clean, tmp_path):
    """`papermill ... -p alpha 0.6 --log-output --cwd DIR -k python3 --stdout-file F --stderr-file G`: parameters, outputs,
    counts saved, output streamed"""
    work = tmp_path/'work'
    work.mkdir()
    src = notebook(tmp_path/'in.ipynb', 'import sys\nprint("alpha is", alpha)\nprint("to stderr", file=sys.stderr)', 'alpha * 2',
                   'import os; os.getcwd()')
    code, out = finished(papermill(where, 'in.ipynb', 'out.ipynb', '-p', 'alpha', '0.6', '--log-output', '--progress-bar',
                                   '--cwd', str(work), '--kernel', 'python3', '--stdout-file', str(tmp_path/'stdout.txt'),
                                   '--stderr-file', str(tmp_path/'stderr.txt'), cwd=tmp_path))
    assert code == 0, out
    nb = nbformat.read(tmp_path/'out.ipynb', 4)
    assert nb.cells[1].source.strip() == '# Parameters\nalpha = 0.6'
    assert [c.execution_count for c in nb.cells] == [1, 2, 3, 4, 5]
    cells = code_cells(tmp_path/'out.ipynb')
    assert cells[0].outputs[0].text == 'alpha is 0.6\n' and cells[1].outputs[0].data['text/plain'] == '1.2'
    assert 'alpha is 0.6' in out and 'Executing: 100%' in out # --log-output, and the progress bar
    assert (tmp_path/'stdout.txt').read_text() == 'alpha is 0.6\n' and (tmp_path/'stderr.txt').read_text() == 'to stderr\n'
    if where.srv is None: assert cells[2].outputs[0].data['text/plain'] == repr(str(work)) # --cwd is the kernel's
    where.no_token_in(out, (tmp_path/'out.ipynb').read_text())
    assert src.exists()


def test_execute_notebook_from_python(where, clean, tmp_path, monkeypatch, caplog):
    "`pm.execute_notebook(..., engine_name='conkernelclient')` runs on the same kernel the command would"
    for k, v in where.env().items(): monkeypatch.setenv(k, v)
    if where.srv is None: monkeypatch.delenv('JUPYTER_GATEWAY_URL', raising=False)
    src = notebook(tmp_path/'in.ipynb', 'print("alpha is", alpha)')
    nb = pm.execute_notebook(src, tmp_path/'out.ipynb', parameters={'alpha': 0.6}, engine_name='conkernelclient',
                             kernel_name='python3', progress_bar=False)
    assert nb.cells[2].outputs[0].text == 'alpha is 0.6\n'
    assert nb.metadata.language_info.name == 'python'
    assert code_cells(tmp_path/'out.ipynb')[0].outputs == nb.cells[2].outputs
    where.no_token_in(caplog.text, (tmp_path/'out.ipynb').read_text())


def test_failing_cell(where, clean, tmp_path):
    """A failing cell ends the run with `PapermillExecutionError`; the notebook is saved up to it (at the end, with
    `--no-request-save-on-cell-execute`), the later cell not run"""
    notebook(tmp_path/'in.ipynb', 'print("before")', '1/0', 'print("never")')
    code, out = finished(papermill(where, 'in.ipynb', 'out.ipynb', '--no-progress-bar', '--no-request-save-on-cell-execute',
                                   cwd=tmp_path))
    assert code == 1 and 'PapermillExecutionError' in out and 'ZeroDivisionError' in out
    cells = code_cells(tmp_path/'out.ipynb')
    assert cells[0].outputs[0].text == 'before\n'
    assert error_outputs(cells[1]) == [('ZeroDivisionError', 'division by zero')]
    assert cells[1].metadata.papermill.status == 'failed' and cells[2].outputs == [] and cells[2].execution_count is None
    where.no_token_in(out)


def test_timeout_interrupts_the_cell(where, clean, tmp_path):
    "`--execution-timeout 2` on a cell that sleeps for 600 s: interrupted, recorded as `CellTimeoutError`, kernel gone"
    notebook(tmp_path/'in.ipynb', SAY_READY, 'print("never")')
    code, out = finished(papermill(where, 'in.ipynb', 'out.ipynb', '--execution-timeout', '2', '--log-output', cwd=tmp_path))
    assert code == 1 and 'PapermillExecutionError' in out, out
    cells = code_cells(tmp_path/'out.ipynb')
    [(ename, evalue)] = error_outputs(cells[0])
    assert ename == 'CellTimeoutError' and evalue == 'the cell ran past the execution timeout of 2 s, and was interrupted'
    assert cells[0].metadata.papermill.status == 'failed' and cells[1].outputs == []
    pid = int(READY.search(cells[0].outputs[0].text)[1])
    if where.srv is None: assert not psutil.pid_exists(pid), "the kernel outlived the run"
    where.no_token_in(out, (tmp_path/'out.ipynb').read_text())


@pytest.fixture
def attached(where, aio_loop):
    "A kernel of the test's own, local or on the server; its manager (for `km=`) is made by the returned function"
    if where.srv is None:
        km = ConKernelManager()
        aio_loop.run_until_complete(km.start_kernel())
        yield lambda: km
        aio_loop.run_until_complete(km.shutdown_kernel(now=True))
        return
    km = RemoteKernelManager(where.url, where.token)
    aio_loop.run_until_complete(km.start_kernel())
    yield lambda: RemoteKernelManager(where.url, where.token, kernel_id=km.kernel_id) # a new attachment each run
    aio_loop.run_until_complete(km.shutdown_kernel())


def test_timed_out_kernel_is_free_for_the_next_run(where, clean, attached, tmp_path):
    "Two runs on one kernel (`km=`): the first times out and is interrupted, the second runs on it at once"
    slow = notebook(tmp_path/'slow.ipynb', 'import time\nprint("sleeping", flush=True)\ntime.sleep(600)')
    with pytest.raises(PapermillExecutionError) as e:
        pm.execute_notebook(slow, tmp_path/'slow-out.ipynb', engine_name='conkernelclient', km=attached(),
                            execution_timeout=2, progress_bar=False)
    assert e.value.ename == 'CellTimeoutError'
    nb = pm.execute_notebook(notebook(tmp_path/'next.ipynb', 'print("after", alpha)'), tmp_path/'next-out.ipynb',
                             engine_name='conkernelclient', km=attached(), progress_bar=False)
    assert nb.cells[1].outputs[0].text == 'after 0.1\n'


def test_kernel_dies_mid_run(where, clean, tmp_path, aio_loop):
    "A kernel killed (local SIGKILL) or deleted on its server mid-cell fails the run with `DeadKernelError`, notebook saved"
    notebook(tmp_path/'in.ipynb', 'print("before")', SAY_READY, 'print("never")')
    proc = papermill(where, 'in.ipynb', 'out.ipynb', '--log-output', cwd=tmp_path)
    m = ready(proc)
    if where.srv is None: os.kill(int(m[1]), signal.SIGKILL)
    else: aio_loop.run_until_complete(RemoteKernelManager(where.url, where.token, kernel_id=m[2]).shutdown_kernel())
    code, out = finished(proc, timeout=30)
    assert code == 138 and 'DeadKernelError' in out, out # papermill's exit code for a dead kernel
    cells = code_cells(tmp_path/'out.ipynb')
    assert cells[0].outputs[0].text == 'before\n' and cells[1].outputs[0].text.startswith('ready')
    [(ename, evalue)] = error_outputs(cells[1])
    assert ename == 'DeadKernelError', evalue
    assert cells[1].metadata.papermill.status == 'failed' and cells[2].outputs == []
    where.no_token_in(out, (tmp_path/'out.ipynb').read_text())


def test_timeout_the_interrupt_cannot_stop(where, clean, tmp_path):
    "A timed-out cell that ignores interrupts fails the run with `CellTimeoutError` once `kc.cancel` gives up; kernel gone"
    notebook(tmp_path/'in.ipynb', 'import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n' + SAY_READY)
    code, out = finished(papermill(where, 'in.ipynb', 'out.ipynb', '--execution-timeout', '1', '--log-output', cwd=tmp_path))
    assert code == 1 and 'CellTimeoutError' in out, out
    [cell] = code_cells(tmp_path/'out.ipynb')
    [(ename, evalue)] = error_outputs(cell)
    assert ename == 'CellTimeoutError' and 'and the interrupt did not stop it' in evalue, evalue
    assert cell.metadata.papermill.status == 'failed'
    if where.srv is None: assert not psutil.pid_exists(int(READY.search(cell.outputs[0].text)[1])), "the kernel outlived the run"


def test_sigterm_ends_the_run_and_its_kernel(where, clean, tmp_path):
    """SIGTERM to papermill mid-cell (as Airflow or a container runtime sends it) ends the run as Ctrl-C does: the cell
    records it, and the kernel is shut down (deleted on its server)"""
    notebook(tmp_path/'in.ipynb', SAY_READY)
    proc = papermill(where, 'in.ipynb', 'out.ipynb', '--log-output', cwd=tmp_path)
    pid = int(ready(proc)[1])
    proc.terminate()
    code, out = finished(proc)
    assert code == 1 and 'Aborted!' in out, out # papermill's command (click) ends on a KeyboardInterrupt so
    assert 'never retrieved' not in out # the cell's task, left waiting by the interrupt, ended quietly
    [cell] = code_cells(tmp_path/'out.ipynb')
    assert error_outputs(cell) == [('RunTerminated', 'the run was ended during this cell, and its kernel shut down')]
    assert cell.metadata.papermill.status == 'failed'
    if where.srv is None: assert not psutil.pid_exists(pid), "the kernel outlived the run"
    where.no_token_in(out)
