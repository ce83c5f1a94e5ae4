"""HTTPS: start-up checks of the certificate files, a real `llmserve run` over TLS with a CA made
here (trustme), the openai SDK and llmserve's own clients against it, client certificates."""

from __future__ import annotations

import contextlib
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from llmserve.bench import BenchOptions, run_bench
from llmserve.chat.app import open_backend
from llmserve.chat.backends import ChatError, GenerationParams
from llmserve.chat.options import options_from_args
from llmserve.cli import build_parser
from llmserve.config import ServerConfig, parse_config
from llmserve.errors import ConfigError
from llmserve.test_message import MessageCheckError, check_message
from llmserve.tls import check_tls, client_verify, uvicorn_tls_kwargs
from tests.live_server import free_port, llmserve_run, uvicorn_thread

pytestmark = pytest.mark.timeout(180)

MODEL = "tiny-llama"


@dataclass(frozen=True)
class Pki:
    """Files of a private CA, a server certificate for 127.0.0.1 and a client certificate."""

    ca: Path
    cert: Path
    key: Path
    other_key: Path
    encrypted_key: Path
    client: Path
    ca_object: trustme.CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    other = ca.issue_cert("other.example")
    client = ca.issue_cert("client@example")
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    server.cert_chain_pems[0].write_to_path(str(folder / "server.pem"))
    server.private_key_pem.write_to_path(str(folder / "server.key"))
    other.private_key_pem.write_to_path(str(folder / "other.key"))
    client.private_key_and_cert_chain_pem.write_to_path(str(folder / "client.pem"))
    key = serialization.load_pem_private_key(server.private_key_pem.bytes(), None)
    encrypted = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.BestAvailableEncryption(b"s3cret-pass"))
    (folder / "encrypted.key").write_bytes(encrypted)
    return Pki(folder / "ca.pem", folder / "server.pem", folder / "server.key", folder / "other.key",
               folder / "encrypted.key", folder / "client.pem", ca)


def _server(**fields: object) -> ServerConfig:
    return parse_config({"server": fields, "workers": [{"model_path": "m"}]}).server


def _start_up_error(**fields: object) -> str:
    with pytest.raises(ConfigError) as info:
        check_tls(_server(**fields))
    message = str(info.value)
    assert "\n" not in message
    return message


# --- start-up refusals ------------------------------------------------------------------------


@pytest.mark.parametrize(("given", "key"), [
    ({"ssl_certfile": "cert"}, "server.ssl_keyfile"),
    ({"ssl_keyfile": "key"}, "server.ssl_certfile"),
    ({"ssl_keyfile_password": "pw"}, "server.ssl_keyfile_password"),
    ({"ssl_ca_certs": "ca"}, "server.ssl_ca_certs"),
    ({"ssl_certfile": "c", "ssl_keyfile": "k", "ssl_cert_reqs": "required"}, "server.ssl_cert_reqs"),
    ({"ssl_certfile": "c", "ssl_keyfile": "k", "ssl_ca_certs": "ca"}, "server.ssl_ca_certs"),
    ({"ssl_cert_reqs": "always"}, "server.ssl_cert_reqs"),
])
def test_settings_that_contradict_each_other_are_refused_naming_the_key(given: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{key}\b"):
        parse_config({"server": given, "workers": [{"model_path": "m"}]})


def test_a_missing_or_unreadable_file_is_refused_naming_the_key(pki: Pki, tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.pem")
    assert _start_up_error(ssl_certfile=missing, ssl_keyfile=str(pki.key)) == \
        f'server.ssl_certfile = "{missing}": no such file'
    assert _start_up_error(ssl_certfile=str(pki.cert), ssl_keyfile=missing) == \
        f'server.ssl_keyfile = "{missing}": no such file'
    assert _start_up_error(ssl_certfile=str(pki.cert), ssl_keyfile=str(pki.key), ssl_ca_certs=missing,
                           ssl_cert_reqs="required") == f'server.ssl_ca_certs = "{missing}": no such file'
    # Running as root reads any mode, so unreadable is shown with a folder where a file belongs.
    assert _start_up_error(ssl_certfile=str(pki.cert), ssl_keyfile=str(tmp_path)).startswith(
        f'server.ssl_keyfile = "{tmp_path}": cannot read it')


def test_a_key_that_does_not_match_the_certificate_is_refused(pki: Pki) -> None:
    assert _start_up_error(ssl_certfile=str(pki.cert), ssl_keyfile=str(pki.other_key)) == (
        f'server.ssl_keyfile = "{pki.other_key}": this key does not match the certificate in ssl_certfile '
        f'"{pki.cert}"')


def test_files_of_the_wrong_kind_and_passwords(pki: Pki) -> None:
    assert _start_up_error(ssl_certfile=str(pki.key), ssl_keyfile=str(pki.key)).startswith(
        f'server.ssl_certfile = "{pki.key}": not a PEM certificate')
    assert _start_up_error(ssl_certfile=str(pki.cert), ssl_keyfile=str(pki.cert)).startswith(
        f'server.ssl_keyfile = "{pki.cert}": not a PEM private key')
    assert _start_up_error(ssl_certfile=str(pki.cert), ssl_keyfile=str(pki.encrypted_key)) == (
        f'server.ssl_keyfile = "{pki.encrypted_key}": the key is encrypted; set ssl_keyfile_password')
    assert _start_up_error(ssl_certfile=str(pki.cert), ssl_keyfile=str(pki.encrypted_key),
                           ssl_keyfile_password="wrong") == (
        f'server.ssl_keyfile_password: does not decrypt ssl_keyfile "{pki.encrypted_key}"')
    check_tls(_server(ssl_certfile=str(pki.cert), ssl_keyfile=str(pki.encrypted_key),
                      ssl_keyfile_password="s3cret-pass"))
    assert _start_up_error(ssl_certfile=str(pki.cert), ssl_keyfile=str(pki.key), ssl_ca_certs=str(pki.key),
                           ssl_cert_reqs="optional").startswith(
        f'server.ssl_ca_certs = "{pki.key}": not a PEM certificate bundle')


def test_llmserve_run_exits_2_with_one_line(pki: Pki, tiny_model_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "tls.toml"
    config.write_text(f'[server]\nssl_certfile = "{pki.cert}"\nssl_keyfile = "{pki.other_key}"\n'
                      f'[[workers]]\nmodel_path = "{tiny_model_dir}"\n', encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "llmserve", "run", str(config)], capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f'llmserve: server.ssl_keyfile = "{pki.other_key}": this key does not match the certificate in '
        f'ssl_certfile "{pki.cert}"']


# --- a real server over HTTPS -----------------------------------------------------------------


@pytest.fixture(scope="module")
def https_url(pki: Pki, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`llmserve run` with TLS on (encrypted key and its password), serving the tiny model."""
    folder = tmp_path_factory.mktemp("https-server")
    config = folder / "server.toml"
    config.write_text(
        f'[server]\nssl_certfile = "{pki.cert}"\nssl_keyfile = "{pki.encrypted_key}"\n'
        f'ssl_keyfile_password = "s3cret-pass"\ndrain_grace = 0\n[ui]\nenabled = false\n'
        f'[[workers]]\nmodel_path = "{tiny_model_dir}"\nmodel_names = ["{MODEL}"]\ndtype = "float32"\n'
        "kv_cache_tokens = 8192\nmax_num_seqs = 4\n", encoding="utf-8")
    port = free_port()
    log_path = folder / "server.log"
    base = f"https://127.0.0.1:{port}"
    verify = ssl.create_default_context(cafile=str(pki.ca))
    with llmserve_run([str(config), "--port", str(port)], log_path, f"{base}/ready", ready_timeout_s=120,
                      stop_timeout_s=20, verify=verify):
        yield f"{base}/v1"
    assert "listening on https://" in log_path.read_text()


def test_the_openai_sdk_streams_a_chat_over_https(https_url: str, pki: Pki) -> None:
    http_client = httpx.Client(verify=ssl.create_default_context(cafile=str(pki.ca)))
    client = openai.OpenAI(base_url=https_url, api_key="unused", http_client=http_client)
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=8, temperature=0, stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and chunks[-1].choices[0].finish_reason in ("stop", "length")
    whole = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=8, temperature=0)
    assert whole.choices[0].message.content == text  # greedy: the same answer streamed or not
    http_client.close()


def test_plain_http_and_untrusted_clients_are_refused(https_url: str) -> None:
    plain = https_url.replace("https://", "http://").removesuffix("/v1")
    with pytest.raises(httpx.HTTPError):  # the TLS port never answers plain HTTP
        httpx.get(f"{plain}/health", timeout=5)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):  # the system CAs do not know ours
        httpx.get(f"{https_url.removesuffix('/v1')}/health", timeout=5)


def test_test_message_with_ca_cert_or_ssl_cert_file(https_url: str, pki: Pki) -> None:
    check = check_message(https_url, MODEL, message="hello", max_tokens=4, ca_cert=str(pki.ca))
    assert check.num_output_tokens >= 1
    with pytest.raises(MessageCheckError, match="--ca-cert"):
        check_message(https_url, MODEL, message="hello", max_tokens=4)
    env = {**os.environ, "SSL_CERT_FILE": str(pki.ca)}
    done = subprocess.run([sys.executable, "-m", "llmserve", "test-message", "--base-url", https_url,
                           "--model-name", MODEL, "--max-tokens", "4"], capture_output=True, text=True,
                          env=env, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert "tokens/s" in done.stdout


def test_chat_with_base_url_and_ca_cert(https_url: str, pki: Pki) -> None:
    args = build_parser().parse_args(["chat", "--base-url", https_url, "--ca-cert", str(pki.ca)])
    backend = open_backend(options_from_args(args))
    try:
        reply = "".join(backend.stream_reply([{"role": "user", "content": "hi"}], GenerationParams(0.0, 1.0, 6)))
    finally:
        backend.close()
    assert reply
    with pytest.raises(ChatError, match="--ca-cert .*: no such file"):
        open_backend(options_from_args(build_parser().parse_args(
            ["chat", "--base-url", https_url, "--ca-cert", str(pki.ca) + ".missing"])))


def test_bench_with_ca_cert(https_url: str, pki: Pki) -> None:
    options = BenchOptions(base_url=https_url, model=MODEL, num_prompts=2, input_len=8, output_len=4,
                           ca_cert=str(pki.ca), show_progress=False)
    report = run_bench(options)
    assert report.metrics.num_completed == 2
    untrusted = run_bench(BenchOptions(base_url=https_url, model=MODEL, num_prompts=1, input_len=8,
                                       output_len=4, show_progress=False))
    assert untrusted.metrics.num_completed == 0


# --- client certificates ----------------------------------------------------------------------


@contextlib.contextmanager
def _tls_app_server(server: ServerConfig) -> Iterator[str]:
    """A one-route app under uvicorn with `server`'s TLS arguments, as `llmserve run` passes them."""
    app = Starlette(routes=[Route("/ping", lambda request: PlainTextResponse("pong"))])
    with uvicorn_thread(app, log_level="critical", **uvicorn_tls_kwargs(server)) as port:
        yield f"https://127.0.0.1:{port}/ping"


def test_required_client_certificates(pki: Pki) -> None:
    server = _server(ssl_certfile=str(pki.cert), ssl_keyfile=str(pki.key), ssl_ca_certs=str(pki.ca),
                     ssl_cert_reqs="required")
    check_tls(server)
    with _tls_app_server(server) as url:
        anonymous = client_verify(str(pki.ca))
        with pytest.raises(httpx.HTTPError):
            httpx.get(url, verify=anonymous, timeout=5)
        with_cert = ssl.create_default_context(cafile=str(pki.ca))
        with_cert.load_cert_chain(str(pki.client))
        assert httpx.get(url, verify=with_cert, timeout=5).text == "pong"


def test_optional_client_certificates(pki: Pki) -> None:
    server = _server(ssl_certfile=str(pki.cert), ssl_keyfile=str(pki.key), ssl_ca_certs=str(pki.ca),
                     ssl_cert_reqs="optional")
    with _tls_app_server(server) as url:
        assert httpx.get(url, verify=client_verify(str(pki.ca)), timeout=5).text == "pong"
        stranger = trustme.CA().issue_cert("client@elsewhere")
        bad = ssl.create_default_context(cafile=str(pki.ca))
        with stranger.private_key_and_cert_chain_pem.tempfile() as path:
            bad.load_cert_chain(path)
        with pytest.raises(httpx.HTTPError):  # a certificate that is sent is verified
            httpx.get(url, verify=bad, timeout=5)
