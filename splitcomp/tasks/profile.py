"""``splitcomp-profile``: measure device-head and server-tail times of every candidate cut.

Writes ``profiles.json`` and ``profiles.png`` to the Hydra output dir and logs them, with one
metric step per cut and the machine's load while measuring (params ``profile_load.*``), to MLflow.
Profiles that fail their check are refused in one line; their times are kept in
``profiles-refused.json`` for a look. Example::

    splitcomp-profile model.name=resnet18 device.slowdown=4 profile.batch_sizes=[1,4,16]
    splitcomp-profile profile.force=true   # measure again over a cached profile
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from splitcomp.build import build_workload
from splitcomp.profile.check import ProfileCheckError
from splitcomp.profile.latency import Profiles
from splitcomp.profile.profiler import get_profiles
from splitcomp.tasks.common import CONF_DIR, config_dict, user_errors_are_one_line
from splitcomp.track import start_run_from_config
from splitcomp.track.plots import plot_profiles

log = logging.getLogger(__name__)


def profile_table(profiles: Profiles) -> str:
    """A fixed-width table: one row per cut, times in ms."""
    sizes = sorted(profiles.cuts[0].tail_s) if profiles.cuts else []
    header = f"{'cut':<28} {'bytes_up':>10} {'head_ms':>9} {'enc_ms':>7} {'dec_ms':>7} " + " ".join(
        f"{f'tail_b{b}_ms':>11}" for b in sizes)
    rows = [header, "-" * len(header)]
    for cut in profiles.cuts:
        tails = " ".join(f"{1e3 * cut.tail_s.get(b, 0.0):>11.2f}" for b in sizes)
        rows.append(f"{cut.name[:28]:<28} {cut.bytes_up:>10d} {1e3 * cut.head_at(1):>9.2f} "
                    f"{1e3 * cut.encode_s:>7.2f} {1e3 * cut.decode_s:>7.2f} {tails}")
    return "\n".join(rows)


def cut_metrics(profiles: Profiles) -> list[dict[str, float]]:
    """One metrics dict per cut (logged as step = position among the candidates)."""
    rows = []
    for cut in profiles.cuts:
        row = {"head_ms": 1e3 * cut.head_at(1), "encode_ms": 1e3 * cut.encode_s, "decode_ms": 1e3 * cut.decode_s,
               "bytes_up": float(cut.bytes_up), "bytes_down": float(cut.bytes_down)}
        row.update({f"tail_ms_b{b}": 1e3 * t for b, t in cut.tail_s.items()})
        rows.append(row)
    return rows


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
@user_errors_are_one_line
def main(cfg: DictConfig) -> None:
    torch.manual_seed(int(cfg.get("seed", 0)))  # random weights repeat, so the profile cache can hit
    work = build_workload(cfg, instantiate(cfg.dataset))  # the same model, input, codec and plan as a run
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    start = time.perf_counter()
    try:
        profiles = get_profiles(work.model, work.plan, work.example_input, work.codec, cfg.device, cfg.server,
                                cfg.profile)
    except ProfileCheckError as exc:  # keep the refused times for a look, then refuse in one line
        print(profile_table(exc.profiles))
        exc.profiles.save(out_dir / "profiles-refused.json")
        raise
    profile_s = time.perf_counter() - start

    json_path = profiles.save(out_dir / "profiles.json")
    png_path = plot_profiles(profiles, out_dir / "profiles.png")
    table = profile_table(profiles)
    print(table)
    print(f"profiles: {json_path} ({'cached' if profiles.source != 'measured' else 'measured'} in {profile_s:.1f} s)")

    model_name = getattr(work.model, "name", None) or type(work.model).__name__
    run_name = cfg.tracking.get("run_name") or f"profile-{model_name}"
    with start_run_from_config(cfg.tracking, config=config_dict(cfg), run_name=run_name) as tracker:
        for step, row in enumerate(cut_metrics(profiles)):
            tracker.log_metrics(row, step=step)
        tracker.log_metrics({"profile_s": profile_s, "cache_hit": float(profiles.source != "measured"),
                             "candidates": float(len(profiles.cuts))})
        if profiles.measurement is not None:  # the machine's load while measuring, the check's outcome
            tracker.log_params(profiles.measurement.as_params())
        tracker.log_text(table, "profiles.txt")
        tracker.log_artifact(json_path)
        tracker.log_artifact(png_path)


if __name__ == "__main__":
    main()
