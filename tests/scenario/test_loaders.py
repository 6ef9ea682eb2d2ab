"""Trace readers: every real file matches traces/README.md; handling rules on small hand-made files."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from splitcomp.errors import ConfigError, TraceError
from splitcomp.scenario import FORMATS, TraceWarning, load_trace, trace_window

UCC5G = "raca5g_ucc/5G-production-dataset/Download"
# (file under traces/, detected format, README mean Mbit/s, README duration s, README samples)
README_TABLE = [
    (f"{UCC5G}/Static/B_2020.02.14_13.21.26.csv", "ucc", 121.02, 1102.0, 1013),
    (f"{UCC5G}/Driving/B_2020.01.16_12.10.03.csv", "ucc", 120.78, 386.0, 384),
    (f"{UCC5G}/Driving/B_2020.01.16_09.56.56.csv", "ucc", 39.97, 1824.0, 1741),
    (f"{UCC5G}/Driving/B_2019.12.16_11.49.59.csv", "ucc", 7.13, 393.0, 401),
    ("raca4g_ucc_godashbed/4G_A_2018.01.27_13.58.29.csv", "ucc", 5.74, 952.0, 856),
    ("lumos5g_umn/5G/5g_trace_1_driving", "lumos5g", 306.10, 229.0, 230),
    ("lumos5g_umn/5G/5g_trace_10_walking", "lumos5g", 535.00, 795.0, 796),
    ("lumos5g_umn/4G/4g_trace_driving_50015_dr", "lumos5g", 40.18, 249.0, 250),
    ("lumos5g_umn/4G/4g_trace_walking_50007_c", "lumos5g", 97.44, 799.0, 800),
    ("ghent4g_ugent/report_car_0004.log", "ghent", 28.84, 580.0, 581),
    ("ghent4g_ugent/report_foot_0006.log", "ghent", 22.14, 584.0, 584),
    ("norway3g_hsdpa_pensieve/norway_bus_1", "pensieve", 3.34, 154.8, 266),
    ("norway3g_hsdpa_pensieve/norway_tram_11", "pensieve", 0.80, 312.8, 150),
    ("mahimahi_cellular/ATT-LTE-driving-2016.down", "mahimahi", 4.56, 120.0, 120),
    ("mahimahi_cellular/Verizon-LTE-short.down", "mahimahi", 5.03, 140.0, 140),
    ("mahimahi_cellular/TMobile-UMTS-driving.down", "mahimahi", 2.02, 928.4, 928),
    ("multipath_wireless_aydini/7_1_wifi.csv", "multipath", 30.45, 100.0, 100),
    ("multipath_wireless_aydini/7_1_cellular.csv", "multipath", 47.44, 100.0, 100),
    ("multipath_wireless_aydini/13_1_wifi.csv", "multipath", 21.05, 100.0, 100),
    ("lumos_ict_wifi/210326_2132-50Mbps-wifi_2.4GHz-weak-ed_4s-BBA.csv", "lumos_wifi", 14.76, 215.1, 164),
]


def _write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


# --- the real traces ----------------------------------------------------------------------
@pytest.mark.parametrize(("rel", "fmt", "mean_mbps", "duration_s", "samples"), README_TABLE, ids=lambda v: str(v))
def test_real_trace_matches_readme(traces_dir, rel, fmt, mean_mbps, duration_s, samples):
    with warnings.catch_warnings():
        warnings.simplefilter("error", TraceWarning)  # the shipped files need no repair
        trace = load_trace(traces_dir / rel)
    assert trace.format == fmt
    assert len(trace.rates_bps) == samples
    assert trace.mean_rate_bps / 1e6 == pytest.approx(mean_mbps, rel=0.02)
    assert trace.duration == pytest.approx(duration_s, rel=0.01)
    assert trace.skipped_rows == 0
    assert trace.times[0] == 0 and np.all(np.diff(trace.times) > 0)


def test_all_real_files_are_in_the_table(traces_dir):
    on_disk = {str(p.relative_to(traces_dir)) for p in traces_dir.rglob("*") if p.is_file() and p.name != "README.md"}
    assert on_disk == {row[0] for row in README_TABLE}


def test_named_format_gives_the_same_trace(traces_dir):
    path = traces_dir / "norway3g_hsdpa_pensieve/norway_bus_1"
    assert np.array_equal(load_trace(path).rates_bps, load_trace(path, format="pensieve").rates_bps)


def test_ucc_rtts_come_from_pingavg(traces_dir):
    trace = load_trace(traces_dir / README_TABLE[1][0])
    assert trace.rtts_s is not None
    assert 0.06 < np.median(trace.rtts_s) < 0.08  # PINGAVG of this file: 65-69 ms
    assert load_trace(traces_dir / README_TABLE[4][0]).rtts_s is None  # the 4G schema has no PING columns


def test_mahimahi_zero_bins_are_outages_that_transfers_wait_out(traces_dir):
    trace = load_trace(traces_dir / "mahimahi_cellular/TMobile-UMTS-driving.down")
    assert np.sum(trace.rates_bps == 0) == 32
    outage = float(trace.times[np.argmax(trace.rates_bps == 0)])
    seconds = trace.transfer_time(10_000, outage)
    assert np.isfinite(seconds) and seconds >= 1.0


# --- per-format rules on small files ---------------------------------------------------------
UCC_HEADER = "Timestamp,NetworkMode,DL_bitrate,UL_bitrate,State,PINGAVG\n"


def test_ucc_repeated_seconds_are_spread_and_gaps_held(tmp_path):
    text = UCC_HEADER + (
        "2020.01.01_00.00.00,5G,1000,1,D,-\n"
        "2020.01.01_00.00.01,5G,2000,1,D,40\n"
        "2020.01.01_00.00.01,5G,4000,1,D,-\n"
        "2020.01.01_00.00.04,5G,0,1,D,60\n"
    )
    trace = load_trace(_write(tmp_path, "u.csv", text))
    assert trace.format == "ucc"
    assert trace.times.tolist() == [0.0, 1.0, 1.5, 4.0]  # two rows in second 1 hold half a second each
    assert trace.rates_bps.tolist() == [1e6, 2e6, 4e6, 0.0]  # kbit/s -> bit/s, the zero row kept
    assert trace.duration == 5.0
    assert trace.rate_at(3.0) == 4e6  # the 2-s gap holds the previous sample
    assert trace.rtts_s.tolist() == [0.04, 0.04, 0.04, 0.06]  # ms -> s, held, first value back-filled


def test_malformed_rows_are_skipped_counted_and_warned(tmp_path):
    text = UCC_HEADER + (
        "2020.01.01_00.00.00,5G,1000,1,D,-\n"
        "2020.01.01_00.00.01,5G,-,1,D,-\n"
        "2020.01.01_00.00.02,5G,,1,D,-\n"
        "garbage\n"
        "2020.01.01_00.00.03,5G,3000,1,D,-,extra,fields\n"
        "2020.01.01_00.00.04,5G,5000,1,D,-\n"
    )
    with pytest.warns(TraceWarning, match="skipped 4"):
        trace = load_trace(_write(tmp_path, "u.csv", text))
    assert trace.skipped_rows == 4
    assert trace.rates_bps.tolist() == [1e6, 5e6]
    assert trace.rtts_s is None  # no PINGAVG value anywhere
    assert trace.window(0.5).skipped_rows == 4  # the count survives reshaping


def test_two_column_repeats_gaps_and_out_of_order(tmp_path):
    text = "0 10\n1 20\n1 30\n2 40\n# comment\n\n1 99\n30 50\n31 60\n"
    with pytest.warns(TraceWarning):
        trace = load_trace(_write(tmp_path, "m.txt", text))
    assert trace.format == "lumos5g"
    assert trace.skipped_rows == 1  # "1 99" goes back in time
    # 1 s nominal step: the repeat at t=1 is spread, the 28-s gap (> 10 s) is closed to 1 s
    assert trace.times.tolist() == [0.0, 1.0, 1.5, 2.0, 3.0, 4.0]
    assert trace.rates_bps.tolist() == [10e6, 20e6, 30e6, 40e6, 50e6, 60e6]
    with pytest.warns(TraceWarning):
        kept = load_trace(_write(tmp_path, "m2.txt", text), max_gap_s=None)
    assert kept.times[-1] == 31.0 and kept.rate_at(20.0) == 40e6


def test_pensieve_irregular_steps(tmp_path):
    trace = load_trace(_write(tmp_path, "p", "0.0\t4.0\n0.5\t2.0\n1.25\t1.0\n"))
    assert trace.format == "pensieve"
    assert trace.times.tolist() == [0.0, 0.5, 1.25]
    assert trace.duration == pytest.approx(1.25 + 0.625)  # the last sample holds one median step


def test_ghent_rate_from_bytes_and_interval(tmp_path):
    text = "1000 81 51.0 3.7 0 81\n2000 1081 51.0 3.7 125000 1000\n3000 1581 51.0 3.7 0 500\n4000 2581 51.0 3.7 250000 1000\n"
    trace = load_trace(_write(tmp_path, "g.log", text))
    assert trace.format == "ghent"
    assert len(trace.rates_bps) == 3  # the zero-byte first row is the logger's start marker
    assert trace.rates_bps.tolist() == [1e6, 0.0, 2e6]  # bytes * 8 / interval
    assert trace.times == pytest.approx([0.0, 1.0, 1.5])  # each row covers the interval before it
    assert trace.duration == pytest.approx(2.5)


def test_mahimahi_full_one_second_bins(tmp_path):
    stamps = [0] * 3 + [500] + [1200] * 2 + [2999, 3000]  # the opportunity at 3000 ms is a partial bin
    trace = load_trace(_write(tmp_path, "x.down", "\n".join(map(str, stamps)) + "\n"))
    assert trace.format == "mahimahi"
    assert trace.rates_bps.tolist() == [4 * 12000.0, 2 * 12000.0, 12000.0]
    assert trace.duration == 3.0


def test_mahimahi_malformed_lines(tmp_path):
    with pytest.warns(TraceWarning, match="skipped 3"):
        trace = load_trace(_write(tmp_path, "x.down", "0\n0\nabc\n12 13\n-5\n1500\n2100\n"), format="mahimahi")
    assert trace.skipped_rows == 3
    assert trace.rates_bps.tolist() == [2 * 12000.0, 12000.0]


def test_mahimahi_shorter_than_one_bin(tmp_path):
    with pytest.raises(TraceError, match="one full 1-s bin"):
        load_trace(_write(tmp_path, "x.down", "0\n10\n999\n"))


def test_multipath_bytes_per_second(tmp_path):
    trace = load_trace(_write(tmp_path, "w.csv", "1,125000\r\n2,0\r\n3,250000"))
    assert trace.format == "multipath"
    assert trace.rates_bps.tolist() == [1e6, 0.0, 2e6]
    assert trace.duration == 3.0


def test_lumos_wifi_time_advances_by_delivery_time(tmp_path):
    header = "downstream_bandwidth,connection_type,signal_strength,bitrate,chunk_size,app_throughput,delivery_time,player_state,chunk_index\n"
    rows = "50M,wifi,medium,300,16,1000,0.5,steady,1\n50M,wifi,medium,300,16,2000,0,steady,1\n50M,wifi,medium,300,16,3000,12.0,steady,2\n"
    with pytest.warns(TraceWarning):
        trace = load_trace(_write(tmp_path, "l.csv", header + rows))
    assert trace.format == "lumos_wifi"
    assert trace.times.tolist() == [0.0, 0.5]  # a chunk with no delivery time cannot be placed
    assert trace.rates_bps.tolist() == [1e6, 3e6]
    assert trace.duration == 12.5  # a long chunk is its own width, not a gap to close


# --- errors -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"  \n\n", "is empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "is binary"),
        (b"\xff\xfe\xfa garbage \xc3", "is binary"),
        (b"hello world\nthis is prose\n", "no recognised trace format"),
        (b"1 2 3\n4 5 6\n", "no recognised trace format"),
        (UCC_HEADER.encode(), "no valid ucc rows"),
        (b"0 10\n1 -5\n", "negative data rate"),
    ],
)
def test_bad_files_raise_one_clear_trace_error(tmp_path, content, message):
    path = _write(tmp_path, "bad.txt", content)
    with pytest.raises(TraceError, match=message) as info:
        load_trace(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_unknown_format_error_lists_the_formats(tmp_path):
    with pytest.raises(TraceError) as info:
        load_trace(_write(tmp_path, "t.txt", "a b c\n"))
    assert all(name in str(info.value) for name in FORMATS)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(TraceError, match="not found"):
        load_trace(tmp_path / "nope.csv")
    with pytest.raises(TraceError, match="not a file"):
        load_trace(tmp_path)


def test_bad_format_name_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="lumos_wifi"):
        load_trace(_write(tmp_path, "m.txt", "0 1\n"), format="csv")


def test_wrong_named_format_fails_clearly(tmp_path):
    with pytest.raises(TraceError, match="has no column Timestamp, DL_bitrate"):
        load_trace(_write(tmp_path, "x.down", "0\n1000\n2000\n"), format="ucc")


# --- trace_window -------------------------------------------------------------------------
def test_trace_window_start_duration_speedup_scale(tmp_path):
    path = _write(tmp_path, "m.txt", "".join(f"{t} {t + 1}\n" for t in range(10)))  # rate t+1 Mbit/s
    whole = trace_window(path)
    assert whole.duration == 10.0 and whole.rate_at(3.5) == 4e6
    part = trace_window(path, start=2.0, duration=4.0, speedup=2.0, scale=0.5)
    assert part.duration == 2.0
    assert part.rates_bps.tolist() == [1.5e6, 2e6, 2.5e6, 3e6]
    assert part.times.tolist() == [0.0, 0.5, 1.0, 1.5]
    looped = trace_window(path, start=8.0, duration=4.0)
    assert looped.rates_bps.tolist() == [9e6, 10e6, 1e6, 2e6]


@pytest.mark.parametrize(
    "kwargs", [{"start": -1.0}, {"duration": 0.0}, {"speedup": 0.0}, {"scale": -2.0}, {"start": 50.0}]
)
def test_trace_window_rejects_bad_values(tmp_path, kwargs):
    path = _write(tmp_path, "m.txt", "0 1\n1 2\n")
    with pytest.raises(ConfigError):
        trace_window(path, **kwargs)


def test_relative_paths_fall_back_to_the_project_root(traces_dir, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    trace = load_trace("../shared/traces/multipath_wireless_aydini/7_1_wifi.csv")
    assert trace.format == "multipath"
