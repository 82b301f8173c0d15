"""Async test support without pytest-asyncio: one event loop for the session, one real kernel per module, fresh
clients per test, kernels and a gate of a test's own, and a check that no kernel process outlives the session."""
from __future__ import annotations
import asyncio, inspect, os

import pytest
from jupyter_client.session import Session

from conkernelclient.core import ConKernelClient, ConKernelManager
from kit import Gate, Kernels

_procs = [] # the Popen of every kernel this session started


def _children() -> list[int]:
    "Pids of this process's live children"
    try: import psutil
    except ImportError: return [int(p) for p in os.listdir('/proc') if p.isdigit() and _ppid(p) == os.getpid()]
    return [p.pid for p in psutil.Process().children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE]


def _ppid(pid:str) -> int|None:
    try:
        with open(f'/proc/{pid}/stat') as f: stat = f.read()
    except OSError: return None
    # the command name (field 2) may hold spaces and parentheses; the fields after its last ')' are fixed
    fields = stat[stat.rindex(')') + 2:].split()
    return None if fields[0] == 'Z' else int(fields[1])


@pytest.fixture(scope='session', autouse=True)
def aio_loop():
    "The event loop every async test, kernel and client of the session runs on; checks no kernel is left at the end"
    loop = asyncio.new_event_loop()
    yield loop
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()
    assert all(p.poll() is not None for p in _procs), "a kernel process is still running"
    assert not _children(), f"child processes left behind: {_children()}"


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    "Run `async def` tests to completion on the session loop"
    if not inspect.iscoroutinefunction(pyfuncitem.obj): return None
    loop = pyfuncitem.funcargs['aio_loop']
    args = {k: pyfuncitem.funcargs[k] for k in inspect.signature(pyfuncitem.obj).parameters}
    task = loop.create_task(pyfuncitem.obj(**args))
    try: loop.run_until_complete(task)
    finally:
        # interrupted (e.g. by pytest-timeout): cancel the test, so its own clean-up runs before the fixtures'
        if not task.done():
            task.cancel()
            loop.run_until_complete(asyncio.gather(task, return_exceptions=True))
    return True


@pytest.fixture(scope='module')
def km(aio_loop):
    "A real ipykernel in a subprocess, started by `ConKernelManager`, killed at the end of the module"
    km = ConKernelManager(session=Session(key=b'x'))
    try:
        aio_loop.run_until_complete(km.start_kernel())
        proc = km.provisioner.process
        _procs.append(proc)
        yield km
    finally:
        if km.has_kernel: aio_loop.run_until_complete(km.shutdown_kernel(now=True))
    assert proc.poll() is not None, "shutdown_kernel left the kernel process running"


@pytest.fixture
def connect(km, aio_loop):
    "Async factory of started clients of `km` (`await connect(**traits)`); stops every one of them after the test"
    clients = []
    async def connect(**traits) -> ConKernelClient:
        kc = km.client(**traits)
        clients.append(kc)
        return await kc.start_channels()
    yield connect
    aio_loop.run_until_complete(_stop(clients))


async def _stop(clients:list[ConKernelClient]):
    "Stop `clients` and wait for their tasks, then for any task the test left, so none runs on into the next test"
    for kc in clients: await kc.astop_channels()
    await asyncio.gather(*asyncio.all_tasks() - {asyncio.current_task()}, return_exceptions=True)


@pytest.fixture
def kernels(aio_loop):
    "Kernels and clients of the test's own; stopped, killed and checked gone after the test"
    ks = Kernels()
    yield ks
    aio_loop.run_until_complete(ks.close())


@pytest.fixture
def gate(tmp_path):
    "A `Gate`, opened after the test whatever happens, so a failed test cannot leave a kernel blocked"
    g = Gate(tmp_path/'open')
    yield g
    g.open()
