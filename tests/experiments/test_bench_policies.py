"""bench_policies: tuning and test traces kept apart, the two targets written on the test windows."""

import json

import bench_policies
import pytest


def test_tuning_and_test_traces_are_disjoint_and_cover_every_kind():
    tuning = {f for _, f in bench_policies.TUNING}
    test = {f for _, f in bench_policies.TEST}
    assert not tuning & test
    kinds = {"3G", "4G", "5G", "WiFi"}
    assert {k for k, _ in bench_policies.TUNING} == kinds == {k for k, _ in bench_policies.TEST}


def test_a_tiny_run_writes_both_targets_and_lists_the_traces(tmp_path, monkeypatch):
    if not bench_policies.TRACES_DIR.is_dir():
        pytest.skip("real traces not found")
    # one short window per trace and a two-step search keep it to seconds
    monkeypatch.setattr(bench_policies, "SEARCH", [[{"fast_drop": False}, {"fast_drop": True}]])
    out = tmp_path / "bench.json"
    assert bench_policies.main(["--window", "4", "--windows-per-trace", "1", "--no-progress", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    names = {t["name"]: t for t in result["targets"]}
    assert names["dynamic_mean_over_oracle"]["op"] == "<=" and names["dynamic_mean_over_oracle"]["target"] == 1.05
    assert names["dynamic_beats_best_static_share"]["target"] == 0.95
    assert {t["file"] for t in result["tuning_traces"]} == {f for _, f in bench_policies.TUNING}
    assert {t["file"] for t in result["test_traces"]} == {f for _, f in bench_policies.TEST}
    assert {r["split"] for r in result["rows"]} == {"test"}  # every reported figure is on test windows
    assert all(r["policies"]["oracle"]["mean_s"] > 0 for r in result["rows"])
