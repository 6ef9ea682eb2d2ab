"""``splitcomp-bottlenecks``: every cut of a model, its natural bottlenecks, as CSV, Markdown and a plot.

    splitcomp-bottlenecks model=torchvision model.name=resnet50 bottleneck=bytes codec=raw
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from splitcomp.build import build_model
from splitcomp.split import SplitPlan, analyze
from splitcomp.split.report import COLUMNS, cut_rows, markdown_table
from splitcomp.tasks.common import CONF_DIR, config_dict, user_errors_are_one_line
from splitcomp.track import start_run_from_config
from splitcomp.track.plots import plot_plan, save_figure

SUMMARY_COLUMNS = ("index", "name", "crossing_count", "bytes", "head_mflops", "tail_mflops")


def write_reports(plan: SplitPlan, out_dir: Path, title: str) -> list[Path]:
    """``cuts.csv``, ``cuts.md`` and ``cuts.png`` in ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = cut_rows(plan)
    csv_path, md_path, png_path = out_dir / "cuts.csv", out_dir / "cuts.md", out_dir / "cuts.png"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    md_path.write_text(f"# {title}\n\n{plan!r}\n\n{markdown_table(rows)}")
    save_figure(plot_plan(plan, title), png_path, dpi=120)
    return [csv_path, md_path, png_path]


def summary_table(plan: SplitPlan) -> str:
    """The candidates (input, natural bottlenecks, output) as a short Markdown table."""
    candidates = {cut.index for cut in plan.candidates}
    return markdown_table([row for row in cut_rows(plan) if row["index"] in candidates], SUMMARY_COLUMNS)


def run(cfg: DictConfig) -> dict[str, Any]:
    model = build_model(cfg.model, int(cfg.get("seed", 0)))  # a missing fitted head is fitted first, logged
    codec = instantiate(cfg.codec)
    rule = instantiate(cfg.bottleneck)
    size = int(cfg.dataset.image_size)
    example = torch.zeros(1, 3, size, size, dtype=torch.uint8)
    plan = analyze(model, example, codec=codec, rule=rule, leaf_modules=cfg.get("leaf_modules") or ())
    model_name = OmegaConf.select(cfg, "model.name", default=None) or type(model).__name__
    title = f"{model_name} at {size} px: {plan!r}"
    paths = write_reports(plan, Path(HydraConfig.get().runtime.output_dir), title)
    metrics = {"cuts": len(plan.cuts), "natural_bottlenecks": len(plan.natural_bottlenecks),
               "analysis_s": plan.analysis_s, "input_bytes": plan.input_raw_bytes,
               "total_mflops": plan.total_flops / 1e6}
    with start_run_from_config(cfg.tracking, config=config_dict(cfg), run_name=f"bottlenecks-{model_name}") as tracker:
        for path in paths:
            tracker.log_artifact(path)
        tracker.log_metrics(metrics)
    print(f"{title}\nanalysis took {plan.analysis_s:.2f} s; reports in {paths[0].parent}\n")
    print(summary_table(plan))
    return metrics


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
@user_errors_are_one_line
def main(cfg: DictConfig) -> dict[str, Any]:
    return run(cfg)


if __name__ == "__main__":
    main()
