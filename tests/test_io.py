"""Saving, loading and exporting pruned models."""

import pytest
import torch

import xprune
from tiny_models import Branches, ConvBN, Residual, randomize_bn


def _pruned(cls, steps=2):
    torch.manual_seed(0)
    model = randomize_bn(cls()).eval()
    X, y = torch.randn(12, 3, 8, 8), torch.randint(0, 5, (12,))
    pruned = model
    for i in range(steps):
        pruned = xprune.prune(pruned, (X, y), ["taylor", "weight"][i % 2], 0.3)
    return cls, pruned, X


@pytest.mark.parametrize("cls", [ConvBN, Residual, Branches])
def test_save_load_replays_history_bit_identically(cls, tmp_path):
    cls, pruned, X = _pruned(cls)
    assert [mode for mode, _ in xprune.history(pruned)] == ["remove", "remove"]
    path = xprune.save(pruned, tmp_path / "m.safetensors")
    base = randomize_bn(cls(), seed=5).eval()  # other weights: only the architecture matters
    before = {k: v.clone() for k, v in base.state_dict().items()}
    loaded = xprune.load(path, base)
    with torch.no_grad():
        assert torch.equal(loaded(X), pruned(X))
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())


def test_masked_model_round_trips(tmp_path):
    torch.manual_seed(0)
    model = randomize_bn(ConvBN()).eval()
    X, y = torch.randn(8, 3, 8, 8), torch.randint(0, 5, (8,))
    masked = xprune.apply(model, xprune.select(xprune.score(model, (X, y), "l2"), 0.5), "mask")
    loaded = xprune.load(xprune.save(masked, tmp_path / "m.safetensors"), ConvBN().eval())
    with torch.no_grad():
        assert torch.equal(loaded(X), masked(X))


def test_load_rejects_wrong_architecture_and_corrupt_files(tmp_path):
    _, pruned, _X = _pruned(ConvBN, steps=1)
    path = xprune.save(pruned, tmp_path / "m.safetensors")
    with pytest.raises(xprune.XpruneError, match=r"does not have|plan does not fit|do not fit"):
        xprune.load(path, Residual().eval())
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(xprune.XpruneError, match="truncated or corrupt"):
        xprune.load(tmp_path / "cut.safetensors", ConvBN().eval())
    with pytest.raises(xprune.XpruneError, match="exists"):
        xprune.save(pruned, path, overwrite=False)
    with pytest.raises(xprune.XpruneError, match=r"\.safetensors"):
        xprune.save(pruned, tmp_path / "m.pt")


def test_torch_save_of_whole_module_works(tmp_path):
    _, pruned, X = _pruned(Residual, steps=1)
    torch.save(pruned, tmp_path / "m.pt")
    again = torch.load(tmp_path / "m.pt", weights_only=False)
    with torch.no_grad():
        assert torch.equal(again(X), pruned(X))


def test_onnx_export_matches_torch(tmp_path):
    pytest.importorskip("onnxruntime")
    _, pruned, X = _pruned(Residual, steps=1)
    res = xprune.export_onnx(pruned, tmp_path / "m.onnx", X[:2])
    assert res["max_abs_diff"] < 1e-4 and (tmp_path / "m.onnx").stat().st_size > 0
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": X.numpy()})[0]  # another batch size than the example
    assert abs(got - pruned(X).detach().numpy()).max() < 1e-4
