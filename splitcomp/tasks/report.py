"""``splitcomp-report``: a sweep's summary table and plots, read back from MLflow.

Reads the latest sweep of ``tracking.experiment`` (or the parent run ``+report.parent=RUN_ID``)
from the tracking store at ``tracking.uri``, writes ``report_jobs.csv``, ``report_policies.csv``,
``report.md``, ``latency_per_policy.png`` and (from the jobs' ``records.csv``) ``latency_cdf.png``
into the Hydra output folder, and prints the table. ``+report.cdf=false`` skips downloading the
records. Example::

    splitcomp-report tracking.experiment=trace_replay tracking.uri=http://HOST:5000
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from splitcomp.tasks.common import CONF_DIR, user_errors_are_one_line

SHOWN = ("job", "policy", "scenario", "status", "latency_ms_mean", "latency_ms_p95", "latency_over_oracle",
         "agreement", "fallbacks")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
@user_errors_are_one_line
def main(cfg: DictConfig) -> None:
    from mlflow import MlflowClient

    from splitcomp.track import report
    from splitcomp.track.tracker import resolve_tracking_uri

    options = cfg.get("report") or {}
    uri = resolve_tracking_uri(cfg.tracking.get("uri"))
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    result = report.make_report(MlflowClient(tracking_uri=uri), str(cfg.tracking.experiment), out_dir,
                                parent_run_id=options.get("parent"), cdf=bool(options.get("cdf", True)))
    parent, table = result["parent"], result["table"]
    print(f"sweep {parent.info.run_id} ({parent.info.run_name}, {parent.info.status}): {result['jobs']} jobs, "
          f"{result['jobs_failed']} failed, {len(table)} logged a run")
    if table.attrs.get("common"):
        print(f"overrides of every job: {table.attrs['common']}")
    print(report.text_table(table, SHOWN))
    if not result["aggregates"].empty:
        print("\nper policy")
        print(report.text_table(result["aggregates"]))
    print(f"\nwritten to {out_dir}: " + ", ".join(p.name for p in result["paths"]))


if __name__ == "__main__":
    main()
