"""Remote kernels in the deployments people run (issue 18), each a real server on loopback: a certificate from a CA
of the test's own, and mutual TLS; no token (XSRF) and a password (cookie session); URLs as pasted; launching as
gateways expect; and a reverse proxy of the test's own in front of a server (a header it demands, HTTP basic auth,
passing failures of the liveness poll, idle connections cut, a half-open connection, a slow launch). No token or
password shows in any text the tests capture."""
from __future__ import annotations
import asyncio, base64, datetime, ipaddress, logging, os, time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from jupyter_server.auth import passwd

from conkernelclient import KernelDiedError
from conkernelclient.remote import (KernelLaunchTimeoutError, LocalServer, NoAPIError, RemoteKernelManager, Server,
                                    ServerAuthError, ServerError, ServerNotRunningError, ServerTLSError, call)
from kit import Relay, Remote, ask, check

pytestmark = pytest.mark.timeout(120)


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
    assert kc.ws.conn.request.url.startswith('https://') # tornado's form of wss://
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
    assert '_xsrf' in km.server.cookies and 'X-XSRFToken' in kc.ws.conn.request.headers
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
    header; Bearer works as token does; a wrong token in a URL is refused by name; no token in any captured text"""
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
        texts += [km, kc, kc.ws, km.server, kc.ws.conn.request.url, km.server.url, km.server.ws_url]
    await works(r, auth_scheme='Bearer')
    with pytest.raises(ServerAuthError, match='HTTP 403') as e: await RemoteKernelManager(f'{r.srv.url}/lab?token=not-{tok}').start_kernel()
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
