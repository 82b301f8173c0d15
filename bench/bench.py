"""What a request costs the client: `ConKernelClient` against jupyter_client's own `AsyncKernelClient`.

    pip install -e ".[bench]"
    python bench/bench.py            # full run, several minutes
    python bench/bench.py --quick    # smaller batches, 2 rounds and 2 repeats instead of 9 and 5

It writes `results.md` (tables), `results.json` (the same numbers, with the plan, machine and versions) and
`bench.png` to `bench/results/` (`--out DIR` elsewhere); bench/README.md says what the committed run shows.

What is measured. Two clients take turns on one kernel, a round each, so both see the same machine:

- jupyter_client's `AsyncKernelClient`, used the two ways it can be used safely: one at a time (send, await the
  reply, send the next), and pipelined: every request sent with `execute()`, then the replies read with
  `get_shell_msg(timeout=60)`, with no routing. Pipelined is *the floor*: any client must at least sign and send each
  request and receive and check each reply. `jupyter_client, no timeout` is the same loop at its cheapest, reading
  with `get_shell_msg()` and no timeout (with one, pyzmq sets and cancels a timer for every read; the batch as a
  whole is bounded instead). `jupyter_client + iopub` also reads iopub to the last request's `idle`.
- `ConKernelClient`, one at a time and pipelined: `execute(code, reply=True)` for every request, their futures
  gathered, and `Router.follow` on the last one's `idle`. Its readers receive every iopub message (two status
  messages per request on the stub) and read its parent msg_id, checking and decoding only those someone reads,
  so `jupyter_client + iopub` is its like-for-like comparison; the floor is the bar it is held to. It sends at most
  its `window` (500) requests per shell; the rest of a batch waits in order.
- The `synchronous limit` (stub kernel only): a plain synchronous loop over pyzmq sockets doing only what no
  client can skip (pack, sign and send each request; receive each of its messages, check the signature, read the
  parent msg_id), the distance to which every run measures. ConKernelClient does less than that on iopub: it
  checks the signature of an iopub message only when someone reads it. It does more in what it returns: each
  reply decoded into the message dict its caller keeps, whose containers the garbage collector then tracks and
  traverses while the batch is out. `ConKernelClient, collector paused` (stub kernel) is the same pipelined run with
  `gc.disable()` for each batch, to show that share. Each timed run follows a full collection, so a run of 2,000
  requests pays only the young generations' (within this machine's noise of the paused row); a batch of 10,000 also
  pays a full collection of this process's heap.

Batches of 10 to 10,000 requests in flight run on three kernels: the stub kernel (`conkernelclient.stubkernel`),
which runs nothing and answers at once, so the client is the bottleneck; ipykernel and async-kernel, where the kernel
is, with batches up to 1,000 (ipykernel deadlocks with about 2,000 queued). Then: collecting the output of a cell
that prints many lines and of one that displays many values; the heap each outstanding request holds (tracemalloc,
while the stub withholds every reply); the time a quick request on a subshell takes while the main shell sleeps; and
what encryption costs: ConKernelClient on ipykernel and async-kernel started over plain TCP and with CurveZMQ; and
what cancellable requests cost (each alone on the shell in the kernel) beside pipelined ones; ConKernelClient
under asyncio's own event loop and under uvloop; and
what a Jupyter Server in between costs: the stub kernel and ipykernel behind a real `jupyter server`, reached through
its websocket (with and without TCP_QUICKACK) and over ZMQ straight to the kernel. What the websocket library itself
costs: the same stub kernel behind that server, reached by a bare client (`RawWebsocket`: send v1 messages, read each
one's channel and parent msg_id, no routing) written on each of tornado's, websockets', picows' and aiohttp's clients,
one request at a time (each read acknowledged at once, as one at a time needs) and 1,000 pipelined; and which packages
each library adds to conkernelclient's other dependencies.
ConKernelManager encrypts every kernel whose spec supports it, so the real kernels' rows are all encrypted ones.

The remote clients, side by side on that server and one kernel (stub and ipykernel), each connected alone (the server
sends every client of a kernel the iopub messages of all): jupyter_server's `GatewayKernelClient` (given the server's
token on its websocket, which it does not send), datalayer's jupyter-kernel-client and `RemoteKernelClient`. Each
runs its requests one after another (wall and client CPU per request), then `CALLERS` coroutines share it for a
batch of requests bounded by `Plan.shared_timeout` (right, wrong, hung, unsent, errors: a peer that is not safe to
share shows it here, and cannot hang the run), and each starts a kernel of its own: the time to its first reply.
And one event loop driving 1, 4 and 16 stub kernels at once (`Plan.many`), pipelined: ConKernelClient over ZMQ to
kernels of its own, and `RemoteKernelClient` to kernels of one server through its websocket, beside a bare picows
reader (`PicowsWebsocket`, no client at all) on other kernels of that server; every timed run of it sends the same
number of requests (16,000), so that each pays the garbage collector's full collections alike.

How to read the figures. Each is the median of the rounds (9) in the requests, output and *Remote kernels* tables, of
the repeats (5) in the others (2 of each with `--quick`), per request: requests per
second, wall µs, and the client's CPU µs (`time.process_time()` of this process, all its threads, ZMQ's I/O thread
included); the kernel's CPU where psutil sees the kernel process and its total reaches `KERNEL_CPU_MIN`. Ratios
compare a row's client CPU with the floor's at the same number in flight (ConKernelClient's also with the floor
without timeouts and with `jupyter_client + iopub`): below 1× costs less. The targets are judged on the stub kernel,
except one per real kernel (ConKernelClient against the floor without timeouts). A target that compares two rows is
judged on the ratio of their medians; beside it, *over the rounds* gives the smallest and the largest ratio of the
two round by round (each round, or repeat, times both in turn), which is how far this machine's noise moves it: a
ratio whose range spans its limit is not told apart from the limit by this run. Every run checks that each request
was answered `ok` by its own reply: a row's `answered` equals its `sent` (for the remote peers sharing one client,
that is what the table counts).
"""
from __future__ import annotations
import argparse, asyncio, gc, hashlib, hmac, json, logging, os, platform, socket, statistics, subprocess, sys, threading, time, tracemalloc, uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from functools import partial
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, requires, version
from pathlib import Path
from queue import Empty
from typing import Awaitable, Callable
from unittest import mock

import websocket, zmq, zmq.asyncio
from jupyter_client.asynchronous.client import AsyncKernelClient
from jupyter_client.kernelspec import NoSuchKernel
from jupyter_client.session import DELIM, Session, has_orjson
from jupyter_kernel_client import KernelHttpManager, KernelWebSocketClient
from jupyter_server.gateway.gateway_client import GatewayClient
from jupyter_server.gateway.managers import GatewayKernelManager
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from traitlets import default

import conkernelclient.runs # adds `request`, `create_subshell` and `delete_subshell` to ConKernelClient
from conkernelclient.channel import unbounded_context
from conkernelclient.core import ConKernelClient, ConKernelManager
from conkernelclient.routing import is_idle
from conkernelclient.session import ConSession
from conkernelclient.remote import RemoteKernelManager, _keyless_session
from conkernelclient.server import LocalServer
from conkernelclient.websocket import V1, v1_pack, v1_unpack
from conkernelclient.stubkernel import StubKernelSpecManager, stub_spec

log = logging.getLogger(__name__)

COMMAND = 'python bench/bench.py'
RESULTS = Path(__file__).parent/'results' # where the results go, unless `--out` says otherwise

@dataclass(frozen=True)
class Plan:
    "How much one benchmark run measures, and how many times"
    rounds:int=9 # rounds of the requests, output and Remote kernels tables, each client in turn; their rows, whose ratios the targets judge, are medians of these
    repeats:int=5 # timed runs of each other measurement; results are their medians
    stub_batches:tuple[int,...]=(10, 100, 1_000, 10_000) # requests in flight at once, on the stub kernel
    kernel_batches:tuple[int,...]=(10, 100, 1_000) # ... on a real kernel: ipykernel deadlocks near 2,000 queued
    stub_requests:int=2_000 # requests in each timed run on the stub kernel, in as many batches as that takes
    kernel_requests:int=200 # ... on a real kernel
    lines:int=20_000 # lines printed by the first output-collection cell
    displays:int=2_000 # display_data messages of the second
    held:int=5_000 # requests held in flight while their heap is measured
    unread:int=50_000 # requests answered, their iopub messages never read, while a client's memory is measured
    sleep:float=1.0 # seconds the main shell sleeps while a subshell request is timed
    remote_requests:int=50 # requests one after another through each remote client, in each timed run
    shared:int=200 # requests sent by the coroutines sharing one remote client
    shared_timeout:float=30 # seconds they all have, after which a request still waiting hangs
    starts:int=3 # kernels each remote client starts, timed to their first reply
    many:tuple[int,...]=(1, 4, 16) # stub kernels driven at once from one event loop
    many_requests:int=1_000 # requests pipelined to each of them
    ws_one:int=500 # requests one at a time in each timed run through the websocket and over ZMQ to its kernel (at most `UNACKED_ONE` without QUICKACK)
    kernels:tuple[str,...]=('stub', 'python3', 'async') # kernel spec names; 'stub' is the stub kernel

FULL = Plan()
QUICK = Plan(rounds=2, repeats=2, stub_batches=(10, 100, 1_000), kernel_batches=(10, 100), stub_requests=500,
             kernel_requests=50, lines=2_000, displays=200, held=500, unread=5_000, sleep=0.5,
             remote_requests=20, shared=50, shared_timeout=10, starts=1, many=(1, 4), many_requests=200, ws_one=50)

@dataclass
class Cost:
    "One timed run of `n` requests: seconds of wall time, of this process's CPU, and of the kernel's CPU (if known)"
    n:int
    wall:float=0.
    cpu:float=0.
    kernel:float|None=None

def _cpu(proc) -> float|None:
    "CPU seconds used so far by the psutil process `proc`, or None without one"
    if proc is None: return None
    t = proc.cpu_times()
    return t.user + t.system

@contextmanager
def timed(n:int, kernel=None): # the kernel's psutil.Process, if known
    "Measure the block as the `Cost` of `n` requests"
    cost, k0 = Cost(n), _cpu(kernel)
    w0, c0 = time.perf_counter(), time.process_time()
    yield cost
    cost.wall, cost.cpu = time.perf_counter() - w0, time.process_time() - c0
    if k0 is not None: cost.kernel = _cpu(kernel) - k0

async def start_kernel(name:str, **traits) -> ConKernelManager:
    "Start the kernel of spec `name` (`'stub'`: the stub kernel) and return its manager, made with `traits`"
    km = ConKernelManager(kernel_name=name, kernel_spec_manager=StubKernelSpecManager(), **traits)
    await km.start_kernel()
    return km

def kernel_process(km:ConKernelManager):
    "The kernel's psutil.Process, or None if psutil is not installed"
    try: import psutil
    except ImportError: return None
    return psutil.Process(km.provisioner.process.pid)

class PlainClient(AsyncKernelClient):
    "jupyter_client's `AsyncKernelClient`, with sockets that never drop messages (no high-water mark)"
    # with jupyter_client's default of 1,000 queued messages, a burst of outputs read slowly makes the kernel's PUB
    # socket drop some, the request's `idle` among them, and the floor would wait for it forever
    @default('context')
    def _context_default(self) -> zmq.asyncio.Context:
        self._created_context = True
        return unbounded_context()

async def plain_client(km:ConKernelManager, packer:str|None=None) -> PlainClient:
    "A started `PlainClient` of `km`'s kernel, with a session of its own (JSON library `packer`, default jupyter_client's)"
    kc = PlainClient(session=Session(**({'packer': packer} if packer else {})), parent=km)
    kc.load_connection_info(km.get_connection_info()) # ports, key, scheme, and the curve keys of an encrypted kernel
    kc.start_channels()
    await kc.wait_for_ready(timeout=60)
    return kc

async def drain(kc:AsyncKernelClient, quiet:float=0.05):
    "Discard, undecoded, the iopub messages `kc` has received, until none arrives for `quiet` seconds"
    sock = kc.iopub_channel.socket
    while await sock.poll(quiet * 1000): await sock.recv_multipart()

async def settle(kc:ConKernelClient, quiet:float=0.05):
    "Discard the iopub messages `kc` kept in its inbox, until none arrives for `quiet` seconds"
    kc.iopub_channel.inbox.clear()
    await kc.get_pubs(quiet)

CODE = 'pass'

def _ok(reply:dict, mid:str) -> bool: return reply['parent_header'].get('msg_id') == mid and reply['content']['status'] == 'ok'

async def one_at_a_time(kc:AsyncKernelClient, n:int) -> int:
    "Send `n` requests, each once the reply to the one before is in"
    ok = 0
    for _ in range(n):
        r = await kc.execute(CODE, reply=True, timeout=60)
        ok += r['content']['status'] == 'ok'
    return ok

# `floor` and `floor_iopub` rely on the kernel answering in order, as ipykernel, async-kernel (for plain cells) and the
# stub do: a reply out of order counts as not answered
async def floor(kc:AsyncKernelClient, n:int, timeout:float|None=60) -> int:
    """jupyter_client with no routing: send `n` requests with `execute()`, then read `n` replies with `get_shell_msg()`,
    each read given `timeout` (None: none, the cheapest loop, with the batch as a whole bounded instead)"""
    mids = [kc.execute(CODE) for _ in range(n)]
    kw = {} if timeout is None else {'timeout': timeout}
    async def replies(): return [await kc.get_shell_msg(**kw) for _ in mids]
    return sum(map(_ok, await asyncio.wait_for(replies(), 60 if timeout is None else None), mids))

async def floor_iopub(kc:AsyncKernelClient, n:int) -> int:
    "`floor`, reading iopub at the same time until the last request's `idle`"
    mids = [kc.execute(CODE) for _ in range(n)]
    async def shell(): return [await kc.get_shell_msg(timeout=60) for _ in mids]
    async def pubs():
        while True:
            msg = await kc.get_iopub_msg(timeout=60)
            if msg['parent_header'].get('msg_id') == mids[-1] and is_idle(msg): return
    replies, _ = await asyncio.gather(shell(), pubs())
    return sum(map(_ok, replies, mids))

async def pipelined(kc:ConKernelClient, n:int) -> int:
    "ConKernelClient: `n` requests in flight at once, each awaited through its own future, then the last one's `idle`"
    futs = [kc.execute(CODE, reply=True, timeout=60) for _ in range(n)]
    idle = kc.iopub_channel.router.follow(futs[-1].msg_id, is_idle)
    replies = await asyncio.gather(*futs)
    await asyncio.wait_for(idle, 60)
    return sum(_ok(r, f.msg_id) for r, f in zip(replies, futs))

async def replied(kc:ConKernelClient, n:int) -> int:
    "ConKernelClient: `n` requests sent at once, each awaited through its own future (the last one's `idle` is not awaited)"
    futs = [kc.execute(CODE, reply=True, timeout=60) for _ in range(n)]
    return sum(_ok(r, f.msg_id) for r, f in zip(await asyncio.gather(*futs), futs))

class Limit:
    """The least any client must do for a request, as a synchronous loop over plain pyzmq sockets: pack, sign and send
    it; receive each of its messages, check the signature and read the parent msg_id (and, on iopub, whether it is the
    last request's `idle`). No routing, no futures, no event loop, no dates decoded: the physical limit to measure the
    clients against"""
    def __init__(self, km:ConKernelManager):
        info = km.get_connection_info()
        self.ctx = zmq.Context()
        url = f"{info['transport']}://{info['ip']}:"
        self.shell = self.ctx.socket(zmq.DEALER)
        self.shell.connect(f"{url}{info['shell_port']}")
        self.iopub = self.ctx.socket(zmq.SUB)
        self.iopub.subscribe(b'')
        self.iopub.connect(f"{url}{info['iopub_port']}")
        self.poller = zmq.Poller()
        for sock in (self.shell, self.iopub): self.poller.register(sock, zmq.POLLIN)
        self.auth = hmac.new(info['key'], digestmod=hashlib.sha256)
        self.session, self.count = uuid.uuid4().hex, 0
        self.pack, self.unpack = Session().pack, Session().unpack # the JSON library jupyter_client's clients use here
        self.content = self.pack(dict(code=CODE, silent=False, store_history=True, user_expressions={}, allow_stdin=False,
                                      stop_on_error=True))

    def sign(self, parts:list[bytes]) -> bytes:
        h = self.auth.copy()
        for p in parts: h.update(p)
        return h.hexdigest().encode()

    def batch(self, n:int, timeout:float=60) -> int:
        "Send `n` requests, then receive until each has its reply and the last its `idle`; how many replies were theirs?"
        sent = set()
        for _ in range(n):
            self.count += 1
            mid = f'{self.session}_{self.count}'
            header = self.pack(dict(msg_id=mid, msg_type='execute_request', username='limit', session=self.session,
                                    date=datetime.now(timezone.utc).isoformat(), version='5.3'))
            parts = [header, b'{}', b'{}', self.content]
            self.shell.send_multipart([DELIM, self.sign(parts), *parts])
            sent.add(mid)
        ok, idle = 0, False
        while ok < n or not idle:
            ready = self.poller.poll(timeout * 1000)
            if not ready: raise TimeoutError(f"{n - ok} replies or the last idle missing after {timeout} s")
            for sock, _ in ready:
                frames = sock.recv_multipart()
                i = frames.index(DELIM)
                if not hmac.compare_digest(frames[i + 1], self.sign(frames[i + 2:i + 6])): continue
                parent = self.unpack(frames[i + 3]).get('msg_id')
                if sock is self.shell: ok += parent in sent
                elif parent == mid and b'"idle"' in frames[i + 5]: idle = True
        return ok

    def close(self): self.ctx.destroy(linger=0)

def limit_client(km:ConKernelManager) -> Limit:
    "A `Limit` connected to the kernel of `km`, once its iopub subscription is through (a SUB socket joins late)"
    lim = Limit(km)
    for _ in range(100):
        try:
            lim.batch(1, timeout=0.1)
            return lim
        except TimeoutError: pass # its idle went out before the subscription was through: try again
    lim.close()
    raise TimeoutError("the limit loop's iopub subscription never got through")

def output_cells(kernel:str, plan:Plan) -> dict[str,str]:
    "Name and code of the two output-collection cells for `kernel`"
    if kernel == 'stub': return {f'{plan.lines:,} lines': f'%stub stream {plan.lines}',
                                 f'{plan.displays:,} displays': f'%stub display {plan.displays}'}
    return {f'{plan.lines:,} lines': f'for i in range({plan.lines}): print(i)',
            f'{plan.displays:,} displays': f'from IPython.display import display\nfor i in range({plan.displays}): display(i)'}

async def collect_floor(kc:AsyncKernelClient, code:str) -> int:
    "jupyter_client: send `code`, read iopub until its `idle`, then read its reply"
    mid, n = kc.execute(code), 0
    while True:
        msg = await kc.get_iopub_msg(timeout=60)
        if msg['parent_header'].get('msg_id') != mid: continue
        n += 1
        if is_idle(msg): break
    if not _ok(await kc.get_shell_msg(timeout=60), mid): raise AssertionError(f"no ok reply to {code!r}")
    return n

async def collect(kc:ConKernelClient, code:str) -> int:
    "ConKernelClient: send `code` and collect its iopub messages until its `idle`, while awaiting its reply"
    fut = kc.execute(code, reply=True, timeout=60)
    pubs = []
    idle = kc.iopub_channel.router.follow(fut.msg_id, lambda msg: (pubs.append(msg), is_idle(msg))[1])
    if not _ok(await fut, fut.msg_id): raise AssertionError(f"no ok reply to {code!r}")
    await asyncio.wait_for(idle, 60)
    return len(pubs)

async def held_heap(kc:ConKernelClient, n:int, timeout:float|None=60, top:int=5) -> dict:
    "Python heap bytes per request with `n` requests in flight, and the `top` lines that allocated them"
    await kc.execute('%stub hold', reply=True, timeout=60)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        futs = [kc.execute(CODE, reply=True, timeout=timeout) for _ in range(n)]
        held = tracemalloc.get_traced_memory()[0] - before - sys.getsizeof(futs)
        stats = tracemalloc.take_snapshot().statistics('lineno')
    finally: tracemalloc.stop()
    in_flight = kc.in_flight
    # on control: requests past the shell's `window` wait in the client, in order, behind the held ones
    await kc.request('execute', {'code': '%stub release'}, channel='control', timeout=60)
    replies = await asyncio.gather(*futs)
    sites = [dict(site=f'{Path(s.traceback[0].filename).name}:{s.traceback[0].lineno}', bytes=s.size / n) for s in stats[:top]]
    return dict(in_flight=in_flight, window=kc.window, timeout=timeout, bytes_per_request=held / n,
                answered=sum(_ok(r, f.msg_id) for r, f in zip(replies, futs)), sites=sites)

def sleep_code(kernel:str, seconds:float) -> str:
    "A cell that keeps the main shell of `kernel` busy for `seconds` without stopping its subshells"
    # async-kernel runs its subshells on the main thread's event loop, where a blocking sleep would hold them too
    if kernel == 'async': return f'import asyncio; await asyncio.sleep({seconds})'
    return f'import time; time.sleep({seconds})'

async def subshell_latency(kc:ConKernelClient, slow_code:str) -> float:
    "Seconds until `1+1` on a subshell returns, sent while the main shell runs `slow_code`"
    sid = await kc.create_subshell()
    try:
        slow = kc.execute(slow_code, reply=True, timeout=120)
        running = kc.iopub_channel.router.follow(slow.msg_id, lambda msg: msg['msg_type'] == 'execute_input')
        await asyncio.wait_for(running, 60)
        t0 = time.perf_counter()
        quick = await kc.execute('1+1', reply=True, timeout=60, subshell_id=sid)
        took = time.perf_counter() - t0
        if slow.done() or not _ok(quick, quick['parent_header']['msg_id']):
            raise AssertionError("the subshell request did not return while the main shell slept")
        await slow
    finally: await kc.delete_subshell(sid)
    return took

async def one_at_a_time_latency(kc:AsyncKernelClient, slow_code:str) -> float:
    "Seconds until `1+1` returns on a one-at-a-time client that wanted it just after sending `slow_code`"
    t0 = time.perf_counter()
    await kc.execute(slow_code, reply=True, timeout=120)
    await kc.execute('1+1', reply=True, timeout=60)
    return time.perf_counter() - t0

def _runs(client:str, sequential, batched:dict, total:int, batches:tuple[int,...]) -> dict:
    "One client's runs, `(series, n): (work, n, batches)`: one at a time with `sequential`, then each `batched` work per size"
    runs = {(client, 1): (sequential, total, 1)}
    runs.update({(name, n): (work, n, max(1, total // n)) for n in batches for name, work in batched.items()})
    return runs

async def _time_runs(runs:dict, proc, after:Callable[[], Awaitable], tally:dict):
    "Time each of `runs` once; `tally[key]` collects `(costs, answered)`"
    for key, (work, n, batches) in runs.items():
        gc.collect()
        ok = 0
        with timed(n * batches, proc) as cost:
            for _ in range(batches): ok += await work(n)
        await after()
        costs, answered = tally.get(key, ([], 0))
        tally[key] = (costs + [cost], answered + ok)

async def _time_outputs(client:str, collector:Callable[[str], Awaitable[int]], cells:dict, proc, after:Callable[[], Awaitable],
                        tally:dict):
    "Collect the output of each of `cells` once; `tally[client, cell]` collects `(costs, message counts)`"
    for cell, code in cells.items():
        gc.collect()
        with timed(1, proc) as cost: n = await collector(code)
        await after()
        costs, counts = tally.get((client, cell), ([], set()))
        tally[client, cell] = (costs + [cost], counts | {n})

# the kernel's CPU time comes from the operating system in clock ticks (10 ms on Linux), so it is totalled over all repeats
KERNEL_CPU_MIN = 0.1 # seconds of kernel CPU, over all repeats, below which the kernel's CPU per request is not reported

def _row(kernel:str, client:str, in_flight:int, costs:list[Cost], answered:int) -> dict:
    "One line of results: medians of `costs`, per request"
    n, med = costs[0].n, statistics.median
    wall, cpu = med(c.wall for c in costs), med(c.cpu for c in costs)
    used = None if costs[0].kernel is None else sum(c.kernel for c in costs)
    kernel_cpu = used / (n * len(costs)) * 1e6 if used is not None and used >= KERNEL_CPU_MIN else None
    return dict(kernel=kernel, client=client, in_flight=in_flight, requests=n, repeats=len(costs),
                sent=n * len(costs), answered=answered, requests_per_s=n / wall, wall_us=wall / n * 1e6,
                cpu_us=cpu / n * 1e6, kernel_cpu_us=kernel_cpu, cpu_us_rounds=[c.cpu / n * 1e6 for c in costs])

PLAIN, PLAIN_UNTIMED, PLAIN_IOPUB = 'jupyter_client', 'jupyter_client, no timeout', 'jupyter_client + iopub'
CON, CON_PAUSED, LIMIT = 'ConKernelClient', 'ConKernelClient, collector paused', 'synchronous limit'
SERIES = (PLAIN, PLAIN_UNTIMED, PLAIN_IOPUB, CON, CON_PAUSED, LIMIT) # the throughput rows of a batch size, in this order

def _sizes(name:str, plan:Plan) -> tuple[tuple[int,...], int]:
    "Batch sizes, and requests per timed run, for the kernel of spec `name`"
    if name == 'stub': return plan.stub_batches, plan.stub_requests
    return plan.kernel_batches, plan.kernel_requests

async def _plain_round(km:ConKernelManager, name:str, plan:Plan, proc, tallies:dict):
    "One round of timed runs with a fresh jupyter_client client"
    batches, total = _sizes(name, plan)
    kc = await plain_client(km)
    try:
        await floor(kc, 100); await drain(kc)
        runs = _runs(PLAIN, lambda n: one_at_a_time(kc, n), {PLAIN: lambda n: floor(kc, n), PLAIN_UNTIMED: lambda n: floor(kc, n, None),
                                                             PLAIN_IOPUB: lambda n: floor_iopub(kc, n)}, total, batches)
        await _time_runs(runs, proc, lambda: drain(kc), tallies['throughput'])
        await _time_outputs(PLAIN, lambda code: collect_floor(kc, code), output_cells(name, plan), proc, lambda: drain(kc),
                            tallies['outputs'])
    finally: kc.stop_channels()

async def uncollected(work:Awaitable[int]) -> int:
    "Await `work` with the garbage collector paused; it runs again after, on what is left"
    gc.disable()
    try: return await work
    finally: gc.enable()

async def _con_round(km:ConKernelManager, name:str, plan:Plan, proc, tallies:dict):
    "One round of timed runs with a fresh ConKernelClient (on the stub kernel, also pipelined with the collector paused)"
    batches, total = _sizes(name, plan)
    kc = await km.client().start_channels()
    try:
        await pipelined(kc, 100); await settle(kc)
        paused = {CON_PAUSED: lambda n: uncollected(pipelined(kc, n))} if name == 'stub' else {}
        runs = _runs(CON, lambda n: one_at_a_time(kc, n), {CON: lambda n: pipelined(kc, n), **paused}, total, batches)
        await _time_runs(runs, proc, lambda: settle(kc), tallies['throughput'])
        await _time_outputs(CON, lambda code: collect(kc, code), output_cells(name, plan), proc, lambda: settle(kc),
                            tallies['outputs'])
    finally: kc.stop_channels()

async def _returned(work:Callable[[int], int], n:int) -> int: return work(n)

async def _nothing(): pass

async def _limit_round(km:ConKernelManager, name:str, plan:Plan, proc, tallies:dict):
    "One round of timed runs of the synchronous `Limit`: on the stub kernel only (the real kernels run encrypted)"
    if name != 'stub': return
    batches, total = _sizes(name, plan)
    lim = limit_client(km)
    try:
        lim.batch(100)
        runs = {(LIMIT, n): (lambda k: _returned(lim.batch, k), n, max(1, total // n)) for n in batches}
        await _time_runs(runs, proc, _nothing, tallies['throughput'])
    finally: lim.close()

async def _memory(km:ConKernelManager, plan:Plan) -> list[dict]:
    "Heap per request in flight, three ways, on the stub kernel of `km`"
    out = []
    for traits, timeout in (({}, 60), ({}, None), ({'window': None}, 60)):
        kc = await km.client(**traits).start_channels()
        try: out.append(await held_heap(kc, plan.held, timeout))
        finally: kc.stop_channels()
    return out

def backlog_item(kc:ConKernelClient, msg:dict, n:int=100) -> dict:
    "What the shell backlog keeps of `msg` while it waits behind the window, and its heap bytes, measured on `n` copies"
    ch = kc.shell_channel
    tracemalloc.start()
    try:
        kept = [ch._queued(msg) for _ in range(n)]
        each = tracemalloc.get_traced_memory()[0] / n
    finally: tracemalloc.stop()
    return dict(kept=type(kept[0]).__name__, bytes=each, packed=len(ch.session.pack(msg['content'])))

BACKLOG_REQUESTS = {'execute_request, no user expressions': {}, 'execute_request with user expressions': {'user_expressions': {'n': 'n'}}}

async def _backlog(km:ConKernelManager) -> list[dict]:
    "Heap bytes the backlog keeps per request waiting behind the window, for each request of `BACKLOG_REQUESTS`"
    kc = await km.client().start_channels()
    try: return [dict(request=name, **backlog_item(kc, kc._execute_msg('n = 0', **options))) for name, options in BACKLOG_REQUESTS.items()]
    finally: kc.stop_channels()

UNREAD_CLIENTS = {'jupyter_client': None, 'ConKernelClient': 1_000, 'ConKernelClient, 100,000 kept': 100_000} # -> iopub_inbox_limit

def _unread_rss(conn:dict, client:str, n:int) -> dict:
    """In a process of its own: how much the resident memory of a client of the kernel at `conn` grows over `n`
    requests, in batches of 1,000 after the first, whose replies it awaits and whose iopub messages nobody reads"""
    import psutil
    async def run():
        limit = UNREAD_CLIENTS[client]
        kc = AsyncKernelClient() if limit is None else ConKernelClient(iopub_inbox_limit=limit)
        kc.load_connection_info(conn)
        if limit is None:
            kc.start_channels()
            await kc.wait_for_ready(timeout=60)
        else: await kc.start_channels()
        work = (lambda k: floor(kc, k)) if limit is None else (lambda k: replied(kc, k))
        ok = await work(1000) # the first batch: what a batch needs while in flight is not what the client holds after
        gc.collect()
        before = psutil.Process().memory_info().rss
        for _ in range(n // 1000 - 1): ok += await work(1000)
        if limit is not None: await pipelined(kc, 1) # its `idle`, followed, comes after every message before it
        gc.collect()
        grown = psutil.Process().memory_info().rss - before
        ib, replay = None if limit is None else kc.iopub_channel.inbox, kc.session.digest_history
        row = dict(client=client, requests=n, answered=ok, rss_mb=grown / 2**20,
                   kept=None if ib is None else len(ib), dropped=None if ib is None else ib.dropped,
                   inbox_mb=None if ib is None else _deep_size(ib.msgs) / 2**20,
                   replayed=len(replay), replay_mb=_deep_size(replay) / 2**20)
        kc.stop_channels()
        return row
    return asyncio.run(run())

def _deep_size(o) -> int:
    "Bytes of `o` and of everything it holds, through sets, tuples, lists, deques and slotted objects (frames, inbox entries, signatures)"
    if isinstance(o, (set, tuple, list, deque)): return sys.getsizeof(o) + sum(map(_deep_size, o))
    slots = getattr(type(o), '__slots__', ())
    return sys.getsizeof(o) + sum(_deep_size(getattr(o, s)) for s in slots)

async def _unread(km:ConKernelManager, plan:Plan) -> list[dict]:
    "Each client's resident memory growth over `plan.unread` requests on the stub kernel of `km`, nobody reading iopub"
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing
    loop, out = asyncio.get_running_loop(), []
    for client in UNREAD_CLIENTS:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context('spawn')) as pool:
            out.append(await loop.run_in_executor(pool, _unread_rss, km.get_connection_info(), client, plan.unread))
    return out

SEND_MODES = {'sent': {'window': None}, 'queued behind the window': {'window': 1}} # what each call does -> client traits

async def held_loop(kc:ConKernelClient, n:int) -> float:
    "Seconds the event loop is held by `n` calls of `execute(reply=True)` made at once, on a stub kernel that withholds replies"
    await kc.execute('%stub hold', reply=True, timeout=60)
    if kc.window is not None: kc.execute(CODE) # fills a window of 1: every call then waits behind it
    start = time.perf_counter()
    futs = [kc.execute(CODE, reply=True, timeout=60) for _ in range(n)]
    held = time.perf_counter() - start
    if kc.window is not None:
        for f in futs: f.cancel() # dropped unsent from the backlog
    await kc.request('execute', {'code': '%stub release'}, channel='control', timeout=60)
    if kc.window is None: await asyncio.gather(*futs)
    return held

async def _send_path(km:ConKernelManager, plan:Plan) -> list[dict]:
    "How long the loop is held per `execute(reply=True)` call, sending each request or queueing it behind the window"
    times = {mode: [] for mode in SEND_MODES}
    for _ in range(plan.repeats):
        for mode, traits in SEND_MODES.items():
            kc = await km.client(**traits).start_channels()
            try: times[mode].append(await held_loop(kc, plan.held))
            finally: await kc.astop_channels()
    return [dict(mode=mode, calls=plan.held, held_ms=statistics.median(t) * 1e3, us_per_call=statistics.median(t) / plan.held * 1e6)
            for mode, t in times.items()]

async def _concurrency(km:ConKernelManager, name:str, plan:Plan) -> list[dict]:
    "Latency of a quick request while the main shell sleeps: one at a time with jupyter_client, on a subshell with ConKernelClient"
    kc = await km.client().start_channels()
    try:
        if not kc.supports_subshells: return []
        slow = sleep_code(name, plan.sleep)
        took = [await subshell_latency(kc, slow) for _ in range(min(plan.repeats, 3))]
    finally: kc.stop_channels()
    row = dict(kernel=name, main_shell=slow, sleep=plan.sleep)
    pkc = await plain_client(km)
    try: waited = [await one_at_a_time_latency(pkc, slow) for _ in range(min(plan.repeats, 3))]
    finally: pkc.stop_channels()
    return [dict(row, client=f'{PLAIN}, one at a time', latency_ms=statistics.median(waited) * 1e3),
            dict(row, client=f'{CON}, subshell', latency_ms=statistics.median(took) * 1e3)]

TRANSPORTS = {'disabled': 'plain TCP', 'auto': 'CurveZMQ'} # transport_encryption -> what the kernel runs over

async def _time_batches(kc:ConKernelClient, key, work:Callable, plan:Plan, proc, tally:dict):
    "Warm `kc` up, then time `work` on as many batches of the largest real-kernel size as the plan's requests make"
    n = plan.kernel_batches[-1]
    await work(kc, 100); await settle(kc)
    await _time_runs({(key, n): (lambda k: work(kc, k), n, max(1, plan.kernel_requests // n))}, proc, lambda: settle(kc), tally)

async def _encryption(name:str, plan:Plan) -> list[dict]:
    "ConKernelClient pipelined on kernel `name` started twice, over plain TCP and encrypted; [] if the kernel cannot encrypt"
    tally = {}
    kms = {enc: await start_kernel(name, transport_encryption=enc) for enc in TRANSPORTS}
    try:
        if kms['auto'].curve_publickey is None: return []
        for _ in range(plan.repeats):
            for enc, km in kms.items():
                kc = await km.client().start_channels()
                try: await _time_batches(kc, enc, pipelined, plan, kernel_process(km), tally)
                finally: kc.stop_channels()
    finally:
        for km in kms.values(): await km.shutdown_kernel(now=True)
    return [dict(_row(name, CON, n, costs, ok), transport=TRANSPORTS[enc]) for (enc, n), (costs, ok) in tally.items()]

LOOPS = ('asyncio', 'uvloop') # the event loops ConKernelClient is measured on

def _on_loop(kind:str, run:Callable[[], Awaitable]):
    "Run `run()` to completion on a new event loop of `kind`, in this thread"
    import uvloop
    loop = uvloop.new_event_loop() if kind == 'uvloop' else asyncio.new_event_loop()
    try: return loop.run_until_complete(run())
    finally: loop.close()

async def _loop_rounds(km:ConKernelManager, plan:Plan, kind:str) -> dict:
    "Timed pipelined batches of a ConKernelClient of `km`'s kernel on the running loop; the tally"
    tally = {}
    kc = ConKernelClient()
    kc.load_connection_file(km.connection_file)
    await kc.start_channels()
    try:
        for _ in range(plan.repeats): await _time_batches(kc, kind, pipelined, plan, None, tally)
    finally: await kc.astop_channels()
    return tally

async def _loops(km:ConKernelManager, name:str, plan:Plan) -> list[dict]:
    "ConKernelClient pipelined on kernel `name` under asyncio's own event loop and under uvloop, each on a thread of its own"
    rows = []
    for kind in LOOPS:
        tally = await asyncio.to_thread(_on_loop, kind, lambda: _loop_rounds(km, plan, kind))
        rows += [dict(_row(name, CON, n, costs, ok), loop=kind) for (_, n), (costs, ok) in tally.items()]
    return rows

MODES = {False: 'pipelined (default)', True: 'cancellable'} # ConKernelClient.cancellable -> what the row shows

async def _cancellable(km:ConKernelManager, name:str, plan:Plan) -> list[dict]:
    "ConKernelClient on kernel `name`, its requests pipelined (the default) and cancellable (alone on the shell in the kernel)"
    tally = {}
    for _ in range(plan.repeats):
        for cancellable in MODES:
            kc = await km.client(cancellable=cancellable).start_channels()
            try: await _time_batches(kc, cancellable, replied, plan, kernel_process(km), tally)
            finally: await kc.astop_channels()
    return [dict(_row(name, CON, n, costs, ok), mode=MODES[c]) for (c, n), (costs, ok) in tally.items()]

def _json_libraries() -> tuple[str,...]:
    "The JSON libraries jupyter_client's `Session` can use here: the standard library's, and orjson if it is installed"
    return ('json', 'orjson') if has_orjson else ('json',)

async def _json(km:ConKernelManager, name:str, plan:Plan) -> list[dict]:
    "The floor and ConKernelClient pipelined on kernel `name`, their sessions packing with each JSON library there is"
    if len(_json_libraries()) < 2: return []
    n, tally, proc = plan.kernel_batches[-1], {}, kernel_process(km)
    runs = lambda key, work, kc: {key: (lambda k: work(kc, k), n, max(1, plan.kernel_requests // n))}
    for _ in range(plan.repeats):
        for lib in _json_libraries():
            kc = await plain_client(km, lib)
            try:
                await floor(kc, 100); await drain(kc)
                await _time_runs(runs((PLAIN, lib, n), floor, kc), proc, lambda: drain(kc), tally)
            finally: kc.stop_channels()
            kc = await km.client(session=ConSession(key=km.session.key, packer=lib)).start_channels()
            try:
                await pipelined(kc, 100); await settle(kc)
                await _time_runs(runs((CON, lib, n), pipelined, kc), proc, lambda: settle(kc), tally)
            finally: await kc.astop_channels()
    return [dict(_row(name, client, k, costs, ok), json=lib) for (client, lib, k), (costs, ok) in tally.items()]

WS, ZMQ = 'websocket', 'ZMQ, direct'
WS_UNACKED = f'{WS}, no QUICKACK' # the websocket client with `quickack=False`
UNACKED_ONE = 50 # requests one at a time in its timed runs, at most: each waits about 40 ms for the delayed ACK
WS_TRANSPORTS = (ZMQ, WS, WS_UNACKED)

async def _websocket(srv:LocalServer, name:str, plan:Plan) -> list[dict]:
    "ConKernelClient and a kernel `name` of the server `srv`: through its websocket, and over ZMQ straight to the kernel"
    n, total, tally = plan.kernel_batches[-1], plan.kernel_requests, {}
    km = RemoteKernelManager(srv.url, srv.token, kernel_name=name)
    await km.start_kernel()
    def direct() -> ConKernelClient:
        kc = ConKernelClient()
        kc.load_connection_file(os.path.join(srv.dir.name, f'kernel-{km.kernel_id}.json'))
        return kc
    clients = dict(zip(WS_TRANSPORTS, (direct, km.client, lambda: km.client(quickack=False))))
    counts:dict = {} # (transport, in flight): [socket reads, ACKs sent at once, requests], through the websocket
    def counted(key, kc, work:Callable[[int], Awaitable[int]]) -> Callable[[int], Awaitable[int]]:
        "`work`, counting the reads and ACKs of `kc`'s websocket, if it has one, as it runs"
        if not hasattr(kc, 'ws'): return work
        async def run(k:int) -> int:
            reads, acks = kc.ws.reads, kc.ws.acks
            ok = await work(k)
            c = counts.setdefault(key, [0, 0, 0])
            c[0], c[1], c[2] = c[0] + kc.ws.reads - reads, c[1] + kc.ws.acks - acks, c[2] + k
            return ok
        return run
    try:
        for i in range(plan.rounds): # in turn forwards and backwards, so that no transport always follows the same one
            for transport, make in (clients.items() if i % 2 == 0 else reversed(clients.items())):
                kc = await make().start_channels()
                try:
                    await pipelined(kc, 100); await settle(kc)
                    one = min(plan.ws_one, UNACKED_ONE) if transport == WS_UNACKED else plan.ws_one
                    runs = {(transport, 1): (counted((transport, 1), kc, lambda k: one_at_a_time(kc, k)), one, 1),
                            (transport, n): (counted((transport, n), kc, lambda k: pipelined(kc, k)), n, max(1, total // n))}
                    await _time_runs(runs, None, lambda: settle(kc), tally)
                finally: await kc.astop_channels()
    finally: await km.shutdown_kernel()
    per = {key: dict(reads=r / k, acks=a / k) for key, (r, a, k) in counts.items()}
    return [dict(_row(name, CON, k, costs, ok), transport=t, **per.get((t, k), {})) for (t, k), (costs, ok) in tally.items()]

WS_LIBRARIES = ('tornado', 'websockets', 'picows', 'aiohttp') # the websocket client libraries compared, as distributions

class RawWebsocket:
    """The kernel websocket at `url` through one websocket library, doing only what every client must: send v1 messages,
    and read the channel and parent msg_id of each one that arrives. No routing: the libraries' own costs side by side"""
    library = ''
    def __init__(self, url:str, headers:dict[str,str]):
        self.url, self.headers, self.session = url, headers, _keyless_session()
        self.waiting, self.last, self.idle, self.done = set(), None, True, None
        self.quickack, self.sock = False, None # one at a time, each message is acknowledged at once (see the Remote kernels table)

    def got(self, data:bytes) -> bool:
        "Read one message that arrived; is the batch answered (every reply, and the last request's `idle`)?"
        if self.quickack: self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        ch, frames = v1_unpack(data)
        if ch == 'shell': self.waiting.discard(self.session.unpack(frames[1]).get('msg_id'))
        elif ch == 'iopub' and b'"idle"' in frames[3]: self.idle = self.idle or self.session.unpack(frames[1]).get('msg_id') == self.last
        return not self.waiting and self.idle

    async def batch(self, n:int) -> int:
        "Send `n` execute requests, then read until each has its reply and the last its `idle`; how many were answered?"
        self.done, self.idle = asyncio.get_running_loop().create_future(), False
        for _ in range(n):
            msg = self.session.msg('execute_request', dict(code=CODE, silent=False, store_history=True, user_expressions={},
                                                           allow_stdin=False, stop_on_error=True))
            self.last = msg['header']['msg_id']
            self.waiting.add(self.last)
            parts = [self.session.pack(msg[k]) for k in ('header', 'parent_header', 'metadata', 'content')]
            await self.send(v1_pack('shell', parts))
        await asyncio.wait_for(self.receive(), 60)
        return n - len(self.waiting)

    async def one_by_one(self, n:int) -> int:
        "Send `n` requests, each once the one before is answered; how many were?"
        return sum([await self.batch(1) for _ in range(n)])

    async def receive(self):
        "Read what arrives until the batch is answered"
        await self.done

    def answered(self):
        "End the batch under way, if any (a kernel's status may arrive between batches)"
        if self.done is not None and not self.done.done(): self.done.set_result(None)

class TornadoWebsocket(RawWebsocket):
    "tornado's `websocket_connect`, with a callback per message (the library before issue 22)"
    library = 'tornado'
    async def open(self):
        from tornado.httpclient import HTTPRequest
        from tornado.websocket import websocket_connect
        self.conn = await websocket_connect(HTTPRequest(self.url, headers=self.headers), subprotocols=[V1], max_message_size=2**31 - 1,
                                            on_message_callback=lambda data: data is not None and self.got(data) and self.answered())
        self.sock = self.conn.stream.socket
    async def send(self, data:bytes): self.conn.write_message(data, binary=True)
    async def close(self): self.conn.close()

class WebsocketsWebsocket(RawWebsocket):
    "websockets' asyncio client (C-accelerated masking), read with `recv()`"
    library = 'websockets'
    async def open(self):
        from websockets.asyncio.client import connect
        self.conn = await connect(self.url, additional_headers=self.headers, subprotocols=[V1], compression=None, max_size=None,
                                  ping_interval=None, proxy=None)
        self.sock = self.conn.transport.get_extra_info('socket')
    async def send(self, data:bytes): await self.conn.send(data)
    async def receive(self):
        while not self.got(await self.conn.recv()): pass
    async def close(self): await self.conn.close()

class PicowsWebsocket(RawWebsocket):
    "picows (Cython), with a callback per frame"
    library = 'picows'
    async def open(self):
        from picows import WSListener, WSMsgType, ws_connect
        raw = self
        class Listener(WSListener):
            def on_ws_frame(self, transport, frame):
                if frame.msg_type == WSMsgType.BINARY and raw.got(frame.get_payload_as_bytes()): raw.answered()
        self.binary = WSMsgType.BINARY
        self.conn, _ = await ws_connect(Listener, self.url, extra_headers=self.headers | {'Sec-WebSocket-Protocol': V1},
                                        max_frame_size=2**31 - 1)
        self.sock = self.conn.underlying_transport.get_extra_info('socket')
    async def send(self, data:bytes): self.conn.send(self.binary, data)
    async def close(self): self.conn.disconnect()

class AiohttpWebsocket(RawWebsocket):
    "aiohttp's client (a Cython frame reader), read with `receive()`"
    library = 'aiohttp'
    async def open(self):
        import aiohttp
        self.http = aiohttp.ClientSession()
        self.conn = await self.http.ws_connect(self.url, headers=self.headers, protocols=[V1], max_msg_size=0, autoping=True)
        self.sock = self.conn.get_extra_info('socket')
    async def send(self, data:bytes): await self.conn.send_bytes(data)
    async def receive(self):
        while not self.got((await self.conn.receive()).data): pass
    async def close(self):
        await self.conn.close()
        await self.http.close()

RAW_WEBSOCKETS = {cls.library: cls for cls in (TornadoWebsocket, WebsocketsWebsocket, PicowsWebsocket, AiohttpWebsocket)}
assert tuple(RAW_WEBSOCKETS) == WS_LIBRARIES

def _needs(dist:str, seen:set[str]) -> set[str]:
    "`seen`, with `dist` and every distribution it requires, through theirs (extras left out)"
    if (dist := canonicalize_name(dist)) in seen: return seen
    seen.add(dist)
    for line in requires(dist) or []:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({'extra': ''}): _needs(req.name, seen)
    return seen

def _adds(dist:str) -> list[str]:
    "The distributions the websocket library `dist` brings beyond conkernelclient's other dependencies, `dist` first"
    have, name = set(), canonicalize_name(dist)
    for line in requires('conkernelclient'):
        req = Requirement(line)
        if (req.marker is None or req.marker.evaluate({'extra': ''})) and canonicalize_name(req.name) not in WS_LIBRARIES: _needs(req.name, have)
    return [] if name in have else [name, *sorted(_needs(name, set()) - have - {name})]

def channels_of(srv:LocalServer, km:RemoteKernelManager) -> tuple[str, dict[str,str]]:
    "The websocket URL of the kernel of `km` on the server `srv`, with a session id of its own, and the header that authorises it"
    return (f"{srv.url.replace('http', 'ws', 1)}/api/kernels/{km.kernel_id}/channels?session_id={uuid.uuid4().hex}",
            {'Authorization': f'token {srv.token}'})

async def _ws_libraries(srv:LocalServer, plan:Plan) -> list[dict]:
    "Each websocket library's `RawWebsocket` on one stub kernel of the server `srv`: one request at a time, and 1,000 pipelined"
    km = RemoteKernelManager(srv.url, srv.token, kernel_name='stub')
    await km.start_kernel()
    url, headers = channels_of(srv, km)
    n, tally = 1_000, {}
    try:
        for _ in range(plan.repeats):
            for lib, cls in RAW_WEBSOCKETS.items():
                ws = cls(url, headers)
                await ws.open()
                try:
                    await ws.batch(100)
                    ws.quickack = True
                    await _time_runs({(lib, 1): (ws.one_by_one, min(plan.remote_requests, 50), 1)}, None, _nothing, tally)
                    ws.quickack = False
                    await _time_runs({(lib, n): (ws.batch, n, max(1, plan.stub_requests // n))}, None, _nothing, tally)
                finally: await ws.close()
    finally: await km.shutdown_kernel()
    return [dict(_row('stub', RawWebsocket.__name__, k, costs, ok), library=lib, adds=_adds(lib))
            for (lib, k), (costs, ok) in tally.items()]

GATEWAY, DATALAYER, REMOTE = 'GatewayKernelClient (jupyter_server)', 'jupyter-kernel-client (datalayer)', 'RemoteKernelClient'
CALLERS = 10 # coroutines sharing one client in the Remote clients table
GRACE = 5 # seconds a peer is given past its own timeout before the benchmark stops waiting for it

class Peer:
    "A remote client compared in the Remote clients table, on a kernel of the `LocalServer` `srv`: `open`, `ask`, `close`"
    name = ''
    def __init__(self, srv:LocalServer): self.srv, self.km, self.kc = srv, None, None # its kernel manager and client, once open

    async def open(self, kernel_id:str|None, kernel_name:str):
        "Connect a client to the kernel `kernel_id`, or (None) to a new kernel of spec `kernel_name` that it starts"
        raise NotImplementedError

    async def ask(self, timeout:float) -> tuple[str,dict]:
        "Send one request and wait up to `timeout` s for its reply, as one caller does: the msg_id sent and the reply returned"
        raise NotImplementedError

    async def ask_shared(self, timeout:float) -> tuple[str,dict]:
        "`ask`, as each of several coroutines sharing the client does"
        return await self.ask(timeout)

    async def close(self, shutdown:bool):
        "Close the client; `shutdown`: shut its kernel down too"
        raise NotImplementedError

class GatewayPeer(Peer):
    "jupyter_server's `GatewayKernelClient`, made by its `GatewayKernelManager`, both set up by the `GatewayClient` singleton"
    name = GATEWAY
    def __init__(self, srv:LocalServer):
        super().__init__(srv)
        GatewayClient.clear_instance()
        GatewayClient.instance(url=srv.url, auth_token=srv.token)

    async def open(self, kernel_id:str|None, kernel_name:str):
        self.km = GatewayKernelManager()
        await self.km.start_kernel(kernel_id=kernel_id, kernel_name=kernel_name)
        self.kc = self.km.client()
        # it sends no token on its websocket, which the server refuses (403): the server's token is added for it here
        header = [f'Authorization: token {self.srv.token}']
        with mock.patch.object(websocket, 'create_connection', partial(websocket.create_connection, header=header)):
            await self.kc.start_channels()

    async def ask(self, timeout:float) -> tuple[str,dict]:
        "jupyter_client's own pattern: `execute()`, then the next reply `get_shell_msg()` gives"
        mid = self.kc.execute(CODE)
        try: return mid, await self.kc.get_shell_msg(timeout=timeout)
        except Empty: raise TimeoutError(f"no reply in {timeout:.1f} s") from None

    async def close(self, shutdown:bool):
        self.kc.stop_channels()
        if shutdown: await self.km.shutdown_kernel()

class NotedClient(KernelWebSocketClient):
    "datalayer's `KernelWebSocketClient`, noting on each thread the msg_id of the last request sent from it"
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.noted = threading.local()

    def execute(self, *args, **kwargs) -> str:
        self.noted.mid = super().execute(*args, **kwargs)
        return self.noted.mid

class DatalayerPeer(Peer):
    "datalayer's jupyter-kernel-client, a synchronous client: its `KernelHttpManager` and `KernelWebSocketClient`"
    name = DATALAYER
    def __init__(self, srv:LocalServer):
        super().__init__(srv)
        self.pool = ThreadPoolExecutor(CALLERS, thread_name_prefix='datalayer') # for coroutines sharing the client

    async def open(self, kernel_id:str|None, kernel_name:str):
        self.km = KernelHttpManager(self.srv.url, self.srv.token, kernel_id=kernel_id, client_factory=NotedClient)
        if kernel_id is None: self.km.start_kernel(kernel_name)
        self.kc = self.km.client
        self.kc.start_channels()

    def _ask(self, timeout:float) -> tuple[str,dict]:
        reply = self.kc.execute_interactive(CODE, timeout=timeout, output_hook=lambda msg: None)
        return self.kc.noted.mid, reply

    async def ask(self, timeout:float) -> tuple[str,dict]:
        "`execute_interactive`, called here: it blocks, as a synchronous client does"
        return self._ask(timeout)

    async def ask_shared(self, timeout:float) -> tuple[str,dict]:
        "`execute_interactive` on a thread of the peer's own: the way coroutines can share a blocking client"
        return await asyncio.get_running_loop().run_in_executor(self.pool, self._ask, timeout)

    async def close(self, shutdown:bool):
        self.pool.shutdown(wait=False, cancel_futures=True) # a thread still waiting ends by its own timeout
        if shutdown: self.km.shutdown_kernel(now=True)
        # its reader thread, in websocket-client's `run_forever`, may notice a close of its own only at its next select
        # timeout (10 s), which `stop_channels` waits for: it stops on a thread of its own, not waited for
        threading.Thread(target=self.kc.stop_channels, name='datalayer-close', daemon=True).start()

class RemotePeer(Peer):
    "This project's `RemoteKernelClient`, made by its `RemoteKernelManager`"
    name = REMOTE
    async def open(self, kernel_id:str|None, kernel_name:str):
        self.km = RemoteKernelManager(self.srv.url, self.srv.token, kernel_name=kernel_name, kernel_id=kernel_id)
        await self.km.start_kernel()
        self.kc = await self.km.client().start_channels()

    async def ask(self, timeout:float) -> tuple[str,dict]:
        fut = self.kc.execute(CODE, reply=True, timeout=timeout)
        return fut.msg_id, await fut

    async def close(self, shutdown:bool):
        await self.kc.astop_channels()
        if shutdown: await self.km.shutdown_kernel()

PEERS = (GatewayPeer, DatalayerPeer, RemotePeer)

async def asked(peer:Peer, n:int) -> int:
    "Send `n` requests through `peer`, each once the reply to the one before is in; how many were answered ok by their own reply?"
    ok = 0
    for _ in range(n):
        mid, reply = await peer.ask(60)
        ok += _ok(reply, mid)
    return ok

def _fate(reply:dict, mid:str) -> str:
    "What the reply to the request `mid` is: 'right', 'wrong' (another request's) or 'errors' (its own, but not ok)"
    if reply['parent_header'].get('msg_id') != mid: return 'wrong'
    return 'right' if _ok(reply, mid) else 'errors'

async def shared(peer:Peer, n:int, timeout:float) -> dict:
    """`CALLERS` coroutines sharing `peer`, each sending its share of `n` requests one after another, all within `timeout`
    s: how many got their own reply (right), another request's (wrong), none in time (hung; the caller then stops, its
    later requests unsent), or an exception or a reply that is not ok (errors)"""
    loop, fates = asyncio.get_running_loop(), dict.fromkeys(('right', 'wrong', 'hung', 'unsent', 'errors'), 0)
    deadline = loop.time() + timeout
    async def caller(share:int):
        for i in range(share):
            left = deadline - loop.time()
            if left <= 0:
                fates['unsent'] += share - i
                return
            try: mid, reply = await asyncio.wait_for(peer.ask_shared(left), left + GRACE)
            except TimeoutError:
                fates['hung'] += 1
                fates['unsent'] += share - i - 1
                return
            except Exception as e:
                log.debug("%s: %r", peer.name, e)
                fates['errors'] += 1
                continue
            fates[_fate(reply, mid)] += 1
    t0 = time.perf_counter()
    await asyncio.gather(*(caller(n // CALLERS) for _ in range(CALLERS)))
    return dict(fates, requests=n, callers=CALLERS, timeout=timeout, wall_s=time.perf_counter() - t0)

async def first_reply(peer:Peer, name:str) -> float:
    "Seconds from asking the server for a kernel of spec `name`, through `peer`, to the first reply from it (then shut down)"
    t0 = time.perf_counter()
    await peer.open(None, name)
    try:
        mid, reply = await peer.ask(60)
        took = time.perf_counter() - t0
    finally: await peer.close(shutdown=True)
    if not _ok(reply, mid): raise AssertionError(f"{peer.name}: no ok first reply")
    return took

async def _remote_clients(srv:LocalServer, name:str, plan:Plan) -> list[dict]:
    "Each peer on one kernel `name` of the server `srv`: sequential requests, `CALLERS` coroutines sharing it, and a kernel start"
    km = RemoteKernelManager(srv.url, srv.token, kernel_name=name)
    await km.start_kernel()
    tally, fates, starts = {}, {}, {cls.name: [] for cls in PEERS}
    try:
        # one client at a time: the server sends every client of the kernel the iopub messages of all, which a peer's
        # reader would parse, in this process, while another one is measured
        for cls in PEERS:
            peer = cls(srv)
            await peer.open(km.kernel_id, name)
            try:
                await asked(peer, 5)
                for _ in range(plan.repeats):
                    await _time_runs({(cls.name, 1): (lambda k: asked(peer, k), plan.remote_requests, 1)}, None, _nothing, tally)
                fates[cls.name] = await shared(peer, plan.shared, plan.shared_timeout)
            finally: await peer.close(shutdown=False)
        for _ in range(plan.starts):
            for cls in PEERS: starts[cls.name].append(await first_reply(cls(srv), name))
    finally: await km.shutdown_kernel()
    return [dict(_row(name, c, 1, costs, ok), shared=fates[c], first_reply_ms=statistics.median(starts[c]) * 1e3)
            for (c, _), (costs, ok) in tally.items()]

WS_BARE = f'{WS}, bare picows reader' # `PicowsWebsocket`: no client, the websocket's own cost
MANY_TRANSPORTS = (ZMQ, WS, WS_BARE)

async def at_once(kcs:list, n:int, batch:Callable[..., Awaitable[int]]=pipelined) -> int:
    "`batch(kc, n)` on every client of `kcs` at once (`pipelined`, or `RawWebsocket.batch` on bare readers); how many were answered ok?"
    return sum(await asyncio.gather(*(batch(kc, n) for kc in kcs)))

async def _bare_readers(srv:LocalServer, kms:list[RemoteKernelManager]) -> list[RawWebsocket]:
    "An open `PicowsWebsocket` to the kernel of each of `kms` on the server `srv`"
    wss = []
    for km in kms:
        wss.append(PicowsWebsocket(*channels_of(srv, km)))
        await wss[-1].open()
    return wss

async def _many(srv:LocalServer, plan:Plan) -> list[dict]:
    """ConKernelClient pipelined on each number of stub kernels of `plan.many` at once, from this event loop: kernels of
    its own over ZMQ, and kernels of the server `srv` through its websocket (`RemoteKernelClient`), beside a bare picows
    reader on kernels of its own on the same server (the server sends every connection of a kernel its iopub messages).
    Every timed run sends as many requests, `max(plan.many) * plan.many_requests`: `k` kernels at once, as many times as
    that takes. The garbage collector's full collections come every few thousand requests here, and each timed run
    starts after a `gc.collect()`, so a shorter run would leave them out where a longer one pays them"""
    most, per, tally = max(plan.many), plan.many_requests, {}
    local, remote, bare, clients, wss = [], [], [], {}, []
    try:
        # the local kernels first, each answering (so bound to its ports) before the next starts and before any remote
        # one: a port jupyter_client chose and released can be taken meanwhile by a connection's ephemeral port
        for _ in range(most):
            local.append(await start_kernel('stub'))
            clients.setdefault(ZMQ, []).append(await local[-1].client().start_channels())
        for kms in (remote, bare):
            for _ in range(most):
                kms.append(RemoteKernelManager(srv.url, srv.token, kernel_name='stub'))
                await kms[-1].start_kernel()
        clients[WS] = [await km.client().start_channels() for km in remote]
        for kc in (kc for kcs in clients.values() for kc in kcs):
            await pipelined(kc, 100); await settle(kc)
        wss = await _bare_readers(srv, bare)
        await at_once(wss, 100, RawWebsocket.batch)
        # per transport: what it drives, its batch, and what follows each timed run (a client's last messages, settled)
        drives = {t: (kcs, pipelined, lambda kcs=kcs: asyncio.gather(*(settle(kc) for kc in kcs))) for t, kcs in clients.items()}
        drives[WS_BARE] = (wss, RawWebsocket.batch, _nothing)
        for _ in range(plan.repeats):
            for transport, (xs, batch, after) in drives.items():
                runs = {(transport, k): (lambda _, k=k: at_once(xs[:k], per, batch), k * per, most // k) for k in plan.many}
                await _time_runs(runs, None, after, tally)
    finally:
        for ws in wss: await ws.close()
        for kc in (kc for kcs in clients.values() for kc in kcs): await kc.astop_channels()
        for km in local + remote + bare: await km.shutdown_kernel(now=True)
    client = {ZMQ: CON, WS: REMOTE, WS_BARE: RawWebsocket.__name__}
    return [dict(_row('stub', client[t], per, costs, ok), transport=t, kernels=k) for (t, k), (costs, ok) in tally.items()]

SERVED = ('stub', 'python3') # the kernels also measured behind a Jupyter Server

async def _served(name:str, plan:Plan) -> dict:
    "The tables of kernel `name` behind one real Jupyter Server on loopback: websocket, remote clients, and (stub) many kernels"
    async with LocalServer('server', kernels={'stub': stub_spec()}) as srv:
        log.info("%s: behind a Jupyter Server", name)
        res = dict(websocket=await _websocket(srv, name, plan))
        if name == 'stub': log.info("%s: websocket libraries", name)
        res['ws_libraries'] = await _ws_libraries(srv, plan) if name == 'stub' else []
        log.info("%s: remote clients", name)
        res['remote_clients'] = await _remote_clients(srv, name, plan)
        if name == 'stub': log.info("%s: many kernels", name)
        return dict(res, many=await _many(srv, plan) if name == 'stub' else [])

async def bench_kernel(km:ConKernelManager, name:str, plan:Plan) -> dict:
    "Every measurement of the kernel of spec `name`, run by `km`: throughput, output, memory and concurrency rows"
    proc, tallies = kernel_process(km), dict(throughput={}, outputs={})
    # clients alternate round by round, so both see the same machine; only the measured one is connected, since an
    # idle ConKernelClient would still read the other's iopub messages
    for i in range(plan.rounds):
        log.info("%s: round %d of %d", name, i + 1, plan.rounds)
        await _plain_round(km, name, plan, proc, tallies)
        await _con_round(km, name, plan, proc, tallies)
        await _limit_round(km, name, plan, proc, tallies)
    order = SERIES.index
    throughput = [_row(name, client, n, costs, ok) for (client, n), (costs, ok) in tallies['throughput'].items()]
    outputs = [dict(_row(name, client, 1, costs, len(costs)), cell=cell, messages=sorted(counts))
               for (client, cell), (costs, counts) in tallies['outputs'].items()]
    return dict(throughput=sorted(throughput, key=lambda r: (order(r['client']), r['in_flight'])),
                outputs=sorted(outputs, key=lambda r: order(r['client'])),
                memory=await _memory(km, plan) if name == 'stub' else [],
                backlog=await _backlog(km) if name == 'stub' else [],
                send_path=await _send_path(km, plan) if name == 'stub' else [],
                unread=await _unread(km, plan) if name == 'stub' else [],
                concurrency=await _concurrency(km, name, plan),
                encryption=[] if name == 'stub' else await _encryption(name, plan),
                cancellable=[] if name == 'stub' else await _cancellable(km, name, plan),
                loops=await _loops(km, name, plan),
                json=await _json(km, name, plan),
                **(await _served(name, plan) if name in SERVED else dict(websocket=[], ws_libraries=[], remote_clients=[], many=[])))

def _versions() -> dict:
    "Versions of Python and of the packages measured"
    out = {'python': platform.python_version()}
    for pkg in ('conkernelclient', 'jupyter_client', 'pyzmq', 'ipykernel', 'async-kernel', 'orjson', 'uvloop', 'jupyter_server',
                'jupyter-kernel-client', 'websocket-client', 'tornado', 'picows', 'websockets', 'aiohttp'):
        try: out[pkg] = version(pkg)
        except PackageNotFoundError: out[pkg] = None
    return out

def _commit() -> str|None:
    "The git commit of the source tree, if it is a git checkout"
    try: return subprocess.run(['git', 'describe', '--always', '--dirty'], capture_output=True, text=True, timeout=10,
                               cwd=Path(__file__).parent).stdout.strip() or None
    except OSError: return None


def _row_of(rows:list[dict], client:str, in_flight:int) -> dict|None:
    "The row of `client` with `in_flight` requests, if there is one"
    return next((r for r in rows if r['client'] == client and r['in_flight'] == in_flight), None)

def _cpu_of(rows:list[dict], client:str, in_flight:int) -> float|None:
    "Client CPU µs per request of the row of `client` with `in_flight` requests, if there is one"
    row = _row_of(rows, client, in_flight)
    return None if row is None else row['cpu_us']

def _ratio(a:float|None, b:float|None) -> float|None: return None if a is None or b is None else a / b

def _target(name:str, value:float|None, limit:float, unit:str='×', spread:tuple[float,float]|None=None) -> dict:
    return dict(target=name, value=value, limit=limit, unit=unit, met=None if value is None else value <= limit, spread=spread)

def _spread(a:dict|None, b:dict|None) -> tuple[float,float]|None:
    """The smallest and the largest ratio of row `a`'s client CPU per request to row `b`'s, round by round: both were
    timed once in each round, in turn, so each round's ratio compares the two on the same machine at the same time"""
    xs, ys = (a or {}).get('cpu_us_rounds'), (b or {}).get('cpu_us_rounds')
    if not xs or not ys or len(xs) != len(ys): return None
    ratios = [x / y for x, y in zip(xs, ys)]
    return min(ratios), max(ratios)

def _vs(name:str, a:dict|None, b:dict|None, limit:float) -> dict:
    "Target `name`: row `a`'s client CPU per request (the median of its rounds) over row `b`'s, and that ratio's range over the rounds"
    return _target(name, _ratio(a and a['cpu_us'], b and b['cpu_us']), limit, spread=_spread(a, b))

def _untimed_target(kernel:str, rows:list[dict], limit:float) -> dict:
    "ConKernelClient's client CPU per request at the largest pipelined batch of `kernel`, vs the floor without timeouts"
    most = max((r['in_flight'] for r in rows if r['client'] == CON), default=0)
    return _vs(f"client CPU per request, {most:,} pipelined, vs the floor without timeouts ({KERNEL_NAMES.get(kernel, kernel)})",
               _row_of(rows, CON, most), _row_of(rows, PLAIN_UNTIMED, most), limit)

def _websocket_targets(rows:list[dict]) -> list[dict]:
    "Per kernel behind the server and number in flight: client CPU per request through the websocket, vs ZMQ straight to the kernel"
    row = {(r['kernel'], r['transport'], r['in_flight']): r for r in rows}
    return [_vs(f"client CPU per request through the websocket, {n:,} in flight, vs ZMQ direct ({KERNEL_NAMES.get(k, k)})",
                row.get((k, WS, n)), row.get((k, ZMQ, n)), 1.0)
            for k, n in dict.fromkeys((r['kernel'], r['in_flight']) for r in rows)]

def _quickack_target(rows:list[dict]) -> list[dict]:
    "The stub kernel's client CPU per request through the websocket at its largest batch, acknowledging at once where needed vs never"
    most = max((r['in_flight'] for r in rows if r['kernel'] == 'stub'), default=0)
    row = {r['transport']: r for r in rows if r['kernel'] == 'stub' and r['in_flight'] == most}
    return [_vs(f"client CPU per request through the websocket, {most:,} in flight, with QUICKACK vs without ({KERNEL_NAMES['stub']})",
                row.get(WS), row.get(WS_UNACKED), 1.0)] if row else []

def _many_targets(rows:list[dict]) -> list[dict]:
    "Per transport: client CPU per request with the most stub kernels driven at once, vs one"
    most = max((r['kernels'] for r in rows), default=0)
    row = {(r['transport'], r['kernels']): r for r in rows}
    return [_vs(f"client CPU per request, {most} stub kernels at once vs 1 ({t})", row.get((t, most)), row.get((t, 1)), 1.2)
            for t in (ZMQ, WS)] # the bare reader is no client: its rows show what the websocket costs alone

def targets(per_kernel:dict) -> list[dict]:
    """The targets, measured on the stub kernel unless they name another kernel (one per real kernel measured): is each
    met? (`met` is None for one that could not be measured)"""
    stub = per_kernel.get('stub', {})
    rows, outs = stub.get('throughput', []), stub.get('outputs', [])
    most = max((r['in_flight'] for r in rows if r['client'] == CON), default=0)
    outs_ratio = [_ratio(c['cpu_us'], p['cpu_us']) for c in outs if c['client'] == CON
                  for p in outs if p['client'] == PLAIN and p['cell'] == c['cell']]
    heap = next((m['bytes_per_request'] for m in stub.get('memory', []) if m['window'] == 500 and m['timeout'] == 60), None)
    held = {r['mode']: r['us_per_call'] for r in stub.get('send_path', [])}
    waiting = {r['request']: r for r in stub.get('backlog', [])}
    plain, expr = (waiting.get(k, {}) for k in BACKLOG_REQUESTS)
    unread = next((r for r in stub.get('unread', []) if r['client'] == CON), None)
    con = _row_of(rows, CON, 1000)
    return [_vs("client CPU per request, 1,000 pipelined, vs the floor", con, _row_of(rows, PLAIN, 1000), 0.5),
            _vs("client CPU per request, 1,000 pipelined, vs the floor without timeouts", con, _row_of(rows, PLAIN_UNTIMED, 1000), 0.7),
            _vs("client CPU per request, 1,000 pipelined, vs the synchronous limit", con, _row_of(rows, LIMIT, 1000), 1.1),
            _vs(f"client CPU per request, {most:,} vs 100 in flight", _row_of(rows, CON, most), _row_of(rows, CON, 100), 1.1),
            _target("heap per outstanding request", heap, 400, 'bytes'),
            _target("heap per execute_request waiting in the backlog", plain.get('bytes'), 100, 'bytes'),
            _target("heap per request with user expressions waiting in the backlog, vs its packed content",
                    _ratio(expr.get('bytes'), expr.get('packed')), 2.0),
            _target("event loop held per execute call, queued behind the window vs sent", _ratio(held.get('queued behind the window'), held.get('sent')), 1.0),
            _target("client CPU per output collection, vs the floor (worse cell)", max(outs_ratio, default=None), 1.1),
            _target(f"memory held for unread iopub messages after {unread['requests'] if unread else 0:,} requests",
                    unread and unread['inbox_mb'], 5, 'MB'),
            *(_untimed_target(k, res['throughput'], 1.0) for k, res in per_kernel.items() if k != 'stub'),
            *_websocket_targets([r for res in per_kernel.values() for r in res.get('websocket', [])]),
            *_quickack_target(stub.get('websocket', [])),
            *_many_targets(stub.get('many', []))]

def results(per_kernel:dict, plan:Plan, command:str=COMMAND) -> dict:
    "Everything measured, with the plan, the machine, the versions and the targets: what `write` saves"
    meta = dict(command=command, date=datetime.now(timezone.utc).isoformat(timespec='seconds'), commit=_commit(),
                machine=f'{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs', versions=_versions())
    return dict(meta=meta, plan=asdict(plan), targets=targets(per_kernel),
                **{k: [x for res in per_kernel.values() for x in res[k]] for k in ('throughput', 'outputs', 'memory', 'backlog', 'send_path', 'unread', 'concurrency', 'encryption', 'cancellable', 'loops', 'json', 'websocket', 'ws_libraries', 'remote_clients', 'many')})

KERNEL_NAMES = {'stub': 'stub kernel (client-bound)', 'python3': 'ipykernel', 'async': 'async-kernel'}

def _f(x, fmt:str='{:,.0f}') -> str: return '–' if x is None else fmt.format(x)

def _table(head:list[str], rows:list[list]) -> list[str]:
    "A markdown table"
    return ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head), *('| ' + ' | '.join(map(str, r)) + ' |' for r in rows)]

def _targets_md(targets:list[dict]) -> list[str]:
    "The targets table"
    unit = lambda t: t['unit'] if t['unit'] == '×' else f" {t['unit']}"
    spread = lambda t: '–' if not t.get('spread') else '{:.2f}–{:.2f}×'.format(*t['spread'])
    return _table(['target', 'measured', 'over the rounds', 'limit', 'met'],
                  [[t['target'], _f(t['value'], '{:,.2f}' + unit(t)), spread(t), f"≤ {t['limit']:g}{unit(t)}",
                    {True: 'yes', False: '**no**', None: '–'}[t['met']]] for t in targets])

def _throughput_md(rows:list[dict], kernel:str) -> list[str]:
    "The requests table of `kernel`"
    mine = sorted((r for r in rows if r['kernel'] == kernel), key=lambda r: (r['in_flight'], SERIES.index(r['client'])))
    def vs(r, client): return _f(_ratio(r['cpu_us'], _cpu_of(mine, client, r['in_flight'])), '{:.2f}×')
    body = [[_f(r['in_flight']), r['client'], _f(r['requests_per_s']), _f(r['wall_us']), _f(r['cpu_us']), _f(r['kernel_cpu_us']),
             vs(r, PLAIN), *((vs(r, PLAIN_UNTIMED), vs(r, PLAIN_IOPUB)) if r['client'] == CON else ('', ''))]
            for r in mine]
    return _table(['in flight', 'client', 'requests/s', 'wall µs/request', 'client CPU µs/request', 'kernel CPU µs/request',
                   'client CPU vs jupyter_client', 'vs jupyter_client, no timeout', 'vs jupyter_client + iopub'], body)

def _outputs_md(outs:list[dict]) -> list[str]:
    "The output-collection table"
    body = []
    for c in (o for o in outs if o['client'] == CON):
        p = next(o for o in outs if o['client'] == PLAIN and o['kernel'] == c['kernel'] and o['cell'] == c['cell'])
        body.append([KERNEL_NAMES.get(c['kernel'], c['kernel']), c['cell'], '/'.join(map(str, c['messages'])),
                     *(_f(x / 1e3, '{:,.1f}') for x in (p['wall_us'], c['wall_us'], p['cpu_us'], c['cpu_us'])),
                     _f(_ratio(c['cpu_us'], p['cpu_us']), '{:.2f}×')])
    return _table(['kernel', 'cell', 'iopub messages', 'floor wall ms', 'ConKernelClient wall ms', 'floor CPU ms',
                   'ConKernelClient CPU ms', 'CPU vs floor'], body)

def _memory_md(mems:list[dict]) -> list[str]:
    "The memory table"
    return _table(['in flight', 'window', 'timeout', 'bytes/request', 'largest allocation sites (bytes/request)'],
                  [[_f(m['in_flight']), _f(m['window']), _f(m['timeout'], '{} s'), _f(m['bytes_per_request']),
                    ', '.join(f"{s['site']} {s['bytes']:.0f}" for s in m['sites'])] for m in mems])

def _backlog_md(rows:list[dict]) -> list[str]:
    "The backlog table"
    return _table(['request', 'kept as', 'heap bytes', 'packed content, bytes'],
                  [[r['request'], f"`{r['kept']}`", _f(r['bytes']), _f(r['packed'])] for r in rows])

def _unread_md(rows:list[dict]) -> list[str]:
    "The unread-iopub table"
    return _table(['client', 'requests', 'answered', 'resident memory grown, MB', 'iopub messages kept', 'dropped',
                   'they hold, MB', 'replay history: signatures', 'MB'],
                  [[r['client'], _f(r['requests']), _f(r['answered']), _f(r['rss_mb'], '{:,.1f}'), _f(r['kept']), _f(r['dropped']),
                    _f(r['inbox_mb'], '{:,.2f}'), _f(r['replayed']), _f(r['replay_mb'], '{:,.1f}')] for r in rows])

def _send_path_md(rows:list[dict]) -> list[str]:
    "The send-path table"
    sent = next(r['us_per_call'] for r in rows if r['mode'] == 'sent')
    return _table(['each request is', 'calls at once', 'event loop held ms', 'µs per call', 'vs sent'],
                  [[r['mode'], _f(r['calls']), _f(r['held_ms'], '{:,.1f}'), _f(r['us_per_call'], '{:,.1f}'),
                    _f(_ratio(r['us_per_call'], sent), '{:.2f}×')] for r in rows])

def _concurrency_md(rows:list[dict]) -> list[str]:
    "The concurrency table"
    return _table(['kernel', 'client', 'main shell runs', 'quick request returned after'],
                  [[KERNEL_NAMES.get(c['kernel'], c['kernel']), c['client'], f"`{c['main_shell']}`", f"{c['latency_ms']:,.1f} ms"]
                   for c in rows])

_COLUMNS = {'cpu_us': 'client CPU µs/request', 'kernel_cpu_us': 'kernel CPU µs/request', 'wall_us': 'wall µs/request',
            'reads': 'socket reads/request', 'acks': 'ACKs sent at once/request'}
_FORMATS = {'reads': '{:.2f}', 'acks': '{:.2f}'} # columns not shown as whole numbers

def _versus_md(rows:list[dict], series:str, title:str, base:str, columns:list[str], measure:str, against:str,
               key:Callable|None=None, clients:bool=False) -> list[str]:
    """A table of `rows` (sorted by `key`), each `measure` compared with the row of the same kernel, client and batch whose
    `series` is `base`; `clients`: show the client of each row"""
    body, same = [], lambda r: (r['kernel'], r['client'], r['in_flight'])
    for r in sorted(rows, key=key) if key else rows:
        ref = next(b for b in rows if same(b) == same(r) and b[series] == base)
        body.append([KERNEL_NAMES.get(r['kernel'], r['kernel']), *([r['client']] if clients else []), r[series], _f(r['in_flight']),
                     _f(r['requests_per_s']), *(_f(r.get(c), _FORMATS.get(c, '{:,.0f}')) for c in columns), _f(_ratio(r[measure], ref[measure]), '{:.2f}×')])
    return _table(['kernel', *(['client'] if clients else []), title, 'in flight', 'requests/s', *(_COLUMNS[c] for c in columns),
                   against], body)

def _encryption_md(rows:list[dict]) -> list[str]:
    "The encryption table"
    return _versus_md(rows, 'transport', 'transport', TRANSPORTS['disabled'], ['cpu_us', 'kernel_cpu_us'], 'cpu_us',
                      'client CPU vs plain TCP')

def _cancellable_md(rows:list[dict]) -> list[str]:
    "The cancellable-requests table"
    return _versus_md(rows, 'mode', 'requests', MODES[False], ['wall_us', 'cpu_us'], 'wall_us', 'wall vs pipelined')

def _loops_md(rows:list[dict]) -> list[str]:
    "The event-loop table"
    return _versus_md(rows, 'loop', 'event loop', LOOPS[0], ['wall_us', 'cpu_us'], 'cpu_us', 'client CPU vs asyncio')

def _json_md(rows:list[dict]) -> list[str]:
    "The JSON-library table"
    return _versus_md(rows, 'json', 'JSON library', 'json', ['wall_us', 'cpu_us'], 'cpu_us', 'client CPU vs json',
                      key=lambda r: (r['kernel'], r['client'] == CON), clients=True)

def _websocket_md(rows:list[dict]) -> list[str]:
    "The websocket table"
    return _versus_md(rows, 'transport', 'transport', ZMQ, ['wall_us', 'cpu_us', 'reads', 'acks'], 'cpu_us', 'client CPU vs ZMQ direct',
                      key=lambda r: (r['kernel'], r['in_flight'], WS_TRANSPORTS.index(r['transport'])))

def _ws_libraries_md(rows:list[dict]) -> list[str]:
    "The websocket-libraries table"
    body = []
    for r in rows:
        ref = next(b for b in rows if b['library'] == WS_LIBRARIES[0] and b['in_flight'] == r['in_flight'])
        body.append([r['library'], _f(r['in_flight']), _f(r['requests_per_s']), _f(r['wall_us']), _f(r['cpu_us']),
                     _f(_ratio(r['cpu_us'], ref['cpu_us']), '{:.2f}×'), ', '.join(r['adds']) or 'nothing'])
    return _table(['library', 'in flight', 'requests/s', 'wall µs/request', 'client CPU µs/request', f'client CPU vs {WS_LIBRARIES[0]}',
                   "what it adds to conkernelclient's other dependencies"], body)

def _remote_clients_md(rows:list[dict]) -> list[str]:
    "The remote-clients table"
    body = []
    for r in rows:
        ours, sh = next(o for o in rows if o['kernel'] == r['kernel'] and o['client'] == REMOTE), r['shared']
        body.append([KERNEL_NAMES.get(r['kernel'], r['kernel']), r['client'], _f(r['wall_us']), _f(r['cpu_us']),
                     _f(_ratio(r['cpu_us'], ours['cpu_us']), '{:.2f}×'), *(_f(sh[k]) for k in ('right', 'wrong', 'hung', 'unsent', 'errors')),
                     _f(sh['wall_s'], '{:,.1f}'), _f(r['first_reply_ms'])])
    return _table(['kernel', 'client', 'wall µs/request', 'client CPU µs/request', 'CPU vs RemoteKernelClient', 'shared: right',
                   'wrong', 'hung', 'unsent', 'errors', 'took s', 'kernel start to first reply, ms'], body)

def _many_md(rows:list[dict]) -> list[str]:
    "The many-kernels table"
    return _versus_md(rows, 'kernels', 'stub kernels', 1, ['wall_us', 'cpu_us'], 'cpu_us', 'client CPU vs 1 kernel',
                      key=lambda r: (MANY_TRANSPORTS.index(r['transport']), r['kernels']), clients=True)

def markdown(res:dict) -> str:
    "The results as a markdown document"
    m, p = res['meta'], res['plan']
    vs = ', '.join(f'{k} {v}' for k, v in m['versions'].items() if v)
    out = ['# conkernelclient benchmark', '',
           f"`{m['command']}` on {m['date']} ({m['machine']}; {vs}; commit {m['commit'] or '?'}). "
           f"Medians of {p['rounds']} rounds in the requests, output and Remote kernels tables, of {p['repeats']} runs in the others. The floor is jupyter_client's `AsyncKernelClient` pipelined: send every "
           "request with `execute()`, then read every reply with `get_shell_msg(timeout=60)`, with no routing; at 1 in flight it "
           "awaits each reply before sending the next. `jupyter_client, no timeout` is the same loop at its cheapest: "
           "`get_shell_msg()` with no timeout, so no timer is set and cancelled for each read. ipykernel and async-kernel run encrypted (CurveZMQ), as "
           "ConKernelManager starts them; the stub kernel over plain TCP. CPU is the client process's own (`time.process_time`, all "
           "threads); kernel CPU is shown where it reached a measurable total. ConKernelClient keeps at most its "
           "`window` (500) requests unanswered per shell; the rest of a batch waits in the client.", '',
           '## Targets', '', 'Measured on the stub kernel, where the client is the bottleneck, unless they name another kernel.', '',
           *_targets_md(res['targets']),
           '', '## Requests', '']
    for kernel in dict.fromkeys(r['kernel'] for r in res['throughput']):
        out += [f'### {KERNEL_NAMES.get(kernel, kernel)}', '', *_throughput_md(res['throughput'], kernel), '']
    out += ['## Output collection', '', 'One request whose cell prints many lines or displays many values; the floor '
            'reads iopub until its `idle`, ConKernelClient follows it with `Router.follow`.', '', *_outputs_md(res['outputs']),
            '', '## Memory', '', 'Python heap (tracemalloc) held in the client per outstanding request, while the stub kernel '
            'withholds every reply; requests past the shell `window` wait, unsent, in the client.', '', *_memory_md(res['memory']),
            '', 'What the backlog keeps of one request waiting behind the window (tracemalloc, over 100 copies): a plain '
            '`execute_request` as a `_QueuedCode` (its code and four yes/no options as one int), any other request as a '
            '`_Queued` holding its packed content.', '', *_backlog_md(res['backlog']),
            '', '## Unread iopub', '', 'A client that only awaits replies, the common service pattern, never reads the '
            "two status messages each request publishes. Each client runs in a process of its own, attached to the stub "
            "kernel, and the table gives how much its resident memory (RSS) grew over the requests: jupyter_client's "
            "`AsyncKernelClient` reading replies with `get_shell_msg()` (ZMQ queues at most its receive high-water mark, "
            "1,000 messages, and drops the rest), ConKernelClient with its default `iopub_inbox_limit` (1,000), and with "
            "the 100,000 its inbox kept before that limit. What the kept messages hold is their frames and entries "
            "(`sys.getsizeof`); the replay history is the session's (jupyter_client's `digest_history`, the signature of "
            "every message checked, up to `digest_history_size`, 65,536), which both clients keep.", '', *_unread_md(res['unread']),
            '', '## Send path', '', 'How long `execute(reply=True)` calls made at once, in a plain loop, hold the event loop, '
            'while the stub kernel withholds every reply: each request sent (no `window`), or each queued in the client '
            'behind a full window of 1.', '', *_send_path_md(res['send_path']),
            '', '## Concurrency', '', 'Time until `1+1` returns, wanted while the main shell runs a cell that sleeps.', '',
            *_concurrency_md(res['concurrency']),
            '', '## Encryption', '', 'ConKernelClient pipelined on the same kernel spec started twice: over plain TCP '
            "(`transport_encryption='disabled'`) and encrypted with CurveZMQ (ConKernelManager's default where the kernel "
            'supports it, as in the tables above).', '', *_encryption_md(res['encryption']),
            '', '## Cancellable requests', '', 'ConKernelClient sending a batch of requests at once, each awaited through '
            'its own future: pipelined (the default), and cancellable (`cancellable=True`: each request alone on the '
            'shell in the kernel, sent once the one before it has replied and published `idle`, so `kc.cancel` can stop '
            'it without touching the others). The difference is the price of a round trip per request.', '',
            *_cancellable_md(res['cancellable']),
            '', '## Event loops', '', "ConKernelClient pipelined under asyncio's own event loop and under uvloop, each "
            'on a thread of its own with a client of its own, attached to the same kernel through its connection file.',
            '', *_loops_md(res['loops']),
            '', '## JSON libraries', '', "The floor and ConKernelClient pipelined, their sessions packing and unpacking "
            "with the standard library's `json` and with orjson (jupyter_client's `Session(packer=...)`; it picks orjson "
            "by itself when orjson is installed, as the tables above did if the header's versions list it).", '',
            *_json_md(res['json']),
            '', '## Remote kernels', '', 'ConKernelClient and one kernel started by a real Jupyter Server on loopback: '
            "`RemoteKernelClient` through the server's kernel websocket (v1 protocol), with and without `TCP_QUICKACK`, "
            'and `ConKernelClient` over ZMQ straight to the same kernel, through its connection file. The server runs '
            'kernels unencrypted, as jupyter_server does by default. One at a time, each timed run sends '
            f"{p['ws_one']:,} requests ({min(p['ws_one'], UNACKED_ONE)} without QUICKACK, each waiting for the delayed ACK).", '', *_websocket_md(res['websocket']),
            '', '## Websocket libraries', '', "The websocket client library alone, on the stub kernel behind the same "
            "server: a bare client (send v1 messages, read each one's channel and parent msg_id; no routing) on each "
            "library's client, one request at a time (each message acknowledged at once, `TCP_QUICKACK`, as one at a "
            "time needs) and 1,000 pipelined. tornado's is what `RemoteKernelClient` used before issue 22 (a callback per "
            "message), picows' what it uses now (a callback per frame, from the read of the socket); websockets and aiohttp "
            "are read with `recv()` / `receive()`. The last column lists the packages each library adds to "
            "conkernelclient's other dependencies (jupyter_client needs tornado).", '', *_ws_libraries_md(res['ws_libraries']),
            '', '## Remote clients', '', "Three clients of the same kernel on the same `jupyter server`, one after another: "
            "jupyter_server's own `GatewayKernelClient` (made by its `GatewayKernelManager`, set up by `GatewayClient`; it "
            "sends no token on its websocket, so the benchmark adds the server's token to its handshake), datalayer's "
            "jupyter-kernel-client (`KernelHttpManager` and its `KernelWebSocketClient`, a synchronous client), and "
            f"`RemoteKernelClient`. Sequential: {p['remote_requests']} requests one after another, each sent once the reply "
            "to the one before is in (`execute()` then `get_shell_msg()` for `GatewayKernelClient`, `execute_interactive` for "
            f"datalayer's, `execute(reply=True)` for ours). Shared: {p['shared']:,} requests from {CALLERS} coroutines sharing "
            "one client, each sending its share one after another with the same calls (datalayer's from threads of its own), "
            f"all within {p['shared_timeout']:g} s: how many got their own reply (right), another request's (wrong), none in "
            "time (hung, after which that coroutine sent no more: unsent) or an exception (errors), and how long that took. "
            "Kernel start: from asking the server for a new kernel, through the client's own manager, to its first reply.",
            '', *_remote_clients_md(res['remote_clients']),
            '', '## Many kernels', '', 'One event loop driving several stub kernels at once, '
            f"{p['many_requests']:,} requests pipelined to each (the in-flight column is per kernel), as many times as it takes "
            f"to send {max(p['many']) * p['many_requests']:,} requests in each timed run: ConKernelClient over ZMQ to kernels of its "
            "own, `RemoteKernelClient` through the websocket of one `jupyter server` running them, and a bare picows reader "
            "(`RawWebsocket`: send, read each message's channel and parent msg_id, nothing else) on other kernels of that server. "
            'Client CPU per request should not grow with the number of kernels.', '', *_many_md(res['many'])]
    return '\n'.join(out) + '\n'

STYLES = {PLAIN: dict(ls='--', marker='o'), PLAIN_UNTIMED: dict(ls='--', marker='v'), PLAIN_IOPUB: dict(ls=':', marker='s'), CON: dict(ls='-', marker='D'),
          LIMIT: dict(ls='-.', marker='x')}

def plot(res:dict, path:Path):
    "Save the throughput and client-CPU plot of `res` as the PNG `path`"
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter
    fig, (rate, cpu) = plt.subplots(1, 2, figsize=(13, 6))
    rows = res['throughput']
    for i, kernel in enumerate(dict.fromkeys(r['kernel'] for r in rows)):
        for client, style in STYLES.items():
            line = sorted((r for r in rows if r['kernel'] == kernel and r['client'] == client), key=lambda r: r['in_flight'])
            if not line: continue
            x, label = [r['in_flight'] for r in line], f"{KERNEL_NAMES.get(kernel, kernel)}: {client}"
            rate.plot(x, [r['requests_per_s'] for r in line], color=f'C{i}', label=label, **style)
            cpu.plot(x, [r['cpu_us'] for r in line], color=f'C{i}', label=label, **style)
    rate.set(ylabel='requests/s', title='Throughput')
    cpu.set(ylabel='client CPU µs per request', title="Client's own CPU per request")
    plain = FuncFormatter(lambda v, _: f'{v:,.0f}')
    for ax in (rate, cpu):
        ax.set(xscale='log', yscale='log', xlabel='requests in flight (1 = one at a time)')
        ax.grid(True, which='both', alpha=.3)
        for axis in (ax.yaxis, ax.xaxis): axis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f'{v:,.0f}' if str(round(v))[0] in '25' else ''))
    fig.legend(*rate.get_legend_handles_labels(), loc='lower center', ncol=3, fontsize=9, frameon=False)
    fig.suptitle(f"conkernelclient benchmark, medians of {res['plan']['rounds']} rounds ({res['meta']['machine']})")
    fig.tight_layout(rect=(0, 0.13, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)

def write(res:dict, out:Path) -> list[Path]:
    "Save `res` in the directory `out` as results.md, results.json and bench.png; return their paths"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out/'results.md', out/'results.json', out/'bench.png']
    paths[0].write_text(markdown(res))
    paths[1].write_text(json.dumps(res, indent=1) + '\n')
    plot(res, paths[2])
    return paths

def available(name:str) -> bool:
    "Can a kernel of spec `name` be started here?"
    try: StubKernelSpecManager().get_kernel_spec(name)
    except NoSuchKernel: return False
    return True

async def measure(plan:Plan, command:str=COMMAND) -> dict:
    "Measure every kernel of `plan`, each started here and shut down after, and return the `results`"
    per_kernel = {}
    for name in plan.kernels:
        km = await start_kernel(name)
        try: per_kernel[name] = await bench_kernel(km, name, plan)
        finally: await km.shutdown_kernel(now=True)
    return results(per_kernel, plan, command)

def parser() -> argparse.ArgumentParser:
    "The command line of `python bench/bench.py`"
    p = argparse.ArgumentParser(prog=COMMAND,
        description="Benchmark ConKernelClient against jupyter_client's AsyncKernelClient on the stub kernel, "
                    "ipykernel and async-kernel; write results.md, results.json and bench.png.")
    p.add_argument('--quick', action='store_true', help="smaller batches, 2 rounds and 2 repeats instead of 9 and 5")
    p.add_argument('--out', type=Path, default=RESULTS, metavar='DIR',
                   help="directory for the results (default: bench/results, next to this script)")
    p.add_argument('--kernels', default=','.join(FULL.kernels), metavar='NAMES',
                   help="comma-separated kernel spec names; 'stub' is the stub kernel (default: %(default)s)")
    return p

def main(argv:list[str]|None=None) -> int:
    "Run the benchmark and write its results"
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s', datefmt='%H:%M:%S')
    for chatty in ('traitlets', 'websocket'): logging.getLogger(chatty).setLevel(logging.WARNING) # the remote peers' every connection
    wanted = [k for k in args.kernels.split(',') if k]
    for name in wanted:
        if not available(name): log.warning("no kernel spec %r: skipped", name)
    plan = replace(QUICK if args.quick else FULL, kernels=tuple(k for k in wanted if available(k)))
    command = ' '.join([COMMAND, *(argv if argv is not None else sys.argv[1:])])
    for path in write(asyncio.run(measure(plan, command)), args.out): log.info("wrote %s", path)
    return 0

if __name__ == '__main__': raise SystemExit(main())
