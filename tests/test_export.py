"""to_plain: plain torch copies equal the original; ONNX and TorchScript round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import lipzoo
from lipzoo.cli import main as cli_main
from lipzoo.export import export_model, to_plain
from lipzoo.layers import LAYERS, LipschitzModule


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.mark.parametrize("layer", list(LAYERS))
def test_to_plain_matches_every_layer_at_xs(layer):
    torch.manual_seed(0)
    model = lipzoo.create_model(f"convnet_xs_{layer}").eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x)
        plain = to_plain(model)
        out = plain(x)
    assert not any(isinstance(m, LipschitzModule) for m in plain.modules())
    assert type(plain) is torch.nn.Sequential and not plain.training
    assert not any(p.requires_grad for p in plain.parameters())
    assert _rel(out, ref) < 1e-5
    assert model.training is False  # the original is untouched


@pytest.mark.parametrize("layer", ["cayley", "lot", "sandwich", "bro"])
def test_materialised_kernel_form_matches_small(layer):
    """The full-size-kernel form (used for ONNX) of the frequency-domain layers, on a small conv."""
    torch.manual_seed(0)
    conv = LAYERS[layer].conv(4, 4, 3, input_size=(6, 6)).eval()
    seq = torch.nn.Sequential(conv)
    x = torch.randn(3, 4, 6, 6)
    with torch.no_grad():
        ref = seq(x)
        for form in ("kernel", "fft", "auto"):
            assert _rel(to_plain(seq, input_shape=(4, 6, 6), circular=form)(x), ref) < 1e-5, form


def test_to_plain_rejects_bad_form():
    with pytest.raises(ValueError, match="circular must be one of"):
        to_plain(lipzoo.create_model("convnet_xs_aol"), circular="nope")


@pytest.mark.parametrize("layer", ["cayley", "sll"])
def test_onnx_round_trip(layer, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = lipzoo.create_model(f"convnet_xs_{layer}").eval()
    path = export_model(model, tmp_path / "m.onnx", "onnx")
    assert path.is_file() and [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temp file left
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))  # another batch size than traced
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"images": x.numpy()})
    with torch.no_grad():
        ref = model(x)
    assert _rel(torch.from_numpy(np.asarray(got)), ref) < 1e-5


def test_torchscript_round_trip_and_cli(tmp_path):
    runner = CliRunner()
    out = tmp_path / "aol.pt"
    res = runner.invoke(cli_main, ["export", "convnet_xs_aol", "--format", "torchscript", "--out", str(out)])
    assert res.exit_code == 0, res.output
    loaded = torch.jit.load(str(out))
    torch.manual_seed(0)  # the CLI builds the fresh model with seed 0
    model = lipzoo.create_model("convnet_xs_aol").eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert _rel(loaded(x), model(x)) < 1e-5
