import numpy as np
import pytest

from splitcomp.fleet.calibration import Calibration, Line, fit_line
from splitcomp.fleet.metrics import BatchSpan
from splitcomp.profile.latency import CutProfile
from splitcomp.records import RequestRecord


def test_fit_line_goes_through_the_median_at_each_size():
    sizes = [1, 1, 1, 2, 2, 4]
    seconds = [0.013, 0.013, 0.5, 0.020, 0.020, 0.034]  # an outlier at size 1 is a median's business
    line = fit_line(sizes, seconds)
    assert line.fixed == pytest.approx(0.006, abs=1e-3) and line.slope == pytest.approx(0.007, abs=1e-3)
    assert fit_line([3, 3], [0.1, 0.2]) is None  # one size says nothing about the slope


def test_calibration_fits_batches_per_cut_and_answers_by_batch_size():
    cut = CutProfile(3, "mid", 1000, 40, {1: 0.003}, {1: 0.005, 2: 0.010})
    batches = [BatchSpan(0.1 * i, 0.006 + 0.007 * n + 1e-6 * i, n, cut=3) for i, n in enumerate([1, 2, 3, 1, 2, 3])]
    records = [RequestRecord(i, 0.0, 0.0, 3, "mid", 0.1, device_s=0.003, server_s=b.seconds, bytes_up=1200,
                             downlink_s=0.001 * b.requests) for i, b in enumerate(batches)]
    calibration = Calibration.from_runs([cut], [([records], batches)])
    timing = calibration.server
    assert timing.batch_lines[3].at(2) == pytest.approx(0.020, abs=1e-4)
    assert timing.answer_line.slope == pytest.approx(0.001, abs=1e-6)  # answers of a batch go one by one
    rng = np.random.default_rng(0)
    assert timing.batch_seconds(cut, 5, rng) == pytest.approx(0.041, rel=0.01)
    other = CutProfile(4, "late", 100, 40, {1: 0.009}, {1: 0.002})
    assert timing.batch_seconds(other, 1, rng) == pytest.approx(0.002 * timing.profile_ratio, rel=0.01)
    assert calibration.device_factors == []  # heads under MIN_HEAD_S measure the sleep, not the device


def test_a_line_is_never_negative():
    assert Line(-0.01, 0.002).at(1) == 0.0
