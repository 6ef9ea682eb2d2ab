"""The edge server on CUDA, checked on real weights and real images: every candidate cut of the
default workload served by an in-process EdgeServer whose tails run on the GPU, against the unsplit
model on the CPU.

The workload is the project's default, ``model=fitted``: EfficientNet-Lite0 with its ImageNet
weights and a classifier head fitted on Fashion-MNIST (the checkpoint is fitted on first use, or by
``splitcomp-train``), and the images are Fashion-MNIST test images (Debian ``dataset-fashion-mnist``),
a class-balanced subset. First the reference logits are checked to be non-trivial (not all zero,
not the same for every image or every class, predictions not all one class), so that agreement
means something; then, per cut, the server's logits must give the same class for every image and
stay within ``--rtol`` of the reference's (GPU kernels differ from CPU ones in the last bits; on one
device a split is exact up to batch-size-dependent kernel choices).

    python experiments/check_cuda_server.py [--images 100] [--json PATH] [OVERRIDE ...]
    python experiments/check_cuda_server.py --device cpu --images 10     # the same on the CPU

OVERRIDEs are Hydra overrides of the project config (e.g. ``dataset.image_size=160``,
``model.checkpoint=PATH``). Exits 0 when every check passes, 1 when one fails, and 0 with a note
when ``--device cuda`` is asked for and there is no CUDA device.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from splitcomp.build import Workload, build_workload
from splitcomp.configs import source_commit
from splitcomp.link.shaping import ScenarioClock
from splitcomp.runtime.client import EdgeClient
from splitcomp.runtime.process import bind_listener
from splitcomp.runtime.server import EdgeServer
from splitcomp.runtime.tails import TailBank
from splitcomp.split import analyze
from splitcomp.tasks.common import CONF_DIR

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def trivial_logits(logits: torch.Tensor) -> str | None:
    """Why agreement on these logits would prove nothing, or None when they are informative:
    all zero, the same for every image, the same for every class, or one predicted class for all."""
    if not torch.isfinite(logits).all():
        return "some logits are not finite"
    if not logits.abs().max() > 0:
        return "every logit is zero"
    if len(logits) > 1 and torch.equal(logits, logits[:1].expand_as(logits)):
        return "every image gets the same logits"
    if torch.equal(logits, logits[:, :1].expand_as(logits)):
        return "every class gets the same logit"
    if len(logits) > 1 and logits.argmax(1).unique().numel() < 2:
        return f"every image is predicted as class {int(logits.argmax(1)[0])}"
    return None


@dataclass
class CutCheck:
    cut: str
    bytes: int
    agreement: float  # share of images whose predicted class equals the unsplit model's
    max_abs_logit_diff: float
    max_rel_logit_diff: float  # max |split - reference| / max |reference|
    tail_ms_median: float
    widest_flipped_margin: float | None  # largest reference top-two margin among images whose class changed
    passed: bool


def compare(cut: Any, logits: torch.Tensor, reference: torch.Tensor, tails_s: list[float], rtol: float) -> CutCheck:
    """Passed: the same class for every image, and logits within ``rtol`` (relative to the largest
    reference logit). A changed class needs a logit difference of at least half the reference's
    top-two margin, so a failure at a near tie shows as a small ``widest_flipped_margin``."""
    diff = float((logits - reference).abs().max())
    relative = diff / float(reference.abs().max())
    differs = logits.argmax(1) != reference.argmax(1)
    top2 = reference.topk(2, dim=1).values
    margin = float((top2[:, 0] - top2[:, 1])[differs].max()) if differs.any() else None
    return CutCheck(cut.name, cut.bytes, 1.0 - float(differs.double().mean()), diff, relative,
                    1e3 * sorted(tails_s)[len(tails_s) // 2], margin, relative <= rtol and not bool(differs.any()))


def load_workload(image_size: int, images: int, overrides: list[str]) -> tuple[Any, Workload, torch.Tensor, torch.Tensor]:
    """The default workload (``model=fitted``) and ``images`` Fashion-MNIST test images with labels."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose("config", overrides=["model=fitted", "dataset=fashion_mnist",
                                           f"dataset.image_size={image_size}", *overrides])
    test_set = instantiate(cfg.dataset, split="test", limit=images)
    batch = torch.stack([test_set[i][0] for i in range(len(test_set))])
    labels = torch.tensor([test_set[i][1] for i in range(len(test_set))])
    return cfg, build_workload(cfg, test_set), batch, labels


def serve_and_check(cfg: Any, work: Workload, images: torch.Tensor, reference: torch.Tensor, device: torch.device,
                    rtol: float) -> list[CutCheck]:
    """Every candidate cut but device-only, through a real EdgeServer on ``device``."""
    # the server holds its own copy of the model (as its own process would), moved to its device
    server_model = copy.deepcopy(work.model)
    server_plan = analyze(server_model, work.example_input, codec=work.codec, rule=instantiate(cfg.bottleneck),
                          leaf_modules=tuple(cfg.get("leaf_modules") or ()))
    server_model.to(device)
    server = EdgeServer(TailBank(server_plan, work.example_input.to(device), device), work.fingerprint,
                        codec=work.codec)
    listener = bind_listener("127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, args=(listener,), daemon=True)
    thread.start()
    client = EdgeClient("127.0.0.1", listener.getsockname()[1], work.fingerprint, ScenarioClock())
    client.connect()
    checks = []
    try:
        for cut in work.plan.candidates[:-1]:
            head, _ = work.plan.split(cut)
            rows, tails = [], []
            for i in range(len(images)):
                with torch.inference_mode():
                    values = tuple(head(images[i : i + 1]))
                reply = client.exchange(client.request_frame(i, cut.index, values, work.codec))
                rows.append(reply.logits.float().cpu())
                tails.append(reply.report.tail_s)
            checks.append(compare(cut, torch.cat(rows), reference, tails, rtol))
    finally:
        client.close()
        server.stop()
        thread.join(timeout=5)
        listener.close()
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="the server's torch device (cpu checks the script itself)")
    parser.add_argument("--images", type=int, default=100, help="Fashion-MNIST test images (class-balanced)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--rtol", type=float, default=1e-2, help="largest logit difference, relative to the largest logit")
    parser.add_argument("--json", default=None)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the project config")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: nothing to check (use --device cpu to check the script)")
        return 0
    device = torch.device(args.device)
    started = time.perf_counter()
    cfg, work, images, labels = load_workload(args.image_size, args.images, args.overrides)
    with torch.inference_mode():
        reference = work.model(images).float()
    problem = trivial_logits(reference)
    accuracy = float((reference.argmax(1) == labels).double().mean())
    print(f"{work.model.name} with the fitted {cfg.dataset._target_.rsplit('.', 1)[-1]} head, {len(images)} test "
          f"images at {args.image_size} px: reference accuracy {accuracy:.2f}, "
          f"{reference.argmax(1).unique().numel()} classes predicted")
    checks = [] if problem else serve_and_check(cfg, work, images, reference, device, args.rtol)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    if problem:
        print(f"FAILED: the reference logits are trivial ({problem}); agreement would prove nothing")
    else:
        print(f"{'cut':<36} {'bytes':>9} {'agree':>6} {'max|dlogit|':>12} {'rel':>9} {'tail ms':>8}")
        for c in checks:
            print(f"{c.cut:<36} {c.bytes:>9} {c.agreement:>6.2f} {c.max_abs_logit_diff:>12.2e} "
                  f"{c.max_rel_logit_diff:>9.2e} {c.tail_ms_median:>8.2f}{'' if c.passed else '  FAILED'}")
    ok = problem is None and all(c.passed for c in checks)
    print(f"server on {name}, torch {torch.__version__}, {time.perf_counter() - started:.1f} s: "
          f"{'all checks passed' if ok else 'FAILED'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "torch": torch.__version__, "commit": source_commit(),
                       "command": " ".join(["check_cuda_server.py", *sys.argv[1:]]), "model": work.model.name,
                       "images": len(images), "image_size": args.image_size, "reference_accuracy": accuracy,
                       "classes_predicted": int(reference.argmax(1).unique().numel()), "trivial_logits": problem,
                       "rtol": args.rtol, "passed": ok, "rows": [asdict(c) for c in checks]}, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
