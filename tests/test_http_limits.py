"""HTTP limits of llmserve/http_limits.py, probed with raw sockets against a real uvicorn server."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import psutil
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from llmserve.config import ServerConfig
from llmserve.http_limits import uvicorn_options
from tests.live_server import free_port, uvicorn_thread

LIMITS = ServerConfig(max_request_line_bytes=1024, max_header_bytes=4096, max_headers=20, header_timeout_s=0.5,
                      body_timeout_s=0.5, keep_alive_timeout_s=0.5, max_connections=8)


async def _echo(request: Request) -> JSONResponse:
    return JSONResponse({"num_bytes": len(await request.body())})


@contextlib.contextmanager
def serve(server: ServerConfig = LIMITS, app: Starlette | None = None) -> Iterator[int]:
    """A uvicorn server with `server`'s limits on a free loopback port; yields the port."""
    app = app or Starlette(routes=[Route("/echo", _echo, methods=["GET", "POST"])])
    with uvicorn_thread(app, lifespan="off", **uvicorn_options(server)) as port:
        yield port


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_until_closed(sock: socket.socket, timeout_s: float = 5.0) -> bytes:
    """Everything the server sends until it closes the connection (fails if it stays open)."""
    sock.settimeout(timeout_s)
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def parse(response: bytes) -> tuple[int, dict[str, str], dict]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, json.loads(body)


def send_quietly(sock: socket.socket, data: bytes) -> None:
    """Send what the server will take; it may close mid-way, which is what these tests provoke."""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(data)


def assert_refused(response: bytes, status: int, words: str) -> None:
    code, headers, body = parse(response)
    assert code == status, response[:200]
    assert headers["connection"] == "close" and headers["content-type"] == "application/json"
    assert set(body["error"]) == {"message", "type", "param", "code"} and words in body["error"]["message"]


def test_a_request_within_the_limits_is_served_and_kept_alive() -> None:
    with serve() as port, connect(port) as sock:
        for _ in range(3):
            sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
            data = sock.recv(65536)
            assert data.startswith(b"HTTP/1.1 200") and data.endswith(b'{"num_bytes":5}')


@pytest.mark.parametrize(("head", "status", "words"), [
    (b"GET /echo?" + b"a" * 2000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "request target exceeds 1024"),
    (b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 5000 + b"\r\n\r\n", 431, "headers exceed 4096"),
    (b"GET /echo HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(30)) + b"\r\n", 431,
     "more than 20 header fields"),
], ids=["long request line", "large header block", "too many headers"])
def test_oversized_heads_are_refused(head: bytes, status: int, words: str) -> None:
    with serve() as port, connect(port) as sock:
        send_quietly(sock, head)
        assert_refused(read_until_closed(sock), status, words)


def test_a_header_that_never_ends_is_cut_off_at_the_limit() -> None:
    with serve() as port, connect(port) as sock:
        send_quietly(sock, b"GET /echo HTTP/1.1\r\nX-Endless: ")
        sent = 0
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while sent < 64_000_000:
                sock.sendall(b"c" * 65536)
                sent += 65536
        # Bytes sent before the reset sat in the kernel's socket buffers (MBs on loopback).
        assert sent < 16_000_000, "the server kept reading an unbounded header"
        response = read_until_closed(sock)
        if response:  # the answer may be lost to the reset of a connection closed while we sent
            assert_refused(response, 431, "exceed")


def test_slow_headers_get_408_and_the_connection_closed() -> None:
    with serve() as port, connect(port) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        started = time.monotonic()
        assert_refused(read_until_closed(sock), 408, "headers did not arrive within 0.5 s")
        assert 0.4 < time.monotonic() - started < 3


def test_a_silent_connection_gets_408() -> None:
    with serve() as port, connect(port) as sock:
        assert_refused(read_until_closed(sock), 408, "headers did not arrive")


def test_a_slow_body_gets_408_and_the_connection_closed() -> None:
    with serve() as port, connect(port) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        started = time.monotonic()
        assert_refused(read_until_closed(sock), 408, "body did not arrive within 0.5 s")
        assert 0.4 < time.monotonic() - started < 3


def test_an_idle_keep_alive_connection_is_closed_quietly() -> None:
    with serve() as port, connect(port) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        assert read_until_closed(sock) == b""  # closed without another answer
        assert time.monotonic() - started < 3


def test_connections_beyond_the_limit_get_a_clear_503() -> None:
    server = dataclasses.replace(LIMITS, header_timeout_s=5.0)
    with serve(server) as port:
        held = [connect(port) for _ in range(8)]
        time.sleep(0.2)
        with connect(port) as extra:
            extra.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
            response = read_until_closed(extra)
        assert_refused(response, 503, "8 connections open")
        assert parse(response)[1]["retry-after"] == "1"
        for sock in held:
            sock.close()
        time.sleep(0.2)
        with connect(port) as again:
            again.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert read_until_closed(again).startswith(b"HTTP/1.1 200")


SERVER_SCRIPT = """
import sys
import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from llmserve.config import ServerConfig
from llmserve.http_limits import uvicorn_options

async def ok(request):
    return PlainTextResponse("ok")

limits = ServerConfig(max_header_bytes=4096, header_timeout_s=5.0, max_connections=100)
options = uvicorn_options(limits) if sys.argv[2] == "limited" else {}
uvicorn.run(Starlette(routes=[Route("/", ok)]), host="127.0.0.1", port=int(sys.argv[1]), log_level="error",
            **options)
"""


@contextlib.contextmanager
def server_process(kind: str) -> Iterator[tuple[int, psutil.Process]]:
    """A uvicorn server in a process of its own (its RSS is its own), with or without the limits."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SERVER_SCRIPT, str(port), kind])
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            assert time.monotonic() < deadline and proc.poll() is None, "server process did not start"
            time.sleep(0.05)
        yield port, psutil.Process(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def flood_rss_mb(kind: str) -> tuple[float, float, float]:
    """RSS of the server before, at the peak of, and after 40 connections each sending 4 MB of headers."""
    payload = memoryview(b"GET / HTTP/1.1\r\nX-Flood: " + b"f" * 4_000_000)
    with server_process(kind) as (port, proc):
        with connect(port) as warm:  # first-request allocations happen before the baseline
            warm.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            read_until_closed(warm)
        before = proc.memory_info().rss / 2**20

        sent = threading.Barrier(41)

        def flood() -> None:
            with connect(port) as sock:
                send_quietly(sock, payload)
                sent.wait()  # every connection stays open until all have sent
                sent.wait()

        threads = [threading.Thread(target=flood) for _ in range(40)]
        for t in threads:
            t.start()
        sent.wait()
        time.sleep(0.5)  # what the server still reads from its socket buffers
        peak = proc.memory_info().rss / 2**20
        sent.wait()
        for t in threads:
            t.join()
        time.sleep(0.2)
        after = proc.memory_info().rss / 2**20
    return before, peak, after


def test_memory_returns_after_a_flood_of_oversized_headers() -> None:
    """160 MB of headers in flight: the limited server never holds more than the limit plus a socket
    read per connection, and ends where it started. (Measured: +0.1 MB at the peak; stock uvicorn
    with httptools, `flood_rss_mb("stock")`, peaks at +150 MB.)"""
    before, peak, after = flood_rss_mb("limited")
    assert peak - before < 40 and after - before < 10, (before, peak, after)


def test_the_limits_hold_over_tls(tmp_path) -> None:
    """`llmserve run` passes the TLS and the limit arguments together: both apply."""
    import ssl

    import trustme

    from llmserve.tls import uvicorn_tls_kwargs

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(cert_file)
    cert.private_key_pem.write_to_path(key_file)
    server = dataclasses.replace(LIMITS, ssl_certfile=str(cert_file), ssl_keyfile=str(key_file))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    app = Starlette(routes=[Route("/echo", _echo, methods=["GET", "POST"])])
    with uvicorn_thread(app, lifespan="off", **uvicorn_tls_kwargs(server), **uvicorn_options(server)) as port:
        for head, status in ((b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 200),
                             (b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 5000 + b"\r\n\r\n", 431)):
            with context.wrap_socket(connect(port), server_hostname="127.0.0.1") as sock:
                sock.sendall(head)
                response = read_until_closed(sock)
            assert response.startswith(b"HTTP/1.1 %d" % status), response[:100]
