"How clients stop: from sync code, from async code, with requests in flight, and twice."
import asyncio

import pytest
from jupyter_client.session import Session

from conkernelclient import ChannelsClosedError, ConKernelManager


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
        kc.stop_channels()
        assert not kc.channels_running
        assert all(ch.socket is None for ch in kc.routed)
        assert isinstance(fut.exception(), ChannelsClosedError)
        # the readers end once the loop runs again (a reader that did not would hang the test into its timeout)
        loop.run_until_complete(asyncio.wait([ch.reader for ch in kc.routed]))
    finally:
        loop.run_until_complete(km.shutdown_kernel(now=True))
        loop.close()
