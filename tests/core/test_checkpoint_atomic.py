import pytest
import torch

from honed.core.atomic import atomic_write_text
from honed.core.checkpoint import load_checkpoint, save_checkpoint
from honed.core.errors import StoreError


def test_atomic_write_leaves_old_file_when_writer_fails(tmp_path):
    f = tmp_path / "a.txt"
    atomic_write_text(f, "old")

    from honed.core.atomic import atomic_write

    def broken(tmp):
        open(tmp, "w").write("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(f, broken)
    assert f.read_text() == "old" and list(tmp_path.iterdir()) == [f]


def test_checkpoint_round_trips_model_optimizer_and_rng(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path / "c.safetensors", model, opt, {"epoch": 2})
    expected_next = torch.rand(3)
    twin = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    opt2 = torch.optim.SGD(twin.parameters(), lr=0.5, momentum=0.9)
    torch.manual_seed(123)
    meta = load_checkpoint(tmp_path / "c.safetensors", twin, opt2)
    assert meta == {"epoch": 2}
    assert torch.equal(torch.rand(3), expected_next)
    for a, b in zip(model.state_dict().values(), twin.state_dict().values()):
        assert torch.equal(a, b)
    assert opt2.param_groups[0]["lr"] == 0.1
    assert torch.equal(opt2.state[opt2.param_groups[0]["params"][0]]["momentum_buffer"],
                       opt.state[opt.param_groups[0]["params"][0]]["momentum_buffer"])


def test_foreign_or_mismatched_checkpoint_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(StoreError, match="not written by honed"):
        load_checkpoint(tmp_path / "x.safetensors", torch.nn.Linear(2, 2))
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(StoreError, match="not a readable"):
        load_checkpoint(tmp_path / "junk.safetensors", torch.nn.Linear(2, 2))
    save_checkpoint(tmp_path / "c.safetensors", torch.nn.Linear(2, 2))
    with pytest.raises(StoreError, match="does not fit"):
        load_checkpoint(tmp_path / "c.safetensors", torch.nn.Linear(3, 2))


def test_tensor_files_round_trip_and_refuse_foreign_files(tmp_path):
    from safetensors.torch import save_file

    from honed.core.checkpoint import load_tensors, save_tensors

    tensors = {"mask.a": torch.tensor([True, False]), "norm.b": torch.arange(3.0)}
    save_tensors(tmp_path / "t.safetensors", tensors, {"keep_ratio": 0.1})
    back, meta = load_tensors(tmp_path / "t.safetensors")
    assert meta == {"keep_ratio": 0.1} and all(torch.equal(back[k], v) for k, v in tensors.items())
    save_file({"x": torch.zeros(1)}, str(tmp_path / "f.safetensors"))
    with pytest.raises(StoreError, match="not written by honed"):
        load_tensors(tmp_path / "f.safetensors")
