import os
import time

import pytest
import torch

from splitcomp.errors import ConfigError
from splitcomp.profile.timing import (
    measure,
    median_and_spread,
    pin_to_cores,
    pinned,
    precise_sleep,
    run_on_device,
    torch_threads,
)


def busy(seconds: float) -> str:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return "done"


def test_run_on_device_dilates_time_and_reports_both():
    out, compute_s, dilated_s = run_on_device(busy, 0.02, slowdown=3.0)
    assert out == "done"
    assert 0.01 < compute_s <= 0.02 + 0.01  # the work (CPU time: less when the core was shared)
    # generous tolerance: the wait is (3 - 1) * compute on top of the compute
    assert 3.0 * compute_s - 0.001 <= dilated_s <= 3.0 * compute_s + 0.03


def test_the_emulated_device_multiplies_its_work_not_the_time_the_core_was_taken():
    """With one torch thread (the device default) the work is the thread's CPU time: a call that
    spends 50 ms off the CPU (as while another process holds the core) is not stretched 4x."""
    with torch_threads(1):
        _, compute_s, dilated_s = run_on_device(time.sleep, 0.05, slowdown=4.0)
    assert compute_s < 0.01
    assert 0.05 <= dilated_s < 0.05 + 0.1  # 4 x 50 ms = 200 ms if wall time were multiplied


def test_run_on_device_without_slowdown_does_not_wait():
    _, compute_s, dilated_s = run_on_device(busy, 0.01, slowdown=1.0)
    assert dilated_s - compute_s < 0.005


def test_run_on_device_passes_keyword_arguments():
    out, _, _ = run_on_device(lambda a, b=0: a + b, 1, b=2, slowdown=1.5)
    assert out == 3


@pytest.mark.parametrize("slowdown", [0.5, 0.0, float("inf"), float("nan")])
def test_slowdown_below_one_is_a_config_error(slowdown):
    with pytest.raises(ConfigError, match="slowdown"):
        run_on_device(busy, 0.0, slowdown=slowdown)


def test_precise_sleep_is_close():
    start = time.perf_counter()
    precise_sleep(0.015)
    assert 0.015 <= time.perf_counter() - start < 0.015 + 0.05  # never early; late only by scheduling


def test_torch_threads_restores_the_thread_count():
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    with torch_threads(target):
        assert torch.get_num_threads() == target
    assert torch.get_num_threads() == before
    with pytest.raises(ConfigError, match="threads"):
        with torch_threads(0):
            pass


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no core pinning on this platform")
def test_pinning_sets_and_restores_affinity():
    before = os.sched_getaffinity(0)
    core = min(before)
    with pinned([core]):
        assert os.sched_getaffinity(0) == {core}
    assert os.sched_getaffinity(0) == before
    assert pin_to_cores(None) is None
    with pytest.raises(ConfigError, match="cores"):
        pin_to_cores([10_000])
    assert os.sched_getaffinity(0) == before


def test_measure_and_median_spread():
    calls = []
    times = measure(lambda: calls.append(1), warmup=2, repeats=5)
    assert len(times) == 5 and len(calls) == 7
    assert median_and_spread([1.0, 2.0, 3.0, 4.0, 100.0]) == (3.0, 2.0)
    assert median_and_spread([0.5]) == (0.5, 0.0)
    with pytest.raises(ConfigError):
        measure(lambda: None, warmup=0, repeats=0)
