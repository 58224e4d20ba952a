"""The command line's error contract: one line on stderr naming what was wrong and what is
expected, exit 2 for usage errors and unknown names, 1 for failures, a traceback only with --debug;
and the certify/info/bench/plot/budget behaviour around it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import lipzoo
from lipzoo.zoo.bench import BenchResult, add_ratios, save_results
from lipzoo.cli import main as cli
from lipzoo.data import DATASETS
from lipzoo.registry import UnknownModelError

from test_certify import _Slice


def _lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def _one_line_error(res, code: int) -> str:
    """The single error line on stderr of a failed command (and no traceback; notes may precede it)."""
    assert res.exit_code == code, (res.exit_code, res.output)
    assert "Traceback" not in res.output
    (line,) = [ln for ln in _lines(res.stderr) if not ln.startswith("note: ")]
    assert line.startswith("lipzoo") and ": error: " in line, line
    return line


def _fashion_mnist_available() -> bool:
    try:
        lipzoo.data.load_tensors("fashion_mnist", "test", limit=1)
    except FileNotFoundError:
        return False
    return True


needs_data = pytest.mark.skipif(not _fashion_mnist_available(), reason="real Fashion-MNIST not installed")


# --- certify: option validation ---------------------------------------------------------------------
@pytest.mark.parametrize("args, option", [
    (["--eps", "-0.1"], "--eps"),
    (["--eps", "nan"], "--eps"),
    (["--eps", "inf"], "--eps"),
    (["--lipschitz", "0"], "--lipschitz"),
    (["--lipschitz", "-1"], "--lipschitz"),
    (["--lipschitz", "inf"], "--lipschitz"),
    (["--lipschitz", "nan"], "--lipschitz"),
    (["--batch-size", "0"], "--batch-size"),
    (["--limit", "-5"], "--limit"),
    (["--attack-steps", "0"], "--attack-steps"),
    (["--dataset", "imagenet"], "--dataset"),
    (["--device", "gpu0"], "--device"),
])
def test_certify_rejects_bad_options_in_one_line(args, option):
    res = CliRunner().invoke(cli, ["certify", "convnet_xs_aol", "--limit", "4", *args])
    line = _one_line_error(res, 2)
    assert f"Invalid value for '{option}'" in line and "--help" in line, line


def test_negative_eps_is_never_reported_as_certified():
    res = CliRunner().invoke(cli, ["certify", "convnet_xs_aol", "--limit", "4", "--eps", "-1", "--json"])
    assert res.exit_code == 2 and "certified_accuracy" not in res.stdout


# --- unknown names, folders, --debug ------------------------------------------------------------------
@pytest.mark.parametrize("command", ["info", "certify", "audit", "export"])
def test_unknown_name_is_one_line_with_close_matches(command, tmp_path):
    res = CliRunner().invoke(cli, [command, "convnet_xs_aoll"], catch_exceptions=False)
    line = _one_line_error(res, 2)
    assert "unknown model 'convnet_xs_aoll'" in line and "convnet_xs_aol" in line.split("Close matches", 1)[1]


def test_unregistered_pretrained_name_is_a_usage_error():
    res = CliRunner().invoke(cli, ["info", "convnet_xs_aol.fashion_mnistt"], catch_exceptions=False)
    line = _one_line_error(res, 2)
    assert "convnet_xs_aol.fashion_mnist" in line


def test_debug_shows_the_traceback():
    res = CliRunner().invoke(cli, ["--debug", "info", "convnet_xs_aoll"])
    assert isinstance(res.exception, UnknownModelError)


def test_a_folder_without_model_files_is_a_usage_error(tmp_path):
    for command in ("certify", "audit"):
        res = CliRunner().invoke(cli, [command, str(tmp_path)], catch_exceptions=False)
        line = _one_line_error(res, 2)
        assert str(tmp_path) in line and "recipe.yaml" in line and "config.json" in line


def test_library_failures_exit_1_in_one_line(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: x\n")  # no architecture, data set, ...
    res = CliRunner().invoke(cli, ["budget", str(bad), "--seconds", "10"], catch_exceptions=False)
    line = _one_line_error(res, 1)
    assert "broken.yaml" in line or "architecture" in line


# --- certify: model folders and the bound ---------------------------------------------------------
def _model_folder(tmp_path: Path, dataset: str) -> Path:
    info = DATASETS[dataset]
    torch.manual_seed(0)
    model = lipzoo.create_model("convnet_xs_aol", in_chans=info.in_chans, num_classes=info.num_classes,
                                input_mean=info.mean)
    folder = tmp_path / f"convnet_xs_aol.{dataset}"
    lipzoo.save_pretrained(model, folder, dataset=dataset, recipe="")
    return folder


def test_certify_takes_the_data_set_of_a_model_folder(tmp_path, monkeypatch):
    folder = _model_folder(tmp_path, "cifar10")
    monkeypatch.setenv("LIPZOO_DATA", str(tmp_path / "no-data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "no-cache"))
    res = CliRunner().invoke(cli, ["certify", str(folder), "--limit", "4"], catch_exceptions=False)
    assert "freshly initialised" not in res.output
    if res.exit_code == 0:  # CIFAR-10 happens to be installed system-wide
        assert "on cifar10" in res.stdout and "model folder" in res.stdout
    else:
        assert "cifar10" in _one_line_error(res, 1).lower()


def test_certify_dataset_that_does_not_fit_the_model_is_refused(tmp_path):
    folder = _model_folder(tmp_path, "fashion_mnist")
    res = CliRunner().invoke(cli, ["certify", str(folder), "--dataset", "cifar10", "--limit", "4"],
                             catch_exceptions=False)
    line = _one_line_error(res, 2)
    assert "--dataset" in line and "3-channel" in line and "1 channel" in line


def test_certify_refuses_a_bound_below_the_audited_one():
    proven = float(lipzoo.audit(lipzoo.create_model("convnet_xs_standard", in_chans=1), lower=False).upper)
    assert proven > 2  # an unconstrained network: the audit proves a large bound
    res = CliRunner().invoke(cli, ["certify", "convnet_xs_standard", "--lipschitz", "1.5", "--limit", "4"],
                             catch_exceptions=False)
    line = _one_line_error(res, 2)
    assert "--lipschitz" in line and "1.5" in line and repr(proven) in line and "unsound" in line


@needs_data
def test_certify_says_which_bound_it_used_and_why(tmp_path):
    folder = _model_folder(tmp_path, "fashion_mnist")
    res = CliRunner().invoke(cli, ["certify", str(folder), "--limit", "8", "--batch-size", "4"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "freshly initialised" not in res.output and "model folder" in res.stdout
    assert any(ln.startswith("L = ") and "audited on this machine" in ln for ln in res.stdout.splitlines())
    res = CliRunner().invoke(cli, ["certify", str(folder), "--limit", "8", "--lipschitz", "3", "--json"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["lipschitz_bound"] == 3.0 and "--lipschitz" in out["lipschitz_reason"]
    assert out["lipschitz_audited"] <= 3.0 and out["dataset"] == "fashion_mnist"


# --- attack progress ----------------------------------------------------------------------------------
def test_attack_progress_counts_images_per_radius(capsys):
    from lipzoo.certify import empirical_robust_accuracy

    x = torch.rand(6, 1, 1, 4)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    empirical_robust_accuracy(_Slice(), x, y, (0.1, 0.2), steps=3, batch_size=4, progress=True)
    err = capsys.readouterr().err
    assert "12/12" in err and "img" in err and "step 3/3" in err  # 6 images x 2 radii, in batches of 4


# --- info ----------------------------------------------------------------------------------------------
def test_info_is_a_few_readable_lines_and_json_on_request():
    name = next(iter(lipzoo.list_models(pretrained=True)), "convnet_xs_aol")
    res = CliRunner().invoke(cli, ["info", name], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    lines = _lines(res.stdout)
    assert 3 <= len(lines) <= 15 and all(len(ln) < 200 for ln in lines), lines
    assert not any("{" in ln for ln in lines)
    undertrained = [n for n in lipzoo.list_models(pretrained=True) if lipzoo.registry.PRETRAINED[n].status]
    for shown in undertrained[:1]:  # a status is said where the model is described, as in `list` and on cards
        res = CliRunner().invoke(cli, ["info", shown], catch_exceptions=False)
        assert any(ln.startswith("status ") and "undertrained" in ln.lower() for ln in _lines(res.stdout)), res.stdout
    res = CliRunner().invoke(cli, ["info", name, "--json"], catch_exceptions=False)
    assert json.loads(res.stdout)["name"] == name


# --- bench and plot: where files go, refusing partial comparisons ---------------------------------------
def test_bench_writes_outside_the_committed_results_by_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli, ["bench", "--layer", "standard", "--size", "xs", "--batch-size", "2", "--warmup", "0",
                                   "--repeats", "1", "--no-memory", "--no-plain", "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    written = Path(json.loads(res.stdout)["file"]).resolve()
    assert written.parent == (tmp_path / "lipzoo-results").resolve()
    assert not (tmp_path / "results").exists()


def _bench_csv(folder: Path, layers: tuple[str, ...]) -> Path:
    results = []
    for i, layer in enumerate(("standard", *layers)):
        r = BenchResult(model=f"convnet_xs_{layer}", family="convnet", layer=layer, size="xs", device="cpu",
                        batch_size=64, params=1000 * (i + 1), train_batch_s=0.1 * (i + 1),
                        train_images_per_s=640 / (i + 1), infer_images_per_s=2000 / (i + 1),
                        train_peak_mib=100.0 * (i + 1), infer_peak_mib=10.0 * (i + 1), memory_method="cpu_peak_rss")
        r.epoch_s = {d: math.ceil(info.train_size / 64) * r.train_batch_s
                     for d, info in DATASETS.items() if info.input_size == 32}
        results.append(r)
    add_ratios(results)
    return save_results(results, folder, fingerprint={"device": "cpu", "torch": "test", "cpu": "test-cpu"})


def test_plot_refuses_a_file_with_fewer_layers_than_claimed(tmp_path, monkeypatch):
    csv_path = _bench_csv(tmp_path / "bench", ("aol", "sll"))
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    res = runner.invoke(cli, ["plot", "--bench", str(csv_path), "--runs", "none"], catch_exceptions=False)
    line = _one_line_error(res, 1)
    assert "missing" in line and "lot" in line and "cayley" in line and "aol" not in line.split("missing", 1)[1]
    res = runner.invoke(cli, ["plot", "--bench", str(csv_path), "--runs", "none", "--layer", "aol,sll", "--json"],
                        catch_exceptions=False)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["radar"]["layers"] == ["aol", "sll"]
    assert Path(out["radar"]["path"]).resolve().parent == (tmp_path / "lipzoo-results").resolve()
    assert not (tmp_path / "results").exists()
    res = runner.invoke(cli, ["plot", "--bench", str(csv_path), "--layer", "aol,sl", "--runs", "none"],
                        catch_exceptions=False)
    assert "'sl' matches no layer" in _one_line_error(res, 2)


# --- budget ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [["--seconds", "-1"], ["--seconds", "nan"], ["--hours", "0"], ["--batches", "0"]])
def test_budget_rejects_bad_numbers(args, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: x\n")
    res = CliRunner().invoke(cli, ["budget", str(recipe), *(args if "--batches" not in args else ["--seconds", "5", *args])],
                             catch_exceptions=False)
    _one_line_error(res, 2)


def test_budget_shows_what_it_is_timing(tmp_path):
    from lipzoo.zoo.training import Recipe

    p = tmp_path / "tiny.yaml"
    Recipe(name="tiny", architecture="convnet_xs_standard", dataset="fashion_mnist", epochs=1, lr=0.05,
           weight_decay=0.0, batch_size=2).dump(p)
    res = CliRunner().invoke(cli, ["budget", str(p), "--seconds", "5", "--batches", "1"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "timing" in res.stderr and "tiny" in res.stderr and "1/1" in res.stderr
    assert "epochs" in res.stdout


@pytest.mark.parametrize("command", ["download", "verify"])
def test_unknown_pretrained_name_is_a_usage_error_everywhere(command):
    res = CliRunner().invoke(cli, [command, "convnet_xs_aoll.fashion_mnist"], catch_exceptions=False)
    line = _one_line_error(res, 2)
    assert "convnet_xs_aoll.fashion_mnist" in line


def test_evaluate_rejects_an_unknown_device(tmp_path):
    res = CliRunner().invoke(cli, ["evaluate", str(tmp_path), "--device", "tpu"], catch_exceptions=False)
    assert "'--device'" in _one_line_error(res, 2)


def test_train_rejects_an_unknown_device_before_writing_anything(tmp_path):
    from lipzoo.zoo.training import Recipe

    recipe = tmp_path / "r.yaml"
    Recipe(name="r", architecture="convnet_xs_standard", dataset="fashion_mnist", epochs=1, lr=0.01,
           weight_decay=0.0, batch_size=2).dump(recipe)
    res = CliRunner().invoke(cli, ["train", str(recipe), "--out", str(tmp_path / "run"), "--device", "tpu"],
                             catch_exceptions=False)
    assert "'--device'" in _one_line_error(res, 2) and "tpu" in res.stderr
    assert not (tmp_path / "run").exists()


def test_card_of_an_unknown_name_is_a_usage_error_naming_the_known_ones():
    name = next(iter(lipzoo.list_models(pretrained=True)), None)
    if name is None:
        pytest.skip("no pretrained entry in cards/")
    res = CliRunner().invoke(cli, ["card", name + "x", "--check"], catch_exceptions=False)
    line = _one_line_error(res, 2)
    assert f"{name}x" in line and name in line


def test_no_command_still_shows_the_full_help():
    res = CliRunner().invoke(cli, [], catch_exceptions=False)
    assert "Commands:" in res.output and len(_lines(res.output)) > 10
