"""The benchmark script, `bench/bench.py --quick`, run once into a temporary directory: what it writes has every table
row and JSON field it should, and every request it sent was answered by its own reply. Nothing here judges a timing."""
from __future__ import annotations
import importlib.util, json, subprocess, sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent/'bench'/'bench.py'
PLAIN, PLAIN_UNTIMED, PLAIN_IOPUB, CON = 'jupyter_client', 'jupyter_client, no timeout', 'jupyter_client + iopub', 'ConKernelClient'
CON_PAUSED = 'ConKernelClient, collector paused' # the stub kernel's pipelined rows with the garbage collector paused
PEERS = ('GatewayKernelClient (jupyter_server)', 'jupyter-kernel-client (datalayer)', 'RemoteKernelClient')
KERNELS = {'stub': 'stub kernel (client-bound)', 'python3': 'ipykernel', 'async': 'async-kernel'}

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


@pytest.fixture(scope='module')
def out(tmp_path_factory) -> Path:
    "The directory a `--quick` run of the benchmark, on all three kernels, wrote its results to"
    out = tmp_path_factory.mktemp('bench')
    r = subprocess.run([sys.executable, SCRIPT, '--quick', '--out', out], capture_output=True, text=True, timeout=280)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope='module')
def res(out) -> dict:
    return json.loads((out/'results.json').read_text())


def test_row_and_targets(monkeypatch):
    "A row is the medians per request, kernel CPU only once measurable; targets are judged on the stub, None if unmeasured"
    spec = importlib.util.spec_from_file_location('bench', SCRIPT)
    b = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, 'bench', b) # its dataclasses look their module up there
    spec.loader.exec_module(b) # the script's `main` runs only as __main__
    r = b._row('k', 'c', 10, [b.Cost(100, 0.1, 0.05, 0.2), b.Cost(100, 0.3, 0.07, 0.2), b.Cost(100, 0.2, 0.06, 0.2)], 300)
    assert [round(r[k]) for k in ('sent', 'requests_per_s', 'wall_us', 'cpu_us', 'kernel_cpu_us')] == [300, 500, 2000, 600, 2000]
    assert b._row('k', 'c', 10, [b.Cost(100, 0.1, 0.05, 0.01)], 100)['kernel_cpu_us'] is None
    fake = dict(throughput=[dict(client=PLAIN, in_flight=1000, cpu_us=100), dict(client=CON, in_flight=1000, cpu_us=150),
                            dict(client=CON, in_flight=100, cpu_us=140), dict(client='synchronous limit', in_flight=1000, cpu_us=50),
                            dict(client=PLAIN_UNTIMED, in_flight=1000, cpu_us=120)],
                outputs=[dict(client=PLAIN, cell='x', cpu_us=10), dict(client=CON, cell='x', cpu_us=9)],
                memory=[dict(window=500, timeout=60, bytes_per_request=400)],
                backlog=[dict(request=r, bytes=n, packed=p) for r, n, p in zip(b.BACKLOG_REQUESTS, (80, 500), (100, 200))],
                send_path=[dict(mode='sent', us_per_call=40), dict(mode='queued behind the window', us_per_call=50)],
                unread=[dict(client='jupyter_client', requests=50_000, inbox_mb=None), dict(client=CON, requests=50_000, inbox_mb=6.5)],
                many=[dict(transport=t, kernels=k, cpu_us=c) for t, k, c in
                      (('ZMQ, direct', 1, 100), ('ZMQ, direct', 16, 110), ('websocket', 1, 200), ('websocket', 16, 260))])
    assert [(round(t['value'], 2), t['met']) for t in b.targets({'stub': fake})] == [
        (1.5, False), (1.25, False), (3.0, False), (1.07, True), (400, True), (80, True), (2.5, False), (1.25, False), (0.9, True), (6.5, False), (1.1, True), (1.3, False)]
    assert '50,000 requests' in b.targets({'stub': fake})[9]['target']
    assert '16 stub kernels at once vs 1 (websocket)' in b.targets({'stub': fake})[-1]['target']
    # a real kernel has a target of its own, against the floor without timeouts at its largest batch; the stub's are unmeasured
    real = b.targets({'python3': fake})
    assert [t['met'] for t in real] == [None] * 10 + [False, None, None] and '(ipykernel)' in real[10]['target']
    # beside a ratio of two rows' medians, its range round by round (rounds paired in order), where both rows have them
    rows = [dict(client=CON, in_flight=1000, cpu_us=100, cpu_us_rounds=[90, 100, 130]),
            dict(client=PLAIN, in_flight=1000, cpu_us=200, cpu_us_rounds=[100, 200, 260])]
    floor = b.targets({'stub': dict(throughput=rows)})[0]
    assert (floor['value'], floor['spread']) == (0.5, (0.5, 0.9))
    assert '| 0.50× | 0.50–0.90× | ≤ 0.5× | yes |' in '\n'.join(b._targets_md([floor]))
    rows[1]['cpu_us_rounds'] = [200, 200] # not the same rounds: no range
    assert b.targets({'stub': dict(throughput=rows)})[0]['spread'] is None


def test_help():
    "`--help` names the options"
    r = subprocess.run([sys.executable, SCRIPT, '--help'], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert '--quick' in r.stdout and '--out DIR' in r.stdout and '--kernels NAMES' in r.stdout


def test_meta_and_plan(res, out):
    "The JSON says how it was run, on what, with the quick plan on every kernel"
    assert res['meta']['command'] == f'python bench/bench.py --quick --out {out}'
    assert res['meta']['versions']['jupyter_client'] and res['meta']['machine']
    assert res['plan']['rounds'] == res['plan']['repeats'] == 2 and res['plan']['kernels'] == list(KERNELS)


def test_every_request_answered(res):
    """Each kernel has one row per client and batch size (the stub kernel also the synchronous limit's and
    ConKernelClient's with the collector paused), and every request of every row was answered by its own reply"""
    plan = res['plan']
    for kernel in KERNELS:
        batches = plan['stub_batches'] if kernel == 'stub' else plan['kernel_batches']
        rows = [r for r in res['throughput'] if r['kernel'] == kernel]
        clients = (PLAIN, PLAIN_UNTIMED, PLAIN_IOPUB, CON, *((CON_PAUSED, 'synchronous limit') if kernel == 'stub' else ()))
        assert sorted((r['client'], r['in_flight']) for r in rows) == sorted(
            [(PLAIN, 1), (CON, 1), *((c, n) for n in batches for c in clients)])
        for r in rows:
            assert r['repeats'] == plan['rounds'] and r['sent'] == r['requests'] * r['repeats'], r
            assert r['answered'] == r['sent'], r
            assert r['cpu_us'] > 0 and r['requests_per_s'] > 0 and (r['kernel_cpu_us'] is None or r['kernel_cpu_us'] > 0), r


def test_outputs(res):
    "Both clients collect both cells on every kernel; on the stub, one message a line or display, plus busy and idle"
    plan, outs = res['plan'], res['outputs']
    cells = [f"{plan['lines']:,} lines", f"{plan['displays']:,} displays"]
    assert sorted((o['kernel'], o['client'], o['cell']) for o in outs) == sorted(
        (k, c, cell) for k in KERNELS for c in (PLAIN, CON) for cell in cells)
    stub = {(o['client'], o['cell']): o['messages'] for o in outs if o['kernel'] == 'stub'}
    assert stub == {(c, cell): [n + 2] for c in (PLAIN, CON) for cell, n in zip(cells, (plan['lines'], plan['displays']))}


def test_memory(res):
    "On the stub, the heap is measured three ways, each with `held` requests in flight, all of them answered"
    held = res['plan']['held']
    assert [(m['in_flight'], m['answered'], m['window'], m['timeout']) for m in res['memory']] == [
        (held, held, 500, 60), (held, held, 500, None), (held, held, None, 60)]
    assert all(m['bytes_per_request'] > 0 and len(m['sites']) == 5 for m in res['memory'])


def test_concurrency(res):
    "Kernels with subshells have both latencies (the script itself fails if the subshell request waited for the sleep)"
    rows = res['concurrency']
    assert sorted((c['kernel'], c['client']) for c in rows) == sorted(
        (k, c) for k in ('python3', 'async') for c in (f'{PLAIN}, one at a time', f'{CON}, subshell'))
    assert all(c['sleep'] == res['plan']['sleep'] and str(c['sleep']) in c['main_shell'] for c in rows)


def test_encryption(res):
    "ipykernel and async-kernel, which support CurveZMQ, each have a plain and an encrypted row, every request answered"
    rows = res['encryption']
    assert sorted((r['kernel'], r['transport']) for r in rows) == sorted(
        (k, t) for k in ('python3', 'async') for t in ('plain TCP', 'CurveZMQ'))
    assert all(r['answered'] == r['sent'] > 0 and r['cpu_us'] > 0 for r in rows)


def test_cancellable(res):
    "ipykernel and async-kernel each have a pipelined and a cancellable row, every request answered"
    rows = res['cancellable']
    assert sorted((r['kernel'], r['mode']) for r in rows) == sorted(
        (k, m) for k in ('python3', 'async') for m in ('pipelined (default)', 'cancellable'))
    assert all(r['answered'] == r['sent'] > 0 and r['cpu_us'] > 0 for r in rows)


def test_limit(res):
    "The synchronous limit runs on the stub kernel at every batch size, every request answered by its own reply"
    rows = [r for r in res['throughput'] if r['client'] == 'synchronous limit']
    assert sorted(r['in_flight'] for r in rows) == sorted(res['plan']['stub_batches'])
    assert all(r['kernel'] == 'stub' and r['answered'] == r['sent'] > 0 and r['cpu_us'] > 0 for r in rows)


def test_event_loops(res):
    "Every kernel has a row under asyncio's loop and one under uvloop, every request answered"
    rows = res['loops']
    assert sorted((r['kernel'], r['loop']) for r in rows) == sorted(
        (k, l) for k in KERNELS for l in ('asyncio', 'uvloop'))
    assert all(r['answered'] == r['sent'] > 0 and r['cpu_us'] > 0 for r in rows)


def test_backlog(res):
    "On the stub, what the backlog keeps of each kind of request, sent back with the same content"
    assert [(r['request'], r['kept']) for r in res['backlog']] == [
        ('execute_request, no user expressions', '_QueuedCode'), ('execute_request with user expressions', '_Queued')]
    assert all(r['bytes'] > 0 and r['packed'] > 0 for r in res['backlog'])


def test_send_path(res):
    "The stub kernel's send path: the loop held by the memory plan's number of calls, sent and queued"
    rows = res['send_path']
    assert [(r['mode'], r['calls']) for r in rows] == [(m, res['plan']['held']) for m in ('sent', 'queued behind the window')]
    assert all(r['held_ms'] > 0 and r['us_per_call'] > 0 for r in rows)


def test_unread(res):
    "Each client's memory over the plan's unread requests on the stub, every request answered; ConKernelClient keeps its limit"
    rows, n = res['unread'], res['plan']['unread']
    assert [(r['client'], r['requests'], r['answered']) for r in rows] == [
        (c, n, n) for c in ('jupyter_client', CON, f'{CON}, 100,000 kept')]
    assert [r['kept'] for r in rows] == [None, 1000, 2 * n] # two status messages a request, none read
    assert [r['dropped'] for r in rows] == [None, 2 * n - 1000, 0]
    assert all(r['replayed'] >= n and r['replay_mb'] > 0 for r in rows)
    assert rows[1]['inbox_mb'] < rows[2]['inbox_mb']


def test_json_libraries(res):
    "Every kernel has a row for the floor and one for ConKernelClient with each JSON library (orjson is in the dev extra)"
    rows = res['json']
    assert sorted((r['kernel'], r['client'], r['json']) for r in rows) == sorted(
        (k, c, j) for k in KERNELS for c in ('jupyter_client', 'ConKernelClient') for j in ('json', 'orjson'))
    assert all(r['answered'] == r['sent'] > 0 and r['cpu_us'] > 0 for r in rows)


def test_websocket(res):
    "The stub kernel and ipykernel behind a real server: each transport at 1 and at the largest batch, every request answered"
    rows, n = res['websocket'], res['plan']['kernel_batches'][-1]
    assert sorted((r['kernel'], r['transport'], r['in_flight']) for r in rows) == sorted(
        (k, t, i) for k in ('stub', 'python3') for t in ('ZMQ, direct', 'websocket', 'websocket, no QUICKACK') for i in (1, n))
    assert all(r['answered'] == r['sent'] > 0 and r['cpu_us'] > 0 and r['repeats'] == res['plan']['rounds'] for r in rows)
    # the websocket's reads and ACKs are counted: every request needs a read; without QUICKACK none is sent at once
    assert all(('reads' in r) == (r['transport'] != 'ZMQ, direct') for r in rows)
    assert all(r['reads'] > 0 for r in rows if r['transport'] != 'ZMQ, direct')
    assert all(r['acks'] == 0 for r in rows if r['transport'] == 'websocket, no QUICKACK')
    assert all(r['acks'] > 0 for r in rows if r['transport'] == 'websocket' and r['in_flight'] == 1)


def test_ws_libraries(res):
    "Each websocket library's bare client on the stub kernel behind the server, one at a time and 1,000 pipelined, every request answered"
    rows = res['ws_libraries']
    assert [(r['library'], r['in_flight']) for r in rows] == [(lib, n) for lib in ('tornado', 'websockets', 'picows', 'aiohttp') for n in (1, 1000)]
    assert all(r['kernel'] == 'stub' and r['answered'] == r['sent'] > 0 and r['cpu_us'] > 0 for r in rows)
    assert [r['adds'] for r in rows if r['library'] == 'tornado'] == [[], []] # jupyter_client's own
    assert all(r['adds'][0] == r['library'] for r in rows if r['library'] != 'tornado')


def test_remote_clients(res):
    """Each peer on the stub kernel and ipykernel behind one server: every sequential request answered by its own reply;
    every shared request accounted for, and RemoteKernelClient's each answered by its own; a first reply after a start"""
    rows = res['remote_clients']
    assert [(r['kernel'], r['client']) for r in rows] == [(k, c) for k in ('stub', 'python3') for c in PEERS]
    for r in rows:
        sh = r['shared']
        assert r['in_flight'] == 1 and r['requests'] == res['plan']['remote_requests'] and r['answered'] == r['sent'] > 0, r
        assert (sh['requests'], sh['callers'], sh['timeout']) == (res['plan']['shared'], 10, res['plan']['shared_timeout']), r
        assert sum(sh[k] for k in ('right', 'wrong', 'hung', 'unsent', 'errors')) == sh['requests'], r
        assert r['cpu_us'] > 0 and r['first_reply_ms'] > 0, r
    assert all(r['shared']['right'] == r['shared']['requests'] for r in rows if r['client'] == 'RemoteKernelClient')


def test_many_kernels(res):
    """Each transport drives each number of stub kernels of the plan at once, every request answered by its own reply;
    every timed run sends as many requests as the largest number of kernels makes, whatever its own"""
    rows, plan = res['many'], res['plan']
    assert [(r['transport'], r['client'], r['kernels']) for r in rows] == [
        (t, c, k) for t, c in (('ZMQ, direct', CON), ('websocket', 'RemoteKernelClient'), ('websocket, bare picows reader', 'RawWebsocket'))
        for k in plan['many']]
    for r in rows:
        assert r['kernel'] == 'stub' and r['in_flight'] == plan['many_requests'] and r['requests'] == max(plan['many']) * plan['many_requests'], r
        assert r['answered'] == r['sent'] == r['requests'] * r['repeats'] and r['cpu_us'] > 0, r


def test_targets(res):
    """Every target has a value and a verdict (whatever it is): the stub kernel's, one per real kernel, the websocket's
    against ZMQ at 1 and the largest batch for each kernel behind the server, one per many-kernels transport"""
    assert [t['unit'] for t in res['targets']] == ['×', '×', '×', '×', 'bytes', 'bytes', '×', '×', '×', 'MB'] + ['×'] * 9
    assert [t['target'].rsplit('(', 1)[-1] for t in res['targets'][10:]] == [
        'ipykernel)', 'async-kernel)', 'client-bound))', 'client-bound))', 'ipykernel)', 'ipykernel)', 'client-bound))',
        'ZMQ, direct)', 'websocket)']
    assert 'with QUICKACK vs without' in res['targets'][16]['target']
    assert [' 1 in flight' in t['target'] for t in res['targets'][12:16]] == [True, False, True, False]
    assert all(t['value'] > 0 and t['met'] in (True, False) for t in res['targets'])


def test_markdown_and_plot(res, out):
    "results.md has a section per kernel with a table row per JSON row, and the other tables; bench.png is a PNG"
    md = (out/'results.md').read_text()
    assert md.startswith('# conkernelclient benchmark\n')
    sections = md.split('\n### ')
    for kernel, title in KERNELS.items():
        section = next(s for s in sections if s.startswith(title + '\n'))
        rows = [l for l in section.split('\n## ')[0].splitlines() if l.startswith('| ')]
        assert len(rows) - 1 == sum(r['kernel'] == kernel for r in res['throughput']) # less the header row
    for head in ('## Targets', '## Output collection', '## Memory', '## Unread iopub', '## Send path', '## Concurrency', '## Encryption', '## Cancellable requests',
                 '## Event loops', '## JSON libraries', '## Remote kernels', '## Websocket libraries', '## Remote clients', '## Many kernels'):
        assert f'\n{head}\n' in md
    assert (out/'bench.png').read_bytes()[:4] == b'\x89PNG'
