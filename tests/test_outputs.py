"No output is lost to ZMQ: async-kernel sends one iopub message per `print`, and a 20,000-line loop arrives whole."
import pytest
from jupyter_client.session import Session

from conkernelclient import ConKernelManager


@pytest.mark.timeout(300)
async def test_twenty_thousand_prints_arrive_whole():
    "Far past a SUB socket's default high-water mark (1,000 messages), every line of every run arrives, in order"
    km = ConKernelManager(session=Session(key=b'x'), kernel_name='async')
    await km.start_kernel()
    try:
        kc = await km.client().start_channels()
        try:
            for _ in range(3):
                r = await kc.run('for i in range(20_000): print(i)', timeout=240)
                streams = [m for m in r.msgs if m['msg_type'] == 'stream']
                assert len(streams) >= 20_000, "async-kernel sends a message per print"
                assert r.outputs == [{'output_type': 'stream', 'name': 'stdout',
                                      'text': ''.join(f'{i}\n' for i in range(20_000))}]
                assert r.msgs[-1]['content'].get('execution_state') == 'idle'
            assert kc.iopub_channel.inbox.dropped == 0
        finally: await kc.astop_channels()
    finally: await km.shutdown_kernel(now=True)
