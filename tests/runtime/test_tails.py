"""The server's tails on the server's device (``meta`` stands in for a GPU: any device other than
the one the plan was traced on shows the same mix-up)."""

import torch
from torch import nn

from splitcomp.runtime.tails import TailBank
from splitcomp.split import analyze


class Normalised(nn.Module):
    """A root-level buffer read by the graph (as the workload's input normalisation is), then convs."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.full((1, 3, 1, 1), 0.5), persistent=False)
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.Conv2d(4, 2, 3, stride=2), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x - self.mean)


def test_tails_run_on_the_device_the_model_was_moved_to_after_the_plan_was_made():
    model = Normalised().eval()
    example = torch.rand(1, 3, 16, 16)
    plan = analyze(model, example)
    device = torch.device("meta")
    model.to(device)  # as the server does: the plan first, then the model onto its device
    bank = TailBank(plan, example.to(device), device)
    for cut in plan.candidates[:-1]:
        tail, signature = bank.get(cut.index)
        head, _ = plan.split(cut)
        out = tail(*[head(example.to(device))])
        assert out.device.type == "meta" and out.shape == (1, 2 * 3 * 3)
        assert all(item[0] == "tensor" for item in signature.items)
