"""SelectFormer (arXiv:2310.02373) delay model: network, MPS pipeline, QuickSelect top-k cost."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from honed.core.errors import InputError
from honed.private.mpc_cost import (BatchCost, NetworkModel, flow_shop_makespan, pipelined_delay, quickselect_topk,
                                    sequential_delay, topk_delay)
from honed.private.proxy_selection import secure_topk_standin


def test_network_seconds_is_rounds_times_rtt_plus_bytes_over_bandwidth():
    assert NetworkModel(rtt_s=0.01, bandwidth=1000.0).seconds(rounds=3, nbytes=500) == pytest.approx(0.03 + 0.5)
    with pytest.raises(InputError):
        NetworkModel(rtt_s=-1.0)


def test_flow_shop_hand_computed():
    # compute 1 then 2; network 3 then 1: job 1 leaves the network at 4, job 2 waits until 4 and ends at 5
    assert flow_shop_makespan([1.0, 2.0], [3.0, 1.0]) == 5.0


@given(st.integers(0, 50), st.floats(0.0, 5.0), st.integers(0, 200), st.floats(0.0, 1e4))
def test_mps_delay_between_resource_bound_and_sequential(n, compute, rounds, nbytes):
    cost, net = BatchCost(8, compute, rounds, nbytes), NetworkModel(rtt_s=1e-3, bandwidth=1e3)
    batches = -(-n // 8)
    comm = net.seconds(rounds, nbytes)
    mps, seq = pipelined_delay(n, cost, net), sequential_delay(n, cost, net)
    assert mps <= seq + 1e-9
    assert mps >= max(batches * compute, batches * comm) - 1e-9
    assert mps == pytest.approx(flow_shop_makespan([compute] * batches, [comm] * batches))


def test_batch_cost_from_measure_takes_cpu_time_as_local_compute():
    cost = BatchCost.from_measure({"seconds_per_example": 0.5, "cpu_seconds_per_example": 0.3,
                                   "rounds_per_batch": 7.0, "bytes_per_example": 10.0}, examples=4)
    assert (cost.compute_s, cost.rounds, cost.nbytes) == (pytest.approx(1.2), 7.0, 40.0)


@given(st.lists(st.integers(-1000, 1000), min_size=1, max_size=60, unique=True), st.data())
def test_quickselect_returns_the_k_largest(values, data):
    scores = torch.tensor(values, dtype=torch.float64)
    k = data.draw(st.integers(0, len(values)))
    chosen, trace = quickselect_topk(scores, k, torch.Generator().manual_seed(0))
    assert chosen.tolist() == secure_topk_standin(scores, k).tolist()
    assert trace["comparisons"] >= (len(values) if 0 < k < len(values) else 0)


def test_quickselect_ties_keep_exactly_k():
    chosen, _ = quickselect_topk(torch.tensor([1.0, 2.0, 2.0, 2.0, 0.0]), 2, torch.Generator().manual_seed(1))
    assert len(chosen) == 2 and set(chosen.tolist()) <= {1, 2, 3}


def test_topk_delay_scales_compute_and_bytes_with_comparisons_and_rounds_with_steps():
    per = BatchCost(examples=100, compute_s=1.0, rounds=10.0, nbytes=1000.0)
    net = NetworkModel(rtt_s=0.1, bandwidth=100.0)
    delay = topk_delay({"steps": 3, "comparisons": 250}, per, net)
    assert delay == pytest.approx(1.0 * 2.5 + 3 * 10 * 0.1 + 1000 * 2.5 / 100)


def test_sieve_delay_sums_phases_and_counts_topk_in_both_totals():
    from honed.private.mpc_cost import sieve_delay

    net = NetworkModel(rtt_s=0.0, bandwidth=1.0)
    costs = {"a": BatchCost(2, 1.0, 0.0, 2.0), "b": BatchCost(2, 3.0, 0.0, 0.0)}
    free = BatchCost(4, 0.0, 0.0, 0.0)  # comparisons cost nothing: top-k adds 0
    phases = [(torch.arange(4.0), "a", 2), (torch.arange(2.0), "b", 1)]
    out = sieve_delay(phases, costs, free, net, torch.Generator().manual_seed(0))
    # phase a: 2 batches of (1 s compute + 2 bytes per batch at 1 B/s) -> 6 sequential, 1 + 2 + max(1, 2) = 5 pipelined
    # phase b: 1 batch of 3 s compute -> 3 either way
    assert out == {"sequential": 9.0, "mps": 8.0, "topk": 0.0}
    with pytest.raises(InputError):
        sieve_delay([(torch.arange(2.0), "c", 1)], costs, free, net)


def test_quickselect_keeps_its_indices_on_the_scores_device():
    """Issue 18: survivors live beside the scores ('meta' can't compare values, so an empty pick is used
    for the device check) and the CPU pick is unchanged."""
    scores = torch.tensor([0.3, 0.9, 0.1, 0.7])
    chosen, _ = quickselect_topk(scores, 2, torch.Generator().manual_seed(0))
    assert chosen.tolist() == [1, 3]
    assert quickselect_topk(scores.to("meta"), 0)[0].device.type == "meta"
