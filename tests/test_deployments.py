"""Remote kernels in the deployments people run (issue 18), each a real server on loopback: a certificate from a CA
of the test's own, and mutual TLS; no token (XSRF) and a password (cookie session); URLs as pasted; launching as
gateways expect; a reverse proxy of the test's own in front of a server (a header it demands, HTTP basic auth,
passing failures of the liveness poll, idle connections cut, a half-open connection, a slow launch, a load
balancer's cookie); the blocking client and the command; JupyterHub (user and service tokens, a user's server
stopped under load) and Enterprise Gateway (KERNEL_USERNAME, 200 requests). No token or password shows in any text
the tests capture."""
from __future__ import annotations
import asyncio, base64, datetime, ipaddress, json, logging, os, re, time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from jupyter_server.auth import passwd

from conkernelclient import KernelDiedError
from conkernelclient.remote import KernelLaunchTimeoutError, RemoteKernelManager
from conkernelclient.server import (LocalServer, NoAPIError, Server, ServerAuthError, ServerError, ServerNotRunningError,
                                    ServerTLSError, ServerUnreachableError, call)
from kit import UNINTERRUPTIBLE, Relay, Remote, ask, check, running

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]


def certificate(path, cn:str, issuer:tuple|None=None, ca:bool=False, server:bool=False) -> tuple:
    "A key and certificate for `cn` in `path`.key and `path`.pem, signed by `issuer` (key, certificate) or by itself"
    key, now = ec.generate_private_key(ec.SECP256R1()), datetime.datetime.now(datetime.timezone.utc)
    signer_key, signer = issuer or (key, None)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(signer.subject if signer else name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server: b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address('127.0.0.1'))]), critical=False)
    if not ca:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    cert = b.sign(signer_key, hashes.SHA256())
    with open(f'{path}.pem', 'wb') as f: f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(f'{path}.key', 'wb') as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return key, cert


@pytest.fixture(scope='module')
def pki(tmp_path_factory):
    "A CA of the test's own, a server certificate for 127.0.0.1 and a client certificate, both signed by it"
    d = tmp_path_factory.mktemp('pki')
    ca = certificate(d/'ca', 'conkernelclient test CA', ca=True)
    certificate(d/'server', '127.0.0.1', ca, server=True)
    certificate(d/'client', 'client', ca)
    return d


@pytest.fixture
def served(aio_loop):
    "`await served(srv)`: enters LocalServer `srv` and returns a `Remote` of it; both closed after the test"
    opened = []
    async def served(srv:LocalServer) -> Remote:
        await srv.__aenter__()
        opened.append(Remote(srv))
        return opened[-1]
    async def close():
        for kc in [kc for r in opened for kc in r.clients]: await kc.astop_channels() # each close waits for every task
        for r in opened:
            await r.close()
            await r.srv.__aexit__()
    yield served
    aio_loop.run_until_complete(close())


def secrets_absent(secrets:list[str], *texts):
    "No secret in any of `texts` (strings, or objects whose repr and str are checked)"
    for t in texts:
        for text in (t, repr(t)) if isinstance(t, str) else (str(t), repr(t)):
            assert not any(s in text for s in secrets), f"a secret shows in {text!r}"


async def works(r:Remote, **kw):
    "A kernel on `r`'s server, started with manager options `kw`, runs code through a client on its websocket"
    km = await r.kernel(**kw)
    kc = await r.client(km)
    fut = ask(kc, '6*7')
    check(await fut, fut, 42)
    return km, kc


def tls(pki, client_ca:bool=False) -> tuple[str,...]:
    "The command-line options of a jupyter server with `pki`'s server certificate (asking for a client's with `client_ca`)"
    args = (f'--ServerApp.certfile={pki}/server.pem', f'--ServerApp.keyfile={pki}/server.key')
    return args + ((f'--ServerApp.client_ca={pki}/ca.pem',) if client_ca else ())


async def test_tls_with_a_private_ca(pki, served, caplog):
    """A server whose certificate comes from a CA of the test's own: works with ca_certs (REST and wss); without it,
    REST and the websocket both fail with ServerTLSError saying what to pass; validate_cert=False works too"""
    r = await served(LocalServer(args=tls(pki), scheme='https', ca_certs=f'{pki}/ca.pem'))
    km, kc = await works(r)
    assert kc.ws.request.url.startswith('wss://')
    with pytest.raises(ServerTLSError, match=r'certificate verify failed .*pass ca_certs=') as e:
        await RemoteKernelManager(r.srv.url, r.srv.token).start_kernel()
    untrusted = RemoteKernelManager(r.srv.url, r.srv.token, kernel_id=km.kernel_id).client()
    with pytest.raises(ServerTLSError, match='pass ca_certs=') as ws: await untrusted.start_channels()
    await works(r, ca_certs=None, validate_cert=False)
    secrets_absent([r.srv.token], e.value, ws.value, *(rec.getMessage() for rec in caplog.records))


async def test_mutual_tls(pki, served):
    "A server that asks for a client certificate (ServerApp.client_ca): works with one; without, ServerTLSError says to pass it"
    client = dict(client_cert=f'{pki}/client.pem', client_key=f'{pki}/client.key')
    r = await served(LocalServer(args=tls(pki, client_ca=True), scheme='https', ca_certs=f'{pki}/ca.pem', **client))
    km, kc = await works(r)
    with pytest.raises(ServerTLSError, match='pass client_cert= and client_key='):
        await RemoteKernelManager(r.srv.url, r.srv.token, ca_certs=f'{pki}/ca.pem').start_kernel()
    alone = RemoteKernelManager(r.srv.url, r.srv.token, ca_certs=f'{pki}/ca.pem', kernel_id=km.kernel_id).client()
    with pytest.raises(ServerTLSError, match='client certificate'): await alone.start_channels()


async def test_no_token(served):
    """A server without a token (common in containers) refuses a POST without the XSRF handshake; the client takes the
    `_xsrf` cookie and sends X-XSRFToken on REST and the websocket: start, run, interrupt, restart, delete all work"""
    r = await served(LocalServer(token=''))
    bare = Server(r.srv.url)
    bare.logged_in = True # skip the handshake, as a client without one does
    with pytest.raises(ServerAuthError, match="_xsrf"): await call(bare, '/api/kernels', 'POST', {})
    km, kc = await works(r)
    assert '_xsrf' in km.server.cookies and 'X-XSRFToken' in kc.ws.request.headers
    await km.interrupt_kernel()
    await km.restart_kernel()
    fut = ask(kc, '1+1')
    check(await fut, fut, 2)


async def test_password(served, caplog):
    "A server with a password: the client logs in once with password=, keeps the cookie; a wrong or no password is refused by name"
    caplog.set_level(logging.DEBUG)
    r = await served(LocalServer(token='', args=(f'--PasswordIdentityProvider.hashed_password={passwd("s3cret-pw")}',),
                                 password='s3cret-pw'))
    km, kc = await works(r)
    assert any(name.startswith('username-') for name in km.server.cookies)
    errors = []
    for pw, match in [('wrong-pw', 'refused the password'), (None, 'no token or password was given')]:
        with pytest.raises(ServerAuthError, match=match) as e: await RemoteKernelManager(r.srv.url, password=pw).start_kernel()
        errors.append(e.value)
    secrets_absent(['s3cret-pw', 'wrong-pw'], *errors, km, kc, kc.ws, km.server, *(rec.getMessage() for rec in caplog.records))


async def test_urls_as_pasted_and_bearer(served, caplog):
    """URLs pasted from a browser or the server's log (…/lab?token=…, …/tree?token=…) work, the token only ever in a
    header; Bearer works as token does; a wrong token in a URL is refused by name while 50 requests of another client
    are in flight, which all get their replies; no token in any captured text"""
    caplog.set_level(logging.DEBUG)
    r = await served(LocalServer())
    tok = r.srv.token
    texts = []
    for url in (f'{r.srv.url}/lab?token={tok}', f'{r.srv.url}/tree/some/dir?token={tok}', f'{r.srv.url}/lab/tree/a.ipynb?token={tok}'):
        km = RemoteKernelManager(url)
        r.kms.append(km)
        await km.start_kernel()
        kc = km.client()
        r.clients.append(kc)
        await kc.start_channels()
        fut = ask(kc, '6*7')
        check(await fut, fut, 42)
        texts += [km, kc, kc.ws, km.server, kc.ws.request.url, km.server.url, km.server.ws_url]
    km, kc = await works(r, auth_scheme='Bearer')
    futs = [ask(kc, f'{i}*{i}') for i in range(50)] # in flight while a wrong token is refused
    with pytest.raises(ServerAuthError, match='HTTP 403') as e: await RemoteKernelManager(f'{r.srv.url}/lab?token=not-{tok}').start_kernel()
    for i, (fut, reply) in enumerate(zip(futs, await asyncio.gather(*futs))): check(reply, fut, i * i)
    secrets_absent([tok], *texts, e.value, *(rec.getMessage() for rec in caplog.records))


async def test_launching_as_gateways_expect(served, tmp_path):
    """On a Kernel Gateway, the call's and the process's KERNEL_* variables reach the kernel, `cwd` as
    KERNEL_WORKING_DIR; on a Jupyter Server, `cwd` is the kernel's `path`; kernel_name=None is the server's default spec"""
    gw = await served(LocalServer('gateway'))
    os.environ['KERNEL_FROM_PROCESS'] = 'p'
    try: km = await gw.kernel(launch=dict(env={'KERNEL_FROM_CALL': 'c', 'NOT_SENT': 'x'}, cwd='/some/dir'))
    finally: del os.environ['KERNEL_FROM_PROCESS']
    kc = await gw.client(km)
    fut = ask(kc, "[os.environ.get(k) for k in ('KERNEL_FROM_PROCESS', 'KERNEL_FROM_CALL', 'KERNEL_WORKING_DIR', 'NOT_SENT')] if (os := __import__('os')) else 0")
    check(await fut, fut, ['p', 'c', '/some/dir', None])
    js = await served(LocalServer())
    os.makedirs(os.path.join(js.srv.dir.name, 'work', 'sub'))
    km = await js.kernel(launch=dict(cwd='work/sub'))
    assert km.kernel_name == 'python3' # the server's default
    kc = await js.client(km)
    fut = ask(kc, "__import__('os').getcwd()")
    check(await fut, fut, os.path.realpath(os.path.join(js.srv.dir.name, 'work', 'sub')))


async def test_refusals_say_what_the_server_said(served):
    "A URL without the server's base path is NoAPIError; a launch the server fails carries its message"
    srv = LocalServer(args=('--ServerApp.base_url=/base/',))
    srv.url += '/base'
    r = await served(srv)
    without = srv.url.removesuffix('/base')
    with pytest.raises(NoAPIError, match='check its base path'): await RemoteKernelManager(without, srv.token).start_kernel()
    with pytest.raises(ServerError, match=r'HTTP 500 \(the server says: Unhandled error\)'):
        await RemoteKernelManager(srv.url, srv.token, kernel_name='no-such-spec').start_kernel()
    await works(r)



class Proxy(Relay):
    """A reverse proxy of the test's own in front of the server at `port`, which reads the head of each request (one a
    connection: tornado's client does not keep REST connections alive): it answers 403 without the headers of
    `demand`, and 401 without the HTTP basic auth `basic`; it answers each (method, path pattern, status) of `answers`
    once, to the first request that matches, instead of the server; it holds the server's answer to a launch for
    `delay` s; it cuts connections quiet for `idle` s; `silence()` stops forwarding without closing (half-open); with
    `sticky`, it sets a cookie on each answer and refuses a websocket upgrade without it, as a load balancer does"""
    def __init__(self, port:int, demand:dict[str,str]|None=None, basic:tuple[str,str]|None=None,
                 answers:list[tuple[str,str,int]]=(), delay:float=0, idle:float|None=None, sticky:bool=False):
        super().__init__(port)
        self.demand, self.basic, self.answers, self.delay, self.idle = demand or {}, basic, list(answers), delay, idle
        self.sticky = sticky
        self.answered = asyncio.Event() # every one of `answers` was given
        self.speaking = asyncio.Event()
        self.speaking.set()
        self.cuts = 0 # connections cut for idleness

    @property
    def url(self) -> str: return f'http://127.0.0.1:{self.local_port}'

    def silence(self): self.speaking.clear()

    def _refusal(self, method:str, path:str, headers:dict[str,str]) -> tuple[int,str]|None:
        "The status and reason the proxy answers instead of the server, if any"
        if any(headers.get(k.lower()) != v for k, v in self.demand.items()): return 403, f"the proxy wants {', '.join(self.demand)}"
        if self.basic and headers.get('authorization') != 'Basic ' + base64.b64encode(':'.join(self.basic).encode()).decode():
            return 401, "the proxy wants HTTP basic auth"
        if self.sticky and path.split('?')[0].endswith('/channels') and 'lb=node-1' not in headers.get('cookie', ''):
            return 403, "the load balancer wants its cookie"
        for i, (m, pattern, status) in enumerate(self.answers):
            if m == method and re.fullmatch(pattern, path.split('?')[0]):
                del self.answers[i]
                if not self.answers: self.answered.set()
                return status, f"the proxy answers {status}"

    async def _relay(self, cr, cw):
        try: head = await cr.readuntil(b'\r\n\r\n')
        except (asyncio.IncompleteReadError, ConnectionError): return cw.transport.abort()
        line, *fields = head.decode('latin-1').split('\r\n')
        method, path = line.split()[:2]
        headers = {k.strip().lower(): v.strip() for k, _, v in (f.partition(':') for f in fields if f)}
        if (refusal := self._refusal(method, path, headers)) is not None:
            body = json.dumps({'reason': refusal[1], 'message': ''}).encode()
            extra = 'WWW-Authenticate: Basic realm="proxy"\r\n' if refusal[0] == 401 else ''
            cw.write(f'HTTP/1.1 {refusal[0]} Refused\r\nContent-Type: application/json\r\n{extra}Content-Length: '
                     f'{len(body)}\r\nConnection: close\r\n\r\n'.encode() + body)
            await cw.drain()
            return cw.close()
        kr, kw = await asyncio.open_connection('127.0.0.1', self.port)
        kw.write(head)
        heard = [time.monotonic()]
        launch = method == 'POST' and path.split('?')[0].endswith('/api/kernels')
        pipes = [asyncio.ensure_future(self._forward(cr, kw, heard)),
                 asyncio.ensure_future(self._forward(kr, cw, heard, self.delay if launch else 0, self.sticky))]
        if self.idle: pipes.append(asyncio.ensure_future(self._cut_idle(heard)))
        self.writers |= {cw, kw}
        self.tasks |= set(pipes)
        await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        for t in pipes: t.cancel()
        for w in (cw, kw): w.transport.abort()
        self.writers -= {cw, kw}
        self.tasks -= set(pipes)

    async def _forward(self, r, w, heard:list[float], delay:float=0, cookie:bool=False):
        "Pass what `r` reads to `w`, after `delay` s, while the proxy speaks; with `cookie`, set the proxy's in the answer's head"
        while data := await r.read(65536):
            heard[0] = time.monotonic()
            if delay: await asyncio.sleep(delay)
            if cookie: data = data.replace(b'\r\n', b'\r\nSet-Cookie: lb=node-1; Path=/\r\n', 1)
            delay, cookie = 0, False
            await self.speaking.wait()
            w.write(data)
            await w.drain()

    async def _cut_idle(self, heard:list[float]):
        "Return (ending the connection) once nothing has passed for `idle` s"
        while (quiet := time.monotonic() - heard[0]) < self.idle: await asyncio.sleep(self.idle - quiet)
        self.cuts += 1


async def proxied(r:Remote, proxy:Proxy, km:RemoteKernelManager|None=None, **options):
    "A client, through `proxy`, of kernel `km` of `r`'s server (a new one if None), made with manager `options` and client traits"
    km = km or await r.kernel()
    traits = {k: options.pop(k) for k in list(options) if k in ('ping_interval', 'ping_timeout', 'liveness_interval', 'poke_after')}
    kc = RemoteKernelManager(proxy.url, r.srv.token, kernel_id=km.kernel_id, **options).client(**traits)
    r.clients.append(kc)
    await kc.start_channels()
    return km, kc


async def test_a_proxy_with_a_header_and_basic_auth(served, monkeypatch, caplog):
    """A proxy that demands a header of its own: refused by name, with the proxy's reason, without it; works with
    headers= or JUPYTER_GATEWAY_HEADERS (REST and websocket). A proxy that asks for HTTP basic auth in front of a
    server without a token: http_user/http_pwd (or user:password in the URL) work, and no password shows"""
    caplog.set_level(logging.DEBUG)
    r = await served(LocalServer())
    async with Proxy(r.srv.port, demand={'X-Proxy-Key': 'k1'}) as proxy:
        with pytest.raises(ServerAuthError, match='the server says: the proxy wants X-Proxy-Key'):
            await RemoteKernelManager(proxy.url, r.srv.token).start_kernel()
        await proxied(r, proxy, headers={'X-Proxy-Key': 'k1'})
        monkeypatch.setenv('JUPYTER_GATEWAY_HEADERS', '{"X-Proxy-Key": "k1"}')
        km, kc = await proxied(r, proxy)
        fut = ask(kc, '6*7')
        check(await fut, fut, 42)
    open_ = await served(LocalServer(token=''))
    async with Proxy(open_.srv.port, basic=('ann', 'pw-s3cret')) as proxy:
        with pytest.raises(ServerAuthError, match='HTTP 401'): await RemoteKernelManager(proxy.url).start_kernel()
        km, kc = await proxied(open_, proxy, http_user='ann', http_pwd='pw-s3cret')
        inline = RemoteKernelManager(f'http://ann:pw-s3cret@127.0.0.1:{proxy.local_port}/lab', kernel_id=km.kernel_id)
        assert await inline.is_alive()
        fut = ask(kc, '6*7')
        check(await fut, fut, 42)
        secrets_absent(['pw-s3cret'], km, kc, kc.ws, inline, inline.server.url, *(rec.getMessage() for rec in caplog.records))


async def test_liveness_cannot_switch_itself_off(served, tmp_path):
    """A proxy answers the liveness poll 503, then a hub's 424, then 502: each is a passing failure, the client stays
    open; then the kernel is deleted on the server, and the waiter fails within 5 s, saying the kernel is gone (it
    ignores SIGINT, `UNINTERRUPTIBLE`: the server interrupts the kernel before it deletes it)"""
    r = await served(LocalServer())
    poll = r'/api/kernels/[-0-9a-f]+'
    async with Proxy(r.srv.port, answers=[('GET', poll, 503), ('GET', poll, 424), ('GET', poll, 502)]) as proxy:
        km, kc = await proxied(r, proxy, liveness_interval=0.2)
        waiting = kc.execute(UNINTERRUPTIBLE, reply=True, timeout=None)
        await running(kc, waiting, 'stream')
        await asyncio.wait_for(proxy.answered.wait(), 10)
        fut = kc.request('kernel_info', channel='control')
        assert (await fut)['msg_type'] == 'kernel_info_reply' and not waiting.done()
        await RemoteKernelManager(r.srv.url, r.srv.token, kernel_id=km.kernel_id).shutdown_kernel()
        with pytest.raises(KernelDiedError, match='is gone from .*deleted, or culled'): await asyncio.wait_for(waiting, 5)


async def test_a_hub_whose_user_server_is_not_running(served):
    "A hub answering 424 (or redirecting) for a user's server that is not running: ServerNotRunningError says so"
    r = await served(LocalServer())
    async with Proxy(r.srv.port, answers=[('POST', r'/api/kernels', 424), ('POST', r'/api/kernels', 302)]) as proxy:
        for code in (424, 302):
            with pytest.raises(ServerNotRunningError, match=f"HTTP {code}: the user's server is not running"):
                await RemoteKernelManager(proxy.url, r.srv.token).start_kernel()


async def test_idle_connections_cut_by_a_proxy(served):
    """A proxy cuts connections quiet for 3 s: a client pinging every second keeps its websocket through 10 s of
    quiet; one without pings is cut and reconnects; both requests, running through the quiet, get their replies"""
    r = await served(LocalServer())
    async with Proxy(r.srv.port, idle=3) as proxy:
        # no pokes: a client pokes a kernel that is silent with requests in flight, which would be traffic too
        _, pinging = await proxied(r, proxy, ping_interval=1, poke_after=None)
        _, quiet = await proxied(r, proxy, ping_interval=None, poke_after=None)
        conns = pinging.ws.conn, quiet.ws.conn
        futs = [ask(kc, "__import__('time').sleep(10) or 42", timeout=None) for kc in (pinging, quiet)]
        for fut in futs: check(await fut, fut, 42)
        assert pinging.ws.conn is conns[0] and quiet.ws.conn is not conns[1] and proxy.cuts >= 1


async def test_a_half_open_connection(served):
    """The proxy goes silent without closing (a NAT or proxy gone): the client's pings find it within ping_interval +
    ping_timeout, it reconnects once the path is back, and the request in flight gets its reply"""
    r = await served(LocalServer())
    async with Proxy(r.srv.port) as proxy:
        _, kc = await proxied(r, proxy, ping_interval=1, ping_timeout=1)
        fut = ask(kc, "__import__('time').sleep(3) or 42", timeout=None)
        await running(kc, fut)
        dropped = kc.ws.dropped
        proxy.silence()
        await asyncio.wait_for(dropped, 1 + 1 + 1) # ping_interval + ping_timeout, and a second for the loop
        proxy.cut() # the silent connections go, as a dead NAT's do
        proxy.speaking.set()
        check(await fut, fut, 42)


async def test_a_launch_slower_than_the_timeout(served, monkeypatch):
    """A launch whose answer comes after `launch_timeout` (the proxy holds it, as a gateway launching a pod does):
    KernelLaunchTimeoutError says so, and the kernel the server made is deleted: no orphan"""
    r = await served(LocalServer())
    monkeypatch.setenv('KERNEL_LAUNCH_TIMEOUT', '0')
    async with Proxy(r.srv.port, delay=3) as proxy:
        km = RemoteKernelManager(proxy.url, r.srv.token, request_timeout=1, launch_timeout_pad=0.5)
        assert km.server.launch_timeout == 1
        with pytest.raises(KernelLaunchTimeoutError, match='timed out after 1 s; the server made it anyway, and it was deleted'):
            await km.start_kernel()
    assert await call(Server(r.srv.url, r.srv.token), '/api/kernels') == []


async def test_cookies_and_token_renewal(served):
    """A load balancer that sets a stickiness cookie and refuses a websocket without it: accept_cookies=True carries
    the cookie from REST to the websocket; without it, the websocket is refused by name. A token_renewer is asked
    for the token before each request, REST and websocket"""
    r = await served(LocalServer())
    km = await r.kernel()
    async with Proxy(r.srv.port, sticky=True) as proxy:
        forgetful = RemoteKernelManager(proxy.url, r.srv.token, kernel_id=km.kernel_id)
        await forgetful.start_kernel() # attaching asks REST first
        with pytest.raises(ServerAuthError, match='the load balancer wants its cookie'): await forgetful.client().start_channels()
        sticky = RemoteKernelManager(proxy.url, r.srv.token, kernel_id=km.kernel_id, accept_cookies=True)
        await sticky.start_kernel()
        assert sticky.server.cookies['lb'].value == 'node-1'
        kc = sticky.client()
        r.clients.append(kc)
        await kc.start_channels()
        fut = ask(kc, '6*7')
        check(await fut, fut, 42)
    asked = []
    renewed = RemoteKernelManager(r.srv.url, 'expired', token_renewer=lambda: asked.append(1) or r.srv.token, kernel_id=km.kernel_id)
    await renewed.start_kernel()
    kc = renewed.client()
    r.clients.append(kc)
    await kc.start_channels()
    assert len(asked) >= 2 and kc.ws.conn is not None


def test_the_blocking_client_on_remote_kernels(aio_loop):
    """ConBlockingKernelClient.remote: a kernel it starts on a server (URL as pasted), requests from 8 threads at once
    each answered; another attaches by kernel_id with the same options and leaves the kernel running; the owner deletes it"""
    from concurrent.futures import ThreadPoolExecutor
    from conkernelclient.blocking import ConBlockingKernelClient
    srv = LocalServer(token='')
    aio_loop.run_until_complete(srv.__aenter__())
    try:
        with ConBlockingKernelClient.remote(srv.url + '/lab', cwd='.') as bkc:
            assert bkc.owns_kernel
            value = lambda i: bkc.execute(f'{i}', reply=True, user_expressions={'v': f'{i}*{i}'})['content']['user_expressions']['v']['data']['text/plain']
            with ThreadPoolExecutor(8) as pool: assert list(pool.map(value, range(40))) == [str(i * i) for i in range(40)]
            with ConBlockingKernelClient.remote(srv.url, kernel_id=bkc.kernel_id) as other:
                assert not other.owns_kernel and other.execute('6*7', reply=True)['content']['status'] == 'ok'
            assert aio_loop.run_until_complete(RemoteKernelManager(srv.url, kernel_id=bkc.kernel_id).is_alive())
        assert aio_loop.run_until_complete(call(Server(srv.url), '/api/kernels')) == []
    finally: aio_loop.run_until_complete(srv.__aexit__())


def test_the_command_on_a_mutual_tls_server(aio_loop, pki):
    """`python -m conkernelclient --server URL --ca-certs --client-cert --client-key --header --env --cwd`, the token
    from the environment: runs on a server that asks for a client certificate; --insecure trusts any certificate"""
    import subprocess, sys
    client = dict(client_cert=f'{pki}/client.pem', client_key=f'{pki}/client.key')
    srv = LocalServer(args=tls(pki, client_ca=True), scheme='https', ca_certs=f'{pki}/ca.pem', **client)
    aio_loop.run_until_complete(srv.__aenter__())
    try:
        env = dict(os.environ, JUPYTER_TOKEN=srv.token)
        base = [sys.executable, '-m', 'conkernelclient', '--server', f'{srv.url}/lab', '--client-cert', client['client_cert'],
                '--client-key', client['client_key'], '--header', 'X-Test: 1', '--env', 'KERNEL_X=1', '--cwd', '.']
        for opts in (['--ca-certs', f'{pki}/ca.pem'], ['--insecure']):
            done = subprocess.run(base + opts + ['print(6*7)'], env=env, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0 and '42' in done.stdout, done.stderr
        done = subprocess.run(base + ['print(6*7)'], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and 'pass ca_certs=' in done.stderr and srv.token not in done.stderr
        assert aio_loop.run_until_complete(call(Server(srv.url, srv.token, **srv.options), '/api/kernels')) == []
    finally: aio_loop.run_until_complete(srv.__aexit__())


def _proxy_command() -> str|None:
    "configurable-http-proxy: the one .ci/run installs (.ci-node), else one on PATH, else None"
    import shutil
    local = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '.ci-node', 'node_modules', '.bin', 'configurable-http-proxy')
    return local if os.path.exists(local) else shutil.which('configurable-http-proxy')


class Hub:
    """`async with Hub(tmp) as hub:` a JupyterHub on loopback (its proxy, configurable-http-proxy, from npm), with the
    SimpleLocalProcessSpawner and DummyAuthenticator, user `ann`, and service `runner` whose token (`hub.service_token`)
    has `access:servers`; stopped (with its proxy and user servers) on exit"""
    def __init__(self, root):
        from conkernelclient.server import _free_port
        self.root, self.port, self.api_port, self.hub_port = root, _free_port(), _free_port(), _free_port()
        self.url, self.service_token, self.proc = f'http://127.0.0.1:{self.port}', 'service-' + os.urandom(8).hex(), None

    def config(self) -> str:
        import sys
        return f"""c = get_config()
c.JupyterHub.ip, c.JupyterHub.port, c.JupyterHub.hub_ip, c.JupyterHub.hub_port = '127.0.0.1', {self.port}, '127.0.0.1', {self.hub_port}
c.ConfigurableHTTPProxy.api_url = 'http://127.0.0.1:{self.api_port}'
c.ConfigurableHTTPProxy.command = [{_proxy_command()!r}]
c.JupyterHub.authenticator_class, c.JupyterHub.spawner_class = 'dummy', 'simple'
c.Spawner.cmd, c.Spawner.args = [{sys.executable!r}, '-m', 'jupyterhub.singleuser'], ['--ServerApp.allow_root=True']
c.Authenticator.allowed_users = {{'ann'}}
c.JupyterHub.db_url, c.JupyterHub.cookie_secret = 'sqlite:///:memory:', b'0' * 32
c.JupyterHub.services = [{{'name': 'runner', 'api_token': {self.service_token!r}}}]
c.JupyterHub.load_roles = [{{'name': 'runner', 'scopes': ['access:servers', 'servers', 'tokens', 'read:users'], 'services': ['runner']}}]
"""

    async def __aenter__(self):
        import subprocess, sys
        (self.root/'jupyterhub_config.py').write_text(self.config())
        self.log = open(self.root/'log', 'w+')
        self.proc = subprocess.Popen([sys.executable, '-m', 'jupyterhub', '-f', 'jupyterhub_config.py'], cwd=self.root,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.api = Server(self.url, self.service_token)
        deadline = time.monotonic() + 60
        while True:
            try: return await call(self.api, '/hub/api/') and self
            except (ServerUnreachableError, ServerError): # its proxy answers 404 until the hub has added its routes
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.log.seek(0)
                    said = self.log.read()[-2000:]
                    await self.__aexit__()
                    raise ServerUnreachableError(f"the hub did not start: {said}") from None
            await asyncio.sleep(0.1)

    async def __aexit__(self, *exc):
        import psutil
        # the hub starts its proxy and each user's server in sessions of their own: a hub that does not stop them in
        # time leaves them to init, out of reach of its process group and of conftest's check of our children
        try: spawned = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess: spawned = []
        if self.proc.poll() is None:
            self.proc.terminate()
            for _ in range(200):
                if self.proc.poll() is not None: break
                await asyncio.sleep(0.05)
            else: self.proc.kill()
        self.proc.wait()
        for p in spawned:
            try: p.kill()
            except psutil.NoSuchProcess: pass
        psutil.wait_procs(spawned, timeout=10)
        self.log.close()

    async def start(self, user:str='ann'):
        "Start `user`'s server and wait until the hub says it is ready"
        await call(self.api, f'/hub/api/users/{user}/server', 'POST')
        while not (await call(self.api, f'/hub/api/users/{user}'))['servers'].get('', {}).get('ready'): await asyncio.sleep(0.1)

    async def token(self, user:str='ann') -> str:
        "A new API token of `user`'s own"
        return (await call(self.api, f'/hub/api/users/{user}/tokens', 'POST', {'note': 'test'}))['token']


def _hub_missing() -> str|None:
    "Why the JupyterHub tests cannot run here, or None"
    try: import jupyterhub # noqa: F401
    except ImportError: return "jupyterhub is not installed (the dev extra has it)"
    if _proxy_command() is None: return "no configurable-http-proxy: npm install --prefix .ci-node configurable-http-proxy (.ci/run does)"


@pytest.fixture
def hub(aio_loop, tmp_path):
    "A started JupyterHub with user ann's server running"
    if (why := _hub_missing()) is not None: pytest.skip(why)
    h = Hub(tmp_path)
    aio_loop.run_until_complete(h.__aenter__())
    try:
        aio_loop.run_until_complete(h.start())
        yield h
    finally: aio_loop.run_until_complete(h.__aexit__())


async def test_a_hub_user_server(hub, caplog):
    """JupyterHub: a user's token and a service token with access:servers both reach the user's server at
    /user/ann/ (URL as pasted, …/lab?token=…); 100 requests in flight on one client, each answered; no token in any
    captured text"""
    caplog.set_level(logging.DEBUG)
    user = await hub.token()
    texts = []
    for tok in (user, hub.service_token):
        km = RemoteKernelManager(f'{hub.url}/user/ann/lab?token={tok}')
        await km.start_kernel()
        kc = await km.client().start_channels()
        try:
            futs = [ask(kc, f'{i}*{i}') for i in range(100)]
            for i, (fut, reply) in enumerate(zip(futs, await asyncio.gather(*futs))): check(reply, fut, i * i)
            texts += [km, kc, kc.ws, km.server.url]
        finally:
            await kc.astop_channels()
            await km.shutdown_kernel()
    secrets_absent([user, hub.service_token], *texts, *(rec.getMessage() for rec in caplog.records))


async def test_the_hub_stops_the_user_server(hub):
    """The hub stops the user's server with requests in flight: every waiter fails with KernelDiedError within 5 s,
    saying the user's server is gone; a new kernel is refused with ServerNotRunningError. The running request ignores
    SIGINT (`UNINTERRUPTIBLE`): the stopping server interrupts its kernels first, and may relay what they answer"""
    tok = await hub.token()
    km = RemoteKernelManager(f'{hub.url}/user/ann/', tok)
    await km.start_kernel()
    kc = await km.client().start_channels()
    try:
        futs = [kc.execute(UNINTERRUPTIBLE, reply=True, timeout=None), ask(kc, '1', timeout=None)]
        await running(kc, futs[0], 'stream')
        await call(hub.api, '/hub/api/users/ann/server', 'DELETE')
        res = await asyncio.wait_for(asyncio.gather(*futs, return_exceptions=True), 5)
        assert [type(r) for r in res] == [KernelDiedError] * 2 and "the user's server" in str(res[0]), res
        with pytest.raises(ServerNotRunningError, match="the user's server is not running"):
            await RemoteKernelManager(f'{hub.url}/user/ann/', tok).start_kernel()
    finally: await kc.astop_channels()


EG_PINS = ('jupyter_enterprise_gateway>=3.3,<3.4', 'jupyter_client<7', 'pyzmq<25', 'ipykernel<7')


def _eg_venv() -> str:
    """The virtualenv Enterprise Gateway runs from (3.3 pins jupyter_server 1.x, jupyter_client 6 and ipykernel 6):
    .ci-eg in the repository, made (with pip, from the package index) if it is not there yet"""
    import subprocess, sys
    venv = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '.ci-eg')
    if not os.path.exists(os.path.join(venv, 'bin', 'jupyter-enterprisegateway')):
        subprocess.run([sys.executable, '-m', 'venv', venv], check=True)
        subprocess.run([os.path.join(venv, 'bin', 'pip'), 'install', '-q', *EG_PINS], check=True, timeout=600)
    return venv


class EnterpriseGateway(LocalServer):
    "A stock Enterprise Gateway (its local process proxy) on loopback, from `venv`, whose bin is first on its PATH (its kernel spec runs `python`)"
    def __init__(self, venv:str, **kw):
        super().__init__('gateway', **kw)
        self.venv, self.kind = venv, 'enterprise gateway'

    def command(self, root:str) -> list[str]:
        opts = dict(ip='127.0.0.1', port=self.port, port_retries=0, auth_token=self.token)
        return ['env', f"PATH={self.venv}/bin:{os.environ['PATH']}", f'{self.venv}/bin/jupyter-enterprisegateway',
                *(f'--EnterpriseGatewayApp.{k}={v}' for k, v in opts.items()), *self.args]


@pytest.fixture(scope='module')
def enterprise(aio_loop):
    "An Enterprise Gateway for the module's tests"
    try: venv = _eg_venv()
    except Exception as e: pytest.skip(f"no virtualenv for Enterprise Gateway: {e}")
    srv = EnterpriseGateway(venv, args=('--EnterpriseGatewayApp.list_kernels=True',)) # so a test sees no kernel is left
    aio_loop.run_until_complete(srv.__aenter__())
    yield srv
    aio_loop.run_until_complete(srv.__aexit__())


async def test_enterprise_gateway(enterprise, monkeypatch):
    """A stock Enterprise Gateway, run as root: a start without KERNEL_USERNAME is refused with EG's own reason; with
    it (and KERNEL_LAUNCH_TIMEOUT from the environment, which also sets how long the client waits) the kernel starts,
    sees both, and answers 200 concurrent requests, each to its caller"""
    r = Remote(enterprise)
    try:
        monkeypatch.delenv('KERNEL_USERNAME', raising=False)
        with pytest.raises(ServerAuthError, match="the server says: User '.*' is not authorized .*Ensure KERNEL_USERNAME is set"):
            await RemoteKernelManager(enterprise.url, enterprise.token).start_kernel()
        monkeypatch.setenv('KERNEL_LAUNCH_TIMEOUT', '50')
        km = await r.kernel(launch=dict(env={'KERNEL_USERNAME': 'ann'}))
        assert km.server.launch_timeout == 52
        kc = await r.client(km)
        fut = ask(kc, "[__import__('os').environ.get(k) for k in ('KERNEL_USERNAME', 'KERNEL_LAUNCH_TIMEOUT')]")
        check(await fut, fut, ['ann', '50'])
        futs = [ask(kc, f'{i}*{i}') for i in range(200)]
        for i, (fut, reply) in enumerate(zip(futs, await asyncio.gather(*futs))): check(reply, fut, i * i)
    finally: await r.close()


# ---- papermill on a hub and on Enterprise Gateway (issue 21): the run's kernel started there and deleted after


def papermill_on(tmp_path, url:str, token:str, **env:str) -> list:
    """Run a parameterized notebook with the `papermill` command and the engine on the server at `url` (JUPYTER_GATEWAY_URL,
    the token in JUPYTER_GATEWAY_AUTH_TOKEN, `env` on top); its saved code cells, once no token was in its output"""
    import nbformat, subprocess, sys
    nb = nbformat.v4.new_notebook(metadata={'kernelspec': {'name': 'python3', 'language': 'python', 'display_name': 'Python 3'}})
    nb.cells = [nbformat.v4.new_code_cell('alpha = 0.1', metadata={'tags': ['parameters']}), nbformat.v4.new_code_cell('print(alpha * 2)')]
    nbformat.write(nb, tmp_path/'in.ipynb')
    run_env = {k: v for k, v in os.environ.items() if not k.startswith('JUPYTER_GATEWAY_')}
    run_env |= {'JUPYTER_GATEWAY_URL': url, 'JUPYTER_GATEWAY_AUTH_TOKEN': token, **env}
    r = subprocess.run([sys.executable, '-m', 'papermill', '--engine', 'conkernelclient', 'in.ipynb', 'out.ipynb', '-p', 'alpha', '0.6'],
                       cwd=tmp_path, env=run_env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    secrets_absent([token], r.stdout, r.stderr)
    return [c for c in nbformat.read(tmp_path/'out.ipynb', 4).cells if c.cell_type == 'code']


def test_papermill_on_a_hub_user_server(hub, aio_loop, tmp_path):
    "papermill with the engine runs a notebook on a kernel of ann's server behind the hub, with her token, and deletes it"
    user = aio_loop.run_until_complete(hub.token())
    cells = papermill_on(tmp_path, f'{hub.url}/user/ann/', user)
    assert cells[-1].outputs[0]['text'] == '1.2\n' and cells[-1].execution_count is not None
    assert aio_loop.run_until_complete(call(Server(f'{hub.url}/user/ann/', user), '/api/kernels')) == []


def test_papermill_on_enterprise_gateway(enterprise, aio_loop, tmp_path):
    "papermill with the engine runs a notebook on Enterprise Gateway, KERNEL_USERNAME from the environment, and deletes its kernel"
    cells = papermill_on(tmp_path, enterprise.url, enterprise.token, KERNEL_USERNAME='ann')
    assert cells[-1].outputs[0]['text'] == '1.2\n' and cells[-1].execution_count is not None
    assert aio_loop.run_until_complete(call(Server(enterprise.url, enterprise.token), '/api/kernels')) == []
