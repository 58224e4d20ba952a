"""lipzoo.zoo.interleave: the models of one size timed in turns (``lipzoo bench``'s default).

The schedule is checked with stand-in models whose calls advance a fake clock, so the order of
the calls and the effect of a machine that slows down halfway are exact; one real run checks the
wiring into ``bench_layers`` and the result file.
"""

import pytest
import torch

from lipzoo.zoo import interleave
from lipzoo.zoo.bench import bench_layers, read_results, save_results

STD, AOL, SOC = "convnet_xs_standard", "convnet_xs_aol", "convnet_xs_soc"
COST = {STD: 1.0, AOL: 2.0, SOC: 5.0}  # seconds per call at full machine speed, any phase


class FakeClock:
    """``perf_counter`` of a machine that runs at full speed until ``slow_after`` and ``slow_by`` times slower after."""

    def __init__(self, slow_after: float = float("inf"), slow_by: float = 1.0) -> None:
        self.now, self.slow_after, self.slow_by = 0.0, slow_after, slow_by

    def perf_counter(self) -> float:
        return self.now

    def work(self, seconds: float) -> None:
        self.now += seconds * (self.slow_by if self.now >= self.slow_after else 1.0)


@pytest.fixture
def fake(monkeypatch):
    """Stand-in builders: every call logs (model, phase) and costs COST[model] on the fake clock."""
    clock, log, fail = FakeClock(), [], {}

    def call(name, phase):
        def run():
            if fail.get((name, phase)):
                raise fail[(name, phase)]
            log.append((name, phase))
            clock.work(COST[name])
        return run

    def build_inference(name, x, in_chans, device, compile, precision):
        return name, call(name, "infer")

    def build_plain(model, x, device, precision):
        return call(model, "plain"), ""

    def build_training(name, x, in_chans, device, compile, precision):
        if fail.get((name, "build")):
            raise fail[(name, "build")]
        return call(name, "train"), 7, None

    for f in (build_inference, build_plain, build_training):
        monkeypatch.setattr(interleave, f.__name__, f)
    monkeypatch.setattr(interleave, "time", clock)
    return clock, log, fail


def run(names, **kw):
    args = dict(batch_size=2, device="cpu", in_chans=3, warmup=1, repeats=3, plain=True, max_seconds=None,
                progress=False) | kw
    return interleave.measure_interleaved(names, **args)


def test_every_round_times_every_model_once_in_a_rotating_order(fake):
    _, log, _ = fake
    out = run([STD, AOL, SOC])
    assert [ph for _, ph in log] == ["infer"] * 12 + ["plain"] * 12 + ["train"] * 12  # phases one after another
    rounds = [log[i:i + 3] for i in range(0, 36, 3)]
    assert all(sorted(n for n, _ in r) == sorted(COST) for r in rounds)  # each model once per round
    firsts = [r[0][0] for r in rounds[:4]]
    assert firsts == [STD, AOL, SOC, STD]  # the order rotates by one model per round
    for name, figures in out.items():
        assert figures["params"] == 7
        for key in ("infer_s", "plain_s", "train_s"):
            assert figures[key] == pytest.approx(COST[name])  # median of the timed calls only


def test_ratios_survive_a_machine_that_slows_down_halfway(fake):
    clock, _, _ = fake
    clock.slow_after, clock.slow_by = 50.0, 3.0  # the machine turns 3x slower during the inference phase
    out = run([STD, AOL, SOC], warmup=0, repeats=5, plain=False)
    for key in ("infer_s", "train_s"):
        assert out[AOL][key] / out[STD][key] == pytest.approx(2.0)
        assert out[SOC][key] / out[STD][key] == pytest.approx(5.0)


def test_a_failing_model_is_reported_and_the_others_are_still_timed(fake):
    _, log, fail = fake
    fail[(AOL, "build")] = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    fail[(SOC, "plain")] = RuntimeError("plain copy broke")
    out = run([STD, AOL, SOC])
    assert isinstance(out[AOL], torch.cuda.OutOfMemoryError) and isinstance(out[SOC], RuntimeError)
    assert out[STD]["train_s"] == pytest.approx(1.0)
    assert not [c for c in log if c[0] == AOL] and (SOC, "train") not in log  # out of the rotation


def test_a_model_over_its_time_budget_leaves_the_rotation(fake):
    _, log, _ = fake
    # SOC: 5 s per call, 4 per phase: its inference phase fits in 22 s (20 s), the first plain call
    # brings it to 25 s with 3 more to come: out. STD (1 s per call) is timed to the end.
    out = run([STD, SOC], max_seconds=22.0)
    assert isinstance(out[SOC], interleave.TooSlow) and "time limit" in str(out[SOC])
    assert out[STD]["train_s"] == pytest.approx(1.0)
    assert [ph for n, ph in log if n == SOC] == ["infer"] * 4 + ["plain"]


def test_models_of_different_input_sizes_are_refused():
    with pytest.raises(ValueError, match="one input size"):
        run([STD, "tconvnet_xs_standard"])


def test_bench_layers_interleaves_by_default_and_says_so_in_the_file(tmp_path):
    rows = bench_layers("aol", ("xs",), memory=False, plain=True, batch_size=2, warmup=0, repeats=2, progress=False)
    assert [r.model for r in rows] == [STD, AOL] and all(r.status == "ok" and r.interleaved for r in rows)
    assert rows[1].train_images_per_s == pytest.approx(2 / rows[1].train_batch_s)
    assert rows[1].ratios["train_images_per_s_vs_standard"] == pytest.approx(
        rows[1].train_images_per_s / rows[0].train_images_per_s)
    assert rows[1].plain_images_per_s > 0
    assert [r["interleaved"] for r in read_results(save_results(rows, tmp_path))] == [True, True]
    (seq,) = bench_layers("standard", ("xs",), memory=False, plain=False, interleave=False, batch_size=2, warmup=0,
                          repeats=1, progress=False)
    assert seq.interleaved is False


def test_bench_layers_reports_a_too_slow_model_in_its_row():
    (std,) = bench_layers("standard", ("xs",), memory=False, plain=False, batch_size=2, warmup=1, repeats=1,
                          max_seconds=1e-9, progress=False)
    assert std.status == "too_slow" and "max-seconds" in std.error and std.params > 0
