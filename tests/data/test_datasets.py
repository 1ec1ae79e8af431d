import pickle

import numpy as np
import pytest
import torch

from honed.core.errors import InputError
from honed.data import Batches, check_images, create_dataset
from honed.data.base import Split, stratified_split


@pytest.mark.parametrize("size", [8, 16, 32])
def test_digits_shapes_range_and_fixed_split(size):
    d = create_dataset("digits", size=size)
    assert d.input_shape == (1, size, size) and d.num_classes == 10
    assert len(d.train) + len(d.val) + len(d.test) == 1797
    assert 0 <= float(d.train.x.min()) and float(d.train.x.max()) <= 1
    again = create_dataset("digits", size=size)
    assert torch.equal(d.test.y, again.test.y)


def test_stratified_split_keeps_class_proportions():
    y = torch.tensor([0] * 50 + [1] * 30)
    tr, va, te = stratified_split(torch.zeros(80, 1), y, (0.5, 0.2, 0.3), seed=1)
    assert (tr.y == 0).sum() == 25 and (tr.y == 1).sum() == 15
    assert (va.y == 0).sum() == 10 and (te.y == 1).sum() == 9
    with pytest.raises(InputError, match="sum to 1"):
        stratified_split(torch.zeros(80, 1), y, (0.5, 0.2, 0.2), seed=1)


def test_batches_order_depends_only_on_seed_and_epoch():
    split = Split(torch.arange(10).float().unsqueeze(1), torch.arange(10))
    a, b = Batches(split, 4, seed=3), Batches(split, 4, seed=3)
    a.set_epoch(2), b.set_epoch(2)
    assert [y.tolist() for _, y in a] == [y.tolist() for _, y in b]
    assert sorted(torch.cat([y for _, y in a]).tolist()) == list(range(10)) and len(a) == 3
    b.set_epoch(3)
    assert [y.tolist() for _, y in a] != [y.tolist() for _, y in b]
    assert len(Batches(split, 4, drop_last=True)) == 2


def test_check_images_rejects_bad_domain():
    check_images(torch.rand(2, 3))
    for bad, words in [(torch.rand(2) * 255, "[0, 1]"), (torch.tensor([float("nan")]), "NaN"),
                       (torch.ones(2, dtype=torch.long), "float")]:
        with pytest.raises(InputError, match=words.replace("[", r"\[").replace("]", r"\]")):
            check_images(bad)


def write_cifar(root, binary: bool, n=6):
    rng = np.random.default_rng(0)
    root.mkdir()
    names = [f"data_batch_{i}" for i in (1, 2)] + ["test_batch"]
    expected = {}
    for name in names:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = (np.arange(n) % 2).astype(np.int64)
        expected[name] = (data, labels)
        if binary:
            rec = np.concatenate([labels[:, None].astype(np.uint8), data], axis=1)
            (root / f"{name}.bin").write_bytes(rec.tobytes())
        else:
            (root / name).write_bytes(pickle.dumps({b"data": data, b"labels": labels.tolist()}))
    return expected


@pytest.mark.parametrize("binary", [True, False])
def test_cifar10_reads_both_real_formats(tmp_path, binary):
    expected = write_cifar(tmp_path / "c", binary)
    d = create_dataset("cifar10", root=str(tmp_path / "c"), val_size=2)
    assert d.input_shape == (3, 32, 32) and len(d.train) + len(d.val) == 12
    data, labels = expected["test_batch"]
    assert torch.equal(d.test.y, torch.from_numpy(labels))
    torch.testing.assert_close(d.test.x[1, 2, 0, 5], torch.tensor(data[1, 2 * 1024 + 5] / 255.0, dtype=torch.float32))


def test_cifar_python_reader_refuses_code_in_pickles(tmp_path):
    import os

    root = tmp_path / "c"
    root.mkdir()
    (root / "test_batch").write_bytes(pickle.dumps(os.getcwd))  # any non-numpy global
    (root / "data_batch_1").write_bytes(pickle.dumps(os.getcwd))
    with pytest.raises(InputError, match="refusing"):
        create_dataset("cifar10", root=str(root))


def test_image_folder(tmp_path):
    from PIL import Image

    for cls, value in (("cat", 0), ("dog", 255)):
        (tmp_path / "pets" / cls).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(np.full((10, 10, 3), value, dtype=np.uint8)).save(tmp_path / "pets" / cls / f"{i}.png")
    d = create_dataset("imagefolder", root=str(tmp_path / "pets"), size=8, fractions=(0.6, 0.2, 0.2))
    assert d.num_classes == 2 and d.input_shape == (3, 8, 8)
    x = torch.cat([d.train.x, d.val.x, d.test.x]); y = torch.cat([d.train.y, d.val.y, d.test.y])
    assert torch.all(x[y == 1] == 1.0) and torch.all(x[y == 0] == 0.0)
    with pytest.raises(InputError, match="two class folders"):
        create_dataset("imagefolder", root=str(tmp_path / "pets" / "cat"))


def test_mnist1d_is_generated_offline():
    pytest.importorskip("mnist1d")
    d = create_dataset("mnist1d")
    assert d.input_shape == (1, 40) and len(d.test) == 1000 and len(d.train) + len(d.val) == 4000


def test_check_images_with_dims_refuses_other_ranks_and_inf_and_allows_empty():
    check_images(torch.rand(2, 1, 4, 4), dims=4)
    check_images(torch.empty(0, 1, 4, 4), dims=4)
    with pytest.raises(InputError, match=r"4-D tensor \(N, C, H, W\)"):
        check_images(torch.rand(1, 4, 4), dims=4)
    with pytest.raises(InputError, match="NaN or inf"):
        check_images(torch.tensor([[float("inf")]]))
