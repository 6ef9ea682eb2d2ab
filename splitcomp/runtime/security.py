"""Access control for the edge server: a shared secret (MACs on every frame) and TLS.

The secret never sits in the config (which reaches MLflow, Hydra's saved files, launcher jobs and
the process list): the config names a file (``server.auth_secret_file``) or the secret comes from
an environment variable (``server.auth_secret_env``, ``SPLITCOMP_AUTH_SECRET`` by default). It
must have at least 16 characters, and the key used is stretched from it with scrypt, so a
passphrase is as good as it is long.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import socket
import ssl
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from splitcomp.errors import ConfigError

log = logging.getLogger("splitcomp")

DEFAULT_SECRET_ENV = "SPLITCOMP_AUTH_SECRET"
MIN_SECRET_CHARS = 16
_KEY_SALT = b"splitcomp auth key v2"


def derive_key(secret: str) -> bytes:
    """The 32-byte MAC key stretched from ``secret`` (scrypt: slow to guess from captured frames)."""
    return hashlib.scrypt(secret.encode(), salt=_KEY_SALT, n=2**14, r=8, p=1, dklen=32)


def auth_secret(server_cfg: Mapping[str, Any]) -> bytes | None:
    """The MAC key from ``server.auth_secret_file`` or the environment (None: frames are not
    authenticated)."""
    if server_cfg.get("auth_secret"):
        raise ConfigError("server.auth_secret would leave the secret in saved configs, MLflow and the process "
                          "list; put it in a file (server.auth_secret_file=PATH, mode 0600) or in the "
                          f"environment variable {server_cfg.get('auth_secret_env') or DEFAULT_SECRET_ENV}")
    path = server_cfg.get("auth_secret_file")
    env_name = str(server_cfg.get("auth_secret_env") or DEFAULT_SECRET_ENV)
    from_env = os.environ.get(env_name)
    if path and from_env:
        raise ConfigError(f"both server.auth_secret_file and ${env_name} hold a secret; keep one of them")
    if path:
        secret, source = _read_secret_file(Path(str(path)).expanduser()), "server.auth_secret_file"
    elif from_env:
        secret, source = from_env.strip(), f"${env_name}"
    else:
        return None
    if len(secret) < MIN_SECRET_CHARS:
        raise ConfigError(f"the auth secret in {source} has {len(secret)} characters; use at least "
                          f"{MIN_SECRET_CHARS} (for example: openssl rand -hex 32 > secret.txt; chmod 600 secret.txt)")
    return derive_key(secret)


def _read_secret_file(path: Path) -> str:
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the auth secret file {path} ({exc}); check server.auth_secret_file") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("the auth secret file %s can be read by other users; chmod 600 it", path)
    return text.strip()


def server_tls(server_cfg: Mapping[str, Any]) -> ssl.SSLContext | None:
    """A TLS context for the server from ``server.tls.cert``/``key`` (None when not set)."""
    tls = server_cfg.get("tls") or {}
    if not tls.get("cert"):
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(str(tls["cert"]), str(tls["key"]) if tls.get("key") else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the TLS certificate {tls['cert']} ({exc}); check server.tls.cert "
                          "and server.tls.key") from None
    return context


@dataclass(frozen=True)
class ClientTls:
    """How the device checks the server: a context (trusted CAs, host name), or a pin of the
    server's own certificate (its SHA-256), which then replaces both."""

    context: ssl.SSLContext
    pin_sha256: bytes | None = None

    def wrap(self, sock: socket.socket, host: str) -> ssl.SSLSocket:
        tls_sock = self.context.wrap_socket(sock, server_hostname=host)
        if self.pin_sha256 is not None:
            digest = hashlib.sha256(tls_sock.getpeercert(binary_form=True) or b"").digest()
            if not hmac.compare_digest(digest, self.pin_sha256):
                tls_sock.close()
                raise ssl.SSLCertVerificationError(
                    f"the server's certificate has SHA-256 {digest.hex()}, not the one in server.tls.pin_sha256")
        return tls_sock


def client_tls(server_cfg: Mapping[str, Any]) -> ClientTls | None:
    """The device's TLS settings: trust ``server.tls.ca`` (or the server's own cert) with the host
    name checked, or pin the server's certificate with ``server.tls.pin_sha256``."""
    tls = server_cfg.get("tls") or {}
    trust, pin = tls.get("ca") or tls.get("cert"), tls.get("pin_sha256")
    if not tls.get("enabled", bool(trust or pin)):
        return None
    if pin:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the pin below checks the exact certificate instead
        return ClientTls(context, _parse_pin(str(pin)))
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = bool(tls.get("check_hostname", True))
    if trust:
        try:
            context.load_verify_locations(str(trust))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the TLS trust file {trust} ({exc}); check server.tls.ca") from None
    return ClientTls(context)


def _parse_pin(text: str) -> bytes:
    """A SHA-256 as printed by ``openssl x509 -noout -fingerprint -sha256`` (colons optional)."""
    digits = text.split("=")[-1].replace(":", "").strip()
    try:
        pin = bytes.fromhex(digits)
    except ValueError:
        pin = b""
    if len(pin) != 32:
        raise ConfigError(f"server.tls.pin_sha256={text!r} is not a SHA-256; print it with: openssl x509 -in "
                          "server.pem -noout -fingerprint -sha256")
    return pin


def certificate_pin(path: str | Path) -> str:
    """The SHA-256 of a PEM certificate, as ``server.tls.pin_sha256`` takes it."""
    der = ssl.PEM_cert_to_DER_cert(Path(path).read_text())
    return hashlib.sha256(der).hexdigest()
