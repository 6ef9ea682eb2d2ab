"""Server-load models: the common interface, schedules, files and validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from splitcomp.errors import ConfigError, TraceError
from splitcomp.scenario import BatchLoad, ClientsLoad, NoLoad, TraceLoad, TraceWarning

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def test_no_load_answers_the_defaults():
    load = NoLoad()
    assert (load.kind, load.batch_at(5.0), load.slowdown_at(5.0), load.clients_at(5.0)) == ("none", 1, 1.0, 0)
    assert load.describe() == {"kind": "none"}


def test_batch_constant_and_schedule():
    assert BatchLoad(batch_size=4).batch_at(100.0) == 4
    load = BatchLoad(batch_size=2, schedule=[[10, 8], [20.5, 1]])
    assert [load.batch_at(t) for t in (0, 9.99, 10, 20.4, 20.5, 1e6)] == [2, 2, 8, 8, 1, 1]
    assert (load.kind, load.slowdown_at(15), load.clients_at(15)) == ("batch", 1.0, 0)
    assert load.describe()["max_batch"] == 8


def test_batch_from_the_example_file():
    load = BatchLoad(path=str(CONF_DIR / "server_load/examples/batch_ramp.csv"))
    assert [load.batch_at(t) for t in (0, 45, 125, 200)] == [1, 2, 16, 1]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_size": 0},
        {"batch_size": 2.5},
        {"batch_size": "four"},
        {"schedule": [[0, 0]]},
        {"schedule": [[5, 2], [5, 3]]},
        {"schedule": [[0, 2, 3]]},
        {"schedule": [[0, 2]], "path": "x.csv"},
    ],
)
def test_batch_validation(kwargs):
    with pytest.raises(ConfigError):
        BatchLoad(**kwargs)


def test_batch_file_with_a_bad_value(tmp_path):
    path = tmp_path / "b.csv"
    path.write_text("t,b\n0,1\n5,0.5\n")
    with pytest.raises(TraceError, match="integer >= 1"):
        BatchLoad(path=str(path))


def test_clients_schedule_and_arrivals():
    load = ClientsLoad(clients=2, rate_hz=5.0, schedule=[[100, 6]], seed=3)
    assert (load.kind, load.cut, load.closed_loop) == ("clients", "input", False)
    assert [load.clients_at(t) for t in (0, 99, 100, 500)] == [2, 2, 6, 6]
    arrivals = load.arrival_times(200.0)
    assert np.array_equal(arrivals, ClientsLoad(clients=2, rate_hz=5.0, schedule=[[100, 6]], seed=3).arrival_times(200.0))
    assert np.all(np.diff(arrivals) >= 0) and arrivals.min() >= 0 and arrivals.max() < 200
    assert np.sum(arrivals < 100) == pytest.approx(1000, rel=0.15)  # 2 clients x 5 Hz x 100 s
    assert np.sum(arrivals >= 100) == pytest.approx(3000, rel=0.1)
    assert ClientsLoad(clients=3).closed_loop and ClientsLoad(clients=3).batch_at(1.0) == 1


@pytest.mark.parametrize("kwargs", [{"clients": -1}, {"rate_hz": 0.0}, {"cut": ""}, {"schedule": [[0, 1.5]]}])
def test_clients_validation(kwargs):
    with pytest.raises(ConfigError):
        ClientsLoad(**kwargs)


def test_trace_load_from_the_example_file():
    load = TraceLoad(str(CONF_DIR / "server_load/examples/slowdown_bursts.csv"))
    assert [load.slowdown_at(t) for t in (0, 25, 65, 1000)] == [1.0, 1.5, 3.0, 1.0]
    assert (load.kind, load.batch_at(65), load.clients_at(65)) == ("trace", 1, 0)
    assert load.describe()["max_slowdown"] == 3.0


def test_trace_load_rules(tmp_path):
    path = tmp_path / "s.txt"
    path.write_text("5 2.0\noops\n10 1.0\n")  # no header, whitespace, one malformed row
    with pytest.warns(TraceWarning, match="skipped 1"):
        load = TraceLoad(str(path))
    assert [load.slowdown_at(t) for t in (0, 5, 10)] == [1.0, 2.0, 1.0]  # 1.0 before the first point
    path.write_text("0,1.0\n5,0.5\n")
    with pytest.raises(TraceError, match=">= 1"):
        TraceLoad(str(path))
    path.write_text("0,1.0\n0,2.0\n")
    with pytest.raises(TraceError, match="strictly increase"):
        TraceLoad(str(path))
    with pytest.raises(TraceError, match="not found"):
        TraceLoad(str(tmp_path / "missing.csv"))
