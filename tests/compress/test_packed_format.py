"""Packed OPQ format (arXiv:2205.11141): bit packing, relative index, file round trip, foreign files."""
import math
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from honed.compress.packed_format import (MAGIC, CompressedLayer, decode_positions, encode_positions, pack_bits,
                                          read_packed, unpack_bits, write_packed)
from honed.core.errors import InputError, StoreError


@st.composite
def values_and_bits(draw):
    bits = draw(st.integers(1, 8))
    values = draw(st.lists(st.integers(0, (1 << bits) - 1), max_size=300))
    return values, bits


@settings(max_examples=150, deadline=None)
@given(values_and_bits())
def test_bit_packing_round_trips_and_is_dense(case):
    values, bits = case
    blob = pack_bits(torch.tensor(values, dtype=torch.int64), bits)
    assert len(blob) == math.ceil(len(values) * bits / 8)
    assert unpack_bits(blob, bits, len(values)).tolist() == values


def test_bit_packing_oracle_lsb_first():
    # 1 = 01, 2 = 10, 3 = 11 (LSB first): stream bits 1,0, 0,1, 1,1 -> 0b00111001 = 57
    assert pack_bits(np.array([1, 2, 3]), 2) == bytes([57])
    assert pack_bits(np.array([255, 1]), 8) == bytes([255, 1])
    assert pack_bits(np.array([1] * 9), 1) == bytes([255, 1])


@pytest.mark.parametrize("bits", [0, 9, -1, 2.5, True])
def test_bits_outside_1_to_8_raise_one_clear_error(bits):
    with pytest.raises(InputError, match="bits must be an integer in 1..8"):
        pack_bits(np.array([0]), bits)


def test_values_that_do_not_fit_raise():
    with pytest.raises(InputError, match=r"in \[0, 4\)"):
        pack_bits(np.array([4]), 2)
    with pytest.raises(InputError):
        pack_bits(np.array([-1]), 3)


def test_short_stream_raises_store_error():
    with pytest.raises(StoreError):
        unpack_bits(bytes([1]), 4, 3)


def test_relative_index_oracle_picks_cheapest_gap_width():
    mask = torch.zeros(12, dtype=torch.bool)
    mask[[5, 6, 11]] = True  # gaps 5, 0, 4: b=1 12 bits, b=2 5x2=10, b=3 3x3=9, b=4 12
    codes, gap_bits = encode_positions(mask)
    assert gap_bits == 3 and codes.tolist() == [5, 0, 4]
    codes, gap_bits = encode_positions(torch.tensor([False] * 7 + [True]))  # b=3 needs escape 7 then 0: 6 bits
    assert gap_bits == 4 and codes.tolist() == [7]
    codes, gap_bits = encode_positions(torch.tensor([False, True, True, True]))  # gaps 1,0,0: bitmap wins
    assert gap_bits == 1 and codes.tolist() == [1, 0, 0, 0]  # escape (skip 1), then three kept
    assert decode_positions(torch.tensor([7, 0]), 3, 8).tolist() == [False] * 7 + [True]


def test_index_that_overruns_the_tensor_raises():
    with pytest.raises(StoreError):
        decode_positions(torch.tensor([7, 0]), 3, 7)
    with pytest.raises(StoreError):
        decode_positions(torch.tensor([0, 7]), 3, 20)  # a trailing escape is never written


@settings(max_examples=150, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=400), st.floats(0.0, 1.0))
def test_relative_index_round_trips(flags, density):
    gen = torch.Generator().manual_seed(len(flags))
    mask = torch.tensor(flags) & (torch.rand(len(flags), generator=gen) < density)
    codes, gap_bits = encode_positions(mask)
    assert 1 <= gap_bits <= 8
    back = decode_positions(torch.from_numpy(codes), gap_bits, mask.numel())
    assert torch.equal(back, mask)


def random_layer(shape, bits, per_channel_step, seed=0, zero=None):
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(shape, generator=gen) < 0.3
    codes = torch.randint(0, 1 << bits, (int(mask.sum()),), generator=gen)
    channels = shape[0]
    step = torch.rand(channels if per_channel_step else 1, generator=gen) + 0.01
    offset = torch.randn(1 if per_channel_step else channels, generator=gen)
    return CompressedLayer(shape, mask, codes, bits, float(zero if zero is not None else (1 << bits) / 2),
                           offset.float(), step.float())


def test_file_round_trip_reproduces_every_tensor_exactly(tmp_path):
    layers = {"conv.weight": random_layer((4, 3, 3, 3), 3, False, 1),
              "fc.weight": random_layer((10, 20), 5, True, 2, zero=15.5),
              "tiny.weight": random_layer((2, 1), 1, False, 3)}
    dense = {"fc.bias": torch.randn(10), "bn.num_batches_tracked": torch.tensor(7),
             "bn.running_var": torch.rand(4).double()}
    path = tmp_path / "m.hpq"
    size = write_packed(path, layers, dense, meta={"note": "x"})
    assert size == os.path.getsize(path)
    packed = read_packed(path)
    assert packed.meta == {"note": "x"}
    for name, layer in layers.items():
        got = packed.layers[name]
        assert torch.equal(got.mask, layer.mask) and torch.equal(got.codes, layer.codes)
        assert got.bits == layer.bits and got.zero == layer.zero
        assert torch.equal(got.weight(), layer.weight())
        assert (got.weight()[~layer.mask] == 0).all()
    for name, tensor in dense.items():
        assert packed.dense[name].dtype == tensor.dtype and torch.equal(packed.dense[name], tensor)


def test_decoded_weight_oracle():
    layer = CompressedLayer((2, 2), torch.tensor([[True, False], [True, True]]), torch.tensor([0, 2, 1]), 2, 1.0,
                            torch.tensor([0.5, -1.0]), torch.tensor([0.25]))
    # levels code - 1 = -1, 1, 0; row 0: 0.5 - 0.25; row 1: -1 + 0.25, -1 + 0
    assert layer.weight().tolist() == [[0.25, 0.0], [-0.75, -1.0]]


def test_foreign_truncated_and_corrupt_files_raise_store_error(tmp_path):
    foreign = tmp_path / "foreign.bin"
    foreign.write_bytes(b"PK\x03\x04 definitely not ours")
    with pytest.raises(StoreError, match="not a honed packed model"):
        read_packed(foreign)
    with pytest.raises(StoreError):
        read_packed(tmp_path / "missing.hpq")
    path = tmp_path / "m.hpq"
    write_packed(path, {"w": random_layer((3, 5), 4, False)}, {"b": torch.zeros(3)})
    blob = path.read_bytes()
    (tmp_path / "cut.hpq").write_bytes(blob[:-3])
    with pytest.raises(StoreError, match="truncated or corrupt"):
        read_packed(tmp_path / "cut.hpq")
    flipped = bytearray(blob)
    flipped[-1] ^= 0xFF
    (tmp_path / "flip.hpq").write_bytes(bytes(flipped))
    with pytest.raises(StoreError, match="truncated or corrupt"):
        read_packed(tmp_path / "flip.hpq")
    (tmp_path / "head.hpq").write_bytes(MAGIC + (5).to_bytes(4, "little") + b"xxxxx")
    with pytest.raises(StoreError, match="corrupt header"):
        read_packed(tmp_path / "head.hpq")


def test_inconsistent_layer_is_refused_at_write(tmp_path):
    layer = random_layer((3, 5), 4, False)
    layer.codes = layer.codes[:-1] if layer.codes.numel() else torch.zeros(1, dtype=torch.int64)
    with pytest.raises(InputError, match="codes for"):
        write_packed(tmp_path / "bad.hpq", {"w": layer}, {})
    assert not (tmp_path / "bad.hpq").exists()


def test_decoded_weight_lies_on_the_codes_device(device):
    """Issue 18: decoding builds its level tensor on the codes' device."""
    layer = CompressedLayer((2, 2), torch.tensor([[True, False], [True, True]], device=device),
                            torch.tensor([0, 2, 1], device=device), 2, 1.0,
                            torch.tensor([0.5, -1.0], device=device), torch.tensor([0.25], device=device))
    weight = layer.weight()
    assert weight.device == torch.device(device) and weight.tolist() == [[0.25, 0.0], [-0.75, -1.0]]
