"""What a server-load model means for one request: the server's true state at scenario time t.

The simulator charges it and hindsight policies (the oracle) read it, on both runtimes, so the
oracle of a real run sees the load exactly as the simulator models it. :class:`TrueLoad` turns a
load model (``batch_at``, ``slowdown_at``, ``clients_at``; see :mod:`splitcomp.scenario.load`)
into a :class:`~splitcomp.records.ServerLoad`:

* the tail runs in a batch of ``batch_at(t)``, slowed down by ``slowdown_at(t)``;
* background clients queue ahead of the request. Each sends requests at the load model's
  ``cut`` (full offloading when that names no candidate), and the server computes one job at a
  time, each taking ``S`` (that cut's tail at the current batch and slowdown). The real clients
  of :mod:`splitcomp.runtime.background` wait for each answer before sending again:

  - closed loop (``rate_hz`` null): each client has a job at the server nearly all the time, so
    a request finds ``k - 1`` jobs waiting and one being computed, of which ``client_share``
    (0.5: half of a job, on average) is still to run: ``queue_s = (k - 1 + client_share) * S``;
  - open loop (``rate_hz``): each client sends after an exponential gap of mean ``1 / rate_hz``
    once its previous answer is back, so it sends at ``1 / (1 / rate_hz + S + W)``. The queue is
    an M/D/1 queue at that rate: ``W = rho * S / (2 * (1 - rho))`` with ``rho = k * rate * S``,
    solved by a few fixed-point steps and never above the closed-loop wait.
"""

from __future__ import annotations

from splitcomp.profile.latency import CutProfile
from splitcomp.records import ServerLoad
from splitcomp.scenario.load import LoadModel

FIXED_POINT_STEPS = 4


class TrueLoad:
    """The true :class:`ServerLoad` at scenario time ``t`` under ``load_model`` (None: idle)."""

    def __init__(self, load_model: LoadModel | None, candidates: list[CutProfile], client_share: float = 0.5) -> None:
        self.load_model = load_model
        self.client_share = float(client_share)
        by_name = {c.name: c for c in candidates}
        full_offload = next((c for c in candidates if c.is_full_offload), candidates[0])
        self.background_cut = by_name.get(getattr(load_model, "cut", None), full_offload)
        self.rate_hz = getattr(load_model, "rate_hz", None)

    def at(self, t: float) -> ServerLoad:
        model = self.load_model
        if model is None:
            return ServerLoad()
        batch = max(1, int(model.batch_at(t)))
        slowdown = max(1.0, float(model.slowdown_at(t)))
        clients = int(model.clients_at(t))
        service_s = self.background_cut.tail_at(batch) * slowdown
        return ServerLoad(batch_size=batch, queue_len=clients, slowdown=slowdown,
                          queue_s=self.queue_s(clients, service_s))

    def queue_s(self, clients: int, service_s: float) -> float:
        """Mean time a request waits behind ``clients`` background clients' jobs of ``service_s``."""
        if clients <= 0 or service_s <= 0:
            return 0.0
        closed = (clients - 1 + self.client_share) * service_s
        if self.rate_hz is None:
            return closed
        wait = 0.0
        for _ in range(FIXED_POINT_STEPS):
            rate = clients / (1.0 / self.rate_hz + service_s + wait)
            rho = rate * service_s
            wait = closed if rho >= 1 else min(closed, rho * service_s / (2 * (1 - rho)))
        return wait
