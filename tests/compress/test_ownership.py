"""Lottery-ticket ownership (arXiv:2111.00162): QR codec oracles, signature embed/extract invariants,
false-positive bounds, removal/ambiguity attacks, trigger sets, and clear errors."""
import math

import pytest
import torch
from torch import nn

from honed.compress.masks import apply_mask, count_kept, is_nested, magnitude_prune
from honed.compress.ownership import (SignatureKey, TriggerMixCallback, connectivity, embed_signature,
                                      extract_signature, find_host, forgery_attack, make_trigger_set,
                                      prune_further, read_signature, search_signature, trigger_accuracy)
from honed.compress.qr_code import data_cells, mask_pattern_of, qr_decode, qr_encode, rs_correct, rs_encode
from honed.core.errors import InputError
from honed.core.loop import Callback, train
from honed.data import Batches, Split

OWNER = "honed ticket owner"


def random_mask(density: float, seed: int = 0, shape=(64, 64, 3, 3)) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"conv.weight": torch.rand(shape, generator=gen) < density,
            "fc.weight": torch.rand(10, 64, generator=gen) < 0.5}


# ---------------------------------------------------------------- QR codec
# OWNER with mask 3 as honed's earlier hand-written ISO/IEC 18004 encoder wrote it (row-major, dark = 1)
OWNER_MASK3_HEX = ("fe122bfc13efd06e8f2abb7421a5dbaa272ec1238d07faaaafe012cf0033de0e80a94027c4f72874b9e92419b51807aa8d6"
                   "ba42872f0f68f52faaf7dce80a1d2d82bf37c7811f060d43134fe8041a47ffb036a104ccd11ba21cfa5d465eeaeb2465b04"
                   "2b6bafe2e8c100")


def test_reed_solomon_hand_oracles():
    assert rs_encode([1], 2) == [3, 2]  # x^2 mod (x - 1)(x - 2) = x^2 + 3x + 2 in GF(256): 3x + 2
    # ISO/IEC 18004 annex example "01234567" at 1-M: 16 data codewords -> these 10 check codewords
    data = [0x10, 0x20, 0x0C, 0x56, 0x61, 0x80] + [0xEC, 0x11] * 5
    assert rs_encode(data, 10) == [0xA5, 0x24, 0xD4, 0xC1, 0xED, 0x36, 0xC7, 0x87, 0x2C, 0x55]


def test_qr_matrix_equals_the_hand_written_encoders():
    bits = torch.tensor([int(b) for b in bin(int(OWNER_MASK3_HEX, 16))[2:].zfill(len(OWNER_MASK3_HEX) * 4)])
    assert torch.equal(qr_encode(OWNER, mask_pattern=3).flatten(), bits[:29 * 29].bool())


def test_qr_format_field_is_the_iso_word():
    code = qr_encode(OWNER, mask_pattern=0)
    first_copy = [(i, 8) for i in range(6)] + [(7, 8), (8, 8), (8, 7)] + [(8, 14 - i) for i in range(9, 15)]
    word = sum(int(code[r, c]) << i for i, (r, c) in enumerate(first_copy))
    assert word == 0b001011010001001  # ISO/IEC 18004 format table: level H, mask 0
    for r, c in first_copy[:3]:
        code[r, c] = ~code[r, c]
    assert mask_pattern_of(code) == 0  # 3 wrong format bits still name the pattern
    assert mask_pattern_of(torch.zeros(29, 29, dtype=torch.bool)) is None


def test_reed_solomon_corrects_up_to_eleven_errors_and_flags_more():
    gen = torch.Generator().manual_seed(1)
    for trial in range(60):
        data = torch.randint(256, (13,), generator=gen).tolist()
        word = data + rs_encode(data, 22)
        n_err = trial % 15
        bad = list(word)
        for pos in torch.randperm(35, generator=gen)[:n_err].tolist():
            bad[pos] ^= int(torch.randint(1, 256, (1,), generator=gen))
        fixed = rs_correct(bad, 22)
        if n_err <= 11:
            assert fixed == data
        else:
            assert fixed != data  # beyond t = 11 the block is not recovered (detected as None here)


def test_qr_layout_oracles():
    code = qr_encode(OWNER, mask_pattern=3)
    assert int(data_cells().sum()) == 567  # 29^2 - finders/separators 192 - timing 26 - alignment 25 - format 31
    finder = torch.ones(7, 7, dtype=torch.bool)
    finder[1:6, 1:6] = False
    finder[2:5, 2:5] = True
    for rows, cols in ((slice(0, 7), slice(0, 7)), (slice(0, 7), slice(22, 29)), (slice(22, 29), slice(0, 7))):
        assert torch.equal(code[rows, cols], finder)
    assert code[6, 8:21].tolist() == [i % 2 == 0 for i in range(8, 21)]  # timing row
    assert bool(code[21, 8])  # dark module
    assert mask_pattern_of(code) == 3


@pytest.mark.parametrize("text", [OWNER, "a", "x" * 24, "Zürich ✓", "12345", ""])
def test_qr_round_trip_every_mask_pattern(text):
    for pattern in [None, *range(8)]:
        assert qr_decode(qr_encode(text, pattern)) == text


def test_qr_decode_survives_ten_flipped_data_modules():
    code = qr_encode(OWNER)
    cells = data_cells().nonzero()
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        bad = code.clone()
        for r, c in cells[torch.randperm(len(cells), generator=gen)[:10]].tolist():
            bad[r, c] = ~bad[r, c]  # 10 bits touch <= 10 codewords: within 11 per block
        assert qr_decode(bad) == OWNER


# ---------------------------------------------------------------- signatures in the mask
def test_connectivity_oracle():
    kernel = torch.zeros(2, 3, 3, 3)
    kernel[0, 1, 2, 2] = 0.5
    kernel[1, 0, 0, 0] = -1.0
    assert connectivity(kernel).tolist() == [[False, True, False], [True, False, False]]


@pytest.mark.parametrize("density, edits_add", [(0.04, True), (0.5, False)])
def test_embed_round_trip_keeps_sparsity_and_function_patterns(density, edits_add):
    mask = random_mask(density)
    code = qr_encode(OWNER)
    signed, key = embed_signature(mask, code, generator=torch.Generator().manual_seed(3))
    window = mask[key.layer][key.row:key.row + 29, key.col:key.col + 29].flatten(2)
    on, cells = window.any(2), data_cells()
    added, removed = int((cells & code & ~on).sum()), int(window[cells & ~code & on].sum())
    assert (added > removed) == edits_add  # both rebalancing branches are exercised
    assert {k: int(v.sum()) for k, v in signed.items()} == {k: int(v.sum()) for k, v in mask.items()}
    assert signed["fc.weight"] is mask["fc.weight"]
    before, after = connectivity(mask[key.layer]), connectivity(signed[key.layer])
    win = (slice(key.row, key.row + 29), slice(key.col, key.col + 29))
    cells = data_cells()
    assert torch.equal(after[win][cells], code[cells])  # window bits == code on every data module
    assert torch.equal(after[win][~cells], before[win][~cells])  # function patterns untouched
    outside = torch.ones_like(before)
    outside[win] = False
    assert torch.equal(after[outside], before[outside])
    switched_on = cells & code & ~before[win]
    assert (signed[key.layer][win].flatten(2).sum(2)[switched_on] == 1).all()  # exactly one position
    reading = read_signature(signed, key, code)
    assert reading.ber == 0.0 and reading.text == OWNER


def test_embedding_spills_the_rebalance_to_other_conv_layers_when_the_host_is_too_sparse():
    gen = torch.Generator().manual_seed(8)
    mask = {"host.weight": torch.rand(64, 64, 3, 3, generator=gen) < 0.017,
            "donor.weight": torch.rand(32, 16, 3, 3, generator=gen) < 0.3,
            "fc.weight": torch.rand(10, 64, generator=gen) < 0.5}
    code = qr_encode(OWNER)
    signed, key = embed_signature(mask, code, layers=["host.weight"])
    assert count_kept(signed) == count_kept(mask)  # card step 2d: the global count is restored
    assert int(signed["host.weight"].sum()) > int(mask["host.weight"].sum())
    assert int(signed["donor.weight"].sum()) < int(mask["donor.weight"].sum())
    assert torch.equal(connectivity(signed["donor.weight"]), connectivity(mask["donor.weight"]))
    assert is_nested({"d": signed["donor.weight"]}, {"d": mask["donor.weight"]})
    assert torch.equal(signed["fc.weight"], mask["fc.weight"])
    assert read_signature(signed, key, code).text == OWNER


def test_find_host_locates_a_planted_code():
    mask = random_mask(0.05, seed=4)
    code = qr_encode(OWNER)
    planted = mask["conv.weight"].clone()
    planted[5:34, 7:36] = code[..., None, None].expand(29, 29, 3, 3)
    key, agreement = find_host({**mask, "conv.weight": planted}, code)
    assert (key.layer, key.row, key.col, agreement) == ("conv.weight", 5, 7, 1.0)


def test_round_trip_on_a_fresh_magnitude_pruned_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.Conv2d(64, 64, 3))
    mask = magnitude_prune(model, 0.9)
    code = qr_encode(OWNER)
    signed, key = embed_signature(mask, code, layers=["4.weight"])
    assert count_kept(signed) == count_kept(mask)
    apply_mask(model, signed)
    assert torch.equal(extract_signature(model, key, code), code)  # exact, every module
    assert read_signature(model, key, code).text == OWNER


def test_reading_from_model_weights_equals_reading_from_mask():
    mask = random_mask(0.05, seed=5)
    code = qr_encode(OWNER)
    signed, key = embed_signature(mask, code)
    model = nn.Sequential(nn.Conv2d(64, 64, 3, bias=False))
    with torch.no_grad():
        model[0].weight.mul_(signed["conv.weight"])
    key0 = SignatureKey("0.weight", key.row, key.col)
    assert torch.equal(extract_signature(model, key0, code), extract_signature(signed, key, code))


@pytest.mark.parametrize("seed", range(4))
def test_independent_random_mask_reads_near_chance(seed):
    """Connectivity of an unsigned mask is independent of the code: BER ~ Binomial(567, 1/2) / 567
    (sd 0.021), so a 5-sd band must hold; the best of all windows stays far above level-H tolerance."""
    mask = random_mask(0.075, seed=100 + seed)  # kernel on with probability ~0.5
    code = qr_encode(OWNER)
    reading = read_signature(mask, SignatureKey("conv.weight", 17, 3), code)
    assert abs(reading.ber - 0.5) <= 5 * math.sqrt(0.25 / 567)
    best = search_signature(mask, code)
    assert best.ber >= 0.35 and best.text is None


def test_further_pruning_is_nested_and_never_switches_a_kernel_on():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(64, 64, 3, bias=False))
    mask = {"0.weight": torch.rand(64, 64, 3, 3) < 0.1}
    pruned = prune_further(model, mask, 0.4)
    assert is_nested(pruned, mask)
    assert count_kept(pruned) == round(0.6 * count_kept(mask))
    assert not (connectivity(pruned["0.weight"]) & ~connectivity(mask["0.weight"])).any()


def test_forgery_leaves_the_forger_code_out_of_the_original():
    mask = {"a.weight": torch.rand(64, 64, 3, 3, generator=torch.Generator().manual_seed(6)) < 0.05,
            "b.weight": torch.rand(64, 40, 3, 3, generator=torch.Generator().manual_seed(7)) < 0.05}
    code = qr_encode(OWNER)
    signed, key = embed_signature(mask, code, layers=["a.weight"])
    out = forgery_attack(signed, key, code, qr_encode("mallory"), layers=["b.weight"])
    assert out.attacker_in_forged.text == "mallory" and out.attacker_in_forged.ber == 0.0
    assert out.owner_in_forged.text == OWNER  # different layer: the owner's window is untouched
    assert out.attacker_in_original.text is None and out.attacker_in_original.ber > 0.3
    assert count_kept(out.forged_mask) == count_kept(signed)


# ---------------------------------------------------------------- trigger sets
def test_trigger_set_domain_and_determinism():
    x, y = make_trigger_set(12, (1, 8, 8), 10, torch.Generator().manual_seed(0))
    assert x.shape == (12, 1, 8, 8) and y.shape == (12,)
    assert float(x.min()) >= 0 and float(x.max()) <= 1 and int(y.min()) >= 0 and int(y.max()) < 10
    x2, y2 = make_trigger_set(12, (1, 8, 8), 10, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2) and torch.equal(y, y2)


class _Capture(Callback):
    def __init__(self):
        self.batches = []

    def on_batch_start(self, state):
        self.batches.append(state.x.clone())


def _toy_task(seed: int) -> Split:
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(4, (256,), generator=gen)
    x = (0.2 + 0.15 * y[:, None].float() + 0.05 * torch.randn(256, 64, generator=gen)).clamp(0, 1)
    return Split(x.view(-1, 1, 8, 8), y)


def test_trigger_verification_separates_owner_from_independent_model():
    data = _toy_task(0)
    x_trig, y_trig = make_trigger_set(20, (1, 8, 8), 4, torch.Generator().manual_seed(1))
    models = []
    for seed, callbacks in ((0, [TriggerMixCallback(x_trig, y_trig, per_step=10)]), (1, [])):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
        train(model, Batches(data, 64, seed=seed), torch.optim.Adam(model.parameters(), 1e-2), 20,
              callbacks=callbacks, progress=False)
        models.append(model)
    owner_acc, other_acc = (trigger_accuracy(m, x_trig, y_trig) for m in models)
    assert owner_acc >= 0.9 and other_acc <= 0.6


def test_trigger_batches_contain_trigger_samples():
    data = _toy_task(2)
    x_trig, y_trig = make_trigger_set(5, (1, 8, 8), 4, torch.Generator().manual_seed(3))
    capture = _Capture()
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    train(model, Batches(data, 16, seed=0), torch.optim.SGD(model.parameters(), 0.1), 1,
          callbacks=[TriggerMixCallback(x_trig, y_trig, per_step=3), capture], progress=False)
    first, second = capture.batches[:2]
    assert len(first) == 19 and torch.equal(first[16:], x_trig[:3])
    assert torch.equal(second[16:], x_trig[[3, 4, 0]])  # cycled


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("bad", [1.0, -0.1, float("nan"), "half"])
def test_extra_sparsity_outside_unit_interval_is_one_clear_error(bad):
    model = nn.Sequential(nn.Conv2d(4, 4, 3))
    with pytest.raises(InputError, match=r"\[0, 1\)"):
        prune_further(model, {"0.weight": torch.ones(4, 4, 3, 3, dtype=torch.bool)}, bad)


def test_missing_or_unsuitable_layer_errors_name_the_layer():
    mask = random_mask(0.05)
    code = qr_encode(OWNER)
    with pytest.raises(InputError, match="'conv9.weight' does not exist"):
        embed_signature(mask, code, key=SignatureKey("conv9.weight", 0, 0))
    with pytest.raises(InputError, match="'conv9.weight' does not exist"):
        find_host(mask, code, layers=["conv9.weight"])
    with pytest.raises(InputError, match="'conv9.weight' does not exist"):
        read_signature(mask, SignatureKey("conv9.weight", 0, 0), code)
    with pytest.raises(InputError, match="'fc.weight' has shape"):
        find_host(mask, code, layers=["fc.weight"])
    with pytest.raises(InputError, match="'conv.weight'"):
        read_signature(mask, SignatureKey("conv.weight", 40, 0), code)
    with pytest.raises(InputError, match="'conv.weight' cannot host"):
        embed_signature(random_mask(0.002), code)  # the fc layer is no donor: only conv kernels are


def test_bad_codes_and_texts_are_clear_errors():
    with pytest.raises(InputError, match="29, 29"):
        read_signature(random_mask(0.05), SignatureKey("conv.weight", 0, 0), torch.zeros(21, 21, dtype=torch.bool))
    with pytest.raises(InputError, match="24 UTF-8 bytes"):
        qr_encode("y" * 25)
    with pytest.raises(InputError, match="mask_pattern"):
        qr_encode("ok", mask_pattern=8)
    with pytest.raises(InputError, match="per_step"):
        TriggerMixCallback(torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long), per_step=0)


def test_trigger_set_is_drawn_on_the_generator_device(device):
    """Issue 18: every tensor of the trigger set comes from the given generator's device."""
    from tests.device_checks import assert_on
    x, y = make_trigger_set(4, (1, 6, 6), generator=torch.Generator(device).manual_seed(1))
    assert_on(device, x, y)
    again, _ = make_trigger_set(4, (1, 6, 6), generator=torch.Generator(device).manual_seed(1))
    assert torch.equal(x, again)


def test_extracted_signature_lies_on_the_source_device():
    from tests.device_checks import META, assert_on
    mask = {"w": torch.ones(40, 40, 3, 3, dtype=torch.bool, device=META)}
    code = torch.zeros(29, 29, dtype=torch.bool)
    assert_on(META, extract_signature(mask, SignatureKey("w", 2, 3), code))
