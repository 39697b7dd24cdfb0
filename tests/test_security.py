"""Authentication, TLS and the safe defaults of `dbqueue serve`, against real servers.

In-process servers (``server_factory``) check the behaviour; `dbqueue serve`
child processes check that the command-line flags reach it (token file and
environment, TLS files, the refusal to bind a public address without a token).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import socket
import ssl
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from child_server import ChildServer, serve_refusal
from dbqueue import (
    AsyncClient,
    AsyncGroupClient,
    AuthenticationFailed,
    Client,
    ConnectionLost,
    GroupClient,
    PipelinedClient,
    Server,
)
from dbqueue.errors import ErrorCode
from dbqueue.protocol import (
    HEADER,
    MAGIC,
    CreateQueue,
    Enqueue,
    Error,
    Hello,
    HelloOk,
    ListQueues,
    Members,
    ObjectQueued,
    Op,
    QueueCreated,
    Read,
    decode_response,
    encode,
)
from dbqueue.server import session as session_module
from dbqueue.server.security import MAX_TOKEN_BYTES, server_tls_context
from pki import Pki, make_pki

if TYPE_CHECKING:
    from conftest import RawConnection, ServerThread

# Unique per run, so that finding it in a log cannot be a coincidence.
TOKEN = "tok-" + secrets.token_hex(16)
WRONG_TOKENS = ["", "guess-" + secrets.token_hex(8), TOKEN[:-1], TOKEN + "x", TOKEN.upper()]

Factory = Callable[..., "ServerThread"]


def run(coroutine: Any, timeout: float = 10.0) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, timeout))


def response(connection: RawConnection) -> tuple[int, object]:
    opcode, _, request_id, body = connection.recv_frame()
    return request_id, decode_response(opcode, body)


def round_trip(client: Client, queue: str = "q") -> None:
    client.create(queue)
    id_ = client.send(queue, b"payload")
    message = client.read(queue, visibility_timeout=10.0)
    assert (message.id, message.data) == (id_, b"payload")
    client.confirm(id_)


async def async_round_trip(client: Any, queue: str = "q") -> None:
    await client.create(queue)
    await client.send(queue, b"payload")
    message = await client.read(queue, visibility_timeout=10.0, wait=2.0)
    assert message.data == b"payload"
    await client.confirm(message.id)


# --- authentication ---------------------------------------------------------------------------


@pytest.fixture
def authed(server_factory: Factory) -> ServerThread:
    return server_factory(auth_token=TOKEN.encode())


def test_the_token_opens_every_client_flavour(authed: ServerThread) -> None:
    with Client.connect(authed.address, token=TOKEN) as client:
        round_trip(client, "sync")
        assert client.pipeline().create("p").send("p", b"x").execute(raise_on_error=True)[1] > 0
    with Client.connect(authed.address, token=TOKEN.encode()) as client:  # bytes work too
        round_trip(client, "sync-bytes")
    PipelinedClient.connect(authed.address, token=TOKEN).close()
    group = GroupClient.connect(authed.address, token=TOKEN)  # discovery and members, all with the token
    group.create("group")
    group.send("group", b"g")
    assert group.read("group", visibility_timeout=10.0, wait=1.0).data == b"g"

    async def asynchronous() -> None:
        async with await AsyncClient.connect(authed.address, token=TOKEN) as client:
            await async_round_trip(client, "async")
        group = await AsyncGroupClient.connect(authed.address, token=TOKEN)
        await group.create("async-group")
        await group.send("async-group", b"a")
        assert (await group.read("async-group", visibility_timeout=10.0, wait=1.0)).data == b"a"

    run(asynchronous())


@pytest.mark.parametrize("token", [None, *WRONG_TOKENS], ids=["none", "empty", "guess", "prefix", "longer", "case"])
def test_a_missing_or_wrong_token_is_authentication_failed(authed: ServerThread, token: str | None) -> None:
    with pytest.raises(AuthenticationFailed) as caught:
        Client.connect(authed.address, token=token)
    assert isinstance(caught.value, PermissionError)

    async def asynchronous() -> None:
        with pytest.raises(AuthenticationFailed):
            await AsyncClient.connect(authed.address, token=token)

    run(asynchronous())
    authed.wait_until(lambda: not authed.server.sessions, what="the refused connections to close")


def test_group_client_with_a_wrong_token_is_authentication_failed(authed: ServerThread) -> None:
    with pytest.raises(AuthenticationFailed):
        GroupClient.connect(authed.address, token="wrong")  # one address: discovery asks it first


def test_group_clients_given_a_list_with_a_wrong_token_are_authentication_failed(authed: ServerThread) -> None:
    """Regression: GroupClient._reconnect used to swallow AuthenticationFailed and report ConnectionLost."""
    with pytest.raises(AuthenticationFailed):
        GroupClient.connect([authed.address], token="wrong")

    async def asynchronous() -> None:
        with pytest.raises(AuthenticationFailed):
            await AsyncGroupClient.connect([authed.address], token="wrong")

    run(asynchronous())


REQUESTS_BEFORE_HELLO = {
    "create": (Op.CREATE_QUEUE, CreateQueue("intruder").body(), 0),
    "enqueue": (Op.ENQUEUE, Enqueue("q", b"intruder").body(), 0),
    "read": (Op.READ, Read("q").body(), 0),
    "list-queues": (Op.LIST_QUEUES, ListQueues().body(), 0),
    "members": (Op.MEMBERS, Members().body(), 0),
    "unknown-opcode": (0x7F, b"junk", 0),
    "hello-with-flags": (Op.HELLO, Hello(token=TOKEN.encode()).body(), 1),
    "malformed-hello": (Op.HELLO, b"\x00", 0),
}


@pytest.mark.parametrize("name", list(REQUESTS_BEFORE_HELLO))
def test_any_request_before_a_successful_hello_is_refused_and_the_connection_closed(
    authed: ServerThread, name: str
) -> None:
    with Client.connect(authed.address, token=TOKEN) as owner:
        owner.create("q")
        owner.send("q", b"owned")
    opcode, body, flags = REQUESTS_BEFORE_HELLO[name]
    raw = authed.raw()
    # The refused request, then more pipelined behind it: none of them may take effect.
    raw.send(
        HEADER.pack(MAGIC, opcode, flags, 7, len(body)) + body
        + encode(8, CreateQueue("intruder")) + encode(9, Read("q"))
    )  # fmt: skip
    request_id, refusal = response(raw)
    assert request_id == 7
    assert isinstance(refusal, Error) and refusal.code == ErrorCode.NOT_AUTHENTICATED, refusal
    assert TOKEN not in refusal.message
    assert raw.at_eof(), "the server should close the connection after refusing it"
    assert set(authed.call(lambda: list(authed.server.broker.queues))) == {b"q"}
    with Client.connect(authed.address, token=TOKEN) as owner:
        message = owner.read("q")
        assert message.data == b"owned" and message.deliveries == 1


def test_a_wrong_hello_pipelined_with_requests_closes_before_any_of_them(authed: ServerThread) -> None:
    raw = authed.raw()
    raw.send(encode(1, Hello(token=b"wrong")) + encode(2, CreateQueue("intruder")))
    assert response(raw)[1].code == ErrorCode.NOT_AUTHENTICATED  # type: ignore[attr-defined]
    assert raw.at_eof()
    assert authed.call(lambda: dict(authed.server.broker.queues)) == {}


def test_the_right_hello_pipelined_with_requests_in_one_write(authed: ServerThread) -> None:
    raw = authed.raw()
    raw.send(encode(1, Hello(token=TOKEN.encode())) + encode(2, CreateQueue("q")) + encode(3, Enqueue("q", b"x")))
    assert isinstance(response(raw)[1], HelloOk)
    assert response(raw) == (2, QueueCreated())
    request_id, queued = response(raw)
    assert request_id == 3 and isinstance(queued, ObjectQueued)


def test_the_right_hello_pipelined_with_a_large_message_in_one_write(authed: ServerThread) -> None:
    """The pre-authentication bound applies to the first frame only: what follows a good Hello
    may be as large as the server's message limit."""
    raw = authed.raw()
    payload = bytes(range(256)) * 1024  # 256 KiB
    raw.send(
        encode(1, Hello(token=TOKEN.encode())) + encode(2, CreateQueue("big")) + encode(3, Enqueue("big", payload))
    )
    assert isinstance(response(raw)[1], HelloOk)
    assert response(raw) == (2, QueueCreated())
    assert isinstance(response(raw)[1], ObjectQueued)
    with Client.connect(authed.address, token=TOKEN) as client:
        assert client.read("big").data == payload


def test_a_large_first_frame_is_refused_before_it_is_buffered(authed: ServerThread) -> None:
    raw = authed.raw()
    limit = session_module.PRE_AUTH_MAX_BODY
    frame = encode(7, Enqueue("q", bytes(limit)))
    raw.send(frame[:64])  # the header alone tells: the body is never waited for
    request_id, answer = response(raw)
    assert request_id == 7 and isinstance(answer, Error) and answer.code == ErrorCode.NOT_AUTHENTICATED
    assert str(limit) in answer.message
    assert raw.at_eof()


def test_a_hello_with_a_token_of_the_largest_size_authenticates(server_factory: Factory, tmp_path: Path) -> None:
    token = b"t" * MAX_TOKEN_BYTES
    server = server_factory(auth_token=token)
    with Client.connect(server.address, token=token) as client:
        assert client.list_queues() == []


def test_bad_framing_before_authentication_is_bad_frame(authed: ServerThread) -> None:
    raw = authed.raw()
    raw.send(b"\x00" * 12)
    request_id, answer = response(raw)
    assert isinstance(answer, Error) and answer.code == ErrorCode.BAD_FRAME
    assert raw.at_eof()


def test_serve_refuses_a_token_over_the_limit(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_bytes(b"x" * (MAX_TOKEN_BYTES + 1))
    code, output = serve_refusal("--auth-token-file", str(token_file))
    assert code != 0 and str(MAX_TOKEN_BYTES) in output and "Traceback" not in output


def test_a_hello_cut_in_pieces_still_authenticates(authed: ServerThread) -> None:
    raw = authed.raw()
    frame = encode(1, Hello(token=TOKEN.encode()))
    for i in range(len(frame)):
        raw.send(frame[i : i + 1])
    assert isinstance(response(raw)[1], HelloOk)


def test_a_right_token_with_an_unsupported_version_is_answered_not_crashed(authed: ServerThread) -> None:
    """Regression: Session._admit used to let UnsupportedVersion escape data_received (a loop error, a dropped
    connection) where a server without a token answers Error(UNSUPPORTED_VERSION)."""
    raw = authed.raw()
    raw.send(encode(1, Hello(version=0, token=TOKEN.encode())))
    try:
        request_id, answer = response(raw)
    finally:
        errors = authed.take_errors()
    assert not errors, f"the server's loop saw: {[(e.get('message'), e.get('exception')) for e in errors]}"
    assert request_id == 1 and isinstance(answer, Error) and answer.code == ErrorCode.UNSUPPORTED_VERSION


def test_the_token_is_checked_with_compare_digest(authed: ServerThread, monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison goes through `hmac.compare_digest` (constant time), whatever the length of the guess."""
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((bytes(a), bytes(b)))
        return real(a, b)

    monkeypatch.setattr(session_module.hmac, "compare_digest", spy)
    for token in ("x", TOKEN[:-1] + "?", TOKEN):
        with contextlib.suppress(AuthenticationFailed):
            Client.connect(authed.address, token=token).close()
    assert [sorted(pair) for pair in compared] == [
        sorted((token.encode(), TOKEN.encode())) for token in ("x", TOKEN[:-1] + "?", TOKEN)
    ]


def test_failed_attempts_are_logged_without_the_token(authed: ServerThread, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for token in WRONG_TOKENS:
        with pytest.raises(AuthenticationFailed):
            Client.connect(authed.address, token=token)
    raw = authed.raw()
    raw.send(encode(1, ListQueues()))  # no Hello at all
    response(raw)
    with Client.connect(authed.address, token=TOKEN) as client:
        client.create("q")
    authed.call(lambda: None)
    failures = [r.getMessage() for r in caplog.records if "authentication failed" in r.getMessage()]
    assert len(failures) == len(WRONG_TOKENS) + 1, caplog.text
    assert all("127.0.0.1:" in line for line in failures), failures  # who tried is logged
    logged = caplog.text + "".join(repr(r.args) + repr(r.msg) for r in caplog.records)
    for secret in [TOKEN, *WRONG_TOKENS[1:]]:
        assert secret not in logged, f"a token appeared in the log:\n{caplog.text}"
        assert secret.encode().hex() not in logged


# --- the token from the command line -----------------------------------------------------------


def test_serve_reads_the_token_from_a_file_and_logs_no_token(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")  # surrounding whitespace is stripped
    # With a token, a public address needs no --insecure.
    flags = ["--host", "0.0.0.0", "--auth-token-file", str(token_file), "--log-level", "debug"]
    with ChildServer(tmp_path, *flags) as server:
        with Client.connect(server.address, token=TOKEN) as client:
            round_trip(client)
        for wrong in (None, "wrong"):
            with pytest.raises(AuthenticationFailed):
                Client.connect(server.address, token=wrong)
        server.stop()
    log = server.log_text()
    assert "authentication failed" in log
    assert TOKEN not in log


def test_serve_reads_the_token_from_the_environment_and_the_file_wins(tmp_path: Path) -> None:
    with ChildServer(tmp_path, env={"DBQUEUE_AUTH_TOKEN": TOKEN}) as server:
        with Client.connect(server.address, token=TOKEN) as client:
            round_trip(client)
        with pytest.raises(AuthenticationFailed):
            Client.connect(server.address)
        server.stop()
    token_file = tmp_path / "token"
    token_file.write_text("from-the-file")
    with ChildServer(tmp_path, "--auth-token-file", str(token_file), env={"DBQUEUE_AUTH_TOKEN": TOKEN}) as server:
        Client.connect(server.address, token="from-the-file").close()
        with pytest.raises(AuthenticationFailed):
            Client.connect(server.address, token=TOKEN)
        server.stop()


@pytest.mark.parametrize("source", ["file", "environment"])
def test_serve_refuses_an_empty_token(tmp_path: Path, source: str) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("  \n")
    if source == "file":
        code, output = serve_refusal("--auth-token-file", str(token_file))
    else:
        code, output = serve_refusal(env={"DBQUEUE_AUTH_TOKEN": " "})
    assert code != 0
    assert "empty" in output and "Traceback" not in output


# --- safe defaults -----------------------------------------------------------------------------


def listening_addresses(port: int) -> set[str]:
    """The local addresses of sockets listening on ``port``, from /proc/net/tcp{,6} (Linux)."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            local, _, state = line.split()[1:4]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                if width == 8:
                    found.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                else:
                    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                    found.add(socket.inet_ntop(socket.AF_INET6, words))
    return found


def test_the_server_binds_loopback_by_default(tmp_path: Path) -> None:
    assert Server().host == "127.0.0.1"
    with ChildServer(tmp_path, "--log-level", "info") as server:
        Client.connect(server.address).close()
        if sys.platform.startswith("linux"):
            assert listening_addresses(server.port) == {"127.0.0.1"}
        server.stop()
    assert f"listening on 127.0.0.1:{server.port}" in server.log_text()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", ""])
def test_serve_refuses_a_public_address_without_a_token(host: str) -> None:
    code, output = serve_refusal("--host", host)
    assert code != 0
    assert "--auth-token-file" in output and "--insecure" in output, output
    assert "Traceback" not in output


def test_serve_on_a_public_address_with_insecure_starts(tmp_path: Path) -> None:
    with ChildServer(tmp_path, "--host", "0.0.0.0", "--insecure") as server:
        with Client.connect(server.address) as client:  # no token needed
            round_trip(client)
        if sys.platform.startswith("linux"):
            assert listening_addresses(server.port) == {"0.0.0.0"}
        server.stop()


# --- TLS ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_server(
    factory: Factory, pki: Pki, *, leaf: str = "server", client_ca: str | None = None, **kwargs: Any
) -> ServerThread:
    context = server_tls_context(pki.cert(leaf), pki.key(leaf), pki.cert(client_ca) if client_ca else None)
    return factory(ssl=context, **kwargs)


def test_tls_for_every_client_flavour(server_factory: Factory, pki: Pki) -> None:
    server = tls_server(server_factory, pki)
    context = pki.client_context()
    with Client.connect(server.address, tls=context) as client:
        round_trip(client, "sync")
        assert isinstance(client.connection.sock, ssl.SSLSocket)
        assert client.connection.sock.version() in ("TLSv1.2", "TLSv1.3")
    group = GroupClient.connect(server.address, tls=context)
    group.create("group")
    group.send("group", b"g")
    assert group.read("group", visibility_timeout=10.0, wait=1.0).data == b"g"

    async def asynchronous() -> None:
        async with await AsyncClient.connect(server.address, tls=context) as client:
            await async_round_trip(client, "async")
            assert client._protocol.transport.get_extra_info("ssl_object") is not None
        group = await AsyncGroupClient.connect(server.address, tls=context)
        await group.create("async-group")
        await group.send("async-group", b"a")
        assert (await group.read("async-group", visibility_timeout=10.0, wait=1.0)).data == b"a"

    run(asynchronous())


def test_tls_true_uses_the_default_trust_store(
    server_factory: Factory, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``tls=True`` trusts what OpenSSL trusts by default; SSL_CERT_FILE makes that our throwaway CA."""
    monkeypatch.setenv("SSL_CERT_FILE", pki.cert("ca"))
    server = tls_server(server_factory, pki)
    with Client.connect(server.address, tls=True) as client:
        round_trip(client, "sync")
    GroupClient.connect(server.address, tls=True).create("group")

    async def asynchronous() -> None:
        async with await AsyncClient.connect(server.address, tls=True) as client:
            await async_round_trip(client, "async")

    run(asynchronous())


def test_tls_with_a_token(server_factory: Factory, pki: Pki) -> None:
    server = tls_server(server_factory, pki, auth_token=TOKEN.encode())
    with Client.connect(server.address, tls=pki.client_context(), token=TOKEN) as client:
        round_trip(client)
    with pytest.raises(AuthenticationFailed):
        Client.connect(server.address, tls=pki.client_context(), token="wrong")


def test_a_plaintext_client_gets_nothing_from_a_tls_server(server_factory: Factory, pki: Pki) -> None:
    server = tls_server(server_factory, pki)
    with pytest.raises(ConnectionLost):
        Client.connect(server.address, timeout=5)
    assert server.call(lambda: len(server.server.sessions)) == 0


@pytest.mark.parametrize("case", ["system-cas", "rogue-server-certificate", "rogue-ca-only"])
def test_an_untrusted_server_certificate_fails(server_factory: Factory, pki: Pki, case: str) -> None:
    leaf = "rogue-server" if case == "rogue-server-certificate" else "server"
    server = tls_server(server_factory, pki, leaf=leaf)
    tls: bool | ssl.SSLContext
    if case == "system-cas":
        tls = True  # the system's CAs: our throwaway CA is not among them
    else:
        tls = pki.client_context(trust="ca" if case == "rogue-server-certificate" else "rogue-ca")
    with pytest.raises(ssl.SSLCertVerificationError):
        Client.connect(server.address, tls=tls)

    async def asynchronous() -> None:
        with pytest.raises(ssl.SSLCertVerificationError):
            await AsyncClient.connect(server.address, tls=tls)

    run(asynchronous())
    assert server.call(lambda: len(server.server.sessions)) == 0


@pytest.mark.parametrize(
    "certificate", [None, "rogue-client", "server"], ids=["no-certificate", "rogue-ca", "server-certificate"]
)
def test_client_certificates_required_refuse_clients_without_a_signed_one(
    server_factory: Factory, pki: Pki, certificate: str | None
) -> None:
    server = tls_server(server_factory, pki, client_ca="ca")
    with Client.connect(server.address, tls=pki.client_context("client")) as owner:
        owner.create("q")
        owner.send("q", b"private")
    with (
        pytest.raises((ssl.SSLError, ConnectionLost)),
        Client.connect(server.address, tls=pki.client_context(certificate), timeout=5) as client,
    ):
        client.read("q")  # with TLS 1.3 the refusal may only show on first use

    async def asynchronous() -> None:
        with pytest.raises((ssl.SSLError, ConnectionLost)):
            context = pki.client_context(certificate)
            async with await AsyncClient.connect(server.address, tls=context, timeout=5) as client:
                await client.read("q")

    run(asynchronous())
    assert server.call(lambda: len(server.server.sessions)) == 0
    with Client.connect(server.address, tls=pki.client_context("client")) as owner:
        assert owner.read("q").data == b"private"  # nobody else got it


def test_client_certificates_signed_by_the_ca_are_accepted(server_factory: Factory, pki: Pki) -> None:
    server = tls_server(server_factory, pki, client_ca="ca")
    with Client.connect(server.address, tls=pki.client_context("client")) as client:
        round_trip(client, "sync")
        assert client.connection.sock.getpeercert()["subject"]  # type: ignore[attr-defined]

    async def asynchronous() -> None:
        async with await AsyncClient.connect(server.address, tls=pki.client_context("client")) as client:
            await async_round_trip(client, "async")

    run(asynchronous())


def test_serve_with_tls_flags_client_certificates_and_a_token(tmp_path: Path, pki: Pki) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    flags = ["--tls-cert", pki.cert("server"), "--tls-key", pki.key("server"), "--tls-ca", pki.cert("ca")]
    with ChildServer(tmp_path, *flags, "--auth-token-file", str(token_file)) as server:
        with Client.connect(server.address, tls=pki.client_context("client"), token=TOKEN) as client:
            round_trip(client)
        with pytest.raises(AuthenticationFailed):
            Client.connect(server.address, tls=pki.client_context("client"))
        with (
            pytest.raises((ssl.SSLError, ConnectionLost)),
            Client.connect(server.address, tls=pki.client_context(), token=TOKEN, timeout=5) as client,
        ):
            client.list_queues()
        with pytest.raises(ssl.SSLCertVerificationError):
            Client.connect(server.address, tls=True, token=TOKEN)
        server.stop()
    server.assert_no_unhandled_errors()


def test_serve_refuses_a_certificate_without_its_key(pki: Pki) -> None:
    code, output = serve_refusal("--tls-cert", pki.cert("server"))
    assert code != 0 and "--tls-key" in output


def test_serve_refuses_a_client_ca_without_tls(pki: Pki) -> None:
    code, output = serve_refusal("--tls-ca", pki.cert("ca"))
    assert code != 0 and "--tls-cert" in output
