"""Hostile input: a FAKE kernel sends what no real kernel does (bad signatures, garbled or missing parents, replies
nobody asked for, bytes that are not UTF-8, floods), and a real ipykernel sends output far larger or far more
frequent than usual. The readers skip what they cannot read, survive, and every other waiter still gets its reply."""
from __future__ import annotations
import asyncio, logging

import pytest
import zmq, zmq.asyncio
from jupyter_client.session import Session

from conkernelclient import ConKernelClient
from conkernelclient.channel import ZMQChannel
from conkernelclient.routing import is_idle
from kit import Gate, ask, check, collect

DELIM = b'<IDS|MSG>'
KERNEL_INFO = dict(status='ok', protocol_version='5.3', implementation='fake', implementation_version='0',
                   language_info=dict(name='fake', version='0', mimetype='text/plain', file_extension='.txt'),
                   banner='a FAKE kernel', help_links=[])


class FakeKernel:
    "A FAKE kernel: a kernel's five sockets and just enough protocol to pass the client's start-up handshake"
    def __init__(self):
        self.session = Session(key=b'fake-key', username='fake')
        self.ctx = zmq.asyncio.Context()
        self.ports = {}
        self.shell, self.control, self.stdin = (self._bind(name, zmq.ROUTER) for name in ('shell', 'control', 'stdin'))
        self.iopub, self.hb = self._bind('iopub', zmq.PUB), self._bind('hb', zmq.REP)
        self.requests:asyncio.Queue = asyncio.Queue() # (identities, msg) of each shell request but kernel_info
        self.on_kernel_info = None # called with each kernel_info request before it is answered
        self.tasks = [asyncio.ensure_future(self._serve()), asyncio.ensure_future(self._beat())]

    def _bind(self, name:str, kind:int) -> zmq.asyncio.Socket:
        sock = self.ctx.socket(kind)
        sock.sndhwm = 0
        self.ports[f'{name}_port'] = sock.bind_to_random_port('tcp://127.0.0.1')
        return sock

    @property
    def connection_info(self) -> dict:
        return dict(transport='tcp', ip='127.0.0.1', key='fake-key', signature_scheme='hmac-sha256', **self.ports)

    async def _beat(self):
        while True: await self.hb.send_multipart(await self.hb.recv_multipart())

    async def _serve(self):
        "Answer kernel_info requests as a kernel would; queue every other request for the test"
        while True:
            idents, smsg = self.session.feed_identities(await self.shell.recv_multipart())
            msg = self.session.deserialize(smsg)
            if msg['msg_type'] == 'kernel_info_request':
                if self.on_kernel_info: self.on_kernel_info(msg)
                self.reply(idents, msg, KERNEL_INFO, 'kernel_info_reply')
            else: await self.requests.put((idents, msg))

    def publish(self, parent:dict, msg_type:str, content:dict):
        self.session.send(self.iopub, msg_type, content, parent=parent)

    def reply(self, idents:list, req:dict, content:dict, msg_type:str='execute_reply'):
        "Answer `req` as a kernel does: busy on iopub, the reply on shell, idle on iopub"
        self.publish(req, 'status', {'execution_state': 'busy'})
        self.session.send(self.shell, msg_type, content, parent=req, ident=idents)
        self.publish(req, 'status', {'execution_state': 'idle'})

    def answer(self, idents:list, req:dict):
        "The genuine reply to execute request `req`: ok, with the repr of its code as user expression `v`"
        v = {'status': 'ok', 'data': {'text/plain': repr(req['content']['code'])}, 'metadata': {}}
        self.reply(idents, req, {'status': 'ok', 'execution_count': 1, 'user_expressions': {'v': v}})

    def parts(self, req:dict, **frames:bytes) -> list[bytes]:
        "Header, parent, metadata and content frames of a well-formed reply to `req`, with any of them replaced"
        msg = self.session.msg('execute_reply', {'status': 'ok', 'forged': True}, parent=req)
        return [frames.get(k, self.session.pack(msg[k])) for k in ('header', 'parent_header', 'metadata', 'content')]

    def signed(self, parts:list[bytes]) -> list[bytes]:
        "`parts` as a message with a valid signature, whatever the parts hold"
        return [DELIM, self.session.sign(parts), *parts]

    async def send_raw(self, idents:list, frames:list[bytes], sock=None):
        await (sock or self.shell).send_multipart([*idents, *frames])

    async def close(self):
        for t in self.tasks: t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.ctx.destroy(linger=0)


@pytest.fixture
def fake(aio_loop):
    "A FAKE kernel on the session loop, closed after the test"
    async def make(): return FakeKernel()
    fk = aio_loop.run_until_complete(make())
    yield fk
    aio_loop.run_until_complete(fk.close())


@pytest.fixture
def fake_client(fake, aio_loop):
    "Async factory of a client of `fake`, started (handshake passed); stopped after the test"
    clients = []
    async def start(**traits) -> ConKernelClient:
        kc = ConKernelClient(**traits)
        kc.load_connection_info(fake.connection_info)
        clients.append(kc)
        return await kc.start_channels()
    yield start
    for kc in clients: aio_loop.run_until_complete(kc.astop_channels())


def skipped(caplog) -> list[logging.LogRecord]:
    "The records of messages the readers could not read"
    return [r for r in caplog.records if r.getMessage().startswith('skipped an unreadable message')]


async def three(kc:ConKernelClient, fake:FakeKernel):
    "Send requests a, b and c; return their futures and the (identities, request) of each, as the fake kernel got them"
    futs = [kc.execute(code, reply=True, timeout=30) for code in 'abc']
    got = [await fake.requests.get() for _ in futs]
    assert [req['header']['msg_id'] for _, req in got] == [fut.msg_id for fut in futs]
    return futs, got


async def assert_each_answered(kc:ConKernelClient, futs:list):
    "Each of `futs` got the genuine reply to its own request; nothing left in flight or unclaimed; readers still run"
    for fut, code in zip(futs, 'abc'): check(await fut, fut, code)
    assert kc.in_flight == 0 and len(kc.shell_channel.inbox) == 0
    assert all(ch.fd is not None for ch in kc.routed)
    assert kc.channels_running


def mid(req:dict) -> bytes: return req['header']['msg_id'].encode()


# Each makes, from fake kernel `fk` and request `req`, frames that look like a reply to `req` but cannot be read
UNREADABLE = {
    'bad-signature': lambda fk, req: [DELIM, b'0' * 64, *fk.parts(req)],
    'unsigned': lambda fk, req: [DELIM, b'', *fk.parts(req)],
    'parent-not-a-dict': lambda fk, req: fk.signed(fk.parts(req, parent_header=b'["%s"]' % mid(req))),
    'parent-invalid-json': lambda fk, req: fk.signed(fk.parts(req, parent_header=b'{"msg_id": "%s' % mid(req))),
    'parent-missing': lambda fk, req: fk.signed([p for i, p in enumerate(fk.parts(req)) if i != 1]),
    'header-not-json': lambda fk, req: fk.signed(fk.parts(req, header=b'\xff\xfe{"msg_id": "x"}')),
    'header-not-a-dict': lambda fk, req: fk.signed(fk.parts(req, header=b'["execute_reply"]')),
    'header-no-msg-type': lambda fk, req: fk.signed(fk.parts(req, header=b'{"msg_id": "x"}')),
    'no-delimiter': lambda fk, req: fk.parts(req),
    'empty': lambda fk, req: [b''],
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize('kind', list(UNREADABLE))
async def test_unreadable_reply_is_skipped(fake, fake_client, caplog, kind):
    "An unreadable reply to request b is logged and skipped; a, b and c then each get their genuine replies"
    kc = await fake_client()
    (a, b, c), got = await three(kc, fake)
    await fake.send_raw(got[1][0], UNREADABLE[kind](fake, got[1][1]))
    for idents, req in got: fake.answer(idents, req)
    await assert_each_answered(kc, [a, b, c])
    assert len(skipped(caplog)) == 1
    assert [r.levelno for r in caplog.records if r.name.startswith('conkernelclient.')] == [logging.WARNING]


def raw_reply(fk:FakeKernel, idents:list, req:dict, text:bytes, parent:bytes|None=None) -> list[bytes]:
    "Frames of a signed reply to `req` whose user expression `v` is the raw bytes `text`, parented to `parent` if given"
    content = (b'{"status": "ok", "execution_count": 1, "user_expressions": '
               b'{"v": {"status": "ok", "data": {"text/plain": "%s"}, "metadata": {}}}}' % text)
    frames = dict(content=content) if parent is None else dict(content=content, parent_header=parent)
    return [*idents, *fk.signed(fk.parts(req, **frames))]


@pytest.mark.timeout(30)
async def test_non_utf8_bytes(fake, fake_client, caplog):
    "Bytes that are not UTF-8 do not stop a message: identities are not decoded, and JSON frames decode them as U+FFFD"
    kc = await fake_client()
    (a, b, c), got = await three(kc, fake)
    (ia, ra), (ib, rb), (ic, rc) = got
    stray = b'{"msg_id": "%s\xc3\x28"}' % rb['header']['msg_id'].encode()
    for frames in (raw_reply(fake, ia + [b'\xff\xfe'], ra, b"'a'"), raw_reply(fake, ib, rb, b'\x80\x81', parent=stray),
                   raw_reply(fake, ib, rb, b"'b' \xff"), raw_reply(fake, ic, rc, b"'c'")):
        await fake.shell.send_multipart(frames)
    check(await a, a, 'a')
    assert (await b)['content']['user_expressions']['v']['data']['text/plain'] == "'b' \ufffd"
    check(await c, c, 'c')
    # the reply parented to b's msg_id plus a byte that is not UTF-8 matched no request
    msg = await kc.get_shell_msg(timeout=1)
    assert msg['parent_header']['msg_id'] == rb['header']['msg_id'] + '\ufffd('
    assert kc.in_flight == 0 and len(kc.shell_channel.inbox) == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.timeout(30)
async def test_replayed_reply_is_skipped(fake, fake_client, caplog):
    "b's reply sent twice, frame for frame: b gets the first; the copy fails the duplicate-signature check, is skipped"
    kc = await fake_client()
    (a, b, c), got = await three(kc, fake)
    fake.answer(*got[0])
    # the very same frames twice: `Session.send` signs each message anew, so sending it twice would not be a replay
    msg = fake.session.msg('execute_reply', {'status': 'ok', 'execution_count': 1}, parent=got[1][1])
    frames = fake.session.serialize(msg, ident=got[1][0])
    await fake.shell.send_multipart(frames)
    await fake.shell.send_multipart(frames)
    fake.answer(*got[2])
    check(await a, a, 'a')
    assert (await b)['content'] == {'status': 'ok', 'execution_count': 1}
    check(await c, c, 'c')
    assert len(skipped(caplog)) == 1 and 'Duplicate Signature' in skipped(caplog)[0].getMessage()
    assert kc.in_flight == 0 and len(kc.shell_channel.inbox) == 0


@pytest.mark.timeout(30)
async def test_unhashable_parent_msg_id_is_skipped(fake, fake_client, caplog):
    "A signed reply whose parent msg_id is a list is skipped like any unreadable message"
    kc = await fake_client()
    (a, b, c), got = await three(kc, fake)
    await fake.send_raw(got[1][0], fake.signed(fake.parts(got[1][1], parent_header=b'{"msg_id": ["b"]}')))
    for idents, req in got: fake.answer(idents, req)
    res = await asyncio.gather(a, b, c, return_exceptions=True)
    assert not [r for r in res if isinstance(r, Exception)], res
    await assert_each_answered(kc, [a, b, c])


@pytest.mark.timeout(30)
async def test_status_content_not_a_dict_during_startup(fake, fake_client):
    "A status with a JSON list for content, parented to the start-up request, does not stop the start-up or any request"
    def on_kernel_info(req):
        pack = fake.session.pack
        parts = [pack(fake.session.msg_header('status')), pack(req['header']), b'{}', b'["busy"]']
        zmq.Socket.shadow(fake.iopub.underlying).send_multipart([b'status', *fake.signed(parts)])
    fake.on_kernel_info = on_kernel_info
    kc = await fake_client()
    (a, b, c), got = await three(kc, fake)
    for idents, req in got: fake.answer(idents, req)
    await assert_each_answered(kc, [a, b, c])


UNCLAIMED = {
    'unknown-msg-id': lambda fk, req: {'msg_id': 'nobody-asked', 'msg_type': 'execute_request'},
    'empty-parent': lambda fk, req: {},
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize('kind', list(UNCLAIMED))
async def test_reply_nobody_asked_for(fake, fake_client, caplog, kind):
    "A well-formed reply whose parent is no request in flight resolves nothing: it waits in the shell inbox, quietly"
    kc = await fake_client()
    (a, b, c), got = await three(kc, fake)
    parent = UNCLAIMED[kind](fake, got[1][1])
    fake.session.send(fake.shell, 'execute_reply', {'status': 'ok', 'stray': True}, parent=parent, ident=got[1][0])
    for idents, req in got: fake.answer(idents, req)
    for fut, code in zip((a, b, c), 'abc'): check(await fut, fut, code)
    stray = await kc.get_shell_msg(timeout=1)
    assert stray['content'] == {'status': 'ok', 'stray': True} and stray['parent_header'] == parent
    assert len(kc.shell_channel.inbox) == 0 and kc.in_flight == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.timeout(60)
async def test_flood_from_a_fake_kernel(fake, fake_client, caplog):
    "10,000 stray replies and 1,000 unreadable ones on shell, 10,000 outputs on iopub, all before the genuine replies"
    kc = await fake_client()
    kc.shell_channel.inbox.maxlen = kc.iopub_channel.inbox.maxlen = 1000
    (a, b, c), got = await three(kc, fake)
    idents, req = got[1]
    bad = UNREADABLE['bad-signature'](fake, req)
    for i in range(10_000):
        fake.session.send(fake.shell, 'execute_reply', {'status': 'ok', 'stray': i}, parent={'msg_id': f'stray-{i}'},
                          ident=idents)
        fake.publish(req, 'stream', {'name': 'stdout', 'text': f'{i}\n'})
        if i % 10 == 0: await fake.send_raw(idents, bad)
        if i % 100 == 0: await asyncio.sleep(0) # let the client read as it comes, as a real peer would
    for idents, req in got: fake.answer(idents, req)
    # iopub is one ordered stream: once a last status (of a request nobody sent) is in, all published before it is
    _, end = collect(kc.iopub_channel, 'end')
    fake.publish({'msg_id': 'end'}, 'status', {'execution_state': 'idle'})
    for fut, code in zip((a, b, c), 'abc'): check(await fut, fut, code)
    assert len(skipped(caplog)) == 1000
    # nobody claims the strays or b's outputs: the inboxes keep the newest 1,000 of each and count what they drop
    shell, iopub = kc.shell_channel.inbox, kc.iopub_channel.inbox
    assert len(shell) == 1000 and shell.dropped == 9000
    assert [m['content']['stray'] for m in shell] == list(range(9000, 10_000))
    # iopub: 10,000 outputs and a busy and an idle for each of a, b and c, of which c's idle comes last
    await end
    last = list(iopub)[-1]
    assert last['parent_header']['msg_id'] == c.msg_id and is_idle(last)
    assert len(iopub) == 1000 and iopub.dropped == 9006
    # one warning per inbox, at its first drop, which says how to keep more
    drops = [r.getMessage() for r in caplog.records if 'inbox of unclaimed messages is full' in r.getMessage()]
    assert len(drops) == 2 and all('iopub_inbox_limit' in m for m in drops)
    assert all(ch.fd is not None for ch in kc.routed) and kc.in_flight == 0


# ---- readers take turns


@pytest.mark.timeout(30)
async def test_readers_take_turns():
    "5,000 messages wait on one socket and a reply on another when the readers start: the reply is not last in line"
    session, ctx = Session(key=b'k'), zmq.asyncio.Context()
    chans, order = {}, []
    try:
        for name in ('iopub', 'shell'):
            # FAKE peers over inproc: each send is in the reader's socket when it returns, so all 5,001 are waiting
            peer, sock = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
            for s in (peer, sock): s.sndhwm = s.rcvhwm = 0
            peer.bind(f'inproc://{name}')
            sock.connect(f'inproc://{name}')
            chans[name] = (peer, ZMQChannel(sock, session))
        (pub, iopub), (kernel, shell) = chans['iopub'], chans['shell']
        for i in range(5000):
            session.send(pub, 'stream', {'name': 'stdout', 'text': f'{i}\n'}, parent={'msg_id': 'flood'})
        fut = shell.router.expect('req')
        _, flooded = collect(iopub, 'flood', lambda msg: msg['content']['text'] == '4999\n')
        session.send(kernel, 'execute_reply', {'status': 'ok'}, parent={'msg_id': 'req'})
        for name, (_, ch) in chans.items():
            ch.received = lambda frames, name=name, route=ch.received: (order.append(name), route(frames))
        iopub.start()
        shell.start()
        assert (await fut)['parent_header']['msg_id'] == 'req'
        await flooded
        assert order.count('iopub') == 5000 and order.count('shell') == 1
        # without yielding, the iopub reader, started first, would deliver all 5,000 before the shell reader ran
        assert order.index('shell') < 5000
        print(f"the shell reply was delivered after {order.index('shell')} of 5,000 iopub messages")
    finally:
        for peer, ch in chans.values():
            ch.close()
            peer.close(linger=0)
        ctx.term()


# ---- a real kernel's output: huge, or a flood


@pytest.mark.timeout(60)
async def test_fifty_megabyte_output(connect):
    "A 50 MB output arrives whole, and the requests queued behind it are answered"
    kc = await connect()
    big = kc.execute("print('x' * 50_000_000)", reply=True, timeout=None)
    msgs, idle = collect(kc.iopub_channel, big.msg_id)
    futs = [ask(kc, f'{i}*{i}') for i in range(20)]
    assert (await big)['content']['status'] == 'ok'
    for i, fut in enumerate(futs): check(await fut, fut, i*i)
    await idle
    text = ''.join(m['content']['text'] for m in msgs if m['msg_type'] == 'stream')
    assert len(text) == 50_000_001 and text.count('x') == 50_000_000
    assert kc.in_flight == 0 and len(kc.shell_channel.inbox) == 0


async def control(kc:ConKernelClient, msg_type:str, **content) -> dict:
    "Send a control request and return its reply's content"
    reply = await kc._request(kc.control_channel, kc.session.msg(msg_type, content), 10)
    assert reply['content']['status'] == 'ok', reply['content']
    return reply['content']


@pytest.mark.timeout(60)
async def test_output_flood_and_a_subshell(connect, tmp_path, caplog):
    "A cell prints 1,000,000 lines in 10,000 messages nobody reads: the iopub inbox stays bounded; a subshell answers"
    kc = await connect()
    inbox = kc.iopub_channel.inbox
    inbox.maxlen, most, overflowed = 1000, [0], asyncio.Event()
    def put_frames(mid, frames, checked, put_frames=inbox.put_frames):
        put_frames(mid, frames, checked)
        most[0] = max(most[0], len(inbox))
        if inbox.dropped: overflowed.set()
    inbox.put_frames = put_frames
    sid = (await control(kc, 'create_subshell_request'))['subshell_id']
    sub, done = tmp_path/'sub', Gate(tmp_path/'done')
    try:
        # the flood goes on until the subshell request has run, so that request runs during the flood
        flood = kc.execute(f"import os, sys\ni = 0\nwhile i < 1_000_000 or not os.path.exists({str(sub)!r}):\n"
                           "    sys.stdout.write(''.join(f'{j}\\n' for j in range(i, i + 100)))\n"
                           "    sys.stdout.flush()\n    i += 100\n" + done.code, reply=True, timeout=None)
        await overflowed.wait()
        side = ask(kc, f"open({str(sub)!r}, 'w').close() or 'sub'", subshell_id=sid)
        check(await side, side, 'sub')
        # the flood cell cannot end before `done` opens
        assert not flood.done()
        done.open()
        assert (await flood)['content']['status'] == 'ok'
    finally:
        done.open()
        await control(kc, 'delete_subshell_request', subshell_id=sid)
    # the kernel runs a later request after the flood, and iopub is one ordered stream: once the later request's idle
    # is in, so are the flood's output and its idle, which comes after all of that output
    later = kc.execute('pass', reply=True)
    _, later_idle = collect(kc.iopub_channel, later.msg_id)
    await later
    await later_idle
    assert any(m['parent_header'].get('msg_id') == flood.msg_id and is_idle(m) for m in inbox)
    assert most[0] == 1000 and inbox.dropped >= 9000
    drops = [r for r in caplog.records if 'inbox of unclaimed messages is full' in r.getMessage()]
    assert len(drops) == 1 # the first drop, once
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == drops
    print(f"iopub inbox: {inbox.dropped} messages dropped, {len(drops)} warnings")
