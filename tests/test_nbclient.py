"""nbclient runs notebooks with `ConKernelManager` exactly as it does with jupyter_client's `AsyncKernelManager`: each
notebook below is run with both, and the outputs, execution counts and exceptions must be the same."""
from __future__ import annotations

import os

import nbformat, pytest
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, DeadKernelError

from conkernelclient.core import ConKernelManager

MANAGERS = {'vanilla': AsyncKernelManager, 'con': ConKernelManager}


def notebook(*sources:str) -> nbformat.NotebookNode:
    "A notebook with one code cell per source"
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src) for src in sources])


def observed(nb:nbformat.NotebookNode) -> list[tuple]:
    "What a run leaves in each cell: its execution count, its outputs, and its metadata without the run's timings"
    return [(cell.execution_count, cell.outputs, {k: v for k, v in cell.metadata.items() if k != 'execution'})
            for cell in nb.cells]


def only_sleeps_time_out(cell) -> int|None:
    "nbclient's `timeout_func`: two seconds for the cell that sleeps for thirty, no limit for the others"
    return 2 if 'sleep(30)' in cell.source else None


class GatedClient(NotebookClient):
    "A `NotebookClient` that closes `gate`, then opens it once it has processed the `execute_input` of the cell waiting for it"
    gate = ''

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if os.path.exists(self.gate): os.remove(self.gate)

    def process_message(self, msg, cell, cell_index):
        res = super().process_message(msg, cell, cell_index)
        if msg['msg_type'] == 'execute_input' and self.gate in cell.source: open(self.gate, 'w').close()
        return res


def run_both(*sources:str, client_class:type=NotebookClient, **opts) -> dict[str,tuple]:
    "Run a notebook of `sources` with each manager; return, per manager, (cells observed, exception type, exception text)"
    res = {}
    for name, km_class in MANAGERS.items():
        nb = notebook(*sources)
        try:
            client_class(nb, kernel_manager_class=km_class, **opts).execute()
            exc = None
        except Exception as e: exc = e
        res[name] = (observed(nb), type(exc), str(exc))
    return res


@pytest.mark.timeout(60)
def test_outputs_errors_and_interrupted_timeout():
    "Streams, display data, results, an allowed error, a timed-out cell interrupted into an error, and the cell after it"
    res = run_both('print("out"); import sys; print("err", file=sys.stderr)',
                   'from IPython.display import HTML, display; display(HTML("<b>hi</b>")); 6*7',
                   '1/0',
                   'import time; time.sleep(30)',
                   'print("after")',
                   allow_errors=True, timeout_func=only_sleeps_time_out, interrupt_on_timeout=True)
    assert res['con'] == res['vanilla']
    cells, exc, _ = res['con']
    assert exc is type(None)
    outs = [[(o.output_type, o.get('name') or o.get('ename')) for o in c[1]] for c in cells]
    assert outs == [[('stream', 'stdout'), ('stream', 'stderr')], [('display_data', None), ('execute_result', None)],
                    [('error', 'ZeroDivisionError')], [('error', 'KeyboardInterrupt')], [('stream', 'stdout')]]
    assert cells[1][1][1]['data']['text/plain'] == '42' and cells[4][1][0]['text'] == 'after\n'
    assert [c[0] for c in cells] == [1, 2, 3, 4, 5]


@pytest.mark.timeout(60)
def test_cell_error_raises():
    "An error without `allow_errors` raises `CellExecutionError` and stops the notebook there"
    res = run_both('x = 1', '1/0', 'print("never")')
    assert res['con'] == res['vanilla']
    cells, exc, text = res['con']
    assert exc is CellExecutionError and 'ZeroDivisionError' in text
    assert cells[2][1] == [] and cells[2][0] is None


@pytest.mark.timeout(60)
def test_interrupted_timeout_raises():
    "A cell that times out is interrupted; without `allow_errors` the interrupt raises, as nbclient raises it for vanilla"
    res = run_both('import time; time.sleep(30)', 'print("never")', timeout_func=only_sleeps_time_out, interrupt_on_timeout=True)
    assert res['con'] == res['vanilla']
    cells, exc, text = res['con']
    assert exc is CellExecutionError and 'KeyboardInterrupt' in text
    assert cells[1][1] == []


@pytest.mark.timeout(60)
def test_kernel_dies_mid_cell(tmp_path, monkeypatch):
    "A kernel that exits while running a cell makes nbclient raise its own `DeadKernelError`"
    # the cell exits only once nbclient has its execute_input: otherwise whether the cell gets its execution count
    # depends on whether the kernel's IOPub thread sent that message before the process died
    gate = str(tmp_path/'die')
    monkeypatch.setattr(GatedClient, 'gate', gate)
    dying = f"import os, time\nwhile not os.path.exists({gate!r}): time.sleep(0.005)\nos._exit(1)"
    res = run_both('print("before")', dying, 'print("never")', client_class=GatedClient)
    assert res['con'] == res['vanilla']
    cells, exc, _ = res['con']
    assert exc is DeadKernelError
    assert cells[0][1][0]['text'] == 'before\n' and cells[1][0] == 2 and cells[2][1] == []
