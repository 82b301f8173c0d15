"""The sleeping-reader race: a send on a socket can leave its reader asleep forever.

With the reader waiting on the shell socket's file descriptor, request A is sent, and the event loop is then held
until A's reply is in the socket (a `select` on the descriptor, which only reads). Request B is then sent
synchronously on the same socket, which consumes the edge A's reply had raised on that descriptor. Sent by
jupyter_client's own `Session.send` straight onto the socket, the reader never wakes, although A's reply is waiting
in the socket; sent through the channel, which gives its reader a turn after each send, A's future resolves.
jupyter_client's `Session` is left as it is, for every other client in the process."""
import asyncio, select, time

import pytest
import zmq
from jupyter_client.asynchronous.client import AsyncKernelClient
from jupyter_client.session import Session

from conkernelclient import ConKernelManager
from conkernelclient.session import ConSession

SEND, SEND_RAW = Session.send, Session.send_raw # as jupyter_client defines them: nothing patches them at import


async def reader_wakes(send_b) -> bool:
    "Does request A's future resolve after `send_b(kc)` sent request B while A's reply sat unseen in the socket?"
    km = ConKernelManager(session=Session(key=b'x'))
    await km.start_kernel()
    try:
        kc = await km.client().start_channels()
        try:
            sock = kc.shell_channel.socket
            a = kc.execute('a = 1', reply=True, timeout=None)
            await asyncio.sleep(0) # one loop turn: the reader takes the turn A's send gave it, then waits on the descriptor
            # the loop does not run from here to the `await`, so only the socket can hold A's reply
            assert select.select([sock.FD], [], [], 10)[0], "A's reply never reached the socket"
            # libzmq processes pending commands in send() at most once a millisecond or so: let that window pass
            time.sleep(0.005)
            send_b(kc)
            try: reply = await asyncio.wait_for(asyncio.shield(a), 2)
            except asyncio.TimeoutError:
                assert zmq.Socket.shadow(sock.underlying).poll(0), "A's reply should be waiting in the socket"
                return False
            assert reply['parent_header']['msg_id'] == a.msg_id
            return True
        finally: kc.stop_channels()
    finally: await km.shutdown_kernel(now=True)


def plain_send(kc):
    "Send request B with jupyter_client's own `Session.send`, as a client without `ConSession` would"
    content = dict(code='b = 2', silent=False, store_history=True, user_expressions={}, allow_stdin=False, stop_on_error=True)
    SEND(kc.session, kc.shell_channel.socket, kc.session.msg('execute_request', content))


@pytest.mark.timeout(60)
def test_plain_session_send_strands_the_reader():
    """Pins a ZMQ behaviour (a synchronous send consumes the edge of the socket's descriptor that the reader waits
    for), the reason a channel gives its reader a turn after each send; skipped once a bare send no longer does that"""
    if asyncio.run(reader_wakes(plain_send)):
        pytest.skip("jupyter_client's Session.send no longer strands the socket's reader: "
                    "the channel's turn after each send may no longer be needed")


@pytest.mark.timeout(60)
def test_the_channels_send_wakes_the_reader():
    "The client's own send (through `kc.execute`, the channel's `transmit`) wakes the reader"
    assert asyncio.run(reader_wakes(lambda kc: kc.execute('b = 2')))


@pytest.mark.timeout(60)
async def test_jupyter_clients_session_is_left_alone(km, connect):
    """A ConKernelClient's session is a ConSession of its own: jupyter_client's `Session` keeps its methods, and a plain
    AsyncKernelClient works beside it"""
    kc = await connect()
    assert type(kc.session) is ConSession and type(km.session) is Session
    assert (await kc.execute('1', reply=True))['content']['status'] == 'ok'
    assert (Session.send, Session.send_raw) == (SEND, SEND_RAW)
    assert (SEND.__module__, SEND_RAW.__module__) == ('jupyter_client.session', 'jupyter_client.session')
    vkc = AsyncKernelClient(session=Session(key=b'x'))
    vkc.load_connection_info(km.get_connection_info())
    vkc.start_channels()
    try:
        await vkc.wait_for_ready(timeout=30)
        assert type(vkc.session) is Session and type(vkc.shell_channel.session) is Session
        mid = vkc.execute('1+1')
        reply = await vkc.get_shell_msg(timeout=10)
        assert (reply['parent_header']['msg_id'], reply['content']['status']) == (mid, 'ok')
    finally: vkc.stop_channels()
