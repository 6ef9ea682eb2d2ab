import pickle
import shutil
import subprocess

import pytest
import torch
from hydra import compose, initialize_config_dir

from splitcomp.errors import ConfigError, PeerError
from splitcomp.link.codecs import RawCodec
from splitcomp.runtime.client import HandshakeError
from splitcomp.runtime.security import (
    auth_secret,
    certificate_pin,
    client_tls,
    derive_key,
    server_tls,
)
from splitcomp.runtime.server import ServerSettings
from splitcomp.tasks.common import CONF_DIR

SECRET = "correct horse battery staple"


def _make_certificate(folder, name: str, subject_alt_name: str) -> dict[str, str]:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=splitcomp",
                    "-addext", f"subjectAltName={subject_alt_name}", "-keyout", folder / f"{name}.key",
                    "-out", folder / f"{name}.pem"], check=True, capture_output=True)
    return {"cert": str(folder / f"{name}.pem"), "key": str(folder / f"{name}.key")}


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    """One certificate that names 127.0.0.1, one that names only another host."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    return {"loopback": _make_certificate(folder, "loopback", "IP:127.0.0.1,DNS:localhost"),
            "elsewhere": _make_certificate(folder, "elsewhere", "DNS:edge.example")}


def _infer(client, plan, example):
    head, _ = plan.split(plan.cuts[1])
    with torch.inference_mode():
        return client.exchange(client.request_frame(0, 1, tuple(head(example)), RawCodec()))


def test_tls_connection_carries_requests(tiny, live_server, connect, certificates):
    model, example, plan, fingerprint = tiny
    cert = certificates["loopback"]
    _, port = live_server(settings=ServerSettings(io_timeout_s=5.0, tls=server_tls({"tls": cert})))
    client = connect(port, fingerprint, tls=client_tls({"tls": {"ca": cert["cert"]}}))
    with torch.inference_mode():
        assert torch.equal(_infer(client, plan, example).logits, model(example))


def test_tls_checks_the_host_name_by_default(tiny, live_server, connect, certificates):
    _, _, _, fingerprint = tiny
    cert = certificates["elsewhere"]  # trusted, but issued for another name
    _, port = live_server(settings=ServerSettings(io_timeout_s=2.0, tls=server_tls({"tls": cert})))
    with pytest.raises(HandshakeError, match="certificate"):
        connect(port, fingerprint, tls=client_tls({"tls": {"ca": cert["cert"]}}))
    connect(port, fingerprint, tls=client_tls({"tls": {"ca": cert["cert"], "check_hostname": False}})).close()


def test_pinning_the_servers_own_certificate(tiny, live_server, connect, certificates):
    _, example, plan, fingerprint = tiny
    cert = certificates["elsewhere"]
    _, port = live_server(settings=ServerSettings(io_timeout_s=2.0, tls=server_tls({"tls": cert})))
    pin = certificate_pin(cert["cert"])
    pinned = connect(port, fingerprint, tls=client_tls({"tls": {"pin_sha256": pin}}))
    assert _infer(pinned, plan, example).logits.shape == (1, 5)
    openssl_style = ":".join(pin[i : i + 2] for i in range(0, 64, 2)).upper()
    connect(port, fingerprint, tls=client_tls({"tls": {"pin_sha256": f"SHA256 Fingerprint={openssl_style}"}})).close()
    other = certificate_pin(certificates["loopback"]["cert"])
    with pytest.raises(HandshakeError, match="pin_sha256"):
        connect(port, fingerprint, tls=client_tls({"tls": {"pin_sha256": other}}))
    with pytest.raises(ConfigError, match="not a SHA-256"):
        client_tls({"tls": {"pin_sha256": "abc"}})


def test_plain_client_cannot_talk_to_a_tls_server(tiny, live_server, connect, certificates):
    _, _, _, fingerprint = tiny
    _, port = live_server(settings=ServerSettings(io_timeout_s=2.0, tls=server_tls({"tls": certificates["loopback"]})))
    with pytest.raises(PeerError):
        connect(port, fingerprint)


def test_shared_secret_must_match(tiny, live_server, connect):
    _, example, plan, fingerprint = tiny
    key = derive_key(SECRET)
    _, port = live_server(settings=ServerSettings(io_timeout_s=2.0, secret=key))
    assert _infer(connect(port, fingerprint, secret=key), plan, example).logits.shape == (1, 5)
    with pytest.raises(HandshakeError, match="authentication failed"):
        connect(port, fingerprint, secret=derive_key("another secret of some length"))
    with pytest.raises(HandshakeError, match="requires authenticated frames.*server.auth_secret_file"):
        connect(port, fingerprint)


def test_a_device_with_a_secret_is_told_the_server_has_none(tiny, live_server, connect):
    _, _, _, fingerprint = tiny
    _, port = live_server()
    with pytest.raises(HandshakeError, match="this side has no auth secret"):
        connect(port, fingerprint, secret=derive_key(SECRET))


def test_missing_certificate_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="server.tls.cert"):
        server_tls({"tls": {"cert": str(tmp_path / "missing.pem")}})


# --- where the secret comes from --------------------------------------------------------------
def test_the_secret_comes_from_a_file_or_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("SPLITCOMP_AUTH_SECRET", raising=False)
    assert auth_secret({}) is None
    path = tmp_path / "secret.txt"
    path.write_text(SECRET + "\n")
    path.chmod(0o600)
    from_file = auth_secret({"auth_secret_file": str(path)})
    assert from_file == derive_key(SECRET) and SECRET.encode() not in from_file and len(from_file) == 32
    monkeypatch.setenv("SPLITCOMP_AUTH_SECRET", SECRET)
    assert auth_secret({}) == from_file
    monkeypatch.setenv("OTHER_NAME", SECRET)
    monkeypatch.delenv("SPLITCOMP_AUTH_SECRET")
    assert auth_secret({"auth_secret_env": "OTHER_NAME"}) == from_file


@pytest.mark.parametrize(("server", "env", "message"), [
    ({"auth_secret": SECRET}, None, "auth_secret_file"),               # never inline
    ({}, "short", "at least 16"),                                      # weak
    ({"auth_secret_file": "{tmp}/secret.txt"}, SECRET, "keep one"),    # two sources
    ({"auth_secret_file": "{tmp}/missing.txt"}, None, "cannot read"),
])
def test_misplaced_or_weak_secrets_are_config_errors(tmp_path, monkeypatch, server, env, message):
    (tmp_path / "secret.txt").write_text(SECRET)
    monkeypatch.delenv("SPLITCOMP_AUTH_SECRET", raising=False)
    if env is not None:
        monkeypatch.setenv("SPLITCOMP_AUTH_SECRET", env)
    server = {k: v.replace("{tmp}", str(tmp_path)) for k, v in server.items()}
    with pytest.raises(ConfigError, match=message):
        auth_secret(server)


def test_a_launched_job_carries_no_secret_only_where_to_find_it(tmp_path, monkeypatch):
    """joblib, Ray and submitit pickle the job's config: it names the file, never the secret."""
    path = tmp_path / "secret.txt"
    path.write_text(SECRET)
    monkeypatch.delenv("SPLITCOMP_AUTH_SECRET", raising=False)
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"server.auth_secret_file={path}"])
    shipped = pickle.dumps(cfg)
    assert SECRET.encode() not in shipped and derive_key(SECRET) not in shipped
    assert auth_secret(pickle.loads(shipped).server) == derive_key(SECRET)


def test_a_full_tls_server_is_worth_retrying(tiny, live_server, connect, certificates):
    """Turned away for want of a slot, mid-TLS: not a handshake refusal that would end a run."""
    from splitcomp.runtime.client import ConnectionLost

    _, _, _, fingerprint = tiny
    cert = certificates["loopback"]
    _, port = live_server(settings=ServerSettings(io_timeout_s=2.0, tls=server_tls({"tls": cert}), max_clients=1))
    tls = client_tls({"tls": {"ca": cert["cert"]}})
    first = connect(port, fingerprint, tls=tls)
    with pytest.raises(ConnectionLost):
        connect(port, fingerprint, tls=tls)
    first.close()
