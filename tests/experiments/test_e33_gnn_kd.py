"""33-gnn-kd experiment (G-CRD, arXiv:2111.04964): per-node outcomes and the graph choice on validation."""
from dataclasses import replace

import pytest
import torch

import honed.experiments.e33_gnn_kd as e33
from honed.distill.graph_models import graph_input

TINY = replace(e33.GNNKDConfig(), seeds=(0,), nodes_per_community=20, p_in=0.05, p_out=0.003, epochs=3,
               teacher_epochs=3, teacher_hidden=8, selection_seeds=(7,))


def test_per_node_outcomes_follow_the_test_nodes():
    graph = e33.build_graph(replace(TINY, graph="sbm"), 0, torch.device("cpu"))
    inputs = graph_input(graph.edge_index, graph.num_nodes)
    model = e33.new_student(TINY, graph, torch.device("cpu"))
    correct = e33.test_correct(model, graph, inputs)
    assert len(correct) == len(graph.test_idx) and set(correct) <= {0.0, 1.0}
    assert sum(correct) / len(correct) == pytest.approx(e33.accuracies(model, graph, inputs)["test"])


@pytest.mark.parametrize("sbm_gap, pick", [(3.0, "sbm"), (2.9, "multihop")])
def test_selection_follows_the_cards_gap_rule(monkeypatch, sbm_gap, pick):
    monkeypatch.setattr(e33, "validation_gap", lambda cfg, name, seed, dev: sbm_gap if name == "sbm" else 9.0)
    e33.graph_selection.cache_clear()
    out = e33.graph_selection(replace(TINY, min_teacher_gap=3.0))
    e33.graph_selection.cache_clear()
    assert out["graph"] == pick and out["validation_gap_points"]["sbm"] == [sbm_gap]


def test_validation_gap_reads_no_test_accuracy(monkeypatch):
    seen = []
    real = e33.accuracies
    monkeypatch.setattr(e33, "accuracies", lambda m, g, i, splits=("val", "test"): seen.append(splits) or real(m, g, i, splits))
    gap = e33.validation_gap(TINY, "sbm", 7, torch.device("cpu"))
    assert -100 <= gap <= 100 and seen and all(s == ("val",) for s in seen)
