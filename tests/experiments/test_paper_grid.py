"""paper_grid.py: the latency grid and the useful-split share against LatencyModel.predict, and a
small --paper run end to end (one model at 64 px, two profiles)."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest

from splitcomp.profile.latency import CutProfile, LatencyModel, Profiles, ServerLoad

grid_plots = pytest.importorskip("grid_plots")
paper_grid = pytest.importorskip("paper_grid")
paper_mode = pytest.importorskip("paper_mode")


def hand_profiles() -> Profiles:
    """Full offloading sends 400 kB, a split 50 kB after a tenth of the work; the device is 10x slower."""
    full = CutProfile(0, "input", 400_000, 4000, {1: 0.0, 4: 0.0}, {1: 0.010, 4: 0.025}, is_full_offload=True)
    split = CutProfile(1, "mid", 50_000, 4000, {1: 0.010, 4: 0.040}, {1: 0.009, 4: 0.0225})
    local = CutProfile(2, "output", 0, 0, {1: 0.100, 4: 0.250}, {1: 0.0, 4: 0.0}, is_device_only=True)
    return Profiles(key={}, cuts=[full, split, local])


@pytest.mark.parametrize("scenario", ["paper", "server_batch"])
def test_latency_grid_is_latency_model_predict_everywhere(scenario):
    profiles = hand_profiles()
    axes = paper_mode.AXES if scenario == "paper" else paper_grid.SERVER_BATCH_AXES
    kwargs = paper_mode.paper_batch if scenario == "paper" else paper_grid.server_batch
    grid = grid_plots.latency_grid(profiles, axes, kwargs)
    model = LatencyModel(profiles)
    for c, cut in enumerate(profiles.cuts):
        for i in (0, 7, len(axes.batches) - 1):
            b = int(axes.batches[i])
            expected = [model.predict(cut, r, **kwargs(b)).total_s for r in axes.rates_bps]
            assert grid[c, i] == pytest.approx(expected, rel=1e-9)
    if scenario == "server_batch":  # one image per request: the load model, not the batch argument
        assert grid[0, 3, 0] == pytest.approx(model.predict(profiles.cuts[0], axes.rates_bps[0],
                                                            load=ServerLoad(batch_size=4)).total_s)


def test_useful_share_is_the_plain_argmin_over_the_grid():
    profiles = hand_profiles()
    labels = ["full offload", "mid", "device only"]
    grid = grid_plots.latency_grid(profiles, paper_mode.AXES, paper_mode.paper_batch)
    summary = paper_mode.summarize(profiles, grid, labels)
    # the reference, scenario by scenario from LatencyModel.predict: is the split strictly fastest?
    model = LatencyModel(profiles)
    useful = [[min(model.predict(c, r, batch=int(b)).total_s for c in profiles.cuts)
               == model.predict(profiles.cuts[1], r, batch=int(b)).total_s
               and model.predict(profiles.cuts[1], r, batch=int(b)).total_s
               < min(model.predict(profiles.cuts[k], r, batch=int(b)).total_s for k in (0, 2))
               for r in paper_mode.AXES.rates_bps] for b in paper_mode.AXES.batches]
    assert summary["useful_split_pct"] == pytest.approx(100 * np.mean(useful))
    assert 0 < summary["useful_split_pct"] < 100
    # at 1 MB/s the split's 50 kB take 50 ms a image and the device 100 ms: the split is useful
    assert useful[0][0] and summary["useful_rates_mb_s"][0] == 1.0
    assert summary["best_device_only_pct"] + summary["best_full_offload_pct"] + summary["useful_split_pct"] == \
        pytest.approx(100.0)


def test_a_small_paper_run_end_to_end(tmp_path):
    out, result = tmp_path / "out", tmp_path / "result.json"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = ["--paper", "--quick", "--models", "efficientnet_b0", "--image-size", "64", "--profile-batches", "1",
              "2", "--repetitions", "2", "--slowdowns", "2", "--rate-scales", "100", "--tracking-uri", uri]
    paper_grid.main([*common, "--out", str(out), "--json", str(result)])
    data = json.loads(result.read_text())
    assert set(data) == {"efficientnet_b0", "run", "targets"}
    model = data["efficientnet_b0"]
    natural = model["natural_bottlenecks"]
    assert natural and all(0 < b["compression"] < 1 for b in natural)
    assert natural[0]["block"] == "features.2.0" and natural[0]["compression"] == pytest.approx(24 * 16 * 16 / (3 * 64 * 64))
    share = model["useful_split_pct"]
    assert share["min"] <= share["median"] <= share["max"] and len(share["repetitions"]) == 2
    assert {(v["codec"], v["slowdown"], v["rate_scale"]) for v in model["sensitivity"]} == {
        (c, s, k) for c in ("raw", "float16") for s, k in ((2.0, 1.0), (10.0, 1.0), (10.0, 100.0))}
    assert data["run"]["gpu"] is False and data["run"]["hardware"].startswith("cpu:")
    assert all(set(t) == {"name", "value", "op", "target"} for t in data["targets"])
    assert "wall_s" in {t["name"] for t in data["targets"]}
    for kind in ("latency_vs_rate", "best_option", "gain"):
        assert (out / f"{kind}_efficientnet_b0_raw.png").is_file()
    assert (out / "useful_splits.png").is_file() and "features.2.0" in (out / "bottlenecks.md").read_text()
    mlflow.set_tracking_uri(uri)
    (run,) = mlflow.search_runs(experiment_names=["paper_grid"], output_format="list")
    assert run.info.run_name == "paper_efficientnet_b0" and run.data.params["mode"] == "paper"
    assert run.data.metrics["useful_split_pct_raw"] == share["median"]


def test_saved_segment_profiles_load_instead_of_measuring(tmp_path):
    from splitcomp.profile.segments import SegmentProfile

    saved = SegmentProfile(cuts=["input", "output"], samples={1: [[0.5]], 2: [[0.9]]}, hardware="cpu:x")
    for rep in range(2):
        saved.save(tmp_path / f"segments_vgg16_{rep}.json")
    args = paper_grid.parse_args(["--paper", "--models", "vgg16", "--repetitions", "2", "--profiles-from",
                                  str(tmp_path)])
    setup = paper_mode.setup_from(args)
    assert paper_mode.segment_profiles("vgg16", None, None, setup) == [saved, saved]
    with pytest.raises(Exception, match="cannot read"):
        paper_mode.segment_profiles("vit_b_32", None, None, setup)


def test_gain_maps_show_the_ends_the_winners_and_a_few_more():
    cuts = [CutProfile(i, f"c{i}", 100, 10, {1: 0.0}, {1: 0.0}, is_full_offload=i == 0, is_device_only=i == 11)
            for i in range(12)]
    profiles = Profiles(key={}, cuts=cuts)
    grid = np.ones((12, 2, 3))
    grid[5, 0, 0] = 0.5  # option 5 wins one scenario
    chosen = grid_plots.gain_options(profiles, grid, limit=6)
    assert len(chosen) == 6 and {0, 5, 11} <= set(chosen)
