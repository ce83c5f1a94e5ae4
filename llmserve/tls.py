"""HTTPS: checking the server's certificate files, uvicorn's TLS arguments, and the clients' trust.

The server speaks TLS through uvicorn's own support (`ssl_certfile`, `ssl_keyfile`, ...); this
module only checks the files first, so that a missing file, a key that does not belong to the
certificate or a wrong password is one line naming the config key at start-up rather than a
traceback from inside uvicorn. The clients (`llmserve chat`, `test-message`, `bench`) trust the
system's CAs, the standard `SSL_CERT_FILE` / `SSL_CERT_DIR`, or a private CA given with `--ca-cert`.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from llmserve.config import ServerConfig
from llmserve.errors import ConfigError

_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


def is_tls(server: ServerConfig) -> bool:
    """Whether the server speaks HTTPS."""
    return bool(server.ssl_certfile)


def check_tls(server: ServerConfig) -> None:
    """Load the configured certificate, key and CA files as the server will; ConfigError naming the key."""
    if not is_tls(server):
        return
    for key in ("ssl_certfile", "ssl_keyfile", "ssl_ca_certs"):
        _check_readable(key, getattr(server, key))
    _check_certificate(server.ssl_certfile)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # A callable password: OpenSSL would otherwise prompt on the terminal for an encrypted key.
        context.load_cert_chain(server.ssl_certfile, server.ssl_keyfile, lambda: server.ssl_keyfile_password)
    except ssl.SSLError as exc:
        raise ConfigError(_key_error(server, exc)) from None
    if server.ssl_ca_certs:
        try:
            context.load_verify_locations(cafile=server.ssl_ca_certs)
        except ssl.SSLError as exc:
            raise ConfigError(f'server.ssl_ca_certs = "{server.ssl_ca_certs}": not a PEM certificate bundle '
                              f"({_reason(exc)})") from None


def uvicorn_tls_kwargs(server: ServerConfig) -> dict[str, Any]:
    """The keyword arguments of `uvicorn.Config` that turn TLS on (empty for plain HTTP)."""
    if not is_tls(server):
        return {}
    return {
        "ssl_certfile": server.ssl_certfile,
        "ssl_keyfile": server.ssl_keyfile,
        "ssl_keyfile_password": server.ssl_keyfile_password or None,
        "ssl_ca_certs": server.ssl_ca_certs or None,
        "ssl_cert_reqs": _CERT_REQS[server.ssl_cert_reqs],
    }


def client_verify(ca_cert: str | None) -> ssl.SSLContext | bool:
    """What an httpx client verifies servers with: `ca_cert`'s CAs, else True (the system's CAs, or
    `SSL_CERT_FILE` / `SSL_CERT_DIR` when set, as httpx reads them). ValueError for an unusable file."""
    if not ca_cert:
        return True
    path = Path(ca_cert).expanduser()
    if not path.is_file():
        raise ValueError(f"--ca-cert {ca_cert}: no such file")
    try:
        return ssl.create_default_context(cafile=str(path))
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"--ca-cert {ca_cert}: not a PEM certificate bundle ({_reason(exc)})") from None


def _check_readable(key: str, value: str) -> None:
    if not value:
        return
    try:
        with open(value, "rb") as file:
            file.read(1)
    except FileNotFoundError:
        raise ConfigError(f'server.{key} = "{value}": no such file') from None
    except OSError as exc:
        raise ConfigError(f'server.{key} = "{value}": cannot read it ({exc.strerror or exc})') from None


def _check_certificate(certfile: str) -> None:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=certfile)
    except ssl.SSLError as exc:
        raise ConfigError(f'server.ssl_certfile = "{certfile}": not a PEM certificate ({_reason(exc)})') from None


def _key_error(server: ServerConfig, exc: ssl.SSLError) -> str:
    """Why the key was refused: OpenSSL says "PEM lib" alike for a wrong password and a non-key."""
    if "KEY_VALUES_MISMATCH" in str(exc):
        return (f'server.ssl_keyfile = "{server.ssl_keyfile}": this key does not match the certificate '
                f'in ssl_certfile "{server.ssl_certfile}"')
    is_encrypted = b"ENCRYPTED" in Path(server.ssl_keyfile).read_bytes()[:4096]
    if is_encrypted and server.ssl_keyfile_password:
        return f'server.ssl_keyfile_password: does not decrypt ssl_keyfile "{server.ssl_keyfile}"'
    if is_encrypted:
        return f'server.ssl_keyfile = "{server.ssl_keyfile}": the key is encrypted; set ssl_keyfile_password'
    return f'server.ssl_keyfile = "{server.ssl_keyfile}": not a PEM private key ({_reason(exc)})'


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
    return str(reason).strip().splitlines()[0][:200]
