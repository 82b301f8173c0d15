"How clients start and stop: jupyter_client's start-up pattern; stopping from sync code, from async code, with requests in flight, and twice."
import asyncio

import pytest
import zmq
from jupyter_client.session import Session

import conkernelclient.runs # noqa: F401 (kc.run)
from conkernelclient import ChannelsClosedError, ConKernelManager, WrongLoopError


@pytest.mark.timeout(60)
def test_stop_channels_from_sync_code():
    "jupyter_client lets sync code call `stop_channels()` with no loop running: everything closes, waiters fail"
    loop = asyncio.new_event_loop()
    km = ConKernelManager(session=Session(key=b'x'))
    loop.run_until_complete(km.start_kernel())
    try:
        async def start(): return await km.client().start_channels()
        kc = loop.run_until_complete(start())
        async def send(): return kc.execute('import time; time.sleep(0.5)', reply=True)
        fut = loop.run_until_complete(send())
        tasks = kc._tasks
        assert len(tasks) == 1 and all(ch.fd is not None for ch in kc.routed) # the liveness check; readers are no tasks
        with pytest.raises(WrongLoopError, match="the client's event loop is not running"): kc.execute('1')
        kc.stop_channels()
        assert not kc.channels_running
        assert all(ch.socket is None and ch.fd is None for ch in kc.routed)
        assert isinstance(fut.exception(), ChannelsClosedError)
        # the loop is idle, so stop_channels let the client's cancelled tasks end on it: none is left pending
        assert all(t.done() for t in tasks)
    finally:
        loop.run_until_complete(km.shutdown_kernel(now=True))
        loop.close()


@pytest.mark.timeout(60)
async def test_wait_for_ready_after_start_channels(kernels):
    """jupyter_client's pattern, `kc.start_channels(); await kc.wait_for_ready()`: one start-up, not two; when it returns
    the client is started (liveness check running) and its stdin socket is connected, so an `input()` is heard"""
    km = await kernels.start()
    kc = km.client()
    kernels.clients.append(kc)
    kc.start_channels()
    await kc.wait_for_ready(timeout=60)
    assert kc._starting.done() and kc._liveness is not None
    assert await kc.stdin_channel.until_sendable(0)
    r = await kc.run('x = input()', input=lambda prompt, password: 'heard')
    assert r.reply['content']['status'] == 'ok'
