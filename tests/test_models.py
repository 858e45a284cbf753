"""Tests of xprune.models: architectures, training helpers, weights cache, transfer."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from torch import nn

from xprune import data, models
from xprune.models import (
    ARCHITECTURES,
    MLP,
    VGG,
    Attention,
    ResNet,
    ViT,
    accuracy,
    build,
    fine_tune,
    pretrained,
    train,
)
from xprune.models.layers import Add, MatMul

train_module = sys.modules["xprune.models.train"]
cache_module = sys.modules["xprune.models.cache"]  # the cache calls train() from here


@pytest.fixture(scope="module")
def digits() -> data.Dataset:
    return data.load("digits")


SHAPES = [(1, 8, 8), (1, 28, 28), (3, 28, 28)]


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_shapes_and_rebuild(arch, shape):
    torch.manual_seed(0)
    model = build(arch, input_shape=shape, num_classes=7).eval()
    x = torch.randn(5, *shape)
    out = model(x)
    assert out.shape == (5, 7) and out.dtype == torch.float32
    assert model.arch == arch and isinstance(model, ARCHITECTURES[arch])
    json.dumps(model.config)  # JSON friendly
    twin = build(arch, **model.config)
    twin.load_state_dict(model.state_dict())
    assert torch.equal(twin.eval()(x), out)
    assert type(model)(**model.config).config == model.config


def test_build_errors():
    with pytest.raises(ValueError, match="mlp, vgg, resnet, vit"):
        build("alexnet")
    with pytest.raises(ValueError, match="image inputs"):
        build("vgg", input_shape=(2,), num_classes=2)
    with pytest.raises(ValueError, match="patch_size"):
        ViT(image_size=10, patch_size=3)


def test_module_structure_is_hookable():
    mlp = MLP(2, (1000, 1000, 1000), 3)
    assert [m.out_features for m in mlp.modules() if isinstance(m, nn.Linear)] == [1000, 1000, 1000, 3]
    assert mlp(torch.randn(4, 2)).shape == (4, 3)

    resnet = ResNet(1, 10)
    blocks = [m for m in resnet.modules() if isinstance(m, models.BasicBlock)]
    assert len(blocks) == 3
    assert all(isinstance(b.add, Add) and isinstance(b.relu2, nn.ReLU) for b in blocks)
    assert isinstance(blocks[0].shortcut, nn.Identity) and isinstance(blocks[1].shortcut, nn.Sequential)
    # every ReLU is its own module instance, none in place
    relus = [m for m in resnet.modules() if isinstance(m, nn.ReLU)]
    assert len({id(r) for r in relus}) == len(relus) and not any(r.inplace for r in relus)

    vgg = VGG(1, 10, image_size=8)
    assert any(isinstance(m, nn.BatchNorm2d) for m in vgg.modules())
    assert isinstance(vgg.classifier[-1], nn.Linear) and vgg.classifier[-1].out_features == 10

    vit = ViT(8, 2, 1, 10)
    attn = vit.blocks[0].attn
    assert isinstance(attn.softmax, nn.Softmax) and attn.softmax.dim == -1
    assert isinstance(attn.qk, MatMul) and isinstance(attn.av, MatMul)
    assert all(getattr(attn, n).in_features == 64 for n in ("q", "k", "v"))
    assert attn.num_heads == 4 and attn.head_dim == 16
    blk = vit.blocks[0]
    assert isinstance(blk.add1, Add) and isinstance(blk.add2, Add) and isinstance(blk.mlp.act, nn.GELU)


def test_hooks_see_attention_and_residuals():
    vit = ViT(8, 2, 1, 10, depth=1).eval()
    seen = []
    for name, m in vit.named_modules():
        if isinstance(m, (nn.Softmax, MatMul, Add)):
            m.register_forward_hook(lambda mod, i, o, name=name: seen.append(name))
    vit(torch.randn(2, 1, 8, 8))
    assert {"blocks.0.attn.softmax", "blocks.0.attn.qk", "blocks.0.attn.av", "blocks.0.add1", "blocks.0.add2"} <= set(
        seen
    )


def test_torch_pruning_dependency_graph():
    tp = pytest.importorskip("torch_pruning")
    for arch in ("vgg", "resnet"):
        model = build(arch, input_shape=(1, 8, 8), num_classes=10).eval()
        x = torch.randn(1, 1, 8, 8)
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=x)
        conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        group = dg.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=[0, 1])
        group.prune()
        assert model(x).shape == (1, 10)


def _slice_heads(attn: Attention, keep: list[int]) -> None:
    d = attn.head_dim
    rows = torch.cat([torch.arange(h * d, (h + 1) * d) for h in keep])
    for name in ("q", "k", "v"):
        old = getattr(attn, name)
        new = nn.Linear(old.in_features, len(rows))
        new.weight.data = old.weight.data[rows].clone()
        new.bias.data = old.bias.data[rows].clone()
        setattr(attn, name, new)
    new_proj = nn.Linear(len(rows), attn.proj.out_features)
    new_proj.weight.data = attn.proj.weight.data[:, rows].clone()
    new_proj.bias.data = attn.proj.bias.data.clone()
    attn.proj = new_proj
    attn.num_heads = len(keep)


def test_vit_head_removal():
    torch.manual_seed(0)
    vit = ViT(8, 2, 1, 10).eval()
    x = torch.randn(3, 1, 8, 8)
    attn = vit.blocks[1].attn
    seen = {}
    attn.qk.register_forward_hook(lambda m, i, o: seen.update(scores=o.shape))
    vit(x)
    assert seen["scores"] == (3, 4, 17, 17)

    # Reference: zeroing head 2's contribution to proj equals removing the head.
    ref = ViT(8, 2, 1, 10).eval()
    ref.load_state_dict(vit.state_dict())
    with torch.no_grad():
        ref.blocks[1].attn.proj.weight[:, 32:48] = 0
        expected = ref(x)

    _slice_heads(attn, [0, 1, 3])
    assert attn.num_heads == 3 and attn.head_dim == 16
    out = vit(x)
    assert out.shape == (3, 10)
    assert seen["scores"] == (3, 3, 17, 17)
    assert torch.allclose(out, expected, atol=1e-5)

    attn.head_dim = 16  # consistent assignment is accepted
    with pytest.raises(ValueError, match="head_dim"):
        attn.head_dim = 8
    attn.num_heads = 5  # 48 is not a multiple of 5
    with pytest.raises(ValueError, match="multiple of num_heads"):
        vit(x)


def test_vit_head_dim_shrink():
    """Pruning within heads (same head count, narrower heads) also works."""
    vit = ViT(8, 2, 1, 10, heads=2).eval()
    attn = vit.blocks[0].attn
    rows = torch.cat([torch.arange(0, 20), torch.arange(32, 52)])
    for name in ("q", "k", "v"):
        old = getattr(attn, name)
        new = nn.Linear(old.in_features, 40)
        new.weight.data, new.bias.data = old.weight.data[rows].clone(), old.bias.data[rows].clone()
        setattr(attn, name, new)
    proj = nn.Linear(40, 64)
    proj.weight.data = attn.proj.weight.data[:, rows].clone()
    attn.proj = proj
    assert attn.head_dim == 20
    assert vit(torch.randn(2, 1, 8, 8)).shape == (2, 10)


# --------------------------------------------------------------------------- training


def test_train_deterministic_and_restores_rng(digits):
    small = digits.train[:300]
    outs = []
    for _ in range(2):
        torch.manual_seed(1)
        model = MLP(64, (16,), 10)
        state = torch.random.get_rng_state()
        hist = train(model, small, val=digits.val, epochs=2, seed=5, progress=False)
        assert torch.equal(state, torch.random.get_rng_state())  # caller's RNG untouched
        outs.append(model(digits.test.X[:10]))
    assert torch.equal(outs[0], outs[1])
    assert len(hist["loss"]) == 2 and len(hist["val_accuracy"]) == 2 and hist["steps"] == 10
    assert model.training  # mode restored


def test_fine_tune_and_accuracy_forms(digits):
    torch.manual_seed(0)
    model = MLP(64, (32,), 10)
    model.eval()
    before = accuracy(model, digits.test)
    hist = fine_tune(model, digits.train, steps=60, lr=3e-3)
    assert hist["steps"] == 60 and len(hist["loss"]) == 60 and not model.training
    after = accuracy(model, digits.test)
    assert after > before + 0.3
    # other data forms give the same accuracy
    pair = (digits.test.X, digits.test.y)
    loader = list(digits.test.batches(50))
    assert accuracy(model, pair) == after == accuracy(model, loader) == accuracy(model, iter(loader))
    # iterable of batches, repeated to reach the step count; one-shot iterator used once
    assert fine_tune(model, loader[:3], steps=7)["steps"] == 7
    assert fine_tune(model, iter(loader[:3]), steps=7)["steps"] == 3
    assert fine_tune(model, digits.train[:130], epochs=2, batch_size=64)["steps"] == 6
    # only selected parameters move
    w0 = model.features[0].weight.clone()
    fine_tune(model, digits.train, steps=3, params=model.classifier.parameters(), lr=1e-2)
    assert torch.equal(w0, model.features[0].weight)
    with pytest.raises(ValueError, match="at least one sample"):
        accuracy(model, [])
    # mixed train/eval flags of submodules are restored exactly
    model.train()
    model.features.eval()
    fine_tune(model, digits.train, steps=1)
    accuracy(model, digits.test)
    assert model.training and model.classifier.training and not model.features[0].training


@pytest.mark.slow
def test_default_training_reaches_digits_thresholds(tmp_path):
    want = {"mlp": 0.95, "vgg": 0.95, "resnet": 0.95, "vit": 0.85}
    for arch, threshold in want.items():
        model, ds = pretrained(arch, "digits", cache_dir=tmp_path, progress=False)
        acc = accuracy(model, ds.test)
        meta = json.loads(next(tmp_path.glob(f"{arch}-digits-*.json")).read_text())
        assert abs(meta["test_accuracy"] - acc) < 1e-9
        assert acc >= threshold, f"{arch}: digits test accuracy {acc:.3f} < {threshold}"


# --------------------------------------------------------------------------- cache


def _fail(*args, **kwargs):
    raise AssertionError("train() called although the model is cached")


def test_pretrained_cache_roundtrip(tmp_path, monkeypatch):
    kw = dict(cache_dir=tmp_path, progress=False, epochs=2, hidden=(16,))
    model, ds = pretrained("mlp", "digits", **kw)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".safetensors")
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    meta = json.loads((tmp_path / files[0]).read_text())
    assert meta["config"]["hidden"] == [16] and 0 <= meta["test_accuracy"] <= 1

    monkeypatch.setattr(cache_module, "train", _fail)
    again, ds2 = pretrained("mlp", "digits", **kw)
    assert not again.training
    assert torch.equal(model(ds.test.X), again(ds2.test.X))
    # a different config is a different key -> would train
    with pytest.raises(AssertionError, match="cached"):
        pretrained("mlp", "digits", **dict(kw, hidden=(17,)))
    with pytest.raises(AssertionError, match="cached"):
        pretrained("mlp", "digits", **dict(kw, seed=1))
    monkeypatch.setenv("XPRUNE_CACHE", str(tmp_path))
    assert models.cache_dir() == tmp_path
    pretrained("mlp", "digits", progress=False, epochs=2, hidden=(16,))  # found through $XPRUNE_CACHE


@pytest.mark.parametrize("damage", ["truncate", "garbage", "no_json", "bad_json"])
def test_pretrained_ignores_damaged_cache(tmp_path, monkeypatch, damage):
    kw = dict(cache_dir=tmp_path, progress=False, epochs=1, hidden=(8,))
    model, ds = pretrained("mlp", "digits", **kw)
    weights = next(tmp_path.glob("*.safetensors"))
    meta = next(tmp_path.glob("*.json"))
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:-40])
    elif damage == "garbage":
        weights.write_bytes(b"\0" * 100)
    elif damage == "no_json":
        meta.unlink()
    else:
        meta.write_text("{not json")
    monkeypatch.setattr(cache_module, "train", _fail)
    with pytest.warns(UserWarning, match="unusable cache entry"), pytest.raises(AssertionError, match="cached"):
        pretrained("mlp", "digits", **kw)
    monkeypatch.undo()
    with pytest.warns(UserWarning):
        again, _ = pretrained("mlp", "digits", **kw)  # retrains and repairs the entry
    assert torch.equal(model(ds.test.X), again(ds.test.X))  # deterministic retraining
    monkeypatch.setattr(cache_module, "train", _fail)
    pretrained("mlp", "digits", **kw)  # now loads cleanly


def test_atomic_write_never_leaves_partial_files(tmp_path, monkeypatch):
    target = tmp_path / "sub" / "w.bin"
    cache_module._atomic_write(target, b"old")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(cache_module.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        cache_module._atomic_write(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert [p.name for p in target.parent.iterdir()] == ["w.bin"]


def test_pretrained_toy_mlp(tmp_path):
    model, ds = pretrained(
        "mlp", "moons", cache_dir=tmp_path, progress=False, hidden=(32, 32), data_kwargs={"n_samples": 500}
    )
    assert ds.input_shape == (2,) and model.config["in_features"] == 2
    assert len(ds.train) + len(ds.val) + len(ds.test) == 500
    assert accuracy(model, ds.test) >= 0.95


# --------------------------------------------------------------------------- transfer


def test_transfer_on_digits(tmp_path, monkeypatch):
    res = models.transfer(
        "mlp",
        source="digits",
        source_classes=(0, 1, 2, 3, 4),
        target_classes=(5, 6, 7, 8, 9),
        n_per_class=5,
        max_per_class=None,
        pretrain_epochs=15,
        head_steps=100,
        full_steps=20,
        cache_dir=tmp_path,
        progress=False,
        hidden=(64,),
    )
    model, ds, ref = res
    assert model is res.model and ds.classes == ["5", "6", "7", "8", "9"]
    assert len(ref) == 25 and (ref.class_counts() == 5).all()
    assert res.source_model.config["num_classes"] == 5 and model.config["num_classes"] == 5
    assert res.source_accuracy >= 0.9
    assert res.target_accuracy == accuracy(model, ds.test) and res.target_accuracy >= 0.7
    # pretraining is cached; adaptation is deterministic
    monkeypatch.setattr(cache_module, "train", _fail)
    res2 = models.transfer(
        "mlp",
        source="digits",
        n_per_class=5,
        max_per_class=None,
        pretrain_epochs=15,
        head_steps=100,
        full_steps=20,
        cache_dir=tmp_path,
        progress=False,
        hidden=(64,),
    )
    assert torch.equal(res2.model(ds.test.X), model(ds.test.X))
    assert torch.equal(res2.reference.X, ref.X)


def test_replace_head():
    for arch in ARCHITECTURES:
        model = build(arch, input_shape=(1, 8, 8), num_classes=10)
        head = models.replace_head(model, 3)
        assert models.output_layer(model)[2] is head
        assert model.eval()(torch.randn(2, 1, 8, 8)).shape == (2, 3)
        assert model.config["num_classes"] == 3
