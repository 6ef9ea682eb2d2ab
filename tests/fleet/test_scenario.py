import pytest

from splitcomp.errors import ConfigError
from splitcomp.fleet.scenario import FleetSpec, load_fleet

TRACE = "../shared/traces/ghent4g_ugent/report_car_0004.log"


def test_shipped_fleets_load_and_give_each_device_its_own_window():
    spec = load_fleet("default")
    assert spec.devices == 16 and load_fleet("thousand").devices == 1000
    uplinks = spec.uplinks()
    assert len(uplinks) == 16
    assert uplinks[0].source != uplinks[1].source  # different files
    assert uplinks[0].rate_at(5.0) != uplinks[4].rate_at(5.0) or uplinks[0].rate_at(9.0) != uplinks[4].rate_at(9.0)


@pytest.mark.parametrize(("values", "message"), [
    ({"devices": 0, "traces": [TRACE]}, "fleet.devices must be a whole number"),
    ({"devices": 4}, "fleet.traces is empty"),
    ({"traces": ["no/such/trace.csv"]}, "names 1 missing file"),
    ({"traces": [TRACE], "rate_hz": -1}, "fleet.rate_hz must be positive"),
    ({"traces": [TRACE], "devcies": 3}, r"unknown keys \['devcies'\]"),
    ({"traces": [TRACE], "requests": 2.5}, "fleet.requests must be a whole number"),
    ({"traces": [TRACE], "arrivals": "bursty"}, "fleet.arrivals must be one of"),
])
def test_fleet_config_errors_are_one_sentence(values, message):
    with pytest.raises(ConfigError, match=message) as error:
        FleetSpec.from_cfg(values)
    assert "\n" not in str(error.value)


def test_an_unknown_fleet_name_is_one_sentence():
    with pytest.raises(ConfigError, match="no fleet config 'armada'"):
        load_fleet("armada")
