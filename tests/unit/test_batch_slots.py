"""Free GPU slots for a batch (gateway/batch/slots.py): live load held at its recent peak,
headroom kept, the batch's own lines counted; pure, with a fake clock."""

from __future__ import annotations

from gateway.batch.slots import FillSlots, FixedSlots
from routing.live import DeploymentLoad


def test_fixed_slots() -> None:
    slots = FixedSlots(4)
    assert [slots.free(n) for n in (0, 3, 4, 9)] == [4, 1, 0, 0]


def test_fill_holds_live_load_at_its_peak_for_the_window() -> None:
    now = [0.0]
    load = DeploymentLoad()
    ours = [0]
    slots = FillSlots(16, 0.1, lambda: load, lambda: ours[0], hold_s=1.0, clock=lambda: now[0])
    assert slots.headroom == 2
    load.in_flight = 11
    assert slots.free(0) == 3  # 16 - 2 headroom - 11 live
    load.in_flight = 4  # a gap between live requests ...
    now[0] = 0.5
    assert slots.free(0) == 3  # ... does not free their slots
    now[0] = 1.2  # the peak has left the window
    assert slots.free(0) == 10
    load.remote_in_flight = 3  # other replicas' live requests count too
    assert slots.free(0) == 7
    ours[0] = 5  # and this process's batch lines on the GPU
    assert slots.free(2) == 2
    assert slots.free(9) == 0


def test_fill_without_load_information() -> None:
    slots = FillSlots(8, 0.0, lambda: None, lambda: 0, hold_s=0.0)
    assert slots.free(0) == 8 and slots.free(8) == 0
