"""Remote kernels through real servers on loopback: a `jupyter server` and a `jupyter kernelgateway` (started by
`LocalServer`), with ipykernel behind them, over the v1 websocket protocol and the legacy JSON one. What works
locally works here (many requests in flight, `run`, stdin, control, subshells, `get_pubs`, `execute_interactive`,
nbclient); and each fault ends in its named error while nothing else is lost: the websocket dropping, the server
going away, the kernel deleted, killed or restarted, a wrong token, URL or kernel id, the server's rate limit."""
from __future__ import annotations
import asyncio, contextlib, logging, os, signal, subprocess, sys
from queue import Empty

import nbformat
import pytest
from nbclient import NotebookClient

import conkernelclient.runs # noqa: F401 (kc.run, kc.subshell)
from conkernelclient import KernelDiedError, KernelRestartedError
from conkernelclient.cli import command
from conkernelclient.stubkernel import stub_spec
from conkernelclient.remote import RemoteKernelClient, RemoteKernelManager, ReplyLostError
from conkernelclient.routing import is_idle
from conkernelclient.server import KernelNotFoundError, LocalServer, Server, ServerAuthError, ServerUnreachableError, call
from conkernelclient.websocket import ConnectionLostError, ServerGoneError
from kit import UNINTERRUPTIBLE, Gate, Relay, Remote, ask, check, collect, running, started

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope='module', params=['server', 'gateway'])
def server(request, aio_loop):
    "A real jupyter server (and then a kernel gateway) on loopback, for the module's tests"
    srv = LocalServer(request.param, kernels={'stub': stub_spec()})
    aio_loop.run_until_complete(srv.__aenter__())
    yield srv
    aio_loop.run_until_complete(srv.__aexit__())


@pytest.fixture
def remote(server, aio_loop):
    r = Remote(server)
    yield r
    aio_loop.run_until_complete(r.close())


def kernel_pids(kid:str) -> list[int]:
    "The processes of kernel `kid` on this machine: their command line names its connection file"
    out = subprocess.run(['pgrep', '-f', f'kernel-{kid}.json'], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.mark.parametrize('kernel', ['python3', 'async'])
@pytest.mark.parametrize('protocol', ['v1', 'legacy'])
async def test_many_requests_each_to_its_caller(remote, protocol, kernel):
    "100 requests outstanding on one websocket, each reply to its own caller, on both protocols; control requests too"
    km = await remote.kernel(kernel_name=kernel)
    kc = await remote.client(km, subprotocol=None if protocol == 'legacy' else 'v1.kernel.websocket.jupyter.org')
    assert kc.ws.protocol == protocol
    futs = [ask(kc, f'{i}*{i}') for i in range(100)]
    for fut, reply, i in zip(futs, await asyncio.gather(*futs), range(100)): check(reply, fut, i * i)
    assert (await kc.request('kernel_info', channel='control'))['msg_type'] == 'kernel_info_reply'
    r = await kc.run('import sys; print("out"); print("err", file=sys.stderr); 6*7')
    assert [o.get('name', o['output_type']) for o in r.outputs] == ['stdout', 'stderr', 'execute_result']
    assert not r.incomplete


@pytest.mark.parametrize('protocol', ['v1', 'legacy'])
async def test_binary_buffers(remote, protocol):
    "A message with binary buffers (a comm's) arrives whole on both protocols"
    km = await remote.kernel()
    kc = await remote.client(km, subprotocol=None if protocol == 'legacy' else 'v1.kernel.websocket.jupyter.org')
    r = await kc.run("from comm import create_comm\nc = create_comm(target_name='t', buffers=[b'\\x00\\x01', b'xyz'])")
    [opened] = [m for m in r.msgs if m['msg_type'] == 'comm_open']
    assert [bytes(b) for b in opened['buffers']] == [b'\x00\x01', b'xyz']


async def test_the_stub_kernel(remote):
    "The stub kernel, through a kernel spec the test gave the server: 1,000 requests in flight, each answered"
    km = await remote.kernel(kernel_name='stub')
    kc = await remote.client(km)
    futs = [kc.execute('pass', reply=True) for _ in range(1000)]
    replies = await asyncio.gather(*futs)
    assert [r['parent_header']['msg_id'] for r in replies] == [f.msg_id for f in futs]
    assert all(r['content']['status'] == 'ok' for r in replies)


async def test_an_ack_is_owed_only_to_a_waiter(remote):
    """One request at a time, the read that leaves nothing awaited is not acknowledged at once (the next request carries
    its ACK, as over ZMQ); a reader that then waits for a message not yet here gets it at once. Pipelined with the last
    `idle` followed, the reads are acknowledged once the socket is quiet, not each one"""
    km = await remote.kernel(kernel_name='stub')
    kc = await remote.client(km)
    if kc.ws.sock is None: pytest.skip("no TCP_QUICKACK here: every read waits for the delayed ACK or the next request")
    reads, acks = kc.ws.reads, kc.ws.acks
    for _ in range(20):
        assert (await kc.execute('pass', reply=True))['content']['status'] == 'ok'
        assert kc.ws.owed # the read of its reply: nothing was awaited after it
    assert (kc.ws.reads - reads) - (kc.ws.acks - acks) >= 20 # a read a request, at least, went unacknowledged
    kc.iopub_channel.inbox.clear() # the busy and idle nobody read
    acks = kc.ws.acks
    with contextlib.suppress(Empty): await kc.get_iopub_msg(timeout=0) # the last idle, if the server's Nagle held it back
    assert kc.ws.acks == acks + 1 # acknowledged as the reader began to wait
    acks = kc.ws.acks
    futs = [kc.execute('pass', reply=True) for _ in range(1000)]
    idle = kc.follow(futs[-1].msg_id, is_idle)
    assert all(r['content']['status'] == 'ok' for r in await asyncio.gather(*futs))
    await idle
    assert kc.ws.acks - acks < 100 # an ACK for each read of the stream would be one or more a request


async def test_a_connection_rests_only_behind_a_stream(remote):
    """One request at a time (a reply, or a run's output, always awaited) never rests from reading; a pipelined batch,
    deep and then trailing its iopub stream behind its replies, does, and every reply and the last `idle` still arrive"""
    km = await remote.kernel(kernel_name='stub')
    kc = await remote.client(km)
    rests = kc.ws.rests
    for _ in range(20): assert (await kc.execute('pass', reply=True))['content']['status'] == 'ok'
    for _ in range(5): assert (await kc.run('pass')).reply['content']['status'] == 'ok'
    assert kc.ws.rests == rests
    futs = [kc.execute('pass', reply=True) for _ in range(1000)]
    idle = kc.follow(futs[-1].msg_id, is_idle)
    assert all(r['content']['status'] == 'ok' for r in await asyncio.gather(*futs))
    assert is_idle(await idle)
    assert kc.ws.rests > rests
    assert (await kc.execute('pass', reply=True))['content']['status'] == 'ok' # reading again after its last rest


async def test_the_standard_api(remote):
    "get_pubs, execute_interactive and input() behave as they do locally"
    km = await remote.kernel()
    kc = await remote.client(km)
    mid = kc.execute('print("unclaimed")')
    reply = await kc.get_shell_msg(timeout=30)
    assert reply['parent_header']['msg_id'] == mid
    pubs = await kc.get_pubs(timeout=0.5)
    assert any(m['msg_type'] == 'stream' and m['content']['text'] == 'unclaimed\n' for m in pubs)
    seen = []
    reply = await kc.execute_interactive('print("mine")', output_hook=seen.append, timeout=30)
    assert reply['content']['status'] == 'ok' and [m['content']['text'] for m in seen if m['msg_type'] == 'stream'] == ['mine\n']
    r = await kc.run('x = input("? ")', input=lambda prompt, password: 'typed')
    assert r.reply['content']['status'] == 'ok'
    fut = ask(kc, 'x')
    check(await fut, fut, 'typed')


async def test_subshells(remote):
    "A request on a subshell returns while the main shell sleeps"
    km = await remote.kernel()
    kc = await remote.client(km)
    assert kc.supports_subshells
    async with kc.subshell() as sid:
        slow = kc.run('import time; time.sleep(2)')
        fast = await kc.run('1+1', subshell_id=sid)
        assert fast.outputs[0]['data']['text/plain'] == '2' and not slow.done()
        assert (await slow).reply['content']['status'] == 'ok'


async def test_nbclient_runs_a_notebook(remote):
    "nbclient runs a notebook on a remote kernel through `km=RemoteKernelManager(...)`"
    km = RemoteKernelManager(remote.srv.url, remote.srv.token)
    remote.kms.append(km)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('x = 6'), nbformat.v4.new_code_cell('print(x * 7)')])
    client = NotebookClient(nb, km=km, timeout=60)
    await client.async_execute()
    assert nb.cells[1].outputs[0]['text'] == '42\n'
    assert await km.is_alive() # nbclient leaves a kernel it did not start running
    await client.kc.astop_channels()


async def relayed(remote:Remote, relay:Relay) -> tuple[RemoteKernelManager, RemoteKernelClient]:
    "A kernel of the server, and a started client that reaches the server through `relay`"
    km = await remote.kernel()
    kc = RemoteKernelManager(f'http://127.0.0.1:{relay.local_port}', remote.srv.token, kernel_id=km.kernel_id).client()
    remote.clients.append(kc)
    await kc.start_channels()
    return km, kc


async def busy_behind_gate(kc:RemoteKernelClient, gate:Gate, n:int) -> tuple:
    "A request that waits for `gate` and has started, and `n` requests queued behind it, which the server has passed on"
    first = kc.execute(gate.code, reply=True, timeout=None)
    await running(kc, first)
    futs = [ask(kc, f'{i}', timeout=None) for i in range(n)]
    # the server reads the websocket in order, so once a later control request is answered it has passed all of them on
    await kc.request('kernel_info', channel='control')
    return first, futs


async def test_the_websocket_drops_and_comes_back(remote, tmp_path):
    "The connection breaks with 20 requests in flight: the client reconnects with its session id, the server replays, all complete"
    async with Relay(remote.srv.port) as relay:
        km, kc = await relayed(remote, relay)
        gate = Gate(tmp_path/'open')
        first, futs = await busy_behind_gate(kc, gate, 20)
        conn = kc.ws.conn
        relay.cut() # as a network blip or a proxy restart does
        await asyncio.wait_for(kc.ws.dropped, 10)
        during = ask(kc, "'sent while down'") # waits for the new connection
        gate.open()
        assert (await first)['content']['status'] == 'ok'
        for fut, reply, i in zip(futs, await asyncio.gather(*futs), range(20)): check(reply, fut, i)
        check(await during, during, 'sent while down')
        assert kc.ws.conn is not None and kc.ws.conn is not conn


async def test_the_server_cannot_replay(remote, tmp_path):
    """The connection breaks; while the client cannot reconnect, another session connects to the kernel, so the server
    throws away what it kept for the client, and the kernel finishes the client's requests meanwhile. Once back, the
    client learns it with its probe: those requests fail with ReplyLostError instead of waiting for ever"""
    async with Relay(remote.srv.port) as relay:
        km, kc = await relayed(remote, relay)
        gate = Gate(tmp_path/'open')
        first, futs = await busy_behind_gate(kc, gate, 5)
        relay.cut(hold=True)
        await asyncio.wait_for(kc.ws.dropped, 10)
        other = await remote.client(km) # a session of its own: the server discards the client's buffer
        _, finished = collect(other.iopub_channel, futs[-1].msg_id) # iopub reaches every session: the last one's idle
        gate.open()
        await asyncio.wait_for(finished, 30)
        relay.release()
        res = await asyncio.gather(first, *futs, return_exceptions=True)
        assert [type(r) for r in res] == [ReplyLostError] * 6, res
        fut = ask(kc, '6*7') # the client carries on
        check(await fut, fut, 42)
        assert kc.in_flight == 0 and not kc.shell_channel.unanswered


async def test_the_server_goes_away(remote, tmp_path):
    """The server stops with requests in flight: its port refuses the reconnection, so they fail at once with
    ServerGoneError (not after `reconnect_timeout`); the client keeps reconnecting, and closes with ConnectionLostError
    once `reconnect_timeout` is over. The running request ignores SIGINT (`UNINTERRUPTIBLE`): a stopping server
    interrupts its kernels first, and may relay what the interrupted kernel answers"""
    srv = LocalServer(remote.srv.kind)
    await srv.__aenter__()
    try:
        km = RemoteKernelManager(srv.url, srv.token)
        await km.start_kernel()
        kc = km.client(reconnect_timeout=3)
        remote.clients.append(kc)
        await kc.start_channels()
        futs = [kc.execute(UNINTERRUPTIBLE, reply=True, timeout=None), ask(kc, '1', timeout=None)]
        await running(kc, futs[0], 'stream')
    finally: await srv.__aexit__()
    res = await asyncio.wait_for(asyncio.gather(*futs, return_exceptions=True), 2.5) # within reconnect_timeout
    assert [type(r) for r in res] == [ServerGoneError] * 2, res
    assert 'Connection refused' in str(res[0]) and not kc.ws.task.done() # still reconnecting, for what comes next
    later = ask(kc, '2', timeout=None)
    with pytest.raises((ServerGoneError, ConnectionLostError)): await later
    await asyncio.wait_for(kc.ws.task, 10)
    with pytest.raises(ConnectionLostError, match='reconnecting failed for 3'): kc.execute('3', reply=True)


async def test_the_kernel_is_deleted(remote):
    """Another manager deletes the kernel (the server says nothing on the websocket): waiters fail with KernelDiedError.
    The running request ignores SIGINT (`UNINTERRUPTIBLE`): the server interrupts the kernel before it deletes it"""
    km = await remote.kernel()
    kc = await remote.client(km)
    waiting = kc.execute(UNINTERRUPTIBLE, reply=True, timeout=None)
    await running(kc, waiting, 'stream')
    other = RemoteKernelManager(remote.srv.url, remote.srv.token, kernel_id=km.kernel_id)
    assert await other.is_alive()
    await other.shutdown_kernel()
    with pytest.raises(KernelDiedError): await waiting
    with pytest.raises(KernelDiedError): kc.execute('1', reply=True)
    # a kernel gone from its server never comes back under its id: the client closes, and stops asking the server
    await asyncio.wait_for(asyncio.gather(*kc._tasks, return_exceptions=True), 10)
    assert kc._liveness.done() and not kc._tasks


async def test_the_kernel_dies_and_the_server_restarts_it(remote):
    "SIGKILL: the server's restarter brings a new kernel; waiters get KernelRestartedError, then the client carries on"
    km = await remote.kernel()
    kc = await remote.client(km)
    assert (await kc.execute('before = 1', reply=True))['content']['status'] == 'ok'
    waiting = kc.execute('import time; time.sleep(60)', reply=True, timeout=None)
    await running(kc, waiting)
    for pid in kernel_pids(km.kernel_id): os.kill(pid, signal.SIGKILL)
    with pytest.raises(KernelRestartedError): await waiting
    fut = ask(kc, "'before' in dir()") # a new kernel: the old one's namespace is gone
    check(await fut, fut, False)


async def test_interrupt_through_the_manager(remote):
    "km.interrupt_kernel() (REST) stops the running cell with KeyboardInterrupt; the kernel then runs the next one"
    km = await remote.kernel()
    kc = await remote.client(km)
    sleeping = kc.execute("import time; print('asleep', flush=True); time.sleep(60)", reply=True, timeout=None,
                          stop_on_error=False)
    after = ask(kc, '6*7')
    # its output, not its execute_input: ipykernel can lose a SIGINT that lands before the code runs, reply and all
    await running(kc, sleeping, 'stream')
    await km.interrupt_kernel()
    assert (await sleeping)['content']['ename'] == 'KeyboardInterrupt'
    check(await after, after, 42)


@pytest.mark.parametrize('kernel', ['python3', 'async'])
async def test_cancel_one_request(remote, kernel):
    """kc.cancel and on_timeout='interrupt' on a remote kernel: ipykernel by the server's signal (REST), async-kernel by
    an interrupt_request over the websocket; the requests behind it all run, a withdrawn one never does"""
    km = await remote.kernel(kernel_name=kernel)
    kc = await remote.client(km)
    assert await km.interrupt_mode() == ('signal' if kernel == 'python3' else 'message')
    looping = kc.run('while True: pass', timeout=None, cancellable=True)
    queued = [ask(kc, f'{i}*{i}') for i in range(3)]
    withdrawn = kc.run('side_effect = 1', cancellable=True)
    assert await kc.cancel(withdrawn.msg_id) == 'withdrawn'
    await started(looping) # a fresh client's shell may still be busy with its start-up
    assert await kc.cancel(looping.msg_id) == 'interrupted'
    for i, fut in enumerate(queued): check(await fut, fut, i * i)
    deadline = kc.run('while True: pass', timeout=1, on_timeout='interrupt')
    queued = [ask(kc, f'{i}') for i in range(5)]
    with pytest.raises(TimeoutError): await deadline
    for i, fut in enumerate(queued): check(await fut, fut, i)
    fut = ask(kc, "'side_effect' in globals()")
    check(await fut, fut, False)


async def test_a_stalled_kernel_is_poked(remote):
    """A kernel that reads no shell request until a control request comes (the stub imitating async-kernel 0.23.1's
    stall) answers all the same: the client pokes a silent kernel while requests are in flight"""
    km = await remote.kernel(kernel_name='stub')
    kc = await remote.client(km)
    await kc.execute('%stub stall', reply=True)
    r = await kc.execute('after the stall', reply=True, timeout=30)
    assert r['content']['user_expressions']['echo']['data']['text/plain'] == 'after the stall'


async def test_a_restart_through_the_manager(remote):
    "km.restart_kernel(): requests in flight fail with KernelRestartedError, then the same client runs code"
    km = await remote.kernel()
    kc = await remote.client(km)
    waiting = [kc.execute('import time; time.sleep(60)', reply=True, timeout=None), ask(kc, '1')]
    await km.restart_kernel()
    assert [type(r) for r in await asyncio.gather(*waiting, return_exceptions=True)] == [KernelRestartedError] * 2
    fut = ask(kc, '6*7')
    check(await fut, fut, 42)


async def test_wrong_token_url_or_kernel(remote, caplog):
    "A wrong token, port or kernel id is a named error at once; the token is in no error text and no log line"
    caplog.set_level(logging.DEBUG)
    srv = remote.srv
    errors = []
    for km, exc in [(RemoteKernelManager(srv.url, 'wrong-' + srv.token), ServerAuthError),
                    (RemoteKernelManager(srv.url, srv.token, kernel_id='no-such-kernel'), KernelNotFoundError),
                    (RemoteKernelManager(f'http://127.0.0.1:{srv.port + 1 if srv.port < 65535 else 1}', srv.token), ServerUnreachableError)]:
        with pytest.raises(exc) as e: await km.start_kernel()
        errors.append(str(e.value))
    good = await remote.kernel()
    bad = RemoteKernelManager(srv.url, 'wrong-' + srv.token, kernel_id=good.kernel_id).client()
    with pytest.raises(ServerAuthError) as e: await bad.start_channels()
    errors.append(str(e.value))
    kc = await remote.client(good) # the kernel is fine for a client with the token
    assert (await kc.execute('1', reply=True))['content']['status'] == 'ok'
    assert all(srv.token not in text for text in errors + [r.getMessage() for r in caplog.records]), errors


async def test_the_rate_limit_makes_a_run_incomplete():
    "A server that drops output past its iopub rate limit: the run says it is incomplete"
    async with LocalServer('server', ('--ServerApp.iopub_msg_rate_limit=50', '--ServerApp.rate_limit_window=1')) as srv:
        r = Remote(srv)
        try:
            kc = await r.client(await r.kernel())
            run = await kc.run('for i in range(3000): print(i, flush=True)')
            assert run.reply['content']['status'] == 'ok' and run.incomplete
            assert sum(o['text'].count('\n') for o in run.outputs if o.get('name') == 'stdout') < 3000
            assert not (await kc.run('print(1)')).incomplete
        finally: await r.close()


async def test_the_command(remote, capsys):
    "`python -m conkernelclient --server URL --kernel-id ID SNIPPET...` runs snippets on a remote kernel"
    km = await remote.kernel()
    os.environ['JUPYTER_TOKEN'] = remote.srv.token
    try: code = await command(['print(6*7)'], server=remote.srv.url, kernel_id=km.kernel_id)
    finally: del os.environ['JUPYTER_TOKEN']
    assert code == 0 and '42' in capsys.readouterr().out
    assert await km.is_alive() # an attached kernel is left running


def test_stop_channels_from_synchronous_code(server, aio_loop):
    """`kc.stop_channels()` from synchronous code, its loop idle (as nbclient's and papermill's clean-up call it): no
    error, no task of the client left, and the server sees the websocket close"""
    km = RemoteKernelManager(server.url, server.token)
    aio_loop.run_until_complete(km.start_kernel())
    async def connect(): return await km.client().start_channels()
    async def connections(): return (await call(Server(server.url, server.token), f'/api/kernels/{km.kernel_id}'))['connections']
    try:
        kc = aio_loop.run_until_complete(connect())
        assert aio_loop.run_until_complete(connections()) == 1
        kc.stop_channels()
        assert kc.ws.conn is None and kc.ws.task.done() and kc._tasks == []
        while aio_loop.run_until_complete(connections()): aio_loop.run_until_complete(asyncio.sleep(0.05)) # until the server sees the close
    finally: aio_loop.run_until_complete(km.shutdown_kernel())
