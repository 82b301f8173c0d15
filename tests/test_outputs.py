"No output is lost to ZMQ: async-kernel sends one iopub message per `print`, and a 20,000-line loop arrives whole."
import time

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
                # in bursts of 1,000 lines: async-kernel's XPUB socket keeps pyzmq's default send high-water mark of
                # 1,000 and drops what TCP has not taken yet, which a loaded 2-core machine made it do now and then
                run = kc.run('import time\nfor i in range(20_000):\n    print(i)\n    if i % 1000 == 999: time.sleep(0.02)',
                             timeout=240)
                time.sleep(1) # the client busy elsewhere: the output piles up in its socket, far past 1,000 messages
                r = await run
                streams = [m for m in r.msgs if m['msg_type'] == 'stream']
                assert len(streams) >= 20_000, "async-kernel sends a message per print"
                assert r.outputs == [{'output_type': 'stream', 'name': 'stdout',
                                      'text': ''.join(f'{i}\n' for i in range(20_000))}]
                assert r.msgs[-1]['content'].get('execution_state') == 'idle'
            assert kc.iopub_channel.inbox.dropped == 0
        finally: await kc.astop_channels()
    finally: await km.shutdown_kernel(now=True)
