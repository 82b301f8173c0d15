"""Load: 10,000 concurrent requests on one client against ipykernel 7, async-kernel and the stub kernel, each reply
checked by value against its own request; several clients sharing one kernel; a client used from the wrong thread or
event loop. Throughputs are printed, not asserted: `pytest tests/test_load.py -rP`."""
from __future__ import annotations
import asyncio, os, time

import pytest
import zmq

from conkernelclient import ConKernelClient, WrongLoopError
from conkernelclient.stubkernel import StubKernelSpecManager
from kit import ask, assert_clean, check, execution_count


async def at_once(kc:ConKernelClient, n:int, code, value) -> float:
    "Send `n` requests at once, the i-th `code(i)`; check each reply with `value(i, reply)`; return the seconds taken"
    t0 = time.monotonic()
    futs = [kc.execute(code(i), reply=True, timeout=None, user_expressions={'v': '_r'}) for i in range(n)]
    assert kc.in_flight == n
    replies = await asyncio.gather(*futs)
    dt = time.monotonic() - t0
    assert len({fut.msg_id for fut in futs}) == n
    for i, (fut, reply) in enumerate(zip(futs, replies)):
        assert reply['parent_header']['msg_id'] == fut.msg_id
        assert value(i, reply), reply['content']
    assert_clean(kc)
    return dt


def squared(i:int, reply:dict) -> bool:
    content = reply['content']
    return content['status'] == 'ok' and content['user_expressions']['v']['data']['text/plain'] == repr(i*i)


@pytest.mark.timeout(300)
@pytest.mark.parametrize('kernel_name', ['python3', 'async'], ids=['ipykernel', 'async-kernel'])
async def test_ten_thousand_concurrent_executes(kernels, kernel_name):
    "10,000 requests in flight on one client, each reply reaching its own request (the window keeps ipykernel up)"
    km = await kernels.start(kernel_name=kernel_name)
    kc = await kernels.client(km)
    assert kc.window == 500
    dt = await at_once(kc, 10_000, lambda i: f'_r = {i}*{i}', squared)
    print(f"{kernel_name}: 10,000 executes in {dt:.1f} s, {10_000 / dt:.0f} per s")


@pytest.mark.timeout(120)
async def test_ten_thousand_on_the_stub_kernel(kernels):
    "10,000 requests in flight at once on the STUB kernel, which echoes each request's code in its reply"
    km = await kernels.start(kernel_name='stub', kernel_spec_manager=StubKernelSpecManager())
    kc = await kernels.client(km)
    assert kc.kernel_info_reply['content']['implementation'] == 'conkernelclient-stub'
    def echoed(i, reply): return reply['content']['user_expressions']['echo']['data']['text/plain'] == f'_r = {i}*{i}'
    dt = await at_once(kc, 10_000, lambda i: f'_r = {i}*{i}', echoed)
    print(f"stub: 10,000 executes in {dt:.1f} s, {10_000 / dt:.0f} per s")


@pytest.mark.skipif(not os.environ.get('CONKERNELCLIENT_DEADLOCK'),
                    reason="opt-in (CONKERNELCLIENT_DEADLOCK=1): shows ipykernel 7 hangs for good without the window")
@pytest.mark.timeout(180)
async def test_ipykernel_deadlocks_without_the_window(kernels):
    "With window=None, 10,000 requests sent at once stop ipykernel 7 answering: replies stall with most outstanding"
    km = await kernels.start()
    kc = await kernels.client(km, window=None)
    futs = [ask(kc, f'{i}', timeout=None) for i in range(10_000)]
    try:
        answered = -1
        while answered != (answered := sum(fut.done() for fut in futs)):
            await asyncio.wait(futs, timeout=10)
        print(f"ipykernel without a window: no reply for 10 s after {answered} of 10,000 replies")
        assert answered < 10_000 and await km.is_alive()
    finally:
        await kc.astop_channels()
        await asyncio.gather(*futs, return_exceptions=True)


@pytest.mark.timeout(60)
async def test_clients_share_a_kernel(km, connect):
    "Three clients of one manager and one attached by connection file, all sending at once, each get their own replies"
    kcs = [await connect() for _ in range(3)]
    other = ConKernelClient()
    other.load_connection_file(km.connection_file)
    kcs.append(await other.start_channels())
    try:
        assert len({kc.session.session for kc in kcs}) == 4
        assert len({kc.shell_channel.socket.getsockopt(zmq.IDENTITY) for kc in kcs}) == 4
        futs = {(n, i): ask(kc, f'({n}, {i})') for i in range(100) for n, kc in enumerate(kcs)}
        for (n, i), fut in futs.items(): check(await fut, fut, (n, i))
        for kc in kcs: assert_clean(kc)
    finally: await other.astop_channels()


@pytest.mark.timeout(30)
async def test_wrong_thread_or_loop(connect):
    "A client used from another thread, with no loop or with a loop of its own, raises WrongLoopError and sends nothing"
    kc = await connect()
    n = await execution_count(kc)
    calls = [lambda: kc.execute('_r = 1'), lambda: kc.execute('_r = 1', reply=True), kc.kernel_info,
             lambda: kc.shell_channel.send(kc.session.msg('execute_request', {'code': '_r = 1'}))]
    def from_thread() -> list:
        res = []
        for call in calls:
            try: res.append(call())
            except Exception as e: res.append(e)
        return res
    async def from_loop() -> list:
        res = from_thread()
        try: res.append(await kc.shell_channel.get_msg(timeout=0.1))
        except Exception as e: res.append(e)
        return res
    res = await asyncio.to_thread(from_thread) + await asyncio.to_thread(asyncio.run, from_loop())
    assert [type(r) for r in res] == [WrongLoopError] * 9
    assert kc.in_flight == 0
    assert await execution_count(kc) == n + 1
