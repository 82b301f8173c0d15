"""Stress and race tests of reply routing against a real ipykernel: every reply reaches the request that asked for it,
and every way a request ends (reply, timeout, cancellation, never awaited) leaves nothing in flight or in the inbox."""
from __future__ import annotations
import asyncio, logging, random, time

import pytest

from conkernelclient.channel import ZMQChannel
from conkernelclient.session import ConSession
from kit import ask, assert_clean, check


class JitterChannel(ZMQChannel):
    "A routed channel that blocks the loop 0-2 ms before each send, so replies land mid-send; records what it sent"
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sent:list[str] = []

    def send(self, msg:dict):
        time.sleep(random.uniform(0, 0.002))
        super().send(msg)
        self.sent.append(msg['header']['msg_id'])


async def control(kc, msg_type:str, **content) -> dict:
    "Send a control request and return the content of its reply, read from the control inbox"
    msg = kc.session.msg(msg_type, content)
    kc.control_channel.send(msg)
    reply = await kc.control_channel.get_msg(timeout=10)
    assert reply['parent_header']['msg_id'] == msg['header']['msg_id']
    assert reply['content']['status'] == 'ok', reply['content']
    return reply['content']


@pytest.mark.timeout(60)
async def test_jittered_sends(connect):
    "50 requests sent at jittered moments, while earlier replies arrive, each get their own reply"
    kc = await connect(shell_channel_class=JitterChannel)
    assert type(kc.shell_channel) is JitterChannel
    futs = [ask(kc, f'{i}*{i}') for i in range(50)]
    assert [fut.msg_id for fut in futs] == kc.shell_channel.sent[-50:]
    # no await since the first send: the reader has claimed nothing yet, though the kernel has been replying
    assert kc.in_flight == 50
    for i, (fut, reply) in enumerate(zip(futs, await asyncio.gather(*futs))): check(reply, fut, i*i)
    assert_clean(kc)


@pytest.mark.timeout(90)
@pytest.mark.parametrize('traits', [{}, {'window': None}], ids=['default-window', 'no-window'])
async def test_thousand_concurrent_executes(connect, traits):
    "1,000 requests from 1,000 tasks on one client: none lost, none crossed, nothing left in flight"
    kc = await connect(**traits)
    async def one(i):
        # a random number of yields interleaves the sends with the reader's deliveries
        for _ in range(random.randrange(4)): await asyncio.sleep(0)
        fut = ask(kc, f'{i}*{i}')
        return i, fut, await fut
    res = await asyncio.gather(*(one(i) for i in range(1000)))
    for i, fut, reply in res: check(reply, fut, i*i)
    assert len({fut.msg_id for _, fut, _ in res}) == 1000
    assert_clean(kc)


@pytest.mark.timeout(30)
async def test_never_awaited_requests(connect):
    "Replies to 20 requests nobody awaits all arrive before a later request's reply, and resolve their own futures"
    kc = await connect()
    futs = [ask(kc, f'{i}*{i}') for i in range(20)]
    later = ask(kc, "'later'")
    check(await later, later, 'later')
    # the kernel is serial and the reader routes in order, so the earlier replies were all delivered first
    assert_clean(kc)
    for i, fut in enumerate(futs): check(fut.result(), fut, i*i)


@pytest.mark.timeout(30)
@pytest.mark.parametrize('traits', [{}, {'window': 4}], ids=['default-window', 'backlogged'])
async def test_never_awaited_timeouts(connect, gate, caplog, traits):
    "Requests nobody awaits time out on a busy kernel; their late replies are dropped, not kept in the inbox"
    kc = await connect(**traits)
    rt = kc.shell_channel.router
    busy = kc.execute(gate.code, reply=True, timeout=None)
    futs = [ask(kc, f'{i}', timeout=0.01) for i in range(20)]
    assert bool(kc.shell_channel.backlog.get(None)) == ('window' in traits)
    # `wait` only watches the futures: their timers run from the send, whoever awaits them
    await asyncio.wait(futs)
    assert list(rt.pending) == [busy.msg_id]
    assert all(type(fut.exception()) is TimeoutError for fut in futs)
    assert set(rt.abandoned) == {fut.msg_id for fut in futs}
    gate.open()
    await busy
    later = ask(kc, "'later'")
    check(await later, later, 'later')
    # abandoned is empty only if each of the 20 late replies came and was dropped (or, backlogged, was never sent)
    assert_clean(kc)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.timeout(30)
@pytest.mark.parametrize('traits', [{}, {'window': 4}], ids=['default-window', 'backlogged'])
async def test_cancelled_requests(connect, gate, traits):
    "Cancelled waiters pop their requests at once; their late replies are dropped; the client works on"
    kc = await connect(**traits)
    rt = kc.shell_channel.router
    busy = kc.execute(gate.code, reply=True, timeout=None)
    futs = []
    async def one(i):
        futs.append(ask(kc, f'{i}'))
        return await futs[-1]
    tasks = [asyncio.create_task(one(i)) for i in range(20)]
    await asyncio.sleep(0) # one turn of the loop: each task has sent its request and waits for the reply
    assert kc.in_flight == 21
    assert bool(kc.shell_channel.backlog.get(None)) == ('window' in traits)
    for t in tasks: t.cancel()
    res = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in res)
    assert list(rt.pending) == [busy.msg_id]
    assert set(rt.abandoned) == {fut.msg_id for fut in futs}
    gate.open()
    await busy
    later = ask(kc, '6*7')
    check(await later, later, 42)
    assert_clean(kc)


@pytest.mark.timeout(60)
async def test_two_tasks_share_a_client(connect):
    "Two tasks each sending 100 requests one after another through one client get only their own replies"
    kc = await connect()
    order = []
    async def talk(tag):
        out = []
        for i in range(100):
            fut = ask(kc, f'({tag!r}, {i})')
            order.append(tag)
            out.append((i, fut, await fut))
        return out
    for tag, out in zip('ab', await asyncio.gather(talk('a'), talk('b'))):
        for i, fut, reply in out: check(reply, fut, (tag, i))
    # the requests really interleaved on the socket: the sender changed more than once
    assert sum(x != y for x, y in zip(order, order[1:])) > 1
    assert_clean(kc)


@pytest.mark.timeout(30)
async def test_out_of_order_replies(connect, gate):
    "Replies from a subshell overtake a busy main shell's reply, and each still resolves its own request"
    kc = await connect()
    assert 'kernel subshells' in kc.kernel_info_reply['content']['supported_features']
    sid = (await control(kc, 'create_subshell_request'))['subshell_id']
    try:
        busy = kc.execute(gate.code, reply=True, timeout=None)
        futs = [ask(kc, f'{i}*{i}', subshell_id=sid) for i in range(20)]
        await asyncio.wait([busy, futs[-1]], return_when=asyncio.FIRST_COMPLETED)
        # the main shell is still inside the gate, so the subshell replies came first, and in order
        assert not busy.done()
        for i, fut in enumerate(futs): check(fut.result(), fut, i*i)
        gate.open()
        assert (await busy)['parent_header']['msg_id'] == busy.msg_id
    finally: await control(kc, 'delete_subshell_request', subshell_id=sid)
    assert_clean(kc)


@pytest.mark.timeout(60)
@pytest.mark.parametrize('packer', ['json', 'orjson'])
async def test_each_json_library(connect, km, packer):
    """The client's session packs and unpacks with the standard library's `json` or with orjson (jupyter_client picks
    orjson by itself once installed, as the dev extra does): either way every reply reaches its request, whole"""
    if packer == 'orjson': pytest.importorskip('orjson')
    kc = await connect(session=ConSession(key=km.session.key, packer=packer))
    assert (kc.session.packer, kc.shell_channel.session) == (packer, kc.session)
    futs = [ask(kc, f'{i}*{i}') for i in range(50)]
    for i, (fut, reply) in enumerate(zip(futs, await asyncio.gather(*futs))):
        check(reply, fut, i*i)
        assert reply['header']['date'].tzinfo is not None and reply['parent_header']['date'].tzinfo is not None
    assert_clean(kc)
