"""The parked-receive race: a synchronous `Session.send` can leave the reader's parked receive asleep forever.

With the reader parked on the shell socket, request A is sent, and the event loop is then held until A's reply is in
the socket (a `select` on the socket's file descriptor, which only reads). Request B is sent through `Session.send`'s
synchronous shadow socket, which consumes the edge A's reply had raised on that descriptor. Without
`patch_session_send` the reader never wakes, although A's reply is waiting in the socket; with it, A's future
resolves."""
import asyncio, select, time

import pytest
import zmq
from jupyter_client.session import Session

from conkernelclient import ConKernelManager


async def reader_wakes(patched:bool, monkeypatch) -> bool:
    "Does request A's future resolve after B was sent while A's reply sat unseen in the socket?"
    km = ConKernelManager(session=Session(key=b'x'))
    await km.start_kernel()
    try:
        kc = await km.client().start_channels()
        if not patched: monkeypatch.setattr(Session, 'send', Session.send.__wrapped__)
        try:
            sock = kc.shell_channel.socket
            a = kc.execute('a = 1', reply=True, timeout=None)
            # the loop does not run from here to the `await`, so only the socket can hold A's reply
            assert select.select([sock.FD], [], [], 10)[0], "A's reply never reached the socket"
            # libzmq processes pending commands in send() at most once a millisecond or so: let that window pass
            time.sleep(0.005)
            kc.execute('b = 2')
            try: reply = await asyncio.wait_for(asyncio.shield(a), 2)
            except asyncio.TimeoutError:
                assert zmq.Socket.shadow(sock.underlying).poll(0), "A's reply should be waiting in the socket"
                return False
            assert reply['parent_header']['msg_id'] == a.msg_id
            return True
        finally: kc.stop_channels()
    finally: await km.shutdown_kernel(now=True)


@pytest.mark.timeout(60)
def test_unpatched_send_strands_the_reader(monkeypatch):
    assert not asyncio.run(reader_wakes(False, monkeypatch))


@pytest.mark.timeout(60)
def test_patched_send_wakes_the_reader(monkeypatch):
    assert asyncio.run(reader_wakes(True, monkeypatch))
