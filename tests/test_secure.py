"""Encrypted by default: `ConKernelManager` gives CurveZMQ keys to kernels whose spec supports them (ipykernel's
`python3`, and async-kernel's `async`), and these tests show what that buys. Each property is checked on the same kernel twice: encrypted (the
default) and with `transport_encryption='disabled'`, the control, where the same check must come out the other way;
so none of them can pass by failing to look. A kernel without curve support (the stub kernel) still runs,
unencrypted, and a client that knows the kernel only by its connection file gets the keys from it."""
from __future__ import annotations
import asyncio, sys

import pytest
import zmq, zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from conkernelclient.cli import command
from conkernelclient.stubkernel import StubKernelSpecManager
from kit import Relay

pytestmark = pytest.mark.timeout(60)
PLAIN = {'auto': False, 'disabled': True} # transport_encryption -> does the kernel run over plain TCP?


async def start(kernels, enc:str, name:str='python3', **kw):
    "A kernel `name` started by `ConKernelManager`, left at its default encryption unless `enc` is 'disabled'"
    return await kernels.start(kernel_name=name, **({} if enc == 'auto' else {'transport_encryption': enc}), **kw)


@pytest.mark.parametrize('enc', PLAIN)
async def test_the_kernel_warns_only_about_plain_tcp(kernels, tmp_path, enc):
    "ipykernel warns at start-up when it runs without encryption: not with the default manager, but as the control"
    with open(tmp_path/'stderr', 'w') as err:
        km = await start(kernels, enc, launch=dict(stderr=err))
        await kernels.client(km) # ipykernel warns while it starts, before it can answer
    assert (km.curve_publickey is None) == PLAIN[enc]
    assert ('without encryption' in (tmp_path/'stderr').read_text()) == PLAIN[enc]


async def handshake(sock:zmq.asyncio.Socket, mon:zmq.asyncio.Socket) -> str:
    "The first handshake event the monitor of `sock` reports: HANDSHAKE_SUCCEEDED or one of the HANDSHAKE_FAILED_*"
    while True:
        ev = parse_monitor_message(await mon.recv_multipart())['event']
        if ev == zmq.EVENT_HANDSHAKE_SUCCEEDED or ev.name.startswith('HANDSHAKE_FAILED'): return ev.name


@pytest.mark.parametrize('name', ['python3', 'async'])
@pytest.mark.parametrize('enc', PLAIN)
async def test_a_client_without_the_keys_gets_no_answer(kernels, enc, name):
    """A socket with the right port and key but no curve keys is refused at the ZMQ handshake, so its request never
    reaches the kernel; a client with the keys is answered meanwhile. Over plain TCP the same socket is answered."""
    km = await start(kernels, enc, name)
    kc = await kernels.client(km)
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.DEALER)
    mon = sock.get_monitor_socket()
    sock.sndtimeo = 0 # a refused handshake may have closed the socket's only pipe before the send: it fails, not blocks
    try:
        sock.connect(f'tcp://127.0.0.1:{km.shell_port}')
        try: km.session.send(sock, km.session.msg('kernel_info_request'))
        except zmq.Again: assert not PLAIN[enc], "over plain TCP the request should have been queued" # encrypted: it never left
        event = await asyncio.wait_for(handshake(sock, mon), 30)
        assert (await kc.kernel_info(reply=True))['content']['status'] == 'ok' # the bystander with the keys
        if PLAIN[enc]:
            assert event == 'HANDSHAKE_SUCCEEDED'
            reply = km.session.deserialize(km.session.feed_identities(await sock.recv_multipart())[1])
            assert reply['msg_type'] == 'kernel_info_reply'
        else:
            assert event.startswith('HANDSHAKE_FAILED'), event
            assert not await sock.poll(0)
    finally:
        sock.disable_monitor()
        mon.close(0); sock.close(0); ctx.term()


@pytest.mark.parametrize('name', ['python3', 'async'])
@pytest.mark.parametrize('enc', PLAIN)
async def test_the_code_sent_cannot_be_read_on_the_wire(kernels, enc, name):
    "Everything a client sends on shell, captured between it and the kernel: the code is not in it, unless unencrypted"
    km = await start(kernels, enc, name)
    secret = 'the-secret-' + 'code' * 3
    async with Relay(km.shell_port) as tap:
        kc = km.client()
        kc.shell_port = tap.local_port
        kernels.clients.append(kc)
        await kc.start_channels()
        reply = await kc.execute(f'x = {secret!r}', reply=True)
        assert reply['content']['status'] == 'ok'
        assert tap.sent # the request went through the tap: the client knows no other way to the shell
        assert (secret.encode() in tap.sent) == PLAIN[enc]
        assert (b'execute_request' in tap.sent) == PLAIN[enc]


async def test_a_kernel_without_curve_runs_unencrypted(kernels):
    "The stub kernel's spec declares no curve support: the default manager runs it over plain TCP"
    km = await kernels.start(kernel_name='stub', kernel_spec_manager=StubKernelSpecManager())
    kc = await kernels.client(km)
    assert km.transport_encryption == 'auto' and km.curve_publickey is None
    assert (await kc.kernel_info(reply=True))['content']['status'] == 'ok'


async def test_a_connection_file_carries_the_keys(kernels, capsys):
    "A client that knows the encrypted kernel only by its connection file (`--existing`) talks to it"
    km = await kernels.start()
    assert km.curve_publickey is not None
    kc = await kernels.attach(km)
    assert kc.curve_publickey == km.curve_publickey
    assert (await kc.execute('1', reply=True))['content']['status'] == 'ok'
    assert await command(['print(6*7)'], existing=km.connection_file) == 0
    assert '42' in capsys.readouterr().out
