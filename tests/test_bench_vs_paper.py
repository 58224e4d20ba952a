"""scripts/bench_vs_paper.py against a tiny fake of the paper's code (no external code needed).

The fake has the paper's module layout (``models/__init__.py`` exporting ``get_model`` and
``layers``; ``models/layers/__init__.py`` with the layer classes; ``models/simplified_conv_net.py``)
with trivial ``nn.Conv2d`` layers, so the whole pipeline runs: building both models, alternating
timed steps, the CSV, JSON and PNG.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from scripttools import load_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "bench_vs_paper.py"

FAKE_LAYERS = '''
import torch
from torch import nn


class _Conv(nn.Conv2d):
    def __init__(self, in_channels, out_channels, kernel_size, **kw):
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)


class AOLConv2d(_Conv):
    pass


class StandardConv2d(_Conv):
    pass


class CayleyConv(_Conv):
    """Creates a parameter in its first forward pass, as the paper's CayleyConv does."""

    def forward(self, x):
        if not hasattr(self, "alpha"):
            self.alpha = nn.Parameter(torch.ones(()))
        return self.alpha * super().forward(x)


class MaxMin(nn.Module):
    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], dim=1)
'''

FAKE_NET = '''
from torch import nn

from . import layers

DEFAULT_MODELS = {"ConvNetXS": dict(base_width=4)}


class SimplifiedConvNet(nn.Sequential):
    def __init__(self, get_conv, get_activation, base_width=4, nrof_classes=10):
        super().__init__(get_conv(3, base_width, 3), get_activation(), nn.AdaptiveMaxPool2d(1), nn.Flatten(),
                         nn.Linear(base_width, nrof_classes))


def get_model(chosen_model_name, chosen_layer_name):
    return SimplifiedConvNet(getattr(layers, chosen_layer_name), layers.MaxMin, **DEFAULT_MODELS[chosen_model_name])
'''


def write_fake_paper(root: Path) -> Path:
    pkg = root / "models"
    (pkg / "layers").mkdir(parents=True)
    (pkg / "layers" / "__init__.py").write_text(FAKE_LAYERS)
    (pkg / "simplified_conv_net.py").write_text(FAKE_NET)
    (pkg / "__init__.py").write_text("from .simplified_conv_net import SimplifiedConvNet, get_model\nfrom . import layers\n")
    return root


@pytest.fixture(scope="module")
def bvp():
    yield load_script(SCRIPT, "lipzoo_bench_vs_paper_test", register=True)  # its dataclasses look it up there
    del sys.modules["lipzoo_bench_vs_paper_test"]


@pytest.fixture
def clean_modules():
    """The fake is imported as the top-level package ``models``: drop it again after the test."""
    yield
    for name in [m for m in sys.modules if m == "models" or m.startswith("models.")]:
        del sys.modules[name]


def test_runs_against_a_fake_paper_and_writes_csv_json_png(bvp, tmp_path, capsys, clean_modules):
    paper = write_fake_paper(tmp_path / "paper")
    out = tmp_path / "out"
    rc = bvp.main(["--paper-code", str(paper), "--layer", "standard,cayley", "--batch-size", "2",
                   "--repeats", "2", "--layer-repeats", "cayley=1", "--layer-warmup", "cayley=0", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    files = sorted(p.suffix for p in out.iterdir())
    assert files == [".csv", ".json", ".png"], files
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left behind

    with open(next(out.glob("*.csv"))) as f:
        rows = list(csv.DictReader(f))
    assert [r["layer"] for r in rows] == ["standard", "cayley"]
    for r in rows:
        assert r["status"] == "ok", r
        for col in ("paper_train_s", "lipzoo_train_s", "train_speedup", "paper_infer_s", "lipzoo_infer_s",
                    "infer_speedup"):
            assert float(r[col]) > 0, (col, r)
        assert r["hw_cpu_model"] and r["hw_torch"] and int(r["hw_cpu_threads"]) >= 1
    assert rows[0]["paper_params"] == str(4 * 3 * 9 + 4 + 4 * 10 + 10)
    assert rows[1]["paper_params"] == str(4 * 3 * 9 + 4 + 1 + 4 * 10 + 10)  # the lazily created alpha counts

    rec = json.loads(next(out.glob("*.json")).read_text())
    assert rec["settings"]["batch_size"] == 2 and rec["settings"]["input_shape"] == "3x32x32"
    assert rec["settings"]["layer_repeats"] == {"cayley": 1} and rec["settings"]["layer_warmup"] == {"cayley": 0}
    assert len(rec["rows"][0]["paper_train_all_s"]) == 2 and len(rec["rows"][1]["lipzoo_infer_all_s"]) == 1
    assert rec["hardware"]["cpu_model"] and "commit" in rec["hardware"]
    assert rec["paper_code"]["commit"] is None and len(rec["paper_code"]["models_sha256"]) == 64
    assert any("lazy parameters" in s for s in rec["shims"])
    assert next(out.glob("*.png")).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "speedup" in text and "cayley" in text


def test_a_git_directory_is_exported_and_its_commit_recorded(bvp, tmp_path, capsys, clean_modules):
    paper = write_fake_paper(tmp_path / "repo")
    git = ["git", "-C", str(paper), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(paper)], check=True)
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-qm", "fake"], check=True)
    bare = tmp_path / "mirror"
    subprocess.run(["git", "clone", "-q", "--bare", str(paper), str(bare)], check=True)
    head = subprocess.run(["git", "-C", str(bare), "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    rc = bvp.main(["--paper-code", str(bare), "--layer", "standard", "--batch-size", "2", "--repeats", "1",
                   "--warmup", "0", "--out", str(tmp_path / "out"), "--json"])
    rec = json.loads(capsys.readouterr().out)
    assert rc == 0 and rec["rows"][0]["train_speedup"] > 0
    assert rec["paper_code"]["commit"] == head


def _wrong_paper_code(case: str, path: Path) -> None:
    if case == "not-the-paper":
        path.mkdir()
        (path / "README.md").write_text("something else")
    elif case == "broken":
        (path / "models").mkdir(parents=True)
        (path / "models" / "__init__.py").write_text("import this_module_does_not_exist_anywhere\n")
    elif case == "file":
        path.write_text("x")
    elif case == "no-get-model":
        (path / "models").mkdir(parents=True)
        (path / "models" / "__init__.py").write_text("layers = None\n")


@pytest.mark.parametrize("case", ["missing", "not-the-paper", "file", "broken", "no-get-model"])
def test_a_missing_or_wrong_paper_code_is_one_clear_error_line(bvp, case, tmp_path, capsys, clean_modules):
    path = tmp_path / "paper"
    _wrong_paper_code(case, path)
    assert bvp.main(["--paper-code", str(path), "--out", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"bench_vs_paper.py: error: --paper-code {path}"), lines[0]
    assert not (tmp_path / "out").exists()
    assert str(path) not in sys.path and "models" not in sys.modules


def test_the_command_line_says_it_in_one_line_without_a_traceback(tmp_path):
    path = tmp_path / "paper"
    _wrong_paper_code("broken", path)
    res = subprocess.run([sys.executable, str(SCRIPT), "--paper-code", str(path), "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=300, cwd=ROOT, check=False,
                         env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        (f"bench_vs_paper.py: error: --paper-code {path}: could not import the paper's code: "
         "ModuleNotFoundError: No module named 'this_module_does_not_exist_anywhere'")], res.stderr


def test_layers_without_a_counterpart_in_the_paper_are_refused(bvp, tmp_path, capsys):
    assert bvp.main(["--paper-code", str(tmp_path), "--layer", "bro"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no counterpart in the paper's code" in err[0]
    assert bvp.main(["--paper-code", str(tmp_path), "--layer", "nope"]) == 2
    assert "unknown layer" in capsys.readouterr().err


def test_help_names_the_options(bvp, capsys):
    with pytest.raises(SystemExit) as e:
        bvp.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for opt in ("--paper-code", "--layer", "--size", "--batch-size", "--repeats", "--out", "--json", "Shims"):
        assert opt in text
