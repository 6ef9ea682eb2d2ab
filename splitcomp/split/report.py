"""Tables and a plot of a SplitPlan: every cut with what crosses it and what each side costs."""

from __future__ import annotations

from typing import Any

from splitcomp.split.plan import SplitPlan

COLUMNS = ("index", "name", "crossing_count", "elements", "bytes", "head_mflops", "tail_mflops",
           "head_param_bytes", "tail_param_bytes", "single_tensor", "natural")


def cut_rows(plan: SplitPlan) -> list[dict[str, Any]]:
    """One row per cut, in the graph's order (MFLOPs = 1e6 FLOPs)."""
    natural = {cut.index for cut in plan.natural_bottlenecks}
    return [{
        "index": cut.index, "name": cut.name, "crossing_count": len(cut.crossing), "elements": cut.elements,
        "bytes": cut.bytes, "head_mflops": round(cut.head_flops / 1e6, 3), "tail_mflops": round(cut.tail_flops / 1e6, 3),
        "head_param_bytes": cut.head_param_bytes, "tail_param_bytes": cut.tail_param_bytes,
        "single_tensor": cut.single_tensor, "natural": cut.index in natural,
    } for cut in plan.cuts]


def markdown_table(rows: list[dict[str, Any]], columns: tuple[str, ...] = COLUMNS) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def plot_plan(plan: SplitPlan, title: str = "") -> Any:
    """Bytes crossing each cut (log scale) with the natural bottlenecks marked and the raw input size as a
    line, and the cumulative head MFLOPs on a second axis. Returns a matplotlib Figure (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    index = [cut.index for cut in plan.cuts]
    sizes = [max(cut.bytes, 1) for cut in plan.cuts]  # a cut only plain values cross would vanish on a log axis
    fig, ax = plt.subplots(figsize=(10, 4.5))
    ax.step(index, sizes, where="mid", color="tab:blue", lw=1, label="bytes crossing")
    ax.axhline(plan.input_raw_bytes, color="gray", ls="--", lw=1, label="raw input")
    natural = plan.natural_bottlenecks
    ax.scatter([c.index for c in natural], [max(c.bytes, 1) for c in natural], color="tab:red", zorder=3,
               label="natural bottleneck")
    ax.set_yscale("log")
    ax.set_xlabel("cut index (graph order)")
    ax.set_ylabel(f"bytes crossing ({plan.codec.name or type(plan.codec).__name__})")
    flops_ax = ax.twinx()
    flops_ax.plot(index, [cut.head_flops / 1e6 for cut in plan.cuts], color="tab:green", lw=1.2,
                  label="head MFLOPs (cumulative)")
    flops_ax.set_ylabel("head MFLOPs")
    handles = ax.get_legend_handles_labels()[0] + flops_ax.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper right", fontsize=8)
    ax.set_title(title or repr(plan), fontsize=9)
    fig.tight_layout()
    return fig
