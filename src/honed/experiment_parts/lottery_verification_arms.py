"""The per-arm measurements of 21-lottery-verification (You are caught stealing my winning lottery
ticket!, arXiv:2111.00162): IMP ticket search, signing, and each removal / false-positive / trigger /
ambiguity attack, split out of :mod:`honed.experiments.e21_lottery_verification`.

Every arm function takes the seed's ``env`` dict built in ``run_seed``: ``cfg``, ``data`` (digits
16x16), ``device``, ``model`` (the one OwnershipCNN every arm loads its weights into), ``code`` (the
owner's QR code), ``key`` (the host window), ``seed``, ``owner`` / ``other`` (the stored IMP tickets of
this seed and of the independent seed), ``unsigned`` / ``signed`` (the ticket's masks before and after
embedding) and ``signed_weights`` (the signed ticket retrained from the rewound weights).
"""
import copy
import statistics

import torch
from torch import nn

from honed.compress.imp import StepTrainer, iterative_magnitude_pruning, train_ticket
from honed.compress.masks import MaskCallback, apply_mask, magnitude_prune, shuffle_mask, sparsity
from honed.compress.ownership import (TriggerMixCallback, connectivity, forgery_attack, make_trigger_set,
                                      prune_further, qr_encode, read_signature, search_signature, window_agreement)
from honed.compress.ownership_cnn import OwnershipCNN
from honed.compress.path_attacks import ATTACKS, perturb_mask, reinit_added
from honed.compress.qr_code import QR_SIZE, data_cells
from honed.core.checkpoint import load_tensors, save_tensors
from honed.core.loop import correct_per_example, split_accuracy, train
from honed.data import Batches

UNPRUNED = ("stem.weight", "fc.weight")  # card step 0: the stem conv and the fc layer stay dense


def stored(folder, name: str, compute) -> dict[str, torch.Tensor]:
    """A dict of tensors kept in ``folder`` as ``name``.safetensors, computed once."""
    path = folder / f"{name}.safetensors"
    if path.exists():
        return load_tensors(path)[0]
    value = compute()
    save_tensors(path, value)
    return value


def split_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def step_trainer(cfg, data, seed: int, device) -> StepTrainer:
    batches = Batches(data.train, cfg.batch_size, seed=seed)
    return StepTrainer(batches, cfg.epochs_per_round * len(batches), lambda p: torch.optim.Adam(p, lr=cfg.lr),
                       device)


def rewind_step(cfg, data) -> int:
    return cfg.rewind_epochs * len(Batches(data.train, cfg.batch_size))


def find_ticket(cfg, data, seed: int, device) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = OwnershipCNN(tuple(cfg.channels)).to(device)
    imp = iterative_magnitude_pruning(
        model, step_trainer(cfg, data, seed, device), cfg.rounds, prune_fraction=cfg.prune_fraction,
        rewind_step=rewind_step(cfg, data), ignore=UNPRUNED, keep_trained=True,
        evaluate=lambda m: {"accuracy": split_accuracy(m, data.test, device)})
    ref = min(imp.levels[1:], key=lambda lv: abs(lv.sparsity - cfg.scheme1_reference_sparsity))
    out = {f"mask.{k}": v for k, v in imp.levels[-1].mask.items()}
    out.update({f"ref_mask.{k}": v for k, v in ref.mask.items()})
    out.update({f"ref_trained.{k}": v for k, v in ref.trained.items()})
    out.update({f"rewind.{k}": v for k, v in imp.rewind_state.items()})
    out.update({f"trained.{k}": v.detach().clone() for k, v in model.state_dict().items()})
    out["level_acc"] = torch.tensor([lv.metrics["accuracy"] for lv in imp.levels])
    return out


def owner_reading(source, env) -> dict[str, float]:
    r = read_signature(source, env["key"], env["code"])
    return {"ber": r.ber, "decoded": float(r.text == env["cfg"].owner_text)}


def load_state(env, state: dict[str, torch.Tensor], mask=None) -> nn.Module:
    model = env["model"]
    model.load_state_dict(state)
    return apply_mask(model, mask) if mask is not None else model


def correct_of(env, state: dict[str, torch.Tensor]) -> list[float]:
    """Per-test-image 0/1 correctness of ``state`` loaded into the experiment's CNN."""
    return correct_per_example(load_state(env, state), env["data"].test.x, env["data"].test.y)


def unsigned_arm(env) -> dict[str, float]:
    owner, key, code = env["owner"], env["key"], env["code"]
    agree = window_agreement(connectivity(env["unsigned"][key.layer]), code)[key.row, key.col]
    return {"test_acc": correct_of(env, split_prefix(owner, "trained.")), "sparsity": sparsity(env["unsigned"]),
            "host_agreement": float(agree), **owner_reading(env["unsigned"], env)}


def signed_arm(env) -> dict[str, float]:
    model = load_state(env, env["signed_weights"])
    acc = split_accuracy(model, env["data"].test, env["device"])
    triggers = trigger_set(env)
    return {"test_acc": correct_of(env, env["signed_weights"]), "sparsity": sparsity(env["signed"]),
            "abs_acc_change": abs(acc - float(env["owner"]["level_acc"][-1])),
            "code_weight_ratio": code_weight_ratio(env, model),
            "abs_sparsity_change": abs(sparsity(env["signed"]) - sparsity(env["unsigned"])),
            "trigger_acc": correct_per_example(model, *triggers),
            **owner_reading(env["signed"], env), **{f"weights_{k}": v for k, v in owner_reading(model, env).items()}}


def code_weight_ratio(env, model: nn.Module) -> float:
    """Median |w| of the kept entries on code-1 cells of the window over the median |w| of every kept
    entry of the pruned convs: below 1 means magnitude pruning removes the code's entries first."""
    key, code, params = env["key"], env["code"], dict(model.named_parameters())
    window = (slice(key.row, key.row + QR_SIZE), slice(key.col, key.col + QR_SIZE))
    w = params[key.layer].detach()[window]
    code_cells = (data_cells() & code)[..., None, None].expand_as(w)
    on_code = w[code_cells & env["signed"][key.layer][window]].abs()
    everything = torch.cat([params[k].detach()[m].abs() for k, m in env["signed"].items()])
    return float(on_code.median() / everything.median())


def finetuned_arm(env, keep_mask: bool) -> dict[str, float]:
    """Removal attack: fine-tune the stolen signed ticket; with ``keep_mask`` False the pruned
    weights regrow and the attacker re-prunes by magnitude to the ticket's sparsity afterwards."""
    cfg, data, device = env["cfg"], env["data"], env["device"]
    model = load_state(env, env["signed_weights"], env["signed"])
    callbacks = [MaskCallback(env["signed"])] if keep_mask else []
    train(model, Batches(data.train, cfg.batch_size, seed=env["seed"] + 7), torch.optim.Adam(
        model.parameters(), lr=cfg.finetune_lr), cfg.finetune_epochs, callbacks=callbacks, device=device,
        progress=False)
    out = {"finetuned_acc": split_accuracy(model, data.test, device)}
    if not keep_mask:
        mask = magnitude_prune(model, sparsity(env["signed"]), "global", ignore=UNPRUNED)
        apply_mask(model, mask)
    return {**out, "test_acc": correct_per_example(model, data.test.x, data.test.y), **owner_reading(model, env)}


def pruned_arms(env) -> dict[str, dict[str, float]]:
    arms = {}
    for p in env["cfg"].extra_sparsities:
        model = load_state(env, env["signed_weights"], env["signed"])
        mask = prune_further(model, env["signed"], p)
        apply_mask(model, mask)
        host = env["key"].layer
        arms[f"pruned_p{round(100 * p):02d}"] = {
            "extra_sparsity": p, "sparsity": sparsity(mask),
            "host_pruned_fraction": 1 - int(mask[host].sum()) / int(env["signed"][host].sum()),
            "test_acc": correct_per_example(model, env["data"].test.x, env["data"].test.y),
            **owner_reading(mask, env)}
    return arms


def false_positive_reading(mask, env) -> dict[str, float]:
    found = search_signature(mask, env["code"], decode_top=env["cfg"].decode_top)
    return {"ber_at_key": owner_reading(mask, env)["ber"], "best_window_ber": found.ber,
            "false_positive": float(found.text == env["cfg"].owner_text
                                    or owner_reading(mask, env)["decoded"] > 0)}


def independent_arm(env) -> dict[str, float]:
    other = env["other"]
    mask = split_prefix(other, "mask.")
    model = load_state(env, split_prefix(other, "trained."))
    return {"test_acc": correct_of(env, split_prefix(other, "trained.")), "sparsity": sparsity(mask),
            "trigger_acc": correct_per_example(model, *trigger_set(env)),
            **false_positive_reading(mask, env)}


def random_mask_arm(env) -> dict[str, float]:
    mask = shuffle_mask(env["signed"], torch.Generator().manual_seed(env["seed"] + 3))
    return {"sparsity": sparsity(mask), **false_positive_reading(mask, env)}


def trigger_set(env) -> tuple[torch.Tensor, torch.Tensor]:
    return make_trigger_set(env["cfg"].num_triggers, (1, 16, 16), 10,
                            torch.Generator().manual_seed(env["seed"] + 11))


def trigger_arm(env) -> dict[str, float]:
    """Scheme 3: the signed ticket retrained from the rewound weights with trigger samples in every
    step; then its trigger accuracy, also after the extra pruning attack."""
    cfg, data, device, model = env["cfg"], env["data"], env["device"], env["model"]
    x_trig, y_trig = trigger_set(env)
    trainer = step_trainer(cfg, data, env["seed"], device)
    mix = TriggerMixCallback(x_trig, y_trig, cfg.triggers_per_step)
    train_ticket(model, split_prefix(env["owner"], "rewind."), env["signed"],
                 lambda m, start, cbs: trainer(m, start, [*cbs, mix]), rewind_step(cfg, data))
    out = {"test_acc": correct_per_example(model, data.test.x, data.test.y),
           "trigger_acc": correct_per_example(model, x_trig, y_trig)}
    state = copy.deepcopy(model.state_dict())
    for p in cfg.extra_sparsities:
        model.load_state_dict(state)
        apply_mask(model, prune_further(model, env["signed"], p))
        out[f"trigger_acc_p{round(100 * p):02d}"] = correct_per_example(model, x_trig, y_trig)
    return out


def scheme1_arms(env) -> dict[str, dict]:
    """Scheme 1 (card (d)): each attack of ``scheme1_attacks`` on the extreme ticket (every attack)
    and on the ~50% IMP level (edge-weighted paths), then retraining from the rewound weights with
    the owner's trainer; the unattacked tickets are the IMP levels as trained."""
    cfg, owner, seed = env["cfg"], env["owner"], env["seed"]
    layers = [n for n in env["unsigned"] if n not in UNPRUNED and env["unsigned"][n].dim() == 4]
    tickets = {"extreme": (env["unsigned"], split_prefix(owner, "trained.")),
               "reference": (split_prefix(owner, "ref_mask."), split_prefix(owner, "ref_trained."))}
    arms = {"reference_ticket": {"test_acc": correct_of(env, tickets["reference"][1]),
                                 "sparsity": sparsity(tickets["reference"][0])}}
    trainer = step_trainer(cfg, env["data"], seed, env["device"])
    for ticket, (mask, trained) in tickets.items():
        for attack in cfg.scheme1_attacks if ticket == "extreme" else ("edge_weighted_path",):
            gen = torch.Generator().manual_seed(seed + 1000 + ATTACKS.index(attack))
            hit = perturb_mask(mask, trained, layers, attack, cfg.scheme1_amount, cfg.scheme1_add_back, gen)
            start = reinit_added(split_prefix(owner, "rewind."), hit.added, generator=gen)
            model = train_ticket(env["model"], start, hit.mask, trainer, rewind_step(cfg, env["data"]))
            arms[f"{ticket}/{attack}"] = {
                "test_acc": correct_per_example(model, env["data"].test.x, env["data"].test.y),
                "removed_kernels": float(hit.removed_kernels), "removed_entries": float(hit.removed_entries),
                "live_kernels": float(sum(int(mask[n].any((2, 3)).sum()) for n in layers)),
                "sparsity": sparsity(hit.mask)}
    return arms


def forged_arm(env) -> dict[str, float]:
    """Ambiguity attacks, averaged over the attacker strings: forging a code into the stolen signed
    mask, and claiming a code is found in the owner's original mask."""
    cfg, key, rows = env["cfg"], env["key"], []
    for i, text in enumerate(cfg.attacker_texts):
        code = qr_encode(text)
        out = forgery_attack(env["signed"], key, env["code"], code,
                             generator=torch.Generator().manual_seed(env["seed"] + 100 + i))
        found = search_signature(env["signed"], code, decode_top=cfg.decode_top)
        a = out.attacker_in_forged.key
        overlap = (a.layer == key.layer) * max(0, QR_SIZE - abs(a.row - key.row)) * \
            max(0, QR_SIZE - abs(a.col - key.col)) / QR_SIZE ** 2
        model = load_state(env, env["signed_weights"], out.forged_mask)
        rows.append({"attacker_decodes_forged": float(out.attacker_in_forged.text == text),
                     "owner_decodes_forged": float(out.owner_in_forged.text == cfg.owner_text),
                     "owner_ber_forged": out.owner_in_forged.ber, "window_overlap": overlap,
                     "attacker_in_original": float(out.attacker_in_original.text == text or found.text == text),
                     "attacker_best_ber_original": found.ber,
                     "test_acc": split_accuracy(model, env["data"].test, env["device"])})
    return {k: statistics.fmean(r[k] for r in rows) for k in rows[0]}
