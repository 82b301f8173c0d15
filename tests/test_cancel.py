"""Cancelling one request on real kernels: a soak of 200 cancellable requests on ipykernel and on async-kernel, in
which random requests are cancelled at random moments (every request not cancelled gets its own value; every
cancelled one either never ran or was interrupted), and a client with no manager, which interrupts ipykernel
with an `interrupt_request`. The state-by-state cases are in nbs/06_runs.ipynb; remote kernels in
test_remote.py."""
from __future__ import annotations
import asyncio, random

import pytest

import conkernelclient.runs # noqa: F401 (kc.run)
from conkernelclient.errors import InterruptUnsupportedError
from conkernelclient.stubkernel import stub_spec
from kit import ask, check, started

pytestmark = pytest.mark.timeout(300)

# each request notes that it started, then waits a little: interruptibly on ipykernel
# (a blocking sleep: its top-level `await` is not interruptible), and on async-kernel (whose interrupt stops an await
# at once, blocking code only after a second)
SLEEP = {'python3': 'time.sleep({d})', 'async': 'await asyncio.sleep({d})'}


async def values(kc, *names:str) -> list:
    "The values of `names` in the kernel"
    r = await kc.execute('', reply=True, user_expressions={n: n for n in names})
    return [eval(r['content']['user_expressions'][n]['data']['text/plain']) for n in names]


@pytest.mark.parametrize('kernel', ['python3', 'async'])
async def test_soak_random_cancels(kernels, kernel):
    """200 cancellable runs, 40 cancels at random moments: every run not cancelled (or cancelled once it had ended) gets
    its own value; a withdrawn one never ran; an interrupted one raises CancelledError. (Whether an interrupted run's
    code had got to its end is the kernel's to say: an interrupt that reaches a run as its code ends is reported all
    the same, and ipykernel then sends no reply at all.)"""
    km = await kernels.start(kernel_name=kernel)
    kc = await kernels.client(km, cancellable=True)
    await kc.run('import asyncio, time; started = set()')
    rng = random.Random(10)
    code = 'started.add({i}); ' + SLEEP[kernel] + '; {i}*{i}'
    runs = [kc.run(code.format(i=i, d=rng.choice([0, 0, 0.01, 0.05])), timeout=None) for i in range(200)]
    index = {r.msg_id: i for i, r in enumerate(runs)}
    outcomes = {}

    async def canceller():
        for _ in range(20):
            await asyncio.sleep(rng.uniform(0, 0.1)) # a random moment, not a synchronisation
            running = kc.shell_channel.alone.get(None) # half the time the request running now, else any not done
            left = [r.msg_id for r in runs if not r.done() and index[r.msg_id] not in outcomes]
            if not left: return
            mid = running.mid if running is not None and rng.random() < 0.5 else rng.choice(left)
            if index[mid] in outcomes: continue
            outcomes[index[mid]] = None
            outcomes[index[mid]] = await kc.cancel(mid)

    await asyncio.gather(canceller(), canceller())
    results = await asyncio.gather(*runs, return_exceptions=True)
    started, = await values(kc, 'started')
    for i, res in enumerate(results):
        how = outcomes.get(i)
        if how in (None, 'finished'):
            assert res.outputs == [dict(output_type='execute_result', data={'text/plain': str(i * i)}, metadata={},
                                        execution_count=res.reply['content']['execution_count'])], (i, how, res.outputs)
        else: assert isinstance(res, asyncio.CancelledError), (i, how, res)
        if how == 'withdrawn': assert i not in started, i
    counts = {how: list(outcomes.values()).count(how) for how in ('withdrawn', 'interrupted', 'finished')}
    assert counts['withdrawn'] and counts['interrupted'], counts
    # the kernel is free, and nothing of the cancels is left in the client (a request not cancellable goes out once
    # the last cancellable one has ended, its `idle` included)
    kc.cancellable = False
    fut = ask(kc, '6*7')
    check(await fut, fut, 42)
    assert (kc.shell_channel.cancellables, kc.shell_channel.alone, kc.in_flight, kc._stopping) == ({}, {}, 0, set())


async def test_client_without_manager(kernels):
    "A client that knows only the connection file interrupts ipykernel with an interrupt_request"
    km = await kernels.start()
    kc = await kernels.attach(km)
    assert kc.parent is None
    looping = kc.run('while True: pass', timeout=None, cancellable=True)
    queued = [ask(kc, f'{i}') for i in range(3)]
    await started(looping) # a fresh client's shell may still be busy with its start-up
    assert await kc.cancel(looping.msg_id) == 'interrupted'
    for i, fut in enumerate(queued): check(await fut, fut, i)


async def test_a_kernel_that_refuses_interrupts(kernels):
    """A client with no manager interrupts by interrupt_request; a kernel that refuses it (the stub, which runs nothing)
    gets InterruptUnsupportedError, and the client goes on"""
    km = await kernels.start(spec=stub_spec())
    kc = await kernels.attach(km)
    with pytest.raises(InterruptUnsupportedError, match='did not accept an interrupt_request'): await kc._interrupt()
    r = await kc.execute('after', reply=True)
    assert r['content']['user_expressions']['echo']['data']['text/plain'] == 'after'
