"""lipzoo.zoo.bench (speed, memory, ratios, result files), lipzoo.zoo.plots and their CLI commands.

Tiny: ConvNet-XS, batch 2, one timed step; the CPU memory subprocess runs once.
"""

import csv
import json
import math
import os

import pytest
import torch
from click.testing import CliRunner

from lipzoo.zoo import bench, measure
from lipzoo.zoo.bench import (
    CSV_COLUMNS,
    RATIO_FIGURES,
    BenchError,
    BenchResult,
    add_ratios,
    bench_layers,
    bench_model,
    read_results,
    save_results,
)
from lipzoo.cli import main
from lipzoo.data import DATASETS
from lipzoo.zoo.plots import NOT_MEASURED, PlotError, collect_accuracies, make_plots
from lipzoo.zoo.training import Recipe

FAST = dict(batch_size=2, warmup=0, repeats=1, progress=False)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def measured():
    """standard + aol at XS, measured once (no memory subprocess; to_plain if available)."""
    return bench_layers("aol", ("xs",), memory=False, plain=True, **FAST)


def test_grid_has_standard_first_and_ratios(measured):
    assert [r.model for r in measured] == ["convnet_xs_standard", "convnet_xs_aol"]
    std, aol = measured
    assert all(r.status == "ok" and r.error is None for r in measured)
    for f in RATIO_FIGURES:
        key = f"{f}_vs_standard"
        if getattr(std, f) is None:  # memory is off here
            assert std.ratios[key] is None and aol.ratios[key] is None
            continue
        assert std.ratios[key] == 1.0
        assert aol.ratios[key] == pytest.approx(getattr(aol, f) / getattr(std, f))
    assert std.ratios["epoch_s_vs_standard"] == 1.0
    assert aol.ratios["epoch_s_vs_standard"] == pytest.approx(aol.train_batch_s / std.train_batch_s)
    assert aol.train_images_per_s == pytest.approx(2 / aol.train_batch_s)
    assert aol.params == sum(p.numel() for p in bench.create_model("convnet_xs_aol").parameters() if p.requires_grad)


def test_epoch_seconds_follow_train_size(measured):
    r = measured[1]
    for name, info in DATASETS.items():
        if info.input_size == 32:
            assert r.epoch_s[name] == pytest.approx(math.ceil(info.train_size / 2) * r.train_batch_s)
        else:  # tiny_imagenet is 64x64: not the convnet family's input
            assert r.epoch_s.get(name) is None


def test_plain_inference_column(measured):
    to_plain, why = measure.plain_converter()
    for r in measured:
        if to_plain is None:
            assert r.plain_images_per_s is None and "to_plain" in r.note
        else:
            assert r.plain_images_per_s > 0, r.note


def test_plain_unavailable_is_a_note(monkeypatch):
    monkeypatch.setattr(measure, "plain_converter", lambda: (None, "plain inference not measured: test"))
    r = bench_model("convnet_xs_standard", batch_size=2, warmup=0, repeats=1, memory=False)
    assert r.status == "ok" and r.plain_images_per_s is None and r.note == "plain inference not measured: test"


def test_csv_file_columns_fingerprint_and_round_trip(measured, tmp_path):
    path = save_results(measured, tmp_path)
    assert path.parent == tmp_path and path.name.startswith("benchmark-cpu-") and path.suffix == ".csv"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # atomic: no leftovers
    with open(path, newline="") as f:
        header = next(csv.reader(f))
    assert header[: len(CSV_COLUMNS)] == CSV_COLUMNS
    hw = header[len(CSV_COLUMNS) :]
    assert {"hw_torch", "hw_platform", "hw_device", "hw_python", "hw_lipzoo", "hw_commit"} <= set(hw)
    rows = read_results(path)
    assert [r["model"] for r in rows] == ["convnet_xs_standard", "convnet_xs_aol"]
    assert rows[0]["train_images_per_s_vs_standard"] == 1.0
    assert rows[1]["params"] == measured[1].params and rows[1]["epoch_s_tiny_imagenet"] is None
    assert rows[1]["train_images_per_s"] == pytest.approx(measured[1].train_images_per_s, rel=1e-5)
    assert save_results(measured, tmp_path, stamp=path.stem.split("-", 2)[2]) != path  # never overwrites


@pytest.mark.skipif(not measure.cpu_memory_supported(), reason="needs Linux /proc/self/clear_refs")
def test_cpu_peak_memory_counts_weights_grads_and_momentum():
    r = bench_model("convnet_xs_standard", batch_size=2, warmup=0, repeats=1, plain=False, memory=True)
    assert r.status == "ok" and r.memory_method == "cpu_peak_rss"
    weights_mib = r.params * 4 / 2**20
    assert r.infer_peak_mib >= 0.9 * weights_mib  # the weights are counted
    assert r.train_peak_mib >= 0.9 * 3 * weights_mib  # + gradients + momentum buffers
    assert r.train_peak_mib < 3 * weights_mib + 120  # and not the ~150 MiB of library pages


@pytest.mark.parametrize("interleave", [True, False])
def test_compile_option_compiles_both_passes_and_reports_compile_time(monkeypatch, interleave):
    # torch.compile itself takes minutes on CPU: check the wiring with a recording stand-in
    compiled = []

    def fake_compile(model, **kw):
        compiled.append(model.training)
        return model

    monkeypatch.setattr(bench.torch, "compile", fake_compile)
    (std,) = bench_layers("standard", ("xs",), memory=False, plain=False, compile=True, interleave=interleave, **FAST)
    assert compiled == [False, True]  # the inference model, then the training model
    assert std.compiled is True and std.compile_s > 0 and std.status == "ok"
    assert std.as_dict()["compiled"] is True


def test_first_model_gets_a_process_warm_up(monkeypatch):
    calls = []
    real = bench.measure
    monkeypatch.setattr(bench, "measure", lambda name, **kw: calls.append((name, kw["deadline"])) or real(name, **kw))
    bench_layers("standard", ("xs",), memory=False, plain=False, interleave=False, **FAST)
    assert [c[0] for c in calls] == ["convnet_xs_standard"] * 2
    assert calls[0][1] is None  # the untimed warm-up pass comes first


def test_too_slow_is_reported_not_fatal():
    r = bench_model("convnet_xs_standard", batch_size=2, warmup=1, repeats=1, memory=False, max_seconds=1e-9)
    assert r.status == "too_slow" and "max-seconds" in r.error
    assert r.train_images_per_s is None and r.params > 0


def test_out_of_memory_is_a_row(monkeypatch):
    real = bench.measure

    def fake(name, **kw):
        if "aol" in name:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(name, **kw)

    monkeypatch.setattr(bench, "measure", fake)
    std, aol = bench_layers("aol", ("xs",), memory=False, plain=False, interleave=False, **FAST)
    assert std.status == "ok" and aol.status == "oom" and "out of memory" in aol.error
    assert aol.train_images_per_s is None and aol.params > 0
    assert aol.ratios.pop("params_vs_standard") == 1.0  # its size is still known
    assert all(v is None for v in aol.ratios.values())
    assert aol.as_dict()["status"] == "oom"


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(layer_pattern="nosuchlayer"), "no layer matches"),
        (dict(sizes=("xxl",)), "unknown size"),
        (dict(batch_size=0), "batch_size"),
        (dict(device="tpu"), "device"),
    ],
)
def test_bad_arguments(kw, match):
    args = dict(layer_pattern="aol", sizes=("xs",), batch_size=2, device="cpu") | kw
    with pytest.raises(BenchError, match=match):
        bench_layers(args.pop("layer_pattern"), args.pop("sizes"), progress=False, **args)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_unavailable_is_a_clear_error():
    with pytest.raises(BenchError, match="CUDA is not available"):
        bench_layers("aol", ("xs",), device="cuda", progress=False)


def test_cli_bench_json(tmp_path):
    res = CliRunner().invoke(main, ["bench", "--layer", "standard", "--size", "xs", "--batch-size", "2", "--warmup",
                                    "0", "--repeats", "1", "--no-memory", "--no-plain", "--out", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["hardware"]["device"] == "cpu" and out["hardware"]["torch"] == torch.__version__
    (row,) = out["results"]
    assert list(row) == CSV_COLUMNS
    assert row["model"] == "convnet_xs_standard" and row["train_images_per_s_vs_standard"] == 1.0
    assert os.path.isfile(out["file"]) and read_results(out["file"])[0]["model"] == "convnet_xs_standard"


def test_cli_bench_precision_rows_for_fp32_and_bf16(tmp_path):
    res = CliRunner().invoke(main, ["bench", "--layer", "aol", "--size", "xs", "--batch-size", "2", "--warmup", "0",
                                    "--repeats", "1", "--no-memory", "--precision", "fp32,bf16", "--out", str(tmp_path),
                                    "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)["results"]
    assert [(r["model"], r["precision"]) for r in rows] == [
        ("convnet_xs_standard", "fp32"), ("convnet_xs_aol", "fp32"), ("convnet_xs_standard", "bf16"), ("convnet_xs_aol", "bf16")]
    for r in rows:
        assert list(r) == CSV_COLUMNS and r["status"] == "ok", r
        for k in ("train_batch_s", "train_images_per_s", "infer_images_per_s", "train_images_per_s_vs_standard"):
            assert math.isfinite(r[k]) and r[k] > 0, (r["model"], r["precision"], k)
    std, aol = rows[2], rows[3]  # bf16 ratios are to the bf16 standard row
    assert std["train_images_per_s_vs_standard"] == 1.0
    assert aol["train_images_per_s_vs_standard"] == pytest.approx(aol["train_images_per_s"] / std["train_images_per_s"],
                                                                  rel=1e-4)
    saved = read_results(json.loads(res.output)["file"])
    assert [r["precision"] for r in saved] == ["fp32", "fp32", "bf16", "bf16"]


def test_cli_bench_bad_precision():
    res = CliRunner().invoke(main, ["bench", "--size", "xs", "--precision", "fp32,fp16", "--no-save"])
    assert res.exit_code == 2 and "unknown precision" in res.output and "bf16" in res.output


def test_cli_bench_bad_size():
    res = CliRunner().invoke(main, ["bench", "--size", "xs,huge", "--no-save"])
    assert res.exit_code == 2 and "unknown size" in res.output


# --- plots -------------------------------------------------------------------------------------
def _synthetic_csv(tmp_path):
    """A results file with made-up figures for three layers at two sizes (standard included)."""
    results = []
    for size, scale in (("xs", 1.0), ("s", 0.4)):
        for i, layer in enumerate(("standard", "aol", "sll", "lot")):
            r = BenchResult(model=f"convnet_{size}_{layer}", family="convnet", layer=layer, size=size, device="cpu",
                            batch_size=64, params=1000 * (i + 1), train_batch_s=0.1 * (i + 1) / scale,
                            train_images_per_s=640 * scale / (i + 1), infer_images_per_s=2000 * scale / (i + 1),
                            train_peak_mib=100.0 * (i + 1), infer_peak_mib=10.0 * (i + 1), memory_method="cpu_peak_rss")
            r.epoch_s = {d: math.ceil(info.train_size / 64) * r.train_batch_s
                         for d, info in DATASETS.items() if info.input_size == 32}
            results.append(r)
    results[-1].status, results[-1].error = "oom", "out of memory"  # s-lot did not fit
    add_ratios(results)
    return save_results(results, tmp_path / "results", fingerprint={"device": "cpu", "torch": "test", "cpu": "test-cpu"})


def _run(runs, name, arch, epochs, done, cert):
    d = runs / name
    d.mkdir(parents=True)
    Recipe(name=name, architecture=arch, dataset="cifar10", epochs=epochs, lr=0.1, weight_decay=0.0).dump(d / "recipe.yaml")
    lines = [json.dumps({"epoch": e, "val_accuracy": 0.7, "val_certified": {f"{36 / 255:.6g}": cert}}) for e in range(done)]
    (d / "metrics.jsonl").write_text("".join(ln + "\n" for ln in lines))


def test_plots_from_results_and_runs(tmp_path):
    csv_path = _synthetic_csv(tmp_path)
    runs = tmp_path / "runs"
    _run(runs, "aol_xs", "convnet_xs_aol", epochs=2, done=2, cert=0.55)
    _run(runs, "sll_xs_unfinished", "convnet_xs_sll", epochs=3, done=1, cert=0.9)
    accs, notes = collect_accuracies(runs, registry=False)
    assert set(accs) == {("convnet_xs_aol", "cifar10")} and accs[("convnet_xs_aol", "cifar10")].certified == 0.55
    assert any("unfinished" in n and "sll_xs_unfinished" in n for n in notes)

    out = make_plots(csv_path, runs_dir=runs, out_dir=tmp_path / "png", size="xs", registry=False)
    assert out["pareto"]["dataset"] == "cifar10"  # the data set of the measured runs
    for kind in ("radar", "pareto"):
        data = open(out[kind]["path"], "rb").read()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    assert os.path.basename(out["radar"]["path"]) == "radar-cpu-xs.png"
    assert out["radar"]["layers"] == ["aol", "sll", "lot"]  # standard is not drawn
    assert out["radar"]["not_measured"]["certified"] == ["sll", "lot"]
    assert "train_images_per_s" not in out["radar"]["not_measured"]
    p = out["pareto"]
    assert p["points"] == 5 and p["measured"] == 1  # 3 at xs + 2 at s (s-lot ran out of memory)
    assert p["pareto_front"] == ["convnet_xs_aol"] and NOT_MEASURED not in p["title"]
    assert not [f for f in os.listdir(tmp_path / "png") if f.endswith(".tmp")]


def test_plots_say_not_measured_yet(tmp_path):
    csv_path = _synthetic_csv(tmp_path)
    out = make_plots(csv_path, runs_dir=tmp_path / "no-runs", out_dir=tmp_path, registry=False)
    assert out["radar"]["size"] == "xs"  # the size with the most measured layers
    assert all(NOT_MEASURED in label for label in out["radar"]["axes"][:2])
    assert not any(NOT_MEASURED in label for label in out["radar"]["axes"][2:])  # speed/memory still drawn
    assert out["pareto"]["measured"] == 0 and f"certified accuracy: {NOT_MEASURED}" in out["pareto"]["title"]
    for kind in ("radar", "pareto"):
        assert open(out[kind]["path"], "rb").read().startswith(PNG_MAGIC)


def test_plot_errors(tmp_path):
    csv_path = _synthetic_csv(tmp_path)
    with pytest.raises(PlotError, match="no epoch times for 'tiny_imagenet'"):
        make_plots(csv_path, runs_dir=None, out_dir=tmp_path, dataset="tiny_imagenet", registry=False)
    with pytest.raises(PlotError, match="unknown data set"):
        make_plots(csv_path, runs_dir=None, out_dir=tmp_path, dataset="imagenet", registry=False)
    with pytest.raises(PlotError, match="size 'm'"):
        make_plots(csv_path, runs_dir=None, out_dir=tmp_path, size="m", registry=False)


def test_cli_plot(tmp_path):
    _synthetic_csv(tmp_path)
    res = CliRunner().invoke(main, ["plot", "--results", str(tmp_path / "results"), "--runs", str(tmp_path / "none"),
                                    "--layer", "aol,sll,lot", "--json"])  # the three layers the file covers
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["bench"].endswith(".csv") and os.path.isfile(out["radar"]["path"]) and os.path.isfile(out["pareto"]["path"])
    # the bundled models of the charts' data set, their learning curves against training time
    assert out["curves"]["dataset"] == out["pareto"]["dataset"] and os.path.isfile(out["curves"]["path"])
    res = CliRunner().invoke(main, ["plot", "--results", str(tmp_path / "results"), "--runs", str(tmp_path / "none"),
                                    "--layer", "aol,sll,lot", "--dataset", "cifar10", "--json"])
    out = json.loads(res.output)  # no bundled cifar10 model: no learning-curve picture, and the notes say why
    assert res.exit_code == 0 and out["curves"] is None and any("no learning-curve picture" in n for n in out["notes"])
    res = CliRunner().invoke(main, ["plot", "--results", str(tmp_path / "empty")])
    assert res.exit_code == 1 and "lipzoo bench" in res.output


def test_undertrained_registry_entries_are_not_drawn_as_layer_results(monkeypatch):
    from dataclasses import replace

    from lipzoo.registry import PRETRAINED

    name = next(iter(PRETRAINED))
    fine = replace(PRETRAINED[name], status=None)
    monkeypatch.setitem(PRETRAINED, name, fine)
    accs, _ = collect_accuracies(None)
    assert (fine.architecture, fine.dataset) in accs
    monkeypatch.setitem(PRETRAINED, name, replace(fine, status="undertrained"))
    accs, notes = collect_accuracies(None)
    assert (fine.architecture, fine.dataset) not in accs or accs[(fine.architecture, fine.dataset)].source != f"registry {name}"
    assert any(name in n and "undertrained" in n for n in notes)
