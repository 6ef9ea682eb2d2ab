"""Tables of a SplitPlan: every cut with what crosses it and what each side costs."""

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
