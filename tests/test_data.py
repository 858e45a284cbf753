"""Tests of xprune.data: loaders, splits, reference sampling, domain restriction."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from xprune import data
from xprune.data import Dataset, RestrictedModel, Split

FASHION = Path(os.environ.get("XPRUNE_FASHION_MNIST", data.FASHION_MNIST_DEFAULT_ROOT))
needs_fashion = pytest.mark.skipif(
    not (FASHION / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST not installed in {FASHION} (apt-get install dataset-fashion-mnist)",
)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return data.load("digits")


def _check(ds: Dataset, shape: tuple[int, ...], num_classes: int) -> None:
    assert ds.input_shape == shape
    assert ds.num_classes == num_classes == len(ds.classes)
    for split in (ds.train, ds.val, ds.test):
        assert split.X.dtype == torch.float32 and split.y.dtype == torch.int64
        assert split.X.shape[1:] == shape
        assert split.classes == ds.classes


# --------------------------------------------------------------------------- loaders


def test_digits_shapes_and_normalisation(digits):
    _check(digits, (1, 8, 8), 10)
    assert len(digits.train) + len(digits.val) + len(digits.test) == 1797
    assert abs(len(digits.test) / 1797 - 0.2) < 0.01 and abs(len(digits.val) / 1797 - 0.1) < 0.01
    # train split is standardised per channel; stats are recorded
    assert digits.mean.shape == (1,) and digits.std.shape == (1,)
    assert abs(digits.train.X.mean().item()) < 1e-4
    assert abs(digits.train.X.std().item() - 1) < 1e-3
    raw = data.load("digits", normalize=False)
    assert raw.mean is None and raw.train.X.min() >= 0 and raw.train.X.max() <= 1
    assert torch.allclose(digits.denormalize(digits.test.X), raw.test.X, atol=1e-5)
    assert torch.allclose(digits.normalize(raw.test.X), digits.test.X, atol=1e-5)


def test_splits_deterministic_disjoint_stratified():
    a = data.load("digits", seed=3, normalize=False)
    b = data.load("digits", seed=3, normalize=False)
    c = data.load("digits", seed=4, normalize=False)
    for s in ("train", "val", "test"):
        assert torch.equal(getattr(a, s).X, getattr(b, s).X)
        assert torch.equal(getattr(a, s).y, getattr(b, s).y)
    assert not torch.equal(a.test.X, c.test.X)
    # disjoint: no image appears in two splits (digits has a few duplicate images, compare by rows)
    rows = {s: {tuple(x.flatten().tolist()) for x in getattr(a, s).X} for s in ("train", "val", "test")}
    full = data._digits_arrays()[0].reshape(1797, -1)
    n_unique = len({tuple(r) for r in full.tolist()})
    assert len(rows["train"] | rows["val"] | rows["test"]) == n_unique
    # stratified: every class in every split
    for s in (a.train, a.val, a.test):
        assert (s.class_counts() > 0).all()


@pytest.mark.slow
def test_mnist():
    ds = data.load("mnist")
    _check(ds, (1, 28, 28), 10)
    assert len(ds.train) + len(ds.val) + len(ds.test) == 5000


@needs_fashion
@pytest.mark.slow
def test_fashion_mnist():
    ds = data.load("fashion-mnist")
    _check(ds, (1, 28, 28), 10)
    assert len(ds.train) + len(ds.val) + len(ds.test) == 70000
    assert len(ds.test) == 10000 and len(ds.val) == 6000  # official test split, val from train
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"


def test_fashion_mnist_missing(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist") as info:
        data.load("fashion-mnist", root=tmp_path)
    assert "apt-get install dataset-fashion-mnist" in str(info.value) and "root=" in str(info.value)
    monkeypatch.setenv("XPRUNE_FASHION_MNIST", str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="nope"):
        data.load("fashion-mnist")


def test_fashion_mnist_idx_parser(tmp_path):
    """A tiny hand-written IDX set in the official layout loads through root=."""
    import gzip
    import struct

    rng = np.random.default_rng(0)

    def write(name, arr):
        header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
        with gzip.open(tmp_path / name, "wb") as f:
            f.write(header + arr.astype(np.uint8).tobytes())

    ytr = np.repeat(np.arange(10), 6)
    write("train-images-idx3-ubyte.gz", rng.integers(0, 256, (60, 28, 28)))
    write("train-labels-idx1-ubyte.gz", ytr)
    write("t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (20, 28, 28)))
    write("t10k-labels-idx1-ubyte.gz", np.repeat(np.arange(10), 2))
    ds = data.load("fashion-mnist", root=tmp_path, val_fraction=0.2, normalize=False)
    _check(ds, (1, 28, 28), 10)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (48, 12, 20)
    assert ds.train.X.max() <= 1.0


@pytest.mark.parametrize("name,k", [("circles", 2), ("moons", 2), ("blobs", 4)])
def test_toy_sets(name, k):
    ds = data.load(name, n_samples=400)
    _check(ds, (2,), k)
    assert len(ds.train) + len(ds.val) + len(ds.test) == 400
    assert ds.mean.shape == (2,)
    assert torch.equal(ds.train.X, data.load(name, n_samples=400).train.X)
    assert data.load("blobs", centers=3).num_classes == 3


def test_unknown_name_lists_known():
    with pytest.raises(ValueError, match="digits.*fashion-mnist"):
        data.load("cifar-1000")
    assert {"digits", "mnist", "fashion-mnist", "folder", "circles", "moons", "blobs"} <= set(data.available())
    assert set(data.available()) == set(data.DATASETS)


def test_npz_and_pt_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.random((60, 1, 5, 5)).astype(np.float32)
    y = np.repeat(np.arange(3), 20)
    np.savez(tmp_path / "d.npz", X=X, y=y, classes=np.array(["a", "b", "c"]))
    ds = data.load(tmp_path / "d.npz", normalize=False)
    _check(ds, (1, 5, 5), 3)
    assert ds.classes == ["a", "b", "c"] and ds.name == "d.npz"
    got = torch.cat([ds.train.X, ds.val.X, ds.test.X]).reshape(60, -1)
    assert sorted(map(tuple, got.tolist())) == sorted(map(tuple, X.reshape(60, -1).tolist()))

    torch.save({"X": torch.from_numpy(X[:, 0]), "y": torch.from_numpy(y)}, tmp_path / "d.pt")
    ds2 = data.load(str(tmp_path / "d.pt"), normalize=False)
    _check(ds2, (1, 5, 5), 3)  # [N, H, W] gains a channel
    assert ds2.classes == ["0", "1", "2"]
    for s in ("train", "val", "test"):
        assert torch.equal(getattr(ds, s).y, getattr(ds2, s).y)

    # tabular + string labels
    np.savez(tmp_path / "t.npz", X=rng.random((30, 4)), y=np.array(["x", "y", "z"] * 10))
    ds3 = data.load(str(tmp_path / "t.npz"))
    _check(ds3, (4,), 3)
    assert ds3.classes == ["x", "y", "z"]

    np.savez(tmp_path / "bad.npz", X=X)
    with pytest.raises(ValueError, match="'X' and 'y'"):
        data.load(str(tmp_path / "bad.npz"))
    with pytest.raises(FileNotFoundError):
        data.load(str(tmp_path / "missing.npz"))


def _png(path: Path, size=(6, 6), value=0, mode="RGB"):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode == "L" else (value, 255 - value, 0)
    Image.new(mode, size, color).save(path)


def test_folder_loader(tmp_path):
    for cls, v in (("cat", 10), ("dog", 200)):
        for i in range(5):
            _png(tmp_path / cls / f"{i}.png", value=v + i)
    (tmp_path / "cat" / "notes.txt").write_text("ignored")
    split = data.load_folder(tmp_path)
    assert split.classes == ["cat", "dog"]
    assert split.X.shape == (10, 3, 6, 6) and split.X.dtype == torch.float32
    assert split.y.tolist() == [0] * 5 + [1] * 5
    assert abs(split.X[0, 0, 0, 0].item() - 10 / 255) < 1e-6
    gray = data.load_folder(tmp_path, image_size=4, grayscale=True)
    assert gray.X.shape == (10, 1, 4, 4)
    ds = data.load("folder", root=tmp_path, val_fraction=0.2, test_fraction=0.2, grayscale=True)
    _check(ds, (1, 6, 6), 2)
    assert len(ds.train) + len(ds.val) + len(ds.test) == 10


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match="root="):
        data.load("folder")
    (tmp_path / "empty_root").mkdir()
    with pytest.raises(ValueError, match="no class sub-folders"):
        data.load_folder(tmp_path / "empty_root")
    _png(tmp_path / "r" / "a" / "0.png")
    (tmp_path / "r" / "b").mkdir()
    with pytest.raises(ValueError, match=r"b holds no images"):
        data.load_folder(tmp_path / "r")
    _png(tmp_path / "r" / "b" / "big.png", size=(9, 7))
    with pytest.raises(ValueError, match=r"big\.png.*image_size="):
        data.load_folder(tmp_path / "r")
    assert data.load_folder(tmp_path / "r", image_size=(3, 5)).X.shape == (2, 3, 3, 5)
    (tmp_path / "r" / "b" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.png"):
        data.load_folder(tmp_path / "r", image_size=3)


# --------------------------------------------------------------------------- Split


def test_split_indexing_and_batches(digits):
    s = digits.train
    assert len(s[3]) == 1 and s[3].X.shape == (1, 1, 8, 8)
    assert len(s[-1]) == 1 and torch.equal(s[-1].X, s.X[-1:])
    assert len(s[:10]) == 10 and isinstance(s[:10], Split)
    idx = torch.tensor([5, 1, 7])
    assert torch.equal(s[idx].y, s.y[idx]) and torch.equal(s.subset([5, 1, 7]).X, s.X[idx])
    assert len(s[s.y == 2]) == int((s.y == 2).sum())
    b = list(s.batches(100))
    assert sum(len(y) for _, y in b) == len(s) and len(b[0][0]) == 100
    assert torch.equal(torch.cat([x for x, _ in b]), s.X)
    sh1 = torch.cat([y for _, y in s.batches(100, shuffle=True, seed=1)])
    sh2 = torch.cat([y for _, y in s.batches(100, shuffle=True, seed=1)])
    assert torch.equal(sh1, sh2) and not torch.equal(sh1, s.y)
    assert torch.equal(sh1.sort().values, s.y.sort().values)
    assert s.to("cpu").num_classes == 10
    with pytest.raises(ValueError, match="labels"):
        Split(torch.zeros(2, 3), torch.tensor([0, 5]), ["a", "b"])
    with pytest.raises(ValueError, match="match"):
        Split(torch.zeros(2, 3), torch.tensor([0]))


# --------------------------------------------------------------------------- reference samples


def test_reference_samples(digits):
    ref = data.reference_samples(digits.train, 7, seed=0)
    assert len(ref) == 70 and (ref.class_counts() == 7).all()
    i0 = data.reference_indices(digits.train, 7, seed=0)
    i0b = data.reference_indices(digits.train, 7, seed=0)
    i1 = data.reference_indices(digits.train, 7, seed=1)
    assert torch.equal(i0, i0b) and not torch.equal(i0, i1)
    assert len(set(i0.tolist())) == 70
    assert torch.equal(ref.X, digits.train.X[i0])
    sub = data.reference_samples(digits.train, 3, classes=[4, "7"], seed=2)
    assert sub.y.tolist() == [4] * 3 + [7] * 3
    small = digits.train[:40]
    with pytest.raises(ValueError, match=r"class \d+ .* has only \d+ samples"):
        data.reference_samples(small, 20)


# --------------------------------------------------------------------------- domain restriction


def test_restrict_split(digits):
    r = data.restrict(digits.test, [1, 3])
    assert set(r.y.tolist()) == {1, 3} and r.num_classes == 10
    assert len(r) == int(((digits.test.y == 1) | (digits.test.y == 3)).sum())


def test_restricted_model_masks():
    model = nn.Linear(4, 5)
    rm = data.restrict_model(model, [3, 1])
    assert isinstance(rm, RestrictedModel) and rm.model is model and rm.classes == (1, 3)
    x = torch.randn(64, 4)
    out = rm(x)
    assert out.shape == (64, 5)
    assert set(out.argmax(-1).tolist()) <= {1, 3}
    assert torch.equal(out[:, [1, 3]], model(x)[:, [1, 3]])
    assert torch.isfinite(out).all() and torch.isfinite(out.softmax(-1)).all()
    assert (out.softmax(-1)[:, [0, 2, 4]] == 0).all()
    with pytest.raises(ValueError, match="exceed"):
        RestrictedModel(model, [7])(x)


def test_restricted_accuracy_on_trained_model(digits):
    from xprune.models import MLP, accuracy, train

    torch.manual_seed(0)
    model = MLP(64, (32,), 10)
    train(model, digits.train, epochs=3, progress=False)
    classes = [2, 5, 8]
    task = data.restrict(digits.test, classes)
    rm = RestrictedModel(model, classes)
    assert accuracy(rm, task) >= accuracy(model, task)
    with torch.no_grad():
        pred = rm(task.X).argmax(-1)
    assert set(pred.tolist()) <= set(classes)


def test_split_classes(digits):
    pre, task = data.split_classes(digits, (0, 1, 2, 3, 4), (5, 6, 7, 8, 9))
    assert pre.classes == ["0", "1", "2", "3", "4"] and task.classes == ["5", "6", "7", "8", "9"]
    for ds, offset in ((pre, 0), (task, 5)):
        for s in ("train", "val", "test"):
            sp = getattr(ds, s)
            assert set(sp.y.tolist()) == set(range(5))
            orig = getattr(digits, s)
            mask = (orig.y >= offset) & (orig.y < offset + 5)
            assert torch.equal(sp.X, orig.X[mask]) and torch.equal(sp.y, orig.y[mask] - offset)
    _, t2 = data.split_classes(digits, [0], [9, 3])
    assert t2.classes == ["9", "3"]
    assert torch.equal(t2.test.y, (digits.test.y[(digits.test.y == 9) | (digits.test.y == 3)] == 3).long())
    with pytest.raises(ValueError, match="overlap"):
        data.split_classes(digits, [0, 1], [1, 2])
