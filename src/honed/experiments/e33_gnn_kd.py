"""33-gnn-kd: representation distillation for GNNs - LSP, GSP and G-CRD beside supervised and KD
students (On Representation Knowledge Distillation for Graph Neural Networks, arXiv:2111.04964).

Per seed: a synthetic graph is drawn - by default the card's SBM graph (``graph="sbm"``: 8 communities,
heavy feature noise, 20% noisy inter-community edges), or its optional second graph (``graph="multihop"``:
2000 nodes, random edges of mean degree 3, features revealing a hidden attribute, label = most frequent
hidden attribute at the ends of 2- and 3-step walks); split 10/10/80; a 3-layer teacher (hidden 128) is trained and frozen; then six 2-layer GCN
students (hidden 16, dropout 0.5) start from the same initialisation: supervised, KD, LSP (rbf),
GSP (cosine), G-CRD and KD + G-CRD. All distillation losses use the training nodes only (LSP on the
subgraph they induce). Each arm reports test accuracy at its best-validation epoch, and the same
checkpoint's test accuracy with 40% of the edges dropped at test time.
"""
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F

from honed.core.config import ExperimentConfig
from honed.core.errors import ConfigError
from honed.core.experiment import Claim, Experiment, SeedOutput, register_experiment
from honed.distill.gnn_kd import GCRDLoss, GSPLoss, LSPLoss, induced_subgraph, kd_loss
from honed.distill.graph_models import GraphInput, NodeClassifier, graph_input
from honed.distill.sbm_graph import NodeGraph, drop_edges, make_multihop_graph, make_sbm_graph

STUDENT_ARMS = ("supervised", "kd", "lsp", "gsp", "gcrd", "kd_gcrd")
METHOD_ARMS = ("gcrd", "kd_gcrd")
KERNEL = Literal["cosine", "poly", "l2", "rbf"]


@dataclass(frozen=True)
class GNNKDConfig(ExperimentConfig):
    """Defaults are the ``small`` preset (card: 5 seeds, 200 epochs). ``graph`` picks the data: the
    card's SBM graph (knobs p_in, p_out, noisy_edge_fraction) or its multi-hop second graph (knobs
    mean_degree, label_hops); both use communities (= classes), nodes_per_community, feature_dim,
    mean_scale and feature_noise. Chosen by the teacher-student VALIDATION gap, never on test."""

    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    threads: int = 1
    graph: Literal["sbm", "multihop"] = "sbm"
    communities: int = 8
    nodes_per_community: int = 250
    feature_dim: int = 128
    p_in: float = 0.006
    p_out: float = 0.0003
    noisy_edge_fraction: float = 0.2
    feature_noise: float = 2.0
    mean_scale: float = 0.5
    mean_degree: float = 3.0
    label_hops: tuple[int, ...] = (2, 3)
    teacher_conv: Literal["gcn", "gat"] = "gcn"
    teacher_layers: int = 3
    teacher_hidden: int = 128
    teacher_dropout: float = 0.5
    teacher_weight_decay: float = 5e-4
    student_hidden: int = 16
    student_dropout: float = 0.5
    epochs: int = 200
    teacher_epochs: int = 200
    lr: float = 0.01
    kd_alpha: float = 0.9
    kd_temperature: float = 4.0
    lsp_kernel: KERNEL = "rbf"
    lsp_beta: float = 100.0
    gsp_kernel: KERNEL = "cosine"
    gsp_beta: float = 100.0
    gsp_proj_dim: int = 128
    gcrd_proj_dim: int = 256
    gcrd_temperature: float = 0.075
    gcrd_beta: float = 0.1
    kd_gcrd_beta: float = 0.05
    max_samples: int = 4096
    test_edge_drop: float = 0.4

    @classmethod
    def smoke(cls) -> "GNNKDConfig":
        return replace(cls(), seeds=(0,), nodes_per_community=38, p_in=0.04, p_out=0.002,
                       epochs=20, teacher_epochs=20)

    @classmethod
    def full(cls) -> "GNNKDConfig":
        return replace(cls(), seeds=tuple(range(10)), epochs=500, teacher_epochs=500)

    def validate(self) -> None:
        if self.graph not in ("sbm", "multihop"):
            raise ConfigError(f"graph must be 'sbm' or 'multihop', got {self.graph!r}")
        if not self.mean_degree > 0 or not self.label_hops or min(self.label_hops) < 1:
            raise ConfigError(f"need mean_degree > 0 and label_hops >= 1, got {self.mean_degree}, {self.label_hops}")
        for name in ("communities", "nodes_per_community", "feature_dim", "teacher_layers", "teacher_hidden",
                     "student_hidden", "epochs", "teacher_epochs", "gsp_proj_dim", "gcrd_proj_dim", "max_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("p_in", "p_out", "noisy_edge_fraction", "kd_alpha", "test_edge_drop"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        for name in ("teacher_dropout", "student_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} must lie in [0, 1), got {getattr(self, name)}")
        for name in ("lr", "kd_temperature", "gcrd_temperature", "feature_noise"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("lsp_beta", "gsp_beta", "gcrd_beta", "kd_gcrd_beta"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")


def build_graph(cfg: GNNKDConfig, seed: int, device: torch.device) -> NodeGraph:
    """The card's SBM graph, or its optional second graph whose labels depend on 2-3 hop structure."""
    if cfg.graph == "multihop":
        return make_multihop_graph(cfg.communities, cfg.nodes_per_community, cfg.feature_dim, cfg.mean_degree,
                                   cfg.label_hops, cfg.mean_scale, cfg.feature_noise, seed=seed, device=device)
    return make_sbm_graph(cfg.communities, cfg.nodes_per_community, cfg.feature_dim, cfg.p_in, cfg.p_out,
                          cfg.noisy_edge_fraction, cfg.mean_scale, cfg.feature_noise, seed=seed, device=device)


@torch.no_grad()
def accuracies(model: torch.nn.Module, graph: NodeGraph, inputs: GraphInput) -> dict[str, float]:
    model.eval()
    pred = model(graph.x, inputs)[1].argmax(1)
    return {k: (pred[idx] == graph.y[idx]).float().mean().item()
            for k, idx in (("val", graph.val_idx), ("test", graph.test_idx))}


def fit(model: torch.nn.Module, params: list, loss_fn: Any, graph: NodeGraph, inputs: GraphInput,
        epochs: int, lr: float, weight_decay: float = 0.0) -> dict[str, Any]:
    """Full-batch Adam; keeps the state of the best-validation epoch (first one on ties)."""
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    best, best_state, curves = -1.0, None, {"val_acc": [], "test_acc": []}
    for _ in range(epochs):
        model.train()
        optimizer.zero_grad()
        loss_fn().backward()
        optimizer.step()
        acc = accuracies(model, graph, inputs)
        curves["val_acc"].append(acc["val"])
        curves["test_acc"].append(acc["test"])
        if acc["val"] > best:
            best, best_state = acc["val"], {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return curves


def evaluate_best(model: torch.nn.Module, graph: NodeGraph, inputs: GraphInput, dropped: GraphInput,
                  curves: dict[str, list[float]]) -> dict[str, Any]:
    clean, robust = accuracies(model, graph, inputs), accuracies(model, graph, dropped)
    metrics = {"test_acc": clean["test"], "val_acc": clean["val"], "test_acc_edge_drop": robust["test"],
               "best_epoch": float(max(range(len(curves["val_acc"])), key=curves["val_acc"].__getitem__) + 1)}
    return {"metrics": metrics, "curves": curves}


def train_teacher(cfg: GNNKDConfig, graph: NodeGraph, inputs: GraphInput, dropped: GraphInput,
                  seed: int, device: torch.device) -> tuple[NodeClassifier, dict[str, Any]]:
    torch.manual_seed(seed + 1_000_003)
    teacher = NodeClassifier(graph.x.shape[1], cfg.teacher_hidden, graph.num_classes, cfg.teacher_layers,
                             cfg.teacher_dropout, cfg.teacher_conv, device=device)
    tr = graph.train_idx
    curves = fit(teacher, list(teacher.parameters()),
                 lambda: F.cross_entropy(teacher(graph.x, inputs)[1][tr], graph.y[tr]),
                 graph, inputs, cfg.teacher_epochs, cfg.lr, cfg.teacher_weight_decay)
    return teacher, evaluate_best(teacher, graph, inputs, dropped, curves)


def student_loss(arm: str, cfg: GNNKDConfig, student: NodeClassifier, aux: torch.nn.Module | None,
                 graph: NodeGraph, inputs: GraphInput, teacher_out: tuple[torch.Tensor, torch.Tensor],
                 train_edges: torch.Tensor) -> Any:
    """The closure computing one arm's loss on the training nodes (card steps 1-6)."""
    tr, y = graph.train_idx, graph.y[graph.train_idx]
    t_emb, t_logits = teacher_out[0][tr], teacher_out[1][tr]

    def loss() -> torch.Tensor:
        emb, logits = student(graph.x, inputs)
        emb, logits = emb[tr], logits[tr]
        if arm in ("kd", "kd_gcrd"):
            base = kd_loss(logits, t_logits, y, cfg.kd_alpha, cfg.kd_temperature)
        else:
            base = F.cross_entropy(logits, y)
        if arm == "lsp":
            return base + cfg.lsp_beta * aux(emb, t_emb, train_edges)
        if arm in ("gsp", "gcrd", "kd_gcrd"):
            beta = {"gsp": cfg.gsp_beta, "gcrd": cfg.gcrd_beta, "kd_gcrd": cfg.kd_gcrd_beta}[arm]
            return base + beta * aux(emb, t_emb)
        return base

    return loss


def aux_module(arm: str, cfg: GNNKDConfig, device: torch.device) -> torch.nn.Module | None:
    if arm == "lsp":
        return LSPLoss(cfg.lsp_kernel)
    if arm == "gsp":
        return GSPLoss(cfg.student_hidden, cfg.teacher_hidden, cfg.gsp_kernel, cfg.gsp_proj_dim,
                       cfg.max_samples, device=device)
    if arm in ("gcrd", "kd_gcrd"):
        return GCRDLoss(cfg.student_hidden, cfg.teacher_hidden, cfg.gcrd_proj_dim, cfg.gcrd_temperature,
                        cfg.max_samples, device=device)
    return None


def train_student(arm: str, cfg: GNNKDConfig, graph: NodeGraph, inputs: GraphInput, dropped: GraphInput,
                  teacher_out: tuple[torch.Tensor, torch.Tensor], seed: int, device: torch.device) -> dict[str, Any]:
    torch.manual_seed(seed)  # same student initialisation and dropout stream start for every arm
    student = NodeClassifier(graph.x.shape[1], cfg.student_hidden, graph.num_classes, 2, cfg.student_dropout,
                             "gcn", device=device)
    aux = aux_module(arm, cfg, device)
    params = list(student.parameters()) + (list(aux.parameters()) if aux is not None else [])
    train_edges = induced_subgraph(graph.edge_index, graph.train_idx, graph.num_nodes)
    loss = student_loss(arm, cfg, student, aux, graph, inputs, teacher_out, train_edges)
    curves = fit(student, params, loss, graph, inputs, cfg.epochs, cfg.lr)
    out = evaluate_best(student, graph, inputs, dropped, curves)
    out["metrics"]["train_edges"] = float(train_edges.shape[1])
    return out


GRAPH_CALIBRATION = (
    "graph choice: SBM difficulty (feature_dim 128, class-mean scale 0.5, noise std 2, p_in 0.006, p_out "
    "0.0003) had been picked over a handful of settings by the teacher - supervised-student VALIDATION gap "
    "on seeds 0-1; the multi-hop graph was then run once with the same shared knobs (mean degree 3, label "
    "hops 2-3, untuned). Validation gaps, seeds 0-1 (teacher and supervised student only, no distillation "
    "arm, no test accuracy): SBM 3.50 / 4.50 (mean 4.00), multi-hop 9.50 / 5.50 (mean 7.50). Both meet the "
    "card's >= 3 rule, so the default stays the card's primary SBM graph; on test the SBM gap came out at "
    "2.86 (5 seeds) and the multi-hop gap at 4.70, with every G-CRD claim failing on both"
)


@register_experiment
class GNNKDExperiment(Experiment):
    id = "33-gnn-kd"
    title = "G-CRD: contrastive representation distillation for GNNs vs LSP / GSP / KD"
    family = "distill"
    paper = "On Representation Knowledge Distillation for Graph Neural Networks (arXiv:2111.04964)"
    summary = ("A 3-layer GCN teacher (hidden 128) is trained on a synthetic SBM graph (8 communities x 250 "
               "nodes, noisy class-mean features, 20% injected inter-community edges, 10/10/80 split; the card's "
               "second graph, labels from 2-3 hop structure, is graph='multihop') and frozen. "
               "2-layer GCN students (hidden 16, dropout 0.5) are trained with CE, logit KD, LSP (rbf, edges "
               "among training nodes), GSP (cosine, trainable heads), G-CRD (InfoNCE in a shared 256-d space, "
               "tau 0.075) and KD + G-CRD, all losses on training nodes, Adam lr 0.01, full batch. Test "
               "accuracy at the best-validation epoch, clean and with 40% of edges dropped at test.")
    Config = GNNKDConfig
    method = METHOD_ARMS
    baselines = ("supervised", "kd", "lsp", "gsp", "teacher")
    components = ("honed.distill.gnn_kd:GCRDLoss", "honed.distill.gnn_kd:GSPLoss",
                  "honed.distill.gnn_kd:LSPLoss", "honed.distill.gnn_kd:kd_loss")
    reconstructed = (
        "data: synthetic graphs instead of OGB ARXIV/MAG/PRODUCTS/S3DIS; SBM (graph='sbm'): noisy edges "
        "counted as 20% of the SBM edges (default); multi-hop (graph='multihop'): the card's optional second "
        "graph, designed here (Erdos-Renyi edges, hidden attribute in the features, label = argmax of 2- and "
        "3-step walk counts per hidden attribute, seeded jitter breaks ties)",
        "default graph: " + GRAPH_CALIBRATION,
        "teacher: 3-layer GCN (hidden 128, BN, dropout 0.5, weight decay 5e-4) instead of the 3-layer GAT "
        "250x3 heads (a plain-torch GAT layer is available as teacher_conv='gat', slower on CPU)",
        "KD + G-CRD weight beta = 0.05 and tau = 0.075 fixed a priori from the card's grids, not tuned",
        "KD's KL uses batchmean (sum over classes, mean over nodes)",
    )
    claims_tested = (
        "G-CRD >= max(LSP, GSP) in mean test accuracy",
        "G-CRD >= supervised + 0.5 points",
        "KD + G-CRD >= KD",
        "teacher - supervised student >= 3 points (the task leaves room to distil)",
        "G-CRD >= supervised with 40% of edges dropped at test (robustness to missing edges)",
    )

    def run_seed(self, cfg: GNNKDConfig, seed: int, ctx: Any) -> SeedOutput:
        graph = build_graph(cfg, seed, ctx.device)
        inputs = graph_input(graph.edge_index, graph.num_nodes)
        dropped = graph_input(drop_edges(graph.edge_index, cfg.test_edge_drop, seed + 17), graph.num_nodes)
        teacher, teacher_result = train_teacher(cfg, graph, inputs, dropped, seed, ctx.device)
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            teacher_out = teacher(graph.x, inputs)
        arms = {"teacher": teacher_result["metrics"]}
        curves: dict[str, dict[str, list[float]]] = {"test_acc": {}, "val_acc": {}}
        for arm in STUDENT_ARMS:
            out = ctx.cached(arm, lambda a=arm: train_student(a, cfg, graph, inputs, dropped, teacher_out,
                                                               seed, ctx.device))
            arms[arm] = out["metrics"]
            for name in curves:
                curves[name][arm] = out["curves"][name]
        extra = {"edges": graph.edge_index.shape[1] // 2,
                 "homophily": (graph.y[graph.edge_index[0]] == graph.y[graph.edge_index[1]]).float().mean().item()}
        return SeedOutput(arms=arms, extra=extra, curves=curves)

    def claims(self, cfg: GNNKDConfig, result: Any) -> list[Claim]:
        pts = lambda arm, metric="test_acc": 100 * result.mean(arm, metric)  # noqa: E731
        return [
            Claim.check("gcrd_minus_best_of_lsp_gsp_points", pts("gcrd") - max(pts("lsp"), pts("gsp")),
                        ">=", 0.0, "card: G-CRD beats LSP and GSP (ARXIV GCN: 71.64 vs 71.52 / 71.41)",
                        metric="test_acc"),
            Claim.check("gcrd_minus_supervised_points", pts("gcrd") - pts("supervised"), ">=", 0.5,
                        "card: reproduced if G-CRD >= supervised + 0.5 (ARXIV GCN: 71.64 vs 71.25)",
                        metric="test_acc"),
            Claim.check("kd_gcrd_minus_kd_points", pts("kd_gcrd") - pts("kd"), ">=", 0.0,
                        "card: KD + G-CRD >= KD (ARXIV GraphSage: 71.59 vs 71.44)", metric="test_acc"),
            Claim.check("teacher_minus_supervised_points", pts("teacher") - pts("supervised"),
                        ">=", 3.0, "card: require a teacher-student gap >= 3 points (ARXIV: 73.91 vs 71.25)",
                        metric="test_acc"),
            Claim.check("gcrd_minus_supervised_edge_drop_points",
                        pts("gcrd", "test_acc_edge_drop") - pts("supervised", "test_acc_edge_drop"), ">=", 0.0,
                        "card: G-CRD is robust to noisy/missing edges (robustness check, 40% dropped at test)",
                        metric="test_acc_edge_drop"),
        ]

    def notes(self, cfg: GNNKDConfig, result: Any) -> list[str]:
        arms = ("teacher",) + STUDENT_ARMS
        table = ", ".join(f"{a} {100 * result.mean(a, 'test_acc'):.2f} +- {100 * result.arms[a]['test_acc']['std']:.2f}"
                          for a in arms)
        drop = ", ".join(f"{a} {100 * result.mean(a, 'test_acc_edge_drop'):.2f}" for a in arms)
        lines = [f"graph: {cfg.graph}; " + GRAPH_CALIBRATION + ".", f"test accuracy (%, mean +- std over {len(result.seeds)} seeds): {table}.",
                 f"test accuracy with {100 * cfg.test_edge_drop:.0f}% of edges dropped at test (%): {drop}.",
                 f"LSP sees only the edges among training nodes: {result.mean('lsp', 'train_edges'):.0f} directed "
                 "edges on average, so its signal is weak by construction (as in the paper's protocol)."]
        std = max(100 * result.arms[a]["test_acc"]["std"] for a in ("gcrd", "supervised", "kd", "kd_gcrd"))
        gain = 100 * (result.mean("gcrd", "test_acc") - result.mean("supervised", "test_acc"))
        if abs(gain) < std:
            lines.append(f"G-CRD vs supervised differs by {gain:+.2f} points, within one seed std ({std:.2f}): "
                         "the ordering is not statistically resolved at this seed count.")
        gap = 100 * (result.mean("teacher", "test_acc") - result.mean("supervised", "test_acc"))
        val_gap = 100 * (result.mean("teacher", "val_acc") - result.mean("supervised", "val_acc"))
        if gap < 3:
            lines.append(f"the teacher leads the supervised student by only {gap:.2f} test points ({val_gap:.2f} on "
                         f"validation); its best-validation epoch is {result.mean('teacher', 'best_epoch'):.0f} on "
                         "average; with few training labels the teacher leaves little knowledge to distil - the "
                         "premise of the other claims is only partly met.")
        best = max(STUDENT_ARMS, key=lambda a: result.mean(a, "test_acc"))
        if best not in METHOD_ARMS:
            lines.append(f"best student arm here is {best} ({100 * result.mean(best, 'test_acc'):.2f}%), not G-CRD.")
        if len(result.seeds) < 10:
            lines.append(f"{len(result.seeds)} seed(s); the paper reports 10 (full preset).")
        return lines
