"""FFConv (arXiv:2102.03494) on real CKKS: the SEAL backend's operations against numpy, the packing plans
giving the simulator's counts and depth with logits within CKKS precision, refreshes, the TenSEAL peer's
folding and forward, and clear errors."""
import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("tenseal")

from honed.core.errors import ConfigError, InputError  # noqa: E402
from honed.private.ffconv import Square, convert_to_ffconv  # noqa: E402
from honed.private.he_ckks import CKKSBackend, CKKSParameters, smallest_ring_for  # noqa: E402
from honed.private.he_peer import TenSEALPeer, fold_linear, peer_layers  # noqa: E402
from honed.private.he_plan import encrypted_forward  # noqa: E402

ONE_LEVEL = CKKSParameters(poly_degree=4096, scale_bits=30, levels=1, edge_bits=39)  # 108 of 109 bits
TOY_PRECISION = 5e-3  # CKKS noise at these toy parameters (a 39-bit key-switching prime); a wrong op is O(1) off


@pytest.fixture(scope="module")
def backend():
    return CKKSBackend(256, ONE_LEVEL)  # plan slots 256 repeated over the ring's 2048


def test_operations_match_numpy_with_counts_depth_and_refreshes(backend):
    backend.new_image()
    v = np.random.default_rng(0).normal(size=256)
    a = backend.encrypt(v)
    b = a.mul_plain(2.0).add(a).mul_ct(a).rot(3).add_plain(np.ones(256))  # the simulator's hand example
    assert np.abs(b.decrypt()[0] - (np.roll(3 * v ** 2, -3) + 1)).max() < TOY_PRECISION
    assert backend.total().as_dict() == {"rotations": 1, "mul_plain": 1, "mul_ct": 1, "adds": 2}
    assert b.depth == 2 and backend.refreshes == 1  # one level: the square needed a fresh ciphertext
    assert np.abs(a.rot(-5).decrypt()[0] - np.roll(v, 5)).max() < TOY_PRECISION  # rot(-k): right rotation
    assert a.rot(256) is a and backend.total().rotations == 2  # a full turn is free
    zero = a.mul_plain(np.zeros(256))  # SEAL refuses a known-zero product; we encrypt zero instead
    assert np.abs(zero.decrypt()).max() < TOY_PRECISION and zero.depth == 1
    assert set(backend.seconds) == {"main"} and backend.seconds["main"] > 0


def tiny_net(ffconv: bool = False) -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), Square(), nn.AvgPool2d(2),
                        nn.Conv2d(4, 4, 3, padding=1), Square(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4, 3))
    net = convert_to_ffconv(net, {"0": 2, "3": 2}) if ffconv else net
    return net.double().eval()


@pytest.mark.parametrize("plan", ["dense", "conv", "ffconv"])
def test_plans_on_ckks_give_the_simulators_counts_and_the_torch_logits(backend, plan):
    net, x = tiny_net(plan == "ffconv"), torch.rand(1, 1, 4, 4, dtype=torch.float64)
    backend.new_image()
    logits, _, info = encrypted_forward(net, x, plan, backend=backend)
    _, sim, sim_info = encrypted_forward(net, x, plan, slots=256)
    assert backend.total().as_dict() == sim.total().as_dict()
    assert {k: v.as_dict() for k, v in backend.counts.items()} == {k: v.as_dict() for k, v in sim.counts.items()}
    assert info == sim_info  # client ciphertexts, live ciphertexts, depth
    with torch.no_grad():
        assert np.abs(logits - net(x).numpy()).max() < TOY_PRECISION
    assert backend.refreshes >= info["depth"] - 1  # one level per fresh ciphertext
    assert set(backend.seconds) <= set(sim.counts) | {"main"}


def test_peer_folds_the_linear_stretches_and_matches_torch():
    net, x = tiny_net(), torch.rand(1, 1, 4, 4, dtype=torch.float64)
    layers = peer_layers(net, (1, 4, 4))
    assert [m.shape for m, _ in layers.stages] == [(64, 16), (16, 3)]
    matrix, bias = layers.stages[1]
    h = torch.rand(1, 4, 2, 2, dtype=torch.float64)
    with torch.no_grad():
        assert np.allclose(h.reshape(1, -1).numpy() @ matrix + bias, net[5:](h).numpy())
    logits, stats = TenSEALPeer().forward(layers, x[0].numpy())
    with torch.no_grad():
        assert np.abs(logits - net(x).numpy()[0]).max() < 1e-2  # TenSEAL mm precision; a wrong fold moves logits by their size
    assert stats["depth"] == 6 and stats["refreshes"] == stats["client_ciphertexts"] - 1 >= 1


def test_fold_linear_of_an_affine_map(device):
    layer = nn.Linear(3, 2).double().to(device)  # probes follow the layer's device, results come back as NumPy
    matrix, bias = fold_linear(layer, (3,))
    assert np.allclose(matrix, layer.weight.detach().cpu().numpy().T)
    assert np.allclose(bias, layer.bias.detach().cpu().numpy())


def test_clear_errors_and_ring_sizes():
    with pytest.raises(ConfigError, match="128-bit security"):
        CKKSParameters(poly_degree=4096, scale_bits=35, levels=2, edge_bits=50).validate()
    with pytest.raises(ConfigError, match="2 levels"):
        TenSEALPeer(ONE_LEVEL)
    with pytest.raises(InputError, match="slots"):
        CKKSBackend(4096, ONE_LEVEL)
    with pytest.raises(InputError, match="one image"):
        CKKSBackend(256, ONE_LEVEL).encrypt(np.zeros((2, 256)))
    with pytest.raises(InputError, match="first Conv2d"):
        peer_layers(nn.Sequential(nn.Linear(4, 2)), (1, 2, 2))
    assert smallest_ring_for(3, CKKSParameters()) == 8192  # 50 + 3 x 35 + 50 = 205 <= 218 bits
    assert smallest_ring_for(8, CKKSParameters()) == 16384  # 380 bits
    assert smallest_ring_for(40, CKKSParameters()) is None


def test_peer_folding_works_on_a_cpu_copy_and_leaves_the_model_as_it_was():
    """Issue 18: TenSEAL runs on the CPU, so the folding uses a float64 CPU copy; the caller's model keeps
    its dtype and device."""
    net = tiny_net().float()
    peer_layers(net, (1, 4, 4))
    assert {p.dtype for p in net.parameters()} == {torch.float32}
