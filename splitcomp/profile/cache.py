"""Profile cache: JSON files named by a hash of everything the measured times depend on.

Cache format 2 (``cache_format`` in the file): the profiles carry their measurement record (the
machine's load, re-measured cuts, the check's findings). Files of format 1 predate the check and
are measured again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from splitcomp.errors import ConfigError
from splitcomp.files import atomic_write_text
from splitcomp.profile.measured import MeasuredProfiles

log = logging.getLogger(__name__)

CACHE_FORMAT = 2


def _update(digest: Any, tensor: torch.Tensor) -> None:
    tensor = tensor.detach().to("cpu").contiguous()
    if tensor.numel():
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())


def tensor_digest(tensor: torch.Tensor) -> str:
    """A short hash of a tensor's dtype, shape and bytes."""
    digest = hashlib.blake2b(f"{tensor.dtype}:{tuple(tensor.shape)}".encode(), digest_size=16)
    _update(digest, tensor)
    return digest.hexdigest()


def model_digests(model: nn.Module) -> dict[str, str]:
    """The architecture (class and module tree) and a hash of the bytes of every parameter and
    buffer (non-persistent buffers too, e.g. input normalisation constants)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        _update(digest, tensor)
    arch = f"{type(model).__module__}.{type(model).__qualname__}\n{model!r}"
    return {
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "architecture_sha": hashlib.blake2b(arch.encode(), digest_size=16).hexdigest(),
        "weights_sha": digest.hexdigest(),
    }


@lru_cache(maxsize=1)
def cpu_kind() -> str:
    """The CPU model name and core count (profiles measured on another CPU do not apply)."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} x{os.cpu_count()}"


def torch_device_kind(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"{device.type}:{cpu_kind()}"


def digest_of(key: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]


def cache_path(cache_dir: str | Path, key: Mapping[str, Any]) -> Path:
    return Path(cache_dir) / f"profiles-{digest_of(key)}.json"


def _cache_format(text: str) -> Any:
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data.get("cache_format", 1) if isinstance(data, dict) else None


def load_cached(cache_dir: str | Path | None, key: Mapping[str, Any]) -> MeasuredProfiles | None:
    """The cached profiles for ``key``, or None (no cache dir, no file, unreadable file, a file of an
    older cache format, other key). The caller checks the numbers before using them."""
    if cache_dir is None:
        return None
    path = cache_path(cache_dir, key)
    if not path.is_file():
        return None
    try:
        text = path.read_text()
    except OSError as exc:
        log.warning("ignoring unreadable profile cache %s: %s", path, exc.strerror)
        return None
    version = _cache_format(text)
    if version is not None and version != CACHE_FORMAT:
        log.info("profile cache %s has format %s, not %s (measured before profiles were checked): measuring again",
                 path, version, CACHE_FORMAT)
        return None
    try:
        profiles = MeasuredProfiles.from_json(text)
    except ConfigError as exc:
        log.warning("ignoring unreadable profile cache %s: %s", path, exc)
        return None
    # the stored key must match exactly (JSON round trip of the key we would write)
    if json.loads(json.dumps(profiles.key, default=str)) != json.loads(json.dumps(dict(key), default=str)):
        return None
    profiles.source = str(path)
    return profiles


def store(cache_dir: str | Path | None, profiles: MeasuredProfiles) -> Path | None:
    if cache_dir is None:
        return None
    data = {"cache_format": CACHE_FORMAT, **json.loads(profiles.to_json())}
    return atomic_write_text(cache_path(cache_dir, profiles.key), json.dumps(data, indent=1, allow_nan=False))
