import sys

import pytest
import torch

from companion import cost


def test_time_call_is_positive_and_orders_work():
    small, large = torch.randn(64, 64), torch.randn(512, 512)
    t_small = cost.time_call(lambda: small @ small, min_run_time=0.05)
    t_large = cost.time_call(lambda: large @ large, min_run_time=0.05)
    assert 0 < t_small < t_large


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak memory is measured through /proc")
def test_peak_memory_sees_a_large_temporary_tensor():
    def allocate():
        torch.ones(50_000_000).sum()  # a 200 MB temporary

    allocate()
    peak = cost.peak_memory_bytes(allocate)
    assert peak is not None and 150e6 < peak < 400e6
    assert cost.peak_memory_bytes(lambda: None) < 50e6


def test_peak_memory_is_none_where_it_cannot_be_measured(monkeypatch):
    monkeypatch.setattr(cost.sys, "platform", "darwin")
    assert cost.peak_memory_bytes(lambda: None) is None


def test_allocated_bytes_counts_new_storages_only():
    from companion.cost import allocated_bytes

    x = torch.randn(100)
    assert allocated_bytes(lambda: torch.zeros(1000)) == 4000
    assert allocated_bytes(lambda: x.view(10, 10)) == 0  # a view shares its storage
    assert allocated_bytes(lambda: x.add_(1.0)) == 0  # in place
    assert allocated_bytes(lambda: (x * 2).sum()) == 400 + 4
    assert allocated_bytes(lambda: [torch.ones(10) for _ in range(3)]) == 120  # freed and reused: each counted
