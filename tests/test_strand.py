"""Code outside the client that looks at a client socket while messages stream in: `socket.get(zmq.EVENTS)`,
`zmq.Socket.poll(socket, 0)`, a `zmq.asyncio.Poller` waiting on the sockets, and a `zmq.Poller` (which polls in C,
where nothing can hook it) take the descriptor's signal the reader waits for. On ipykernel and async-kernel, a poker
looks at all four routed sockets every 20 ms during a burst of 1,000 requests, runs that follow their outputs and a run
that reads stdin: every request gets its reply and every run its whole output."""
from __future__ import annotations
import asyncio

import pytest
import zmq, zmq.asyncio
from jupyter_client.session import Session

import conkernelclient.runs # noqa: F401 (kc.run)
from conkernelclient import ConKernelManager
from kit import ask, check


@pytest.fixture(scope='module', params=['python3', 'async'], ids=['ipykernel', 'async-kernel'])
def kernel(request, aio_loop):
    "A real kernel of each kind for the module, shut down at its end"
    km = ConKernelManager(session=Session(key=b'x'), kernel_name=request.param)
    aio_loop.run_until_complete(km.start_kernel())
    yield km
    aio_loop.run_until_complete(km.shutdown_kernel(now=True))


def get_events(socks):
    for s in socks: s.get(zmq.EVENTS)

def poll_each(socks):
    for s in socks: zmq.Socket.poll(s, 0)

def c_poller(socks):
    p = zmq.Poller()
    for s in socks: p.register(s, zmq.POLLIN)
    p.poll(0)

async def asyncio_poller(socks):
    p = zmq.asyncio.Poller()
    for s in socks: p.register(s, zmq.POLLIN)
    await p.poll(5)

POKERS = {'get-events': get_events, 'socket-poll': poll_each, 'asyncio-poller': asyncio_poller, 'zmq-poller': c_poller}


async def poke_until(stop:asyncio.Event, socks:list, poke) -> int:
    "Look at `socks` with `poke` every 20 ms until `stop` is set; how many times it looked"
    n = 0
    while not stop.is_set():
        res = poke(socks)
        if res is not None: await res
        n += 1
        await asyncio.sleep(0.02)
    return n


@pytest.mark.timeout(120)
@pytest.mark.parametrize('poker', POKERS)
async def test_pokers_strand_no_reader(kernel, poker):
    "Every request of a 1,000-request burst gets its reply, and every run its output, while a poker looks at each socket"
    kc = await kernel.client().start_channels()
    stop = asyncio.Event()
    try:
        socks = [ch.socket for ch in kc.routed]
        poking = asyncio.ensure_future(poke_until(stop, socks, POKERS[poker]))
        for burst in range(2):
            futs = [ask(kc, f'{burst * 1000 + i}') for i in range(1000)]
            runs = [kc.run(f'print({i})') for i in range(20)]
            asked = kc.run('print(input("name? ") + "!")', input=lambda prompt, password: 'ada')
            for i, (fut, reply) in enumerate(zip(futs, await asyncio.gather(*futs))): check(reply, fut, burst * 1000 + i)
            for i, run in enumerate(await asyncio.gather(*runs)):
                assert run.outputs == [{'output_type': 'stream', 'name': 'stdout', 'text': f'{i}\n'}], run.outputs
                assert run.incomplete is None
            asked = await asked
            assert asked.outputs[-1]['text'].endswith('ada!\n') and asked.incomplete is None
        assert kc.in_flight == 0
        stop.set()
        assert await poking > 0
        # after the bursts, a run whose iopub messages nobody else reads still gets its output
        run = await kc.run('print("after")')
        assert run.outputs == [{'output_type': 'stream', 'name': 'stdout', 'text': 'after\n'}]
    finally:
        stop.set()
        await kc.astop_channels()
