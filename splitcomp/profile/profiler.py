"""Measuring every candidate cut: device head time (device threads, slowdown), codec encode/decode
time and bytes on the real head output, and server tail time per batch size (server threads and
torch device). :func:`get_profiles` checks the times (:mod:`splitcomp.profile.check`), re-measures
outliers, records the machine's load, and caches them on disk (:mod:`splitcomp.profile.cache`)."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from splitcomp.errors import ConfigError
from splitcomp.link.codecs import Codec, EncodedTensor, decode
from splitcomp.profile import cache
from splitcomp.profile.check import CheckLimits, ProfileCheckError, check_profiles, refusal, suspects, worst
from splitcomp.profile.latency import CutProfile, Profiles
from splitcomp.profile.machine import LoadWatch
from splitcomp.profile.measured import MeasuredProfiles, Measurement
from splitcomp.profile.timing import (
    check_slowdown,
    measure,
    median_and_spread,
    pinned,
    torch_threads,
    work_clock,
)

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZES = (1, 2, 4, 8)


@dataclass(frozen=True)
class Side:
    """Where one side computes: intra-op threads, pinned cores, torch device, slowdown factor."""

    threads: int = 1
    pin_cores: tuple[int, ...] | None = None
    torch_device: torch.device = torch.device("cpu")
    slowdown: float = 1.0

    @contextmanager
    def active(self) -> Iterator[None]:
        with torch_threads(self.threads), pinned(list(self.pin_cores) if self.pin_cores else None):
            yield


def resolve_server_device(name: str | None) -> torch.device:
    """``auto`` -> cuda when available else cpu; any other torch device string as given."""
    name = str(name or "auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"server.device={name!r} is not a torch device; use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"server.device={name!r} but CUDA is not available here; use server.device=auto or cpu")
    return device


def device_side(device_cfg: Mapping[str, Any]) -> Side:
    pin = device_cfg.get("pin_cores")
    return Side(threads=int(device_cfg.get("threads", 1)), pin_cores=tuple(pin) if pin else None,
                slowdown=check_slowdown(device_cfg.get("slowdown", 1.0)))


def server_side(server_cfg: Mapping[str, Any]) -> Side:
    pin = server_cfg.get("pin_cores")
    return Side(threads=int(server_cfg.get("threads", 1)), pin_cores=tuple(pin) if pin else None,
                torch_device=resolve_server_device(server_cfg.get("device", "auto")))


def check_batch_sizes(batch_sizes: Sequence[int] | None) -> list[int]:
    """Sorted distinct positive batch sizes, always including 1 (a lone request)."""
    sizes = {1} | {int(b) for b in (batch_sizes or DEFAULT_BATCH_SIZES)}
    if min(sizes) < 1:
        raise ConfigError(f"profile.batch_sizes {list(batch_sizes or [])} has a size below 1; use positive integers")
    return sorted(sizes)


# --- one cut --------------------------------------------------------------------------------------

def _as_tuple(values: Any) -> tuple[Any, ...]:
    return values if isinstance(values, tuple) else (values,)


def _encode_all(values: tuple[Any, ...], codec: Codec) -> list[EncodedTensor | Any]:
    return [codec.encode(v) if isinstance(v, torch.Tensor) else v for v in values]


def _decode_all(encoded: list[Any], device: torch.device) -> tuple[Any, ...]:
    return tuple(decode(e).to(device) if isinstance(e, EncodedTensor) else e for e in encoded)


def _payload_bytes(encoded: list[Any]) -> int:
    """Codec payload of the tensors plus the JSON size of plain values carried alongside."""
    return sum(e.nbytes if isinstance(e, EncodedTensor) else len(json.dumps(e, default=str)) for e in encoded)


def _output_bytes(out: Any) -> int:
    """Raw bytes of the response (logits), summed over tensors if the model returns several."""
    if isinstance(out, torch.Tensor):
        return out.numel() * out.element_size()
    if isinstance(out, (tuple, list)):
        return sum(_output_bytes(o) for o in out)
    if isinstance(out, Mapping):
        return sum(_output_bytes(o) for o in out.values())
    return 0


def _to_device(values: tuple[Any, ...], device: torch.device) -> tuple[Any, ...]:
    return tuple(v.to(device) if isinstance(v, torch.Tensor) else v for v in values)


def _batch(example: torch.Tensor, batch: int) -> torch.Tensor:
    one = example[:1]
    return one.expand(batch, *one.shape[1:]).contiguous()


def _median_dict(times: dict[int, list[float]], scale: float = 1.0) -> tuple[dict[int, float], dict[int, float]]:
    stats = {b: median_and_spread(t) for b, t in times.items()}
    return {b: m * scale for b, (m, _) in stats.items()}, {b: s * scale for b, (_, s) in stats.items()}


def profile_cut(head: Callable[..., Any], tail: Callable[..., Any], cut: Any, n_cuts: int, example: torch.Tensor,
                codec: Codec, device: Side, server: Side, batch_sizes: Sequence[int], warmup: int,
                repeats: int) -> CutProfile:
    """Measure one cut given its head and tail modules (see :func:`profile_plan`)."""
    example = example[:1]
    flops = {"head_flops": getattr(cut, "head_flops", None), "tail_flops": getattr(cut, "tail_flops", None)}
    with device.active():  # the head's work, timed as the runtime's emulated device times it
        head_times = measure(lambda: head(example), warmup, repeats, clock=work_clock())
    head_s, head_spread = _median_dict({1: head_times}, device.slowdown)
    if cut.index == n_cuts - 1:  # device-only: nothing crosses, nothing runs on the server
        return CutProfile(cut.index, cut.name, 0, 0, head_s, {b: 0.0 for b in batch_sizes}, 0.0, 0.0,
                          head_spread, {b: 0.0 for b in batch_sizes}, is_device_only=True, **flops)
    with device.active():
        values = _as_tuple(head(example))
        encode_times = measure(lambda: _encode_all(values, codec), warmup, repeats)
        encoded = _encode_all(values, codec)
    # not dilated: the runtime dilates the head alone (run_on_device) and times encoding as it is
    encode_s = median_and_spread(encode_times)[0]
    with server.active():
        tail_on_server = tail if server.torch_device.type == "cpu" else copy.deepcopy(tail).to(server.torch_device)
        decode_times = measure(lambda: _decode_all(encoded, server.torch_device), warmup, repeats, server.torch_device)
        bytes_down = _output_bytes(tail_on_server(_decode_all(encoded, server.torch_device)))
        tail_times = {}
        for b in batch_sizes:
            batched = _to_device(_as_tuple(head(_batch(example, b))), server.torch_device)
            tail_times[b] = measure(lambda batched=batched: tail_on_server(batched), warmup, repeats,
                                    server.torch_device)
    tail_s, tail_spread = _median_dict(tail_times)
    return CutProfile(cut.index, cut.name, _payload_bytes(encoded), bytes_down, head_s, tail_s, encode_s,
                      median_and_spread(decode_times)[0], head_spread, tail_spread,
                      is_device_only=False, is_full_offload=cut.index == 0, **flops)


# --- whole plan -----------------------------------------------------------------------------------

def profile_plan(plan: Any, example_input: torch.Tensor, codec: Codec, device_cfg: Mapping[str, Any],
                 server_cfg: Mapping[str, Any], batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
                 warmup: int = 1, repeats: int = 5, candidates: Sequence[Any] | None = None,
                 key: Mapping[str, Any] | None = None, progress: bool = True) -> Profiles:
    """Measure every candidate cut of ``plan`` (``plan.candidates`` unless ``candidates`` is given).

    The head runs at batch 1 with ``device_cfg.threads`` (pinned to ``device_cfg.pin_cores``) and
    its time is multiplied by ``device_cfg.slowdown`` (the same dilation :func:`run_on_device`
    applies to the head at run time; codec encoding is not dilated, as in the runtime); the tail runs for every batch size with ``server_cfg.threads`` on
    ``server_cfg.device``. No cache here: see :func:`get_profiles`.
    """
    device, server = device_side(device_cfg), server_side(server_cfg)
    sizes = check_batch_sizes(batch_sizes)
    cuts = list(plan.candidates if candidates is None else candidates)
    profiled = []
    with torch.inference_mode():
        for cut in tqdm(cuts, desc="profiling cuts", unit="cut", disable=not progress, leave=False):
            head, tail = plan.split(cut)
            for module in (head, tail):
                if isinstance(module, nn.Module):
                    module.eval()
            profiled.append(profile_cut(head, tail, cut, len(plan.cuts), example_input, codec, device, server,
                                        sizes, int(warmup), int(repeats)))
    return Profiles(key=dict(key or {}), cuts=profiled)


def profile_key(model: nn.Module, example_input: torch.Tensor, codec: Codec, candidates: Sequence[Any],
                device: Side, server: Side, batch_sizes: Sequence[int], warmup: int, repeats: int) -> dict[str, Any]:
    """Everything the measured numbers depend on, as plain JSON values."""
    return {
        "model": cache.model_digests(model),
        # content too: compressing codecs send fewer bytes for a blank image than for a real one
        "input": {"shape": list(example_input.shape), "dtype": str(example_input.dtype),
                  "sha": cache.tensor_digest(example_input)},
        "codec": {"repr": repr(codec), "class": f"{type(codec).__module__}.{type(codec).__qualname__}",
                  "params": {k: repr(v) for k, v in sorted(vars(codec).items())}},
        "candidates": [c.name for c in candidates],
        "device": {"threads": device.threads, "slowdown": device.slowdown,
                   "pin_cores": list(device.pin_cores or []), "kind": cache.torch_device_kind(device.torch_device)},
        "server": {"threads": server.threads, "pin_cores": list(server.pin_cores or []),
                   "kind": cache.torch_device_kind(server.torch_device)},
        "batch_sizes": list(batch_sizes),
        "warmup": int(warmup),
        "repeats": int(repeats),
        "torch": torch.__version__,
    }


@dataclass(frozen=True)
class ProfileSettings:
    """The ``profile`` config group, checked (see conf/profile/default.yaml)."""

    batch_sizes: list[int]
    warmup: int = 1
    repeats: int = 5
    cache_dir: str | None = "outputs/profiles"
    force: bool = False  # measure even when the cache holds profiles for this key
    check: bool = True  # refuse profiles that fail their check (False: use them, with a warning)
    remeasure: int = 2  # rounds of re-measuring flagged cuts, each with twice the repeats of the last
    limits: CheckLimits = CheckLimits()
    warn_load: float = 0.5  # warn when other processes kept more cores than this busy while measuring

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any]) -> ProfileSettings:
        remeasure = int(cfg.get("remeasure", cls.remeasure))
        if remeasure < 0:
            raise ConfigError(f"profile.remeasure={remeasure}; use 0 (never re-measure) or more rounds")
        cache_dir = cfg.get("cache_dir", cls.cache_dir)
        return cls(batch_sizes=check_batch_sizes(cfg.get("batch_sizes")), warmup=int(cfg.get("warmup", cls.warmup)),
                   repeats=int(cfg.get("repeats", cls.repeats)), cache_dir=None if cache_dir is None else str(cache_dir),
                   force=bool(cfg.get("force", cls.force)), check=bool(cfg.get("check", cls.check)),
                   remeasure=remeasure, limits=CheckLimits.from_cfg(cfg),
                   warn_load=float(cfg.get("warn_load", cls.warn_load)))


def get_profiles(model: nn.Module, plan: Any, example_input: torch.Tensor, codec: Codec,
                 device_cfg: Mapping[str, Any], server_cfg: Mapping[str, Any], profile_cfg: Mapping[str, Any],
                 progress: bool = True) -> MeasuredProfiles:
    """Checked profiles of ``plan.candidates``: from the cache (``profile_cfg.cache_dir``) when the
    model weights, input, codec, threads, slowdown, batch sizes, devices and torch version all match
    and the cached times pass the check, else measured, checked (outliers re-measured) and cached.
    ``profile_cfg.cache_dir: null`` turns caching off, ``force: true`` measures anyway.

    Raises :class:`~splitcomp.profile.check.ProfileCheckError` (a ConfigError) when the measured
    times still fail the check after ``profile_cfg.remeasure`` rounds, unless ``check`` is false.
    """
    settings = ProfileSettings.from_cfg(profile_cfg)
    device, server = device_side(device_cfg), server_side(server_cfg)
    candidates = list(plan.candidates)
    key = profile_key(model, example_input, codec, candidates, device, server, settings.batch_sizes,
                      settings.warmup, settings.repeats)
    cached = None if settings.force else cached_profiles(settings, key, device.slowdown)
    if cached is not None:
        return cached
    profiles = measure_checked(plan, example_input, codec, device_cfg, server_cfg, settings, candidates, key,
                               progress)
    path = cache.store(settings.cache_dir, profiles)
    if path is not None:
        log.info("profiles cached at %s", path)
    return profiles


def cached_profiles(settings: ProfileSettings, key: Mapping[str, Any], slowdown: float) -> MeasuredProfiles | None:
    """The cached profiles for ``key`` if they pass the check (or ``check`` is off), else None."""
    cached = cache.load_cached(settings.cache_dir, key)
    if cached is None:
        return None
    if cached.measurement is None:
        log.info("profile cache %s has no measurement record: measuring again", cached.source)
        return None
    problems = check_profiles(cached, settings.limits, slowdown)
    if problems and settings.check:
        log.warning("cached profiles %s fail the %s check (%s): measuring again", cached.source,
                    worst(problems).check, worst(problems).text)
        return None
    if problems:
        log.warning("using cached profiles %s that fail the %s check because profile.check=false: %s",
                    cached.source, worst(problems).check, worst(problems).text)
    else:
        log.info("profiles from cache %s", cached.source)
    warn_if_busy(cached.measurement, settings.warn_load)
    return cached


def measure_checked(plan: Any, example_input: torch.Tensor, codec: Codec, device_cfg: Mapping[str, Any],
                    server_cfg: Mapping[str, Any], settings: ProfileSettings, candidates: Sequence[Any],
                    key: Mapping[str, Any], progress: bool = True) -> MeasuredProfiles:
    """Measure every candidate, then re-measure the cuts the check flags (at most ``settings.remeasure``
    rounds, doubling the repeats each round) while recording the machine's load."""
    slowdown = device_side(device_cfg).slowdown
    rounds: list[list[str]] = []

    def measure_cuts(cuts: Sequence[Any], repeats: int, show: bool) -> Profiles:
        return profile_plan(plan, example_input, codec, device_cfg, server_cfg, settings.batch_sizes,
                            settings.warmup, repeats, candidates=cuts, key=key, progress=show)

    with LoadWatch() as watch:
        profiles = measure_cuts(candidates, settings.repeats, progress)
        problems = check_profiles(profiles, settings.limits, slowdown)
        while problems and settings.check and len(rounds) < settings.remeasure:
            names = suspects(problems)
            again = [c for c in candidates if c.name in names]
            repeats = settings.repeats * 2 ** (len(rounds) + 1)
            log.info("re-measuring cut(s) %s with %d repeats: %s", ", ".join(c.name for c in again), repeats,
                     worst(problems).text)
            profiles = replace_cuts(profiles, measure_cuts(again, repeats, False).cuts)
            rounds.append([c.name for c in again])
            problems = check_profiles(profiles, settings.limits, slowdown)
    measurement = Measurement(load=watch.load, remeasured=rounds, problems=[p.text for p in problems],
                              checked=settings.check)
    measured = MeasuredProfiles(key=profiles.key, cuts=profiles.cuts, measurement=measurement)
    warn_if_busy(measurement, settings.warn_load)
    if problems and settings.check:
        raise ProfileCheckError(refusal(problems, len(rounds), busy_note(measurement, settings.warn_load)), measured)
    if problems:
        log.warning("using profiles that fail the %s check because profile.check=false: %s", worst(problems).check,
                    worst(problems).text)
    return measured


def replace_cuts(profiles: Profiles, new_cuts: Sequence[CutProfile]) -> Profiles:
    """``profiles`` with the cuts of the same names replaced by ``new_cuts``."""
    by_name = {cut.name: cut for cut in new_cuts}
    return replace(profiles, cuts=[by_name.get(cut.name, cut) for cut in profiles.cuts])


def busy_note(measurement: Measurement, warn_load: float) -> str:
    """"" on a quiet machine, else a clause on how busy it was while measuring."""
    return measurement.load.describe() if measurement.load.is_busy(warn_load) else ""


def warn_if_busy(measurement: Measurement, warn_load: float) -> None:
    note = busy_note(measurement, warn_load)
    if note:
        log.warning("profiles measured on a busy machine at %s: %s, so their times may be too long; re-measure "
                    "on a quiet machine with `splitcomp-profile profile.force=true`", measurement.measured_at, note)
