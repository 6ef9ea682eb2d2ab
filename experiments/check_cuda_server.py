"""The edge server on CUDA: every candidate cut of a few models served by an in-process EdgeServer
whose tails run on the GPU, compared with the unsplit model on the CPU.

    python experiments/check_cuda_server.py [--json PATH]

Prints, per model and cut, the agreement of the predicted classes, the largest logit difference
(GPU kernels differ from CPU ones in the last bits; bit-exactness holds on one device) and the
server's tail time. Exits 0 with a note when no CUDA device is present.
"""

from __future__ import annotations

import argparse
import copy
import json
import threading
import time

import torch
import torchvision

from splitcomp.link.codecs import RawCodec
from splitcomp.link.shaping import ScenarioClock
from splitcomp.runtime.client import EdgeClient
from splitcomp.runtime.fingerprint import model_fingerprint
from splitcomp.runtime.process import bind_listener
from splitcomp.runtime.server import EdgeServer
from splitcomp.runtime.tails import TailBank
from splitcomp.split import analyze


class Uint8Input(torch.nn.Module):
    """uint8 images in; normalisation as the model's first step (as splitcomp's workloads do)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x.float() / 255.0 - 0.45) / 0.225)


def check_model(name: str, images: torch.Tensor, device: torch.device) -> list[dict]:
    torch.manual_seed(0)
    model = Uint8Input(getattr(torchvision.models, name)(weights=None)).eval()
    plan = analyze(model, images[:1], codec=RawCodec())
    fingerprint = model_fingerprint(model, tuple(images[:1].shape), images.dtype, RawCodec())
    # the server holds its own copy of the model (as its own process would), moved to its device
    server_model = copy.deepcopy(model)
    server_plan = analyze(server_model, images[:1], codec=RawCodec())
    server_model.to(device)
    server = EdgeServer(TailBank(server_plan, images[:1].to(device), device), fingerprint)
    listener = bind_listener("127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, args=(listener,), daemon=True)
    thread.start()
    client = EdgeClient("127.0.0.1", listener.getsockname()[1], fingerprint, ScenarioClock())
    client.connect()
    with torch.inference_mode():
        reference = model(images)
    rows = []
    for cut in plan.candidates[:-1]:
        head, _ = plan.split(cut)
        tails, agree, diff = [], 0, 0.0
        for i in range(len(images)):
            with torch.inference_mode():
                values = tuple(head(images[i : i + 1]))
            reply = client.exchange(client.request_frame(i, cut.index, values, RawCodec()))
            tails.append(reply.report["tail_s"])
            agree += int(reply.logits.argmax(1) == reference[i : i + 1].argmax(1))
            diff = max(diff, float((reply.logits - reference[i : i + 1]).abs().max()))
        rows.append({"model": name, "cut": cut.name, "bytes": cut.bytes, "agreement": agree / len(images),
                     "max_abs_logit_diff": diff, "tail_ms_median": 1000 * sorted(tails)[len(tails) // 2]})
    client.close()
    server.stop()
    thread.join(timeout=5)
    listener.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", default=None)
    parser.add_argument("--models", default="resnet50,mobilenet_v3_large,efficientnet_b0,vit_b_16")
    parser.add_argument("--device", default="cuda", help="the server's torch device (cpu checks the script)")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 224, 224), dtype=torch.uint8, generator=generator)
    started = time.perf_counter()
    rows = [row for name in args.models.split(",") for row in check_model(name, images, device)]
    print(f"{'model':<20} {'cut':<28} {'bytes':>9} {'agree':>6} {'max|dlogit|':>12} {'tail ms':>8}")
    for r in rows:
        print(f"{r['model']:<20} {r['cut']:<28} {r['bytes']:>9} {r['agreement']:>6.2f} "
              f"{r['max_abs_logit_diff']:>12.2e} {r['tail_ms_median']:>8.2f}")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"server on {name}, torch {torch.__version__}, {time.perf_counter() - started:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
