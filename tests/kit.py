"""Helpers the test modules share: a gate that keeps a kernel busy, kernels of a test's own, requests checked by value,
a request's messages followed up to its `idle`, a TCP relay that taps and cuts connections, kernels on a server."""
from __future__ import annotations
import asyncio

from typing import Callable

from jupyter_client.kernelspec import KernelSpec
from jupyter_client.session import Session

from conkernelclient import ConKernelClient, ConKernelManager
from conkernelclient.channel import RoutedChannel
from conkernelclient.routing import is_idle
from conkernelclient.remote import RemoteKernelClient, RemoteKernelManager
from conkernelclient.server import LocalServer, ServerUnreachableError


# The first line of a cell an interrupt cannot stop. A server that stops, or deletes a kernel, interrupts the kernel
# first, and an interrupted ipykernel answers: an error for the running request, then `aborted` for those behind it.
# The server may relay those replies before it closes the websocket. Tests of what waiters get when a kernel or its
# server goes away run such a cell, so that no reply can come.
IGNORE_SIGINT = "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
# ... one that says so (a `stream` message to wait for), then sleeps
UNINTERRUPTIBLE = IGNORE_SIGINT + "import time; print('deaf', flush=True); time.sleep(60)"


class Gate:
    "Code that keeps the serial kernel busy until the test calls `open`"
    def __init__(self, path):
        self.path = path
        self.code = f"import os, time\nwhile not os.path.exists({str(path)!r}): time.sleep(0.005)"

    def open(self): self.path.touch()


class Kernels:
    "Kernels of one test's own, each in a subprocess, and the clients attached to them; `close` ends them all"
    def __init__(self):
        self.kms:list[ConKernelManager] = []
        self.clients:list[ConKernelClient] = []
        self.procs = [] # the Popen of every kernel process started, restarts included

    async def start(self, cls=ConKernelManager, spec:KernelSpec|None=None, launch:dict|None=None, **traits) -> ConKernelManager:
        "A started kernel; `spec` replaces the manager's kernel spec, so any command can play the kernel; `launch`: `start_kernel`'s keywords"
        km = cls(session=Session(key=b'x'), **traits)
        if spec is not None: km._kernel_spec = spec
        self.kms.append(km)
        await km.start_kernel(**(launch or {}))
        self.procs.append(km.provisioner.process)
        return km

    async def client(self, km:ConKernelManager, **traits) -> ConKernelClient:
        "A started client from the manager, which watches the kernel through the manager's process check"
        kc = km.client(**traits)
        self.clients.append(kc)
        return await kc.start_channels()

    async def attach(self, km:ConKernelManager, **traits) -> ConKernelClient:
        "A started client that knows only the kernel's connection file, so it watches the kernel by heartbeat"
        kc = ConKernelClient(**traits)
        kc.load_connection_file(km.connection_file)
        self.clients.append(kc)
        return await kc.start_channels()

    async def close(self):
        for kc in self.clients: await kc.astop_channels()
        for km in self.kms:
            if km.provisioner is not None: self.procs.append(km.provisioner.process)
            if km.has_kernel: await km.shutdown_kernel(now=True)
            else: await km.cleanup_resources()
        await asyncio.gather(*asyncio.all_tasks() - {asyncio.current_task()}, return_exceptions=True)
        assert all(p.poll() is not None for p in self.procs), "a kernel process of the test is still running"


def ask(kc, expr:str, **kwargs):
    "Send a request that evaluates `expr` in the kernel; return the future of its reply"
    return kc.execute(f'_r = {expr}', reply=True, user_expressions={'v': '_r'}, **kwargs)


def check(reply:dict, fut, value):
    "`reply` answers the request of `fut`, for which the kernel computed `value`"
    assert reply['parent_header']['msg_id'] == fut.msg_id
    assert reply['content']['status'] == 'ok', reply['content']
    assert reply['content']['user_expressions']['v']['data']['text/plain'] == repr(value)


def assert_clean(kc):
    "Nothing in flight, nothing unclaimed on shell, and no abandoned request still waiting for its late reply"
    assert kc.in_flight == 0
    assert len(kc.shell_channel.inbox) == 0
    assert not kc.shell_channel.router.abandoned


async def execution_count(kc:ConKernelClient) -> int:
    "The kernel's execution count after one more request: it grows by one for each execute request the kernel got"
    return (await kc.execute('pass', reply=True))['content']['execution_count']


async def running(kc:ConKernelClient, fut, msg_type:str='execute_input'):
    "Wait for request `fut`'s first iopub message of `msg_type` (default: it has started)"
    _, seen = collect(kc.iopub_channel, fut.msg_id, lambda msg: msg['msg_type'] == msg_type)
    await asyncio.wait_for(seen, 30)


async def started(run):
    "Wait until `run` has started in the kernel (its `execute_input` came); a cancellable run is sent only once its shell is free"
    async for msg in run:
        if msg['msg_type'] == 'execute_input': return


def collect(ch:RoutedChannel, mid:str, until:Callable[[dict],bool]=is_idle) -> tuple[list[dict], asyncio.Future]:
    "Follow request `mid` on `ch`: a list of its messages, and a future resolved by the first for which `until` is true (by default its `idle`)"
    msgs = []
    return msgs, ch.router.follow(mid, lambda msg: (msgs.append(msg), until(msg))[1])


class Relay:
    "A TCP relay on 127.0.0.1 to `port`: keeps what clients send (`sent`); `cut` breaks its connections, `hold` refuses new ones"
    def __init__(self, port:int):
        self.port, self.sent, self.tasks, self.writers, self.held = port, bytearray(), set(), set(), False

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._relay, '127.0.0.1', 0)
        self.local_port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        self.cut()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()

    def cut(self, hold:bool=False):
        "Break every connection through the relay (as a network blip or a proxy restart does); with `hold`, refuse new ones until `release`"
        self.held = hold
        for w in self.writers: w.transport.abort()
        for t in self.tasks: t.cancel()

    def release(self): self.held = False

    async def _relay(self, cr, cw):
        if self.held: return cw.transport.abort()
        kr, kw = await asyncio.open_connection('127.0.0.1', self.port)
        self.writers |= {cw, kw}
        up, down = asyncio.ensure_future(self._pipe(cr, kw, self.sent)), asyncio.ensure_future(self._pipe(kr, cw))
        self.tasks |= {up, down}
        await asyncio.gather(up, down, return_exceptions=True)
        for w in (cw, kw): w.transport.abort()
        self.writers -= {cw, kw}
        self.tasks -= {up, down}

    async def _pipe(self, r, w, keep:bytearray|None=None):
        while data := await r.read(65536):
            if keep is not None: keep += data
            w.write(data)
            await w.drain()


class Remote:
    "Kernels started on a server, and their clients, for one test; `close` stops the clients and deletes the kernels"
    def __init__(self, srv:LocalServer): self.srv, self.kms, self.clients = srv, [], []

    async def kernel(self, launch:dict|None=None, **kw) -> RemoteKernelManager:
        "A kernel started on the server by a manager made with the server's options and `kw`; `launch`: `start_kernel`'s keywords"
        km = RemoteKernelManager(self.srv.url, self.srv.token, **self.srv.options | kw)
        self.kms.append(km)
        await km.start_kernel(**(launch or {}))
        return km

    async def client(self, km:RemoteKernelManager, **traits) -> RemoteKernelClient:
        kc = km.client(**traits)
        self.clients.append(kc)
        return await kc.start_channels()

    async def close(self):
        for kc in self.clients: await kc.astop_channels()
        for km in self.kms:
            try: await km.shutdown_kernel()
            except ServerUnreachableError: pass # a test stopped the server
        await asyncio.gather(*asyncio.all_tasks() - {asyncio.current_task()}, return_exceptions=True)
