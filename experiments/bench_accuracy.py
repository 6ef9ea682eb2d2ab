"""Accuracy benchmark: the fitted EfficientNet-Lite0 on the Fashion-MNIST test set, unsplit and split
at every candidate cut (input, natural bottlenecks, output) with each codec on the crossing tensors.

Each image is sent on its own (a batch of one, as a request is) through the codec and decoded by
name on the receiving side; heads and tails then run batched. Per (cut, codec) it reports accuracy,
the change against the unsplit model, agreement (same top-1 class as unsplit) and mean payload
bytes per image. The head at 224 px is fitted first if outputs/checkpoints holds none.

    python experiments/bench_accuracy.py [--quick] [--json PATH] [--limit N] [--image-size S]

Full run: all 10,000 test images (about 20 model passes in all: expect 40+ minutes on 2 cores);
--quick: a class-balanced 200-image subset (about 2 minutes once the head exists).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from splitcomp.errors import SplitcompError
from splitcomp.link.codecs import Codec, Float16Codec, Int8Codec, JpegCodec, PngCodec, RawCodec, ZstdCodec
from splitcomp.split import analyze
from splitcomp.workload.datasets import FashionMNIST
from splitcomp.workload.evaluation import evaluate_splits
from splitcomp.workload.fitting import fitted_model
from splitcomp.workload.models import lite0

ACCURACY_TARGET = 0.85
QUICK_LIMIT = 200


def codecs_for(cut_name: str) -> list[Codec]:
    """The uint8 input gets the image codecs; float tensors get the float codecs (the others would
    fall back to raw and repeat the raw row)."""
    if cut_name == "input":
        return [RawCodec(), ZstdCodec(), PngCodec(), JpegCodec(quality=90)]
    return [RawCodec(), ZstdCodec(), Float16Codec(), Int8Codec()]


def run(image_size: int, limit: int | None, batch_size: int, train_limit: int, checkpoint: str | None,
        only: set[str] | None = None, device: str = "cpu", root: str | None = None) -> dict:
    torch.manual_seed(0)
    roots = {"root": root} if root else {}
    test_set = FashionMNIST(split="test", image_size=image_size, limit=limit, **roots)
    # the train split is read only when a head has to be fitted (an existing --checkpoint needs none)
    have_head = checkpoint is not None and Path(checkpoint).exists()
    fit_source = test_set if have_head else FashionMNIST(split="train", image_size=image_size, **roots)
    model = fitted_model(lite0(image_size=image_size), fit_source, checkpoint=checkpoint,
                         fit={"limit": train_limit}).eval()
    plan = analyze(model, torch.zeros(1, 3, image_size, image_size, dtype=torch.uint8))
    plan_cuts = {cut.name: cut for cut in plan.candidates}
    start = time.perf_counter()
    chosen = {name: [c for c in codecs_for(name) if not only or c.name in only] for name in plan_cuts}
    results = evaluate_splits(plan, chosen, test_set, batch_size, progress=True, device=device)
    rows = []
    for (cut_name, codec_name), figures in results.items():
        cut = plan_cuts[cut_name]
        rows.append({"cut": cut_name, "cut_index": cut.index, "codec": codec_name,
                     "lossless": type(codec_by_name(cut_name, codec_name)).lossless,
                     "head_flops_share": cut.head_flops / plan.total_flops, "raw_bytes": cut.bytes,
                     **figures, "accuracy_change": figures["accuracy"] - figures["accuracy_reference"]})
    reference = rows[0]["accuracy_reference"]
    lossless = [row["agreement"] for row in rows if row["lossless"]]
    return {"config": {"image_size": image_size, "test_images": len(test_set), "limit": limit, "device": device,
                       "checkpoint": checkpoint,
                       "train_images": train_limit, "batch_size": batch_size,
                       "natural_bottlenecks": [c.name for c in plan.natural_bottlenecks]},
            "unsplit_accuracy": reference, "evaluate_s": time.perf_counter() - start, "rows": rows,
            "targets": [{"name": "fitted_lite0_accuracy", "value": reference, "op": ">=", "target": ACCURACY_TARGET},
                        {"name": "lossless_agreement_min", "value": min(lossless), "op": ">=", "target": 1.0}]}


def codec_by_name(cut_name: str, codec_name: str) -> Codec:
    return next(c for c in codecs_for(cut_name) if c.name == codec_name)


def print_report(report: dict) -> None:
    cfg = report["config"]
    print(f"fitted Lite0 on Fashion-MNIST at {cfg['image_size']} px, {cfg['test_images']} test images: "
          f"unsplit accuracy {report['unsplit_accuracy']:.4f} ({report['evaluate_s']:.0f} s)")
    header = (f"{'cut':<22} {'codec':<8} {'lossless':>8} {'head_flops':>10} {'bytes_mean':>11} {'accuracy':>9} "
              f"{'change_pp':>9} {'agreement':>9}")
    print(header)
    print("-" * len(header))
    for row in report["rows"]:
        print(f"{row['cut'][:22]:<22} {row['codec']:<8} {'yes' if row['lossless'] else 'no':>8} "
              f"{row['head_flops_share']:>10.1%} {row['bytes_mean']:>11.0f} {row['accuracy']:>9.4f} "
              f"{100 * row['accuracy_change']:>+9.2f} {row['agreement']:>9.4f}")
    print()
    for target in report["targets"]:
        ok = target["value"] >= target["target"] if target["op"] == ">=" else target["value"] <= target["target"]
        print(f"{target['name']} = {target['value']:.4f} {target['op']} {target['target']}: {'met' if ok else 'MISSED'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"a class-balanced {QUICK_LIMIT}-image test subset")
    parser.add_argument("--json", type=Path, help="write raw figures and targets here")
    parser.add_argument("--limit", type=int, default=None, help="test images (class-balanced; default all)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--train-limit", type=int, default=3000, help="training images if the head is fitted")
    parser.add_argument("--checkpoint", help="head checkpoint (default: the one model=fitted uses)")
    parser.add_argument("--codecs", help="comma-separated codec names to keep (e.g. raw,zstd: the lossless ones)")
    parser.add_argument("--device", default="cpu", help="where heads and tails run (cpu, cuda)")
    parser.add_argument("--root", help="folder of the Fashion-MNIST idx files (default: the Debian package's)")
    args = parser.parse_args()
    limit = args.limit if args.limit is not None else (QUICK_LIMIT if args.quick else None)
    try:
        only = set(args.codecs.split(",")) if args.codecs else None
        report = run(args.image_size, limit, args.batch_size, args.train_limit, args.checkpoint, only,
                     args.device, args.root)
    except SplitcompError as exc:
        sys.exit(f"error: {exc}")
    report["config"]["quick"] = args.quick
    print_report(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
