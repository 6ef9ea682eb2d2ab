import copy
import json
import logging
import os
import time
from types import SimpleNamespace

import pytest
import torch

from splitcomp.errors import ConfigError
from splitcomp.link.codecs import (
    EncodedTensor,
    RawCodec,
    dtype_name,
    register_codec,
    tensor_to_bytes,
    wire_dtype,
)
from splitcomp.profile import machine, profiler
from splitcomp.profile.check import ProfileCheckError
from splitcomp.profile.latency import LatencyModel, Profiles
from splitcomp.profile.profiler import check_batch_sizes, get_profiles, profile_plan, resolve_server_device

from . import test_check

DEVICE = {"threads": 1, "slowdown": 1.0, "pin_cores": None}
SERVER = {"threads": 1, "device": "cpu", "pin_cores": None}


def quick_cfg(cache_dir):
    return {"batch_sizes": [1, 2, 4], "warmup": 1, "repeats": 3, "cache_dir": str(cache_dir)}


def test_profile_plan_measures_every_candidate(example, tiny_plan):
    plan = tiny_plan()
    profiles = profile_plan(plan, example, RawCodec(), DEVICE, SERVER, batch_sizes=[1, 2, 4], warmup=1, repeats=3,
                            progress=False)
    assert profiles.names == ["input", "layer4", "output"]
    full, mid, local = profiles.cuts
    assert full.is_full_offload and not full.is_device_only
    assert local.is_device_only and not local.is_full_offload
    assert full.bytes_up == 3 * 32 * 32  # the uint8 image
    assert mid.bytes_up == 2 * 8 * 8 * 4  # 2 float32 channels at 8x8
    assert local.bytes_up == 0 and local.bytes_down == 0
    assert full.bytes_down == mid.bytes_down == 10 * 4  # float32 logits
    for cut in (full, mid):
        assert sorted(cut.tail_s) == [1, 2, 4] and all(t > 0 for t in cut.tail_s.values())
        assert cut.decode_s > 0 and cut.encode_s > 0
    assert local.head_s[1] > 0 and local.tail_at(4) == 0.0
    # the latency model runs on measured profiles
    assert LatencyModel(profiles).predict(mid, 1e6).total_s > mid.head_at(1)


def test_device_slowdown_scales_the_head(example, tiny_plan):
    plan = tiny_plan()
    slow = profile_plan(plan, example, RawCodec(), {**DEVICE, "slowdown": 50.0}, SERVER, [1], 1, 5, progress=False)
    fast = profile_plan(plan, example, RawCodec(), DEVICE, SERVER, [1], 1, 5, progress=False)
    # generous: 50x nominal, allow for timing noise between the two runs
    assert slow.by_name("output").head_at(1) > 10 * fast.by_name("output").head_at(1)
    assert slow.by_name("layer4").head_at(1) > 10 * fast.by_name("layer4").head_at(1)
    assert slow.by_name("input").tail_at(1) < 10 * fast.by_name("input").tail_at(1)  # the server is not slowed


def test_total_tail_time_grows_with_batch_size(example, tiny_model, tiny_plan):
    model = tiny_model(width=32)
    big = torch.randint(0, 256, (1, 3, 96, 96), dtype=torch.uint8)
    profiles = profile_plan(tiny_plan(model), big, RawCodec(), DEVICE, SERVER, [1, 16], 1, 5, progress=False)
    full = profiles.by_name("input")
    # a batch of 16 costs more in total than a lone request (generous: per-request cost may drop)
    assert full.tail_s[16] > 1.5 * full.tail_s[1]


def test_second_call_hits_the_cache(tmp_path, example, monkeypatch, tiny_model, tiny_plan):
    model = tiny_model()
    plan = tiny_plan(model)
    first = get_profiles(model, plan, example, RawCodec(), DEVICE, SERVER, quick_cfg(tmp_path), progress=False)
    assert first.source == "measured"
    assert len(list(tmp_path.glob("*.json"))) == 1

    def no_profiling(*args, **kwargs):
        raise AssertionError("profiled again despite a cache hit")

    monkeypatch.setattr(profiler, "profile_plan", no_profiling)
    second = get_profiles(model, plan, example, RawCodec(), DEVICE, SERVER, quick_cfg(tmp_path), progress=False)
    assert second == first  # same numbers
    assert second.source.endswith(".json")


@register_codec
class HalfCodec(RawCodec):
    """A different codec (float16 on the wire) to check that the codec is part of the cache key."""

    name = "test_profile_half"

    def encode(self, tensor):
        half = tensor.half() if tensor.is_floating_point() else tensor
        return EncodedTensor(self.name, dtype_name(half.dtype), tuple(half.shape), tensor_to_bytes(half),
                             {"dtype": dtype_name(tensor.dtype)})

    def decode(self, encoded):
        return super().decode(encoded).to(wire_dtype(encoded.params["dtype"]))

    def __repr__(self):
        return "HalfCodec()"


@pytest.mark.parametrize("change", ["weights", "device_threads", "server_threads", "slowdown", "codec",
                                    "batch_sizes", "input_shape", "input_content"])
def test_cache_is_invalidated_when_what_it_depends_on_changes(tmp_path, example, monkeypatch, change, tiny_model, tiny_plan):
    model = tiny_model()
    plan = tiny_plan(model)
    # check off: two threads on a busy two-core machine measure wildly, and this test is about the key
    args = dict(codec=RawCodec(), device_cfg=dict(DEVICE), server_cfg=dict(SERVER),
                profile_cfg={**quick_cfg(tmp_path), "check": False})
    get_profiles(model, plan, example, progress=False, **args)
    calls = []
    real = profiler.profile_plan
    monkeypatch.setattr(profiler, "profile_plan", lambda *a, **k: calls.append(1) or real(*a, **k))
    if change == "weights":
        with torch.no_grad():
            model[1].weight[0, 0, 0, 0] += 1.0
    elif change == "device_threads":
        args["device_cfg"]["threads"] = 2
    elif change == "server_threads":
        args["server_cfg"]["threads"] = 2
    elif change == "slowdown":
        args["device_cfg"]["slowdown"] = 2.0
    elif change == "codec":
        args["codec"] = HalfCodec()
    elif change == "batch_sizes":
        args["profile_cfg"]["batch_sizes"] = [1, 8]
    elif change == "input_shape":
        example = torch.zeros(1, 3, 16, 16, dtype=torch.uint8)
    elif change == "input_content":
        example = torch.zeros_like(example)
    again = get_profiles(model, plan, example, progress=False, **args)
    assert calls  # measured again (more than once when the check re-measures an outlier)
    assert len(list(tmp_path.glob("*.json"))) == 2
    if change == "codec":
        assert again.by_name("layer4").bytes_up == 2 * 8 * 8 * 2


def test_cache_off_and_corrupt_cache_file(tmp_path, example, tiny_model, tiny_plan):
    model = tiny_model()
    plan = tiny_plan(model)
    get_profiles(model, plan, example, RawCodec(), DEVICE, SERVER, quick_cfg(tmp_path), progress=False)
    (path,) = tmp_path.glob("*.json")
    path.write_text("{broken")
    again = get_profiles(model, plan, example, RawCodec(), DEVICE, SERVER, quick_cfg(tmp_path), progress=False)
    assert again.source == "measured"  # a corrupt file is measured over, not an error
    off = get_profiles(model, plan, example, RawCodec(), DEVICE, SERVER, {**quick_cfg(tmp_path), "cache_dir": None},
                       progress=False)
    assert off.source == "measured" and len(list(tmp_path.glob("*.json"))) == 1


def test_config_errors():
    assert resolve_server_device("cpu") == torch.device("cpu")
    assert resolve_server_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="server.device"):
        resolve_server_device("not-a-device")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            resolve_server_device("cuda")
    assert check_batch_sizes([8, 2, 2]) == [1, 2, 8]
    with pytest.raises(ConfigError, match="batch_sizes"):
        check_batch_sizes([0, 4])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tail_on_cuda_leaves_the_model_on_the_cpu(example, tiny_model, tiny_plan):
    model = tiny_model()
    plan = tiny_plan(model)
    on_gpu = profile_plan(plan, example, RawCodec(), DEVICE, {**SERVER, "device": "auto"}, [1, 4], 1, 3,
                          progress=False)
    on_cpu = profile_plan(plan, example, RawCodec(), DEVICE, SERVER, [1, 4], 1, 3, progress=False)
    assert all(p.device.type == "cpu" for p in model.parameters())  # the tail was copied, not moved
    assert [c.bytes_up for c in on_gpu.cuts] == [c.bytes_up for c in on_cpu.cuts]
    assert all(t > 0 for c in on_gpu.cuts[:-1] for t in c.tail_s.values())
    assert on_gpu.by_name("input").decode_s > 0


def test_profiles_of_a_real_split_plan(tmp_path, example, tiny_model):
    from splitcomp.split import analyze

    model = tiny_model()
    plan = analyze(model, example, codec=RawCodec())
    profiles = get_profiles(model, plan, example, RawCodec(), DEVICE, SERVER, quick_cfg(tmp_path), progress=False)
    assert profiles.names == [c.name for c in plan.candidates]
    assert [c.index for c in profiles.cuts] == [c.index for c in plan.candidates]
    assert profiles.cuts[0].is_full_offload and profiles.cuts[-1].is_device_only
    for cut, planned in zip(profiles.cuts[:-1], plan.candidates[:-1], strict=True):
        assert cut.bytes_up == planned.bytes  # the profiler's codec bytes agree with the plan's
        assert cut.head_flops == planned.head_flops and cut.tail_flops == planned.tail_flops
    assert profiles.cuts[-1].head_at(1) > 0


# --- checked profiles -----------------------------------------------------------------------------

class Stalling(torch.nn.Module):
    """A head that stalls 20 ms per call while ``stalls[0]`` lasts: a busy moment on the machine."""

    def __init__(self, head, stalls):
        super().__init__()
        self.head, self.stalls = head, stalls

    def forward(self, x):
        if self.stalls[0] > 0:
            self.stalls[0] -= 1
            spin_until = time.perf_counter() + 0.02  # work, not a sleep: the device's clock counts work
            while time.perf_counter() < spin_until:
                pass
        return self.head(x)


def stalling_plan(tiny_plan, model, stalls):
    """The tiny plan, whose head up to layer4 stalls for ``stalls`` calls (shared by every split)."""
    plan = tiny_plan(model)
    split, left = plan.split, [stalls]

    def stalling_split(cut):
        head, tail = split(cut)
        return (Stalling(head, left), tail) if cut.name == "layer4" else (head, tail)

    plan.split = stalling_split
    return plan


def test_an_outlier_is_remeasured_and_then_passes(tmp_path, example, tiny_model, tiny_plan, caplog):
    model = tiny_model()
    cfg = quick_cfg(tmp_path)
    # the head measurement of layer4 (1 warm-up + 3 timed calls) falls into a busy moment
    plan = stalling_plan(tiny_plan, model, stalls=cfg["warmup"] + cfg["repeats"])
    with caplog.at_level(logging.INFO, logger="splitcomp.profile"):
        profiles = get_profiles(model, plan, example, RawCodec(), DEVICE, SERVER, cfg, progress=False)
    assert profiles.by_name("layer4").head_at(1) < 0.01  # the re-measured time is kept, not the stalled one
    assert "layer4" in profiles.measurement.remeasured[0]  # it took longer than the whole model on the device
    assert profiles.measurement.problems == []
    assert any("re-measuring" in r.getMessage() and "layer4" in r.getMessage() for r in caplog.records)
    assert len(list(tmp_path.glob("*.json"))) == 1  # the passing profile is cached


def test_a_cut_that_stays_slow_is_refused_in_one_sentence(tmp_path, example, tiny_model, tiny_plan):
    model = tiny_model()
    plan = stalling_plan(tiny_plan, model, stalls=10_000)  # busy throughout
    with pytest.raises(ConfigError) as refused:
        get_profiles(model, plan, example, RawCodec(), DEVICE, SERVER, {**quick_cfg(tmp_path), "repeats": 2},
                     progress=False)
    text = str(refused.value)
    assert isinstance(refused.value, ProfileCheckError) and "\n" not in text
    assert "layer4" in text and "after 2 re-measurements" in text
    assert "profile.force=true" in text and "profile.check=false" in text
    assert refused.value.profiles.measurement.remeasured  # what was tried is kept for a look
    assert list(tmp_path.glob("*.json")) == []  # never cached


def poisoned_plan_and_measure(monkeypatch):
    """A plan with the issue's cut names whose measurements always give the issue's poisoned times."""
    poisoned = test_check.poisoned_profiles()
    plan = SimpleNamespace(candidates=[SimpleNamespace(index=c.index, name=c.name) for c in poisoned.cuts])
    measured = []

    def measure(plan, example, codec, device_cfg, server_cfg, batch_sizes, warmup, repeats, candidates=None,
                key=None, progress=True):
        measured.append([c.name for c in candidates])
        return Profiles(key=dict(key), cuts=[copy.deepcopy(poisoned.by_name(c.name)) for c in candidates])

    monkeypatch.setattr(profiler, "profile_plan", measure)
    return plan, measured


def test_the_issues_poisoned_profile_is_refused(tmp_path, example, tiny_model, monkeypatch):
    plan, measured = poisoned_plan_and_measure(monkeypatch)
    device = {**DEVICE, "slowdown": 10.0}
    with pytest.raises(ProfileCheckError, match=r"profile\.force=true.*profile\.check=false") as refused:
        get_profiles(tiny_model(), plan, example, RawCodec(), device, SERVER, quick_cfg(tmp_path), progress=False)
    assert "conv2d_35" in str(refused.value)  # the worst problem: a head four times device-only's
    assert len(measured) == 3 and set(measured[1]) >= {"conv2d_35"}  # measured, then re-measured twice
    assert list(tmp_path.glob("*.json")) == []


def test_check_false_accepts_a_failing_profile_knowingly(tmp_path, example, tiny_model, monkeypatch, caplog):
    plan, measured = poisoned_plan_and_measure(monkeypatch)
    cfg = {**quick_cfg(tmp_path), "check": False}
    with caplog.at_level(logging.WARNING, logger="splitcomp.profile"):
        profiles = get_profiles(tiny_model(), plan, example, RawCodec(), {**DEVICE, "slowdown": 10.0}, SERVER, cfg,
                                progress=False)
    assert len(measured) == 1 and profiles.measurement.problems and not profiles.measurement.checked
    assert any("profile.check=false" in r.getMessage() for r in caplog.records)


def cache_file(cache_dir):
    (path,) = cache_dir.glob("*.json")
    return path, json.loads(path.read_text())


def test_a_poisoned_cache_file_is_not_used(tmp_path, example, tiny_model, tiny_plan, caplog):
    model, plan = tiny_model(), tiny_plan()
    get_profiles(model, plan, example, RawCodec(), DEVICE, SERVER, quick_cfg(tmp_path), progress=False)
    path, data = cache_file(tmp_path)
    data["cuts"][1]["head_s"]["1"] = 1.0  # the head up to layer4 a second, the whole model a fraction of a ms
    path.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="splitcomp.profile"):
        again = get_profiles(model, plan, example, RawCodec(), DEVICE, SERVER, quick_cfg(tmp_path), progress=False)
    assert again.source == "measured" and again.by_name("layer4").head_at(1) < 0.5
    assert any("cached profiles" in r.getMessage() and "check" in r.getMessage() and "measuring again" in r.getMessage()
               for r in caplog.records)
    assert cache_file(tmp_path)[1]["cuts"][1]["head_s"]["1"] < 0.5  # replaced by the new measurement


def test_a_cache_file_of_the_previous_format_is_measured_again(tmp_path, example, tiny_model, tiny_plan, caplog):
    model, plan = tiny_model(), tiny_plan()
    get_profiles(model, plan, example, RawCodec(), DEVICE, SERVER, quick_cfg(tmp_path), progress=False)
    path, data = cache_file(tmp_path)
    old = {"format": data["format"], "key": data["key"], "cuts": data["cuts"]}  # as format 1 wrote it
    path.write_text(json.dumps(old))
    with caplog.at_level(logging.INFO, logger="splitcomp.profile"):
        again = get_profiles(model, plan, example, RawCodec(), DEVICE, SERVER, quick_cfg(tmp_path), progress=False)
    assert again.source == "measured"
    assert any("format 1" in r.getMessage() and "measuring again" in r.getMessage() for r in caplog.records)
    assert cache_file(tmp_path)[1]["cache_format"] == 2


def test_force_measures_over_a_cached_profile(tmp_path, example, tiny_model, tiny_plan):
    model, plan = tiny_model(), tiny_plan()
    get_profiles(model, plan, example, RawCodec(), DEVICE, SERVER, quick_cfg(tmp_path), progress=False)
    forced = get_profiles(model, plan, example, RawCodec(), DEVICE, SERVER, {**quick_cfg(tmp_path), "force": True},
                          progress=False)
    assert forced.source == "measured"


def test_the_machines_load_is_recorded_with_the_profile(tmp_path, example, tiny_model, tiny_plan):
    model, plan = tiny_model(), tiny_plan()
    profiles = get_profiles(model, plan, example, RawCodec(), DEVICE, SERVER, quick_cfg(tmp_path), progress=False)
    load = profiles.measurement.load
    assert load.cpus == os.cpu_count() and load.wall_s > 0 and load.own_cpu_s > 0
    if hasattr(os, "getloadavg"):
        assert load.load_before >= 0 and load.load_after >= 0
    assert cache_file(tmp_path)[1]["measurement"]["load"] == load.to_dict()  # saved in the JSON
    cached = get_profiles(model, plan, example, RawCodec(), DEVICE, SERVER, quick_cfg(tmp_path), progress=False)
    assert cached.source.endswith(".json") and cached.measurement == profiles.measurement
    params = profiles.measurement.as_params()
    assert params["profile_load.cpus"] == os.cpu_count() and params["profile_check"] == "passed"


def test_a_busy_machine_is_warned_about_in_one_line(tmp_path, example, tiny_model, tiny_plan, monkeypatch, caplog):
    busy = iter(range(0, 10_000, 1000))  # other processes burn 1000 CPU seconds between two readings
    monkeypatch.setattr(machine, "_machine_busy_cpu_s", lambda: float(next(busy)))
    with caplog.at_level(logging.WARNING, logger="splitcomp.profile"):
        profiles = get_profiles(tiny_model(), tiny_plan(), example, RawCodec(), DEVICE, SERVER, quick_cfg(tmp_path),
                                progress=False)
    assert profiles.measurement.load.others_cores > 1
    (line,) = [r.getMessage() for r in caplog.records if "busy machine" in r.getMessage()]
    assert "\n" not in line and "profile.force=true" in line
