"""Frame authentication: a per-session key, a sequence number and a direction under every MAC.

With a shared secret ``K`` (already stretched from the user's passphrase, see
``splitcomp.runtime.security``), one connection runs:

* the device sends HELLO with a fresh 16-byte nonce ``Nd``, MAC'd with ``K`` as device frame 0;
* the server answers WELCOME with its own fresh nonce ``Ns`` and ``Nd`` echoed, MAC'd with ``K``
  as server frame 0 (the device refuses a WELCOME that echoes another nonce);
* every later frame, both ways, is MAC'd with the session key
  ``Ks = HMAC(K, "splitcomp session" | Nd | Ns)``; each direction numbers its frames 0, 1, 2...

A MAC is HMAC-SHA256 over ``direction | sequence (u64) | frame bytes``. Neither number is on the
wire: a replayed, reordered or reflected frame simply fails its MAC. A recorded HELLO still
passes (it is what starts a session), but the server's fresh nonce makes the session key
unknowable without ``K``, so the replayer's next frame is refused before its payload is read.
"""

from __future__ import annotations

import hashlib
import hmac
import os

NONCE_BYTES = 16
MAC_BYTES = 32
DEVICE_TO_SERVER = b"D"
SERVER_TO_DEVICE = b"S"


def new_nonce() -> bytes:
    return os.urandom(NONCE_BYTES)


def session_key(key: bytes, device_nonce: bytes, server_nonce: bytes) -> bytes:
    """The key of one connection, from the shared key and both sides' nonces."""
    return hmac.new(key, b"splitcomp session" + device_nonce + server_nonce, hashlib.sha256).digest()


class FrameAuth:
    """One side's MAC state on one connection: the current key and the next sequence number
    each way. ``device()`` and ``server()`` give the two ends' views."""

    def __init__(self, key: bytes, sends: bytes, receives: bytes) -> None:
        self.key = key
        self.sends, self.receives = sends, receives
        self.send_seq = 0
        self.recv_seq = 0

    @classmethod
    def device(cls, key: bytes) -> FrameAuth:
        return cls(key, DEVICE_TO_SERVER, SERVER_TO_DEVICE)

    @classmethod
    def server(cls, key: bytes) -> FrameAuth:
        return cls(key, SERVER_TO_DEVICE, DEVICE_TO_SERVER)

    def use_session_key(self, key: bytes) -> None:
        """After HELLO and WELCOME: the session key (sequence numbers carry on)."""
        self.key = key

    def send_mac(self) -> hmac.HMAC:
        """A MAC seeded for the next frame this side sends (call :meth:`sent` once it is sent)."""
        return self._mac(self.sends, self.send_seq)

    def recv_mac(self) -> hmac.HMAC:
        """A MAC seeded for the next frame expected from the peer (call :meth:`received` after)."""
        return self._mac(self.receives, self.recv_seq)

    def sent(self) -> None:
        self.send_seq += 1

    def received(self) -> None:
        self.recv_seq += 1

    def _mac(self, direction: bytes, seq: int) -> hmac.HMAC:
        return hmac.new(self.key, direction + seq.to_bytes(8, "big"), hashlib.sha256)
