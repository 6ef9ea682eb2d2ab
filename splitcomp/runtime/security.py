"""Access control for the edge server: a shared secret (HMAC on every frame) and TLS."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

from splitcomp.errors import ConfigError


def auth_secret(server_cfg: Mapping[str, Any]) -> bytes | None:
    """``server.auth_secret`` as bytes (None: frames are not authenticated)."""
    secret = server_cfg.get("auth_secret")
    return str(secret).encode() if secret else None


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


def client_tls(server_cfg: Mapping[str, Any]) -> ssl.SSLContext | None:
    """A TLS context for the device: trusts ``server.tls.ca`` (or the server's own cert)."""
    tls = server_cfg.get("tls") or {}
    trust = tls.get("ca") or tls.get("cert")
    if not tls.get("enabled", bool(trust)):
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = bool(tls.get("check_hostname", False))
    if trust:
        try:
            context.load_verify_locations(str(trust))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the TLS trust file {trust} ({exc}); check server.tls.ca") from None
    return context
