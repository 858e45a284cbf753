"""Tests of xprune.data: loaders, splits, reference sampling, domain restriction."""

from __future__ import annotations

import json
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
    with pytest.raises(ValueError, match=r"digits.*fashion-mnist"):
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
    with pytest.raises(ValueError, match=r"broken\.png"):
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


# --------------------------------------------------------------------------- normalisation: data as given


def _rows(ds: Dataset) -> list[tuple]:
    """Every sample of the three splits as a (label, values...) tuple, sorted: what was loaded, in any order."""
    y = torch.cat([ds.train.y, ds.val.y, ds.test.y])
    X = torch.cat([ds.train.X, ds.val.X, ds.test.X]).reshape(len(y), -1)
    return sorted((int(c), *r) for c, r in zip(y.tolist(), X.double().numpy().tolist(), strict=True))


@pytest.fixture(scope="module")
def digits16(tmp_path_factory):
    """load_digits / 16 as the user stored it, and a small CNN trained on exactly those values."""
    from sklearn.datasets import load_digits

    d = load_digits()
    X = (d.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    y = d.target.astype(np.int64)
    path = tmp_path_factory.mktemp("digits16") / "digits16.npz"
    np.savez(path, X=X, y=y)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    for _ in range(60):  # full batch: a few seconds on one core
        opt.zero_grad()
        nn.functional.cross_entropy(model(Xt), yt).backward()
        opt.step()
    return path, X, y, model.eval()


def _accuracy(model: nn.Module, split: Split) -> float:
    with torch.no_grad():
        return (model(split.X).argmax(1) == split.y).float().mean().item()


def test_files_are_fed_as_stored_by_default(digits16):
    # issue 18: a CNN trained on load_digits / 16 (stored as .npz) measured ~0.46 "before pruning" because the
    # file was standardised without a word; now the file's values reach the model unchanged
    path, X, y, model = digits16
    ds = data.load(path)
    assert _rows(ds) == sorted((int(c), *r) for c, r in zip(y, X.reshape(len(X), -1).astype(np.float64), strict=True))
    assert ds.mean is None and ds.std is None
    assert ds.normalization == {"method": "none", "requested": "auto"}
    assert _accuracy(model, ds.test) > 0.9
    assert "as stored" in ds.describe_normalization() and "--normalize mean-std" in ds.describe_normalization(cli=True)
    # False / "none" give the same; True / "mean-std" standardise as before
    assert torch.equal(data.load(path, normalize=False).test.X, ds.test.X)
    assert torch.equal(data.load(path, normalize="none").test.X, ds.test.X)


def test_mean_std_uses_the_train_split(digits16):
    path, _, _, _ = digits16
    raw = data.load(path, normalize="none")
    std = data.load(path, normalize="mean-std")
    # reference: numpy statistics of the raw train split (unbiased std, as torch.std), per channel
    xtr = raw.train.X.double().numpy()
    mean, sd = xtr.mean(axis=(0, 2, 3)), xtr.std(axis=(0, 2, 3), ddof=1)
    for s in ("train", "val", "test"):
        ref = (getattr(raw, s).X.double().numpy() - mean[None, :, None, None]) / sd[None, :, None, None]
        np.testing.assert_allclose(getattr(std, s).X.numpy(), ref, rtol=0, atol=1e-5)
        assert torch.equal(getattr(std, s).y, getattr(raw, s).y)  # same splits
    rec = std.normalization
    assert rec["method"] == "mean-std" and rec["fitted_on"] == "train split" and rec["per"] == "channel"
    np.testing.assert_allclose(rec["mean"], mean, rtol=1e-5)
    np.testing.assert_allclose(rec["std"], sd, rtol=1e-5)
    assert torch.equal(data.load(path, normalize=True).test.X, std.test.X)
    line = std.describe_normalization(cli=True)
    assert "train split's mean and std per channel" in line and "--normalize none" in line
    assert "normalize='none'" in std.describe_normalization()


def test_builtin_datasets_stay_standardised_by_auto():
    # xprune's built-in models are trained on the named datasets standardised: "auto" keeps that
    auto, explicit = data.load("moons", n_samples=200), data.load("moons", n_samples=200, normalize="mean-std")
    assert torch.equal(auto.train.X, explicit.train.X)
    assert auto.normalization["method"] == "mean-std" and auto.normalization["requested"] == "auto"
    assert auto.normalization["per"] == "feature"
    assert json.loads(json.dumps(auto.normalization)) == auto.normalization


def test_given_statistics_dict_and_json(digits16, tmp_path):
    path, _, _, _ = digits16
    raw = data.load(path)
    given = data.load(path, normalize={"mean": 0.5, "std": 0.25})  # one number for all channels
    torch.testing.assert_close(given.test.X, (raw.test.X - 0.5) / 0.25, rtol=0, atol=1e-6)
    assert given.normalization["method"] == "given" and given.normalization["mean"] == [0.5]
    assert given.mean.tolist() == [0.5] and given.std.tolist() == [0.25]
    torch.testing.assert_close(given.denormalize(given.test.X), raw.test.X, rtol=0, atol=1e-6)
    assert "given mean and std" in given.describe_normalization()

    # what one run fitted is saved and applied again, bit for bit
    fitted = data.load(path, normalize="mean-std")
    stats = data.save_normalization(fitted, tmp_path / "stats.json")
    for spec in (stats, str(stats)):
        again = data.load(path, normalize=spec)
        assert torch.equal(again.test.X, fitted.test.X) and torch.equal(again.mean, fitted.mean)
        assert again.normalization["method"] == "given" and again.normalization["source"] == f"from {stats}"
    # a hand-written file with the statistics the model was trained with
    (tmp_path / "mine.json").write_text('{"mean": [0.1], "std": [0.3]}')
    mine = data.load(path, normalize=tmp_path / "mine.json")
    torch.testing.assert_close(mine.test.X, (raw.test.X - 0.1) / 0.3, rtol=0, atol=1e-6)
    # a dataset that was not normalised saves {"method": "none"}, which applies nothing
    data.save_normalization(raw, tmp_path / "none.json")
    assert torch.equal(data.load(path, normalize=tmp_path / "none.json").test.X, raw.test.X)
    # split_classes keeps the record
    assert data.split_classes(given, [0, 1], [2, 3])[1].normalization == given.normalization


def test_bad_normalisation_gives_one_line_errors(digits16, tmp_path):
    from xprune.errors import DataError, XpruneError

    path, _, _, _ = digits16
    (tmp_path / "broken.json").write_text("{mean: 0.1")
    (tmp_path / "list.json").write_text("[0.1, 0.2]")
    cases = [
        ("zscore", XpruneError, r"normalize must be 'auto', 'mean-std', 'none', .*; got 'zscore'"),
        (5, XpruneError, r"normalize must be .*; got int 5"),
        (
            {"mean": [0.1, 0.2, 0.3], "std": [1, 1, 1]},
            DataError,
            r"has 3 mean value\(s\) but the data has 1 channel; give one value per channel, or a single number",
        ),
        ({"mean": 0.1, "std": 0}, XpruneError, r"has std \[0\]; every std must be > 0"),
        ({"mean": 0.1, "std": [-1.0]}, XpruneError, r"every std must be > 0"),
        ({"mean": 0.1}, XpruneError, r"needs keys 'mean' and 'std'.*lacks 'std'"),
        ({"mean": "abc", "std": 1}, XpruneError, r"has mean 'abc'; give a number or a list of numbers"),
        ({"mean": float("nan"), "std": 1}, XpruneError, r"every value must be finite"),
        (tmp_path / "broken.json", XpruneError, r"broken\.json is not a readable normalisation file"),
        (tmp_path / "list.json", XpruneError, r"list\.json must be a JSON object .*; got a list"),
        (
            str(tmp_path / "missing.json"),
            XpruneError,
            r"missing\.json does not exist; write one with "
            r"xprune\.data\.save_normalization",
        ),
    ]
    for spec, cls, match in cases:
        with pytest.raises(cls, match=match) as info:
            data.load(path, normalize=spec)
        assert "\n" not in str(info.value), spec
    with pytest.raises(XpruneError, match=r"a Dataset from xprune\.data\.load"):
        data.save_normalization([0.1], tmp_path / "x.json")
    with pytest.raises(XpruneError, match="every std must be > 0"):
        data.save_normalization({"mean": [0.0], "std": [0.0]}, tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


def test_uint8_files_and_folders_record_their_scaling(tmp_path):
    X = np.arange(40 * 4, dtype=np.uint8).reshape(40, 4)
    np.savez(tmp_path / "u8.npz", X=X, y=np.arange(40) % 2)
    ds = data.load(tmp_path / "u8.npz")
    assert ds.normalization["input_scaling"] == "uint8 values divided by 255 (to [0, 1])"
    assert "uint8 values divided by 255" in ds.describe_normalization()
    assert _rows(ds) == sorted((c % 2, *(np.float32(v) / np.float32(255) for v in r)) for c, r in enumerate(X))
    for cls, v in (("cat", 10), ("dog", 200)):
        for i in range(4):
            _png(tmp_path / "imgs" / cls / f"{i}.png", value=v + i)
    folder = data.load("folder", root=tmp_path / "imgs", val_fraction=0.25, test_fraction=0.25)
    assert folder.normalization["method"] == "none" and "255" in folder.normalization["input_scaling"]
    whole = data.load_folder(tmp_path / "imgs")  # pixels as read, not standardised
    flat = whole.X.reshape(8, -1).double().tolist()
    assert _rows(folder) == sorted((int(c), *r) for c, r in zip(whole.y, flat, strict=True))


def test_folder_options_grayscale_and_image_size(tmp_path):
    for cls, v in (("cat", 10), ("dog", 200)):
        for i in range(5):
            _png(tmp_path / cls / f"{i}.png", size=(6, 4) if i % 2 else (6, 6), value=v + i)
    with pytest.raises(ValueError, match=r"pass image_size= \(--image-size on the command line\)") as info:
        data.load("folder", root=tmp_path)
    assert "\n" not in str(info.value)
    fr = {"val_fraction": 0.2, "test_fraction": 0.2}
    ds = data.load("folder", root=tmp_path, image_size=5, grayscale=True, **fr)
    assert ds.input_shape == (1, 5, 5)
    rgb = data.load("folder", root=tmp_path, image_size=(3, 7), **fr)
    assert rgb.input_shape == (3, 3, 7)
    assert data.load("folder", root=tmp_path, image_size="3x7", **fr).input_shape == (3, 3, 7)  # as the CLI gives it
    # grayscale of one colour image: the luminance of (v, 255 - v, 0) by PIL's L = (299 R + 587 G + 114 B) / 1000
    gray = data.load_folder(tmp_path, image_size=6, grayscale=True)
    v = 10
    assert abs(gray.X[0, 0, 0, 0].item() - round((299 * v + 587 * (255 - v)) / 1000) / 255) < 1.5 / 255
    for bad, match in (
        (0, "image_size must be a positive int"),
        ("big", "image_size must be"),
        ((3, 4, 5), "image_size must be"),
        (True, "image_size must be"),
    ):
        with pytest.raises(ValueError, match=match):
            data.load("folder", root=tmp_path, image_size=bad)
    with pytest.raises(TypeError, match="grayscale must be True or False; got str 'no'"):
        data.load("folder", root=tmp_path, image_size=4, grayscale="no")


def test_trained_model_cache_keys_tell_raw_files_from_standardised(tmp_path):
    # weights cached when files were standardised by default must not be reused for raw inputs
    from xprune.models.cache import _data_id

    np.savez(tmp_path / "d.npz", X=np.zeros((4, 2), np.float32), y=np.arange(4) % 2)
    assert _data_id(str(tmp_path / "d.npz"), {})["normalize"] == "none"
    assert _data_id(str(tmp_path / "d.npz"), {"normalize": "mean-std"})["normalize"] == "mean-std"
    assert _data_id("folder", {"root": "x"})["normalize"] == "none"
    assert "normalize" not in _data_id("digits", {})  # built-in datasets keep their keys (and cached weights)
