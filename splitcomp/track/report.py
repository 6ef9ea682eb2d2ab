"""A sweep read back from MLflow: one row per job, per-policy aggregates, plots.

Everything comes from the tracking store through ``MlflowClient`` (``search_runs`` and the run
artifacts), never from local output folders, so a report can be made on any machine that reaches
the tracking server. A sweep is a parent run tagged ``splitcomp.sweep`` whose children carry
``mlflow.parentRunId`` (see :mod:`splitcomp.track.sweep`).
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from splitcomp.errors import ConfigError, PeerError
from splitcomp.track.plots import latency_bar_figure, pooled_cdf_figure, save_figure
from splitcomp.track.tags import JOB_NUM_TAG, JOBS_TAG, OVERRIDES_TAG, SWEEP_TAG

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one line per download otherwise

# the metrics a job row shows, when the run has them
KEY_METRICS = ("requests", "latency_ms_mean", "latency_ms_p50", "latency_ms_p95", "agreement", "accuracy",
               "bytes_sent_mean", "fallbacks", "prediction_mape", "wall_s")
ORACLE_TARGET = "splitcomp.policy.oracle.Oracle"


# --- reading the store ---------------------------------------------------------------------------

def find_parent(client: Any, experiment: str, parent_run_id: str | None = None) -> Any:
    """The sweep's parent run: ``parent_run_id`` when given, else the latest sweep in ``experiment``."""
    if parent_run_id:
        try:
            return client.get_run(str(parent_run_id))
        except Exception as exc:
            raise ConfigError(f"no MLflow run {parent_run_id!r} in the tracking store ({_first_line(exc)}); "
                              "check report.parent") from None
    found = _experiment(client, experiment)
    runs = client.search_runs([found.experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = 'true'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise ConfigError(f"experiment {experiment!r} has no sweep; run one with splitcomp-run -m ... "
                          f"tracking.experiment={experiment}")
    return runs[0]


def _experiment(client: Any, name: str) -> Any:
    try:
        found = client.get_experiment_by_name(name)
    except Exception as exc:  # connection refused, bad URI, ...
        raise PeerError(f"cannot reach the MLflow tracking store ({_first_line(exc)}); "
                        "check tracking.uri or MLFLOW_TRACKING_URI") from None
    if found is None:
        names = sorted(e.name for e in client.search_experiments())
        raise ConfigError(f"no MLflow experiment named {name!r}; set tracking.experiment to one of {names}")
    return found


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def child_runs(client: Any, parent: Any) -> list[Any]:
    """Every run tagged with ``parent`` as its parent, in job order."""
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                                  max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    return sorted(runs, key=lambda r: (_job_num(r), r.info.start_time or 0))


def _job_num(run: Any) -> int:
    try:
        return int(run.data.tags.get(JOB_NUM_TAG, ""))
    except ValueError:
        return 1 << 30


# --- tables --------------------------------------------------------------------------------------

def parse_overrides(text: str) -> dict[str, str]:
    """``"policy=dynamic +x.y=1"`` -> ``{"policy": "dynamic", "x.y": "1"}`` (Hydra's +/~ prefixes dropped)."""
    pairs = {}
    for item in (text or "").split():
        key, sep, value = item.partition("=")
        if sep:
            pairs[key.lstrip("+~")] = value
    return pairs


def job_table(children: Sequence[Any]) -> pd.DataFrame:
    """One row per job: job number, run id, status, the overrides that vary across the sweep, its
    policy, its key metrics and its mean latency over the oracle's on the same scenario
    (``latency_over_oracle``). Overrides shared by every job are in ``table.attrs["common"]``."""
    overrides = [parse_overrides(run.data.tags.get(OVERRIDES_TAG, "")) for run in children]
    keys = list(dict.fromkeys(k for o in overrides for k in o))
    swept = [k for k in keys if len({o.get(k) for o in overrides}) > 1]
    rows = []
    for i, (run, over) in enumerate(zip(children, overrides)):
        target = run.data.params.get("policy._target_", "")
        row: dict[str, Any] = {"job": _job_num(run) if _job_num(run) < 1 << 30 else i,
                               "run_id": run.info.run_id, "status": run.info.status}
        row.update({k: over.get(k) for k in swept})
        row["policy"] = over.get("policy") or target.rpartition(".")[2] or "policy"
        row["scenario"] = " ".join(f"{k}={over.get(k)}" for k in swept if k != "policy") or "all"
        row["_is_oracle"] = target == ORACLE_TARGET
        row["_own_oracle_ms"] = run.data.metrics.get("oracle_latency_ms_mean")
        row.update({m: run.data.metrics.get(m) for m in KEY_METRICS})
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["latency_over_oracle"] = _over_oracle(table)
    table = table.drop(columns=["_is_oracle", "_own_oracle_ms"]).dropna(axis=1, how="all")
    table.attrs["common"] = " ".join(f"{k}={overrides[0][k]}" for k in keys if k not in swept and k in overrides[0])
    return table


def _over_oracle(table: pd.DataFrame) -> list[float | None]:
    """Each job's mean latency over the oracle job's on the same scenario, else over the oracle the
    job ran alongside itself (``compare_with``), else None."""
    oracle_ms = {s: float(g["latency_ms_mean"].mean())
                 for s, g in table[table["_is_oracle"] & table["latency_ms_mean"].notna()].groupby("scenario")}
    ratios = []
    for _, row in table.iterrows():
        ref = oracle_ms.get(row["scenario"])
        if ref is None and row["_own_oracle_ms"] is not None and not pd.isna(row["_own_oracle_ms"]):
            ref = float(row["_own_oracle_ms"])
        latency = row.get("latency_ms_mean")
        ratios.append(latency / ref if ref and latency is not None and not pd.isna(latency) else None)
    return ratios


def policy_aggregates(table: pd.DataFrame) -> pd.DataFrame:
    """One row per policy: jobs, and the mean over its jobs of latency, p95, agreement and the
    latency ratio to the oracle (and that ratio's worst case)."""
    if table.empty or "policy" not in table:
        return pd.DataFrame()
    numeric = {c: table[c] for c in ("latency_ms_mean", "latency_ms_p95", "agreement", "latency_over_oracle")
               if c in table}
    grouped = pd.DataFrame({"policy": table["policy"], **numeric}).groupby("policy", sort=True)
    out = grouped.mean(numeric_only=True).add_suffix("_mean") if numeric else pd.DataFrame(index=grouped.size().index)
    out.insert(0, "jobs", grouped.size())
    if "latency_over_oracle" in table:
        out["latency_over_oracle_max"] = grouped["latency_over_oracle"].max()
    return out.reset_index().dropna(axis=1, how="all")


def job_counts(statuses: Sequence[str], jobs: int | None = None) -> tuple[int, int]:
    """(jobs, failed jobs) of a sweep from its job runs' statuses; ``jobs``: how many jobs the sweep
    made, when known, so that a job that died before opening its run counts as failed too."""
    total = max(jobs or 0, len(statuses))
    return total, total - sum(status == "FINISHED" for status in statuses)


def summary_metrics(table: pd.DataFrame, aggregates: pd.DataFrame, jobs: int | None = None) -> dict[str, float]:
    """Metrics for the sweep's parent run: job counts and per-policy means. ``jobs``: how many jobs
    the sweep made, when known; a job without a FINISHED run (also one without any run) failed."""
    total, failed = job_counts([] if table.empty else list(table["status"]), jobs)
    metrics = {"jobs": float(total), "jobs_failed": float(failed)}
    if table.empty:
        return metrics
    if "latency_ms_mean" in table and table["latency_ms_mean"].notna().any():
        metrics["latency_ms_mean_min"] = float(table["latency_ms_mean"].min())
        metrics["latency_ms_mean_max"] = float(table["latency_ms_mean"].max())
    for _, row in aggregates.iterrows():
        name = re.sub(r"[^A-Za-z0-9_]", "_", str(row["policy"]))
        for column in ("latency_ms_mean_mean", "latency_over_oracle_mean"):
            value = row.get(column)
            if value is not None and not pd.isna(value):
                metrics[f"policy_{name}_{column.removesuffix('_mean')}"] = float(value)
    return metrics


def markdown(table: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub-style Markdown table (floats rounded to ``digits`` significant decimals)."""
    if table.empty:
        return "(no rows)\n"
    cells = [[_cell(v, digits) for v in row] for row in table.itertuples(index=False)]
    header = [str(c) for c in table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def _cell(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.{digits}f}" if abs(value) < 1e6 else f"{value:.3g}"
    return str(value)


def write_tables(table: pd.DataFrame, aggregates: pd.DataFrame, out_dir: Path, stem: str = "report") -> list[Path]:
    """``STEM_jobs.csv``, ``STEM_policies.csv`` and ``STEM.md`` (both tables) in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs_csv, policies_csv, md = out_dir / f"{stem}_jobs.csv", out_dir / f"{stem}_policies.csv", out_dir / f"{stem}.md"
    table.to_csv(jobs_csv, index=False)
    aggregates.to_csv(policies_csv, index=False)
    common = table.attrs.get("common")
    head = f"Overrides of every job: `{common}`\n\n" if common else ""
    md.write_text(f"## Jobs\n\n{head}{markdown(table)}\n## Per policy\n\n{markdown(aggregates)}")
    return [jobs_csv, policies_csv, md]


def job_records(client: Any, table: pd.DataFrame) -> dict[str, list[pd.DataFrame]]:
    """The ``records.csv`` artifact of every job that has one, grouped by policy."""
    by_policy: dict[str, list[pd.DataFrame]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _, row in table.iterrows():
            try:
                path = client.download_artifacts(row["run_id"], "records.csv", tmp)
            except Exception:  # no such artifact (a failed job): nothing to plot for it
                continue
            by_policy.setdefault(str(row["policy"]), []).append(pd.read_csv(path))
    return by_policy


# --- the whole report ----------------------------------------------------------------------------

def make_report(client: Any, experiment: str, out_dir: Path, parent_run_id: str | None = None,
                cdf: bool = True) -> dict[str, Any]:
    """Read a sweep back from the tracking store and write its tables and plots into ``out_dir``.

    Returns ``{"parent": run, "table", "aggregates", "paths", "jobs", "jobs_failed"}`` (``jobs``: as
    many as the sweep made, also those that died before opening a run, when the parent says)."""

    parent = find_parent(client, experiment, parent_run_id)
    children = child_runs(client, parent)
    if not children:
        raise ConfigError(f"sweep run {parent.info.run_id} has no job runs; its jobs may have failed before "
                          "logging (see the sweep's output folder)")
    table = job_table(children)
    aggregates = policy_aggregates(table)
    paths = write_tables(table, aggregates, out_dir)
    if "latency_ms_mean" in table:
        paths.append(save_figure(latency_bar_figure(table), out_dir / "latency_per_policy.png"))
    records = job_records(client, table) if cdf else {}
    if records:
        paths.append(save_figure(pooled_cdf_figure(records), out_dir / "latency_cdf.png"))
    made = parent.data.tags.get(JOBS_TAG)
    jobs, failed = job_counts(list(table["status"]), int(made) if made and made.isdigit() else None)
    return {"parent": parent, "table": table, "aggregates": aggregates, "paths": paths, "jobs": jobs,
            "jobs_failed": failed}


def text_table(table: pd.DataFrame, columns: Sequence[str] | None = None) -> str:
    """The table as fixed-width text for the terminal."""
    shown = table[[c for c in (columns or table.columns) if c in table]]
    return shown.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-")
