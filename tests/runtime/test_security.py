import shutil
import subprocess

import pytest
import torch

from splitcomp.errors import ConfigError, PeerError
from splitcomp.link.codecs import RawCodec
from splitcomp.runtime.security import client_tls, server_tls
from splitcomp.runtime.server import ServerSettings


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=localhost", "-keyout", folder / "key.pem", "-out", folder / "cert.pem"],
                   check=True, capture_output=True)
    return {"cert": str(folder / "cert.pem"), "key": str(folder / "key.pem")}


def _infer(client, plan, example):
    head, _ = plan.split(plan.cuts[1])
    with torch.inference_mode():
        return client.exchange(client.request_frame(0, 1, tuple(head(example)), RawCodec()))


def test_tls_connection_carries_requests(tiny, live_server, connect, certificate):
    model, example, plan, fingerprint = tiny
    _, port = live_server(settings=ServerSettings(io_timeout_s=5.0, tls=server_tls({"tls": certificate})))
    client = connect(port, fingerprint, tls=client_tls({"tls": {"ca": certificate["cert"]}}))
    with torch.inference_mode():
        assert torch.equal(_infer(client, plan, example).logits, model(example))


def test_plain_client_cannot_talk_to_a_tls_server(tiny, live_server, connect, certificate):
    _, _, _, fingerprint = tiny
    _, port = live_server(settings=ServerSettings(io_timeout_s=2.0, tls=server_tls({"tls": certificate})))
    with pytest.raises(PeerError):
        connect(port, fingerprint)


def test_shared_secret_must_match(tiny, live_server, connect):
    _, example, plan, fingerprint = tiny
    _, port = live_server(settings=ServerSettings(io_timeout_s=2.0, secret=b"s3cret"))
    assert _infer(connect(port, fingerprint, secret=b"s3cret"), plan, example).logits.shape == (1, 5)
    with pytest.raises(PeerError, match="auth"):
        connect(port, fingerprint, secret=b"wrong")
    with pytest.raises(PeerError):
        connect(port, fingerprint)


def test_missing_certificate_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="server.tls.cert"):
        server_tls({"tls": {"cert": str(tmp_path / "missing.pem")}})
