import os

from splitcomp.profile import machine
from splitcomp.profile.machine import LoadWatch, MachineLoad, Snapshot


def test_others_cores_is_the_machines_busy_time_less_this_process():
    start = Snapshot(wall_s=10.0, own_cpu_s=1.0, busy_cpu_s=100.0, load_average=0.5)
    end = Snapshot(wall_s=12.0, own_cpu_s=3.0, busy_cpu_s=104.5, load_average=2.5)
    load = MachineLoad.between(start, end)
    assert load.wall_s == 2.0 and load.own_cpu_s == 2.0 and load.busy_cpu_s == 4.5
    assert load.others_cores == 1.25  # (4.5 - 2.0) CPU seconds over 2 s
    assert load.own_cpu_share == 1.0 and load.as_params("p.")["p.own_cpu_share"] == 1.0
    assert load.is_busy(0.5) and not load.is_busy(2.0)
    assert "1.2 of" in load.describe() and "0.50 -> 2.50" in load.describe()
    assert MachineLoad.from_dict(load.to_dict()) == load


def test_without_proc_stat_the_load_average_stands_in():
    load = MachineLoad(cpus=2, load_before=0.4, load_after=2.9, wall_s=5.0, own_cpu_s=5.0, busy_cpu_s=None)
    assert load.others_cores == 1.9  # the busiest load average less this process
    assert MachineLoad(2, None, None, 1.0, 1.0).others_cores == 0.0


def test_load_watch_reads_this_machine(monkeypatch):
    with LoadWatch() as watch:
        sum(range(200_000))
    assert watch.load.cpus == os.cpu_count() and watch.load.wall_s > 0 and watch.load.own_cpu_s >= 0
    monkeypatch.setattr(machine.Path, "read_text", lambda self: "")  # no /proc/stat
    with LoadWatch() as watch:
        pass
    assert watch.load.busy_cpu_s is None
