"""The papermill engine `conkernelclient` with real components: the `papermill` command in a subprocess and
`pm.execute_notebook` in this process, on a local kernel, on a `jupyter server` and on a `jupyter kernelgateway`
(started by `LocalServer`). A parameterized notebook runs with its outputs saved; a failing cell, a timed-out cell
(interrupted: the kernel is free for the next run), a kernel killed or deleted mid-run and SIGTERM to papermill each
end the run with a named error and the notebook saved; no kernel is left on the server, and the token is in no output.
`--cwd` is the kernel's directory on the server; every other papermill option is tried on each kernel too (the table
of what each does remotely is in the closing note of issue 21)."""
from __future__ import annotations
import base64, json, os, re, signal, subprocess, sys, time
from pathlib import Path

import nbformat, psutil, pytest
import papermill as pm
from jupyter_client.kernelspec import KernelSpec
from papermill.exceptions import PapermillExecutionError

from conkernelclient.core import ConKernelManager
from conkernelclient.remote import RemoteKernelManager
from conkernelclient.server import LocalServer, Server, call
from kit import IGNORE_SIGINT

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

READY = re.compile(r'ready (\d+) (?:kernel-)?(\S+)\.json') # a server's kernel has connection file kernel-<id>.json
# a cell that says which kernel runs it (its pid, and the kernel id in its connection file's name), then sleeps
SAY_READY = ("import os, sys, time\nprint('ready', os.getpid(), os.path.basename(sys.argv[sys.argv.index('-f') + 1]), "
             "flush=True)\ntime.sleep(600)")
# the same, in a cell an interrupt cannot stop (`kit.IGNORE_SIGINT` says why a kernel's death is tested with one)
DEAF_READY = IGNORE_SIGINT + SAY_READY
# a kernel spec whose kernel never answers: it says its pid, then sleeps
MUTE = KernelSpec(argv=[sys.executable, '-c', "import os, time; print('mute', os.getpid(), flush=True); time.sleep(600)",
                        '{connection_file}'], display_name='Mute', language='python')


class Where:
    "Where a run's kernel is: locally (`url` None, kernel specs also from `path`), or on a `LocalServer`"
    def __init__(self, name:str, srv:LocalServer|None=None, path:Path|None=None):
        self.name, self.srv, self.path = name, srv, path
        self.url, self.token = (srv.url, srv.token) if srv else (None, None)
        self.root = Path(srv.dir.name) if srv else None # the server's root directory, on this machine

    def __repr__(self): return self.name

    def env(self) -> dict[str,str]:
        "The environment of a run: `JUPYTER_GATEWAY_URL` and the token for a server, neither locally"
        env = {k: v for k, v in os.environ.items() if not k.startswith(('JUPYTER_GATEWAY_', 'CONKERNELCLIENT_', 'KERNEL_'))}
        if self.srv: env |= {'JUPYTER_GATEWAY_URL': self.url, 'JUPYTER_GATEWAY_AUTH_TOKEN': self.token}
        else: env['JUPYTER_PATH'] = str(self.path)
        return env

    def kernels(self, loop) -> list[dict]:
        "The kernels the server has (none locally)"
        return loop.run_until_complete(call(Server(self.url, self.token), '/api/kernels')) if self.srv else []

    def no_token_in(self, *texts:str):
        "Check that the token appears in none of `texts`"
        if self.srv: assert not any(self.token in t for t in texts), "the token leaked into an output"


@pytest.fixture(scope='module', params=['local', 'server', 'gateway'])
def where(request, aio_loop, tmp_path_factory):
    """A local kernel, then a real jupyter server, then a kernel gateway (which lists its kernels) on loopback; each
    offers the kernel spec `mute` besides the installed ones"""
    if request.param == 'local':
        path = tmp_path_factory.mktemp('jupyter')
        (path/'kernels'/'mute').mkdir(parents=True)
        (path/'kernels'/'mute'/'kernel.json').write_text(json.dumps(MUTE.to_dict()))
        yield Where('local', path=path)
        return
    srv = LocalServer(request.param, args=('--JupyterWebsocketPersonality.list_kernels=True',) if request.param == 'gateway' else (),
                      kernels={'mute': MUTE})
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


def papermill(where:Where, *args:str, cwd:Path, **env:str) -> subprocess.Popen:
    "The `papermill` command with the engine, started in `cwd` with `env` on top of the run's, its stderr merged into its stdout"
    return subprocess.Popen([sys.executable, '-m', 'papermill', '--engine', 'conkernelclient', *args], cwd=cwd,
                            env=where.env() | env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


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
    else: assert 'RemoteCwdWarning' in out # nothing says where `work` is on the server
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
    notebook(tmp_path/'in.ipynb', 'print("before")', DEAF_READY, 'print("never")')
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
    notebook(tmp_path/'in.ipynb', DEAF_READY)
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


def kernel_cwd(path:Path) -> str:
    "The working directory the kernel of the saved notebook at `path` printed, in its only code cell"
    [cell] = code_cells(path)
    return eval(cell.outputs[0].data['text/plain'])


def test_cwd_on_the_server(where, clean, tmp_path):
    """`--cwd DIR` is the kernel's working directory: locally, and on a server when `CONKERNELCLIENT_SERVER_ROOT_DIR` is
    the local directory of the server's root (here the root itself: the same machine)"""
    root = where.root or tmp_path
    work = root/'work'/'sub'
    work.mkdir(parents=True)
    notebook(tmp_path/'in.ipynb', 'import os; os.getcwd()')
    code, out = finished(papermill(where, 'in.ipynb', 'out.ipynb', '--cwd', str(work), cwd=tmp_path,
                                   CONKERNELCLIENT_SERVER_ROOT_DIR=str(root)))
    assert code == 0, out
    assert kernel_cwd(tmp_path/'out.ipynb') == str(work) and 'RemoteCwdWarning' not in out


def test_cwd_the_server_cannot_have(where, clean, tmp_path):
    """A `--cwd` outside `CONKERNELCLIENT_SERVER_ROOT_DIR` fails the run with `RemoteCwdError` before a kernel starts; so
    does one the server says it does not have (a Jupyter Server; a gateway cannot be asked, and runs the kernel in its
    root); with no root given, the kernel runs in the server's root and the run warns with `RemoteCwdWarning`"""
    if where.srv is None: pytest.skip("a local kernel runs in any directory")
    notebook(tmp_path/'in.ipynb', 'import os; os.getcwd()')
    (tmp_path/'elsewhere').mkdir()
    code, out = finished(papermill(where, 'in.ipynb', 'out.ipynb', '--cwd', str(tmp_path/'elsewhere'), cwd=tmp_path,
                                   CONKERNELCLIENT_SERVER_ROOT_DIR=str(where.root)))
    assert code == 1 and 'RemoteCwdError' in out and f"is not under {where.root}" in out, out
    (tmp_path/'decoy'/'only-here').mkdir(parents=True) # a root that is not the server's: 'only-here' is not on the server
    code, out = finished(papermill(where, 'in.ipynb', 'out.ipynb', '--cwd', str(tmp_path/'decoy'/'only-here'), cwd=tmp_path,
                                   CONKERNELCLIENT_SERVER_ROOT_DIR=str(tmp_path/'decoy')))
    if where.name == 'server':
        assert code == 1 and 'RemoteCwdError' in out and "has no directory 'only-here' under its root" in out, out
    else:
        assert code == 0 and kernel_cwd(tmp_path/'out.ipynb') == str(where.root), out
    code, out = finished(papermill(where, 'in.ipynb', 'out.ipynb', '--cwd', str(tmp_path/'elsewhere'), cwd=tmp_path))
    assert code == 0 and 'RemoteCwdWarning' in out, out
    assert kernel_cwd(tmp_path/'out.ipynb') == str(where.root)
    where.no_token_in(out)


def test_report_mode(where, clean, tmp_path):
    "`--report-mode`: every cell's input hidden in the saved notebook (the injected parameters too), its outputs kept"
    notebook(tmp_path/'in.ipynb', 'print("alpha is", alpha)')
    code, out = finished(papermill(where, 'in.ipynb', 'out.ipynb', '-p', 'alpha', '0.6', '--report-mode', cwd=tmp_path))
    assert code == 0, out
    nb = nbformat.read(tmp_path/'out.ipynb', 4)
    assert [c.metadata.jupyter.source_hidden for c in nb.cells] == [True] * 3
    assert nb.cells[2].outputs[0].text == 'alpha is 0.6\n'


def test_start_timeout(where, clean, tmp_path):
    """`--start-timeout 3` with a kernel that never answers (spec `mute`) fails the run with the client's named timeout
    error; the kernel is shut down (deleted on its server), and nothing runs on"""
    notebook(tmp_path/'in.ipynb', 'print("never")')
    code, out = finished(papermill(where, 'in.ipynb', 'out.ipynb', '--start-timeout', '3', '-k', 'mute', cwd=tmp_path))
    assert code == 1 and 'TimeoutError: the kernel did not answer within 3' in out, out
    assert not (tmp_path/'out.ipynb').exists() or code_cells(tmp_path/'out.ipynb')[0].outputs == []
    said = (Path(where.srv.dir.name)/'log').read_text() if where.srv else out # where the kernel's own output went
    assert not psutil.pid_exists(int(re.findall(r'mute (\d+)', said)[-1])), "the kernel outlived the run"
    where.no_token_in(out)


def test_autosave_during_a_long_cell(where, clean, tmp_path):
    """`--autosave-cell-every 1`: the output notebook is saved while a cell runs, with what the cell printed so far. The
    cell prints until the test sees that, then ends (by itself after 20 s, before papermill's default of 30 s)"""
    go = tmp_path/'go'
    notebook(tmp_path/'in.ipynb', 'import os, time\nprint("partial", flush=True)\n'
             'for _ in range(100):\n    if os.path.exists(go): break\n    print(".", end="", flush=True)\n    time.sleep(0.2)')
    proc = papermill(where, 'in.ipynb', 'out.ipynb', '-p', 'go', str(go), '--autosave-cell-every', '1', '--no-progress-bar', cwd=tmp_path)
    saved = None
    while proc.poll() is None and saved is None:
        try: cell = code_cells(tmp_path/'out.ipynb')[0]
        except (OSError, ValueError, IndexError): cell = None # not written yet, or being written
        if cell is not None and cell.metadata.papermill.status == 'running' and cell.outputs: saved = cell
        else: time.sleep(0.05)
    go.touch()
    code, out = finished(proc)
    assert saved is not None, f"the notebook was never saved while its cell ran: {out}"
    assert saved.outputs[0].text.startswith('partial\n')
    assert code == 0 and code_cells(tmp_path/'out.ipynb')[0].metadata.papermill.status == 'completed', out


def test_every_other_option(where, clean, tmp_path):
    """Parameters as raw strings, a YAML file, YAML and base64 YAML; the notebook's paths injected; the language named;
    the log level; saving after each cell; then --prepare-only and --help-notebook, which start no kernel"""
    notebook(tmp_path/'in.ipynb', 'print(repr(alpha), repr(raw), beta, gamma, delta, PAPERMILL_INPUT_PATH, PAPERMILL_OUTPUT_PATH)')
    (tmp_path/'params.yaml').write_text('beta: 2\n')
    b64 = base64.b64encode(b'delta: 4').decode()
    code, out = finished(papermill(where, 'in.ipynb', 'out.ipynb', '-p', 'alpha', '0.6', '-r', 'raw', '0.7', '-f', 'params.yaml',
                                   '-y', 'gamma: 3', '-b', b64, '--inject-paths', '-l', 'python', '--log-level', 'DEBUG',
                                   '--request-save-on-cell-execute', '--no-log-output', cwd=tmp_path))
    assert code == 0, out
    assert code_cells(tmp_path/'out.ipynb')[0].outputs[0].text == "0.6 '0.7' 2 3 4 in.ipynb out.ipynb\n"
    assert 'msg_type: status' in out # --log-level DEBUG: nbclient's log of each iopub message
    code, out = finished(papermill(where, 'in.ipynb', 'prepared.ipynb', '-p', 'alpha', '0.6', '--prepare-only', cwd=tmp_path))
    assert code == 0, out
    nb = nbformat.read(tmp_path/'prepared.ipynb', 4)
    assert nb.cells[1].source.strip() == '# Parameters\nalpha = 0.6' and code_cells(tmp_path/'prepared.ipynb')[0].outputs == []
    code, out = finished(papermill(where, 'in.ipynb', '--help-notebook', cwd=tmp_path))
    assert code == 0 and 'alpha: Unknown type (default 0.1)' in out, out
