"""The paper's checkpoints: conversion (golden logits, strictness), the release table, the importer.

The golden files (../shared/golden/1llc/xs_<layer>.safetensors) hold the paper's own state dicts
and eval logits; they are read in place, never copied. The importer is tested against a local
HTTP server on 127.0.0.1 only.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import threading
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import lipzoo
from lipzoo.cli import main
from lipzoo.zoo.convert import (
    DEFAULT_URL_BASE,
    PAPER_LAYERS,
    PAPER_RELEASES,
    ConversionError,
    ImportError1LLC,
    import_1llc,
    url_base,
)
from lipzoo.data import dataset_info

GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "golden" / "1llc"
needs_golden = pytest.mark.skipif(not GOLDEN.is_dir(), reason=f"golden vectors not found at {GOLDEN} (shared/golden is absent)")
MEAN = torch.tensor(dataset_info("cifar10").mean).view(1, 3, 1, 1)


@functools.lru_cache(maxsize=None)
def golden(layer: str) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """(the paper's state dict, its centred input, its logits) of the XS model of ``layer``."""
    from safetensors.torch import load_file

    data = load_file(str(GOLDEN / f"xs_{layer}.safetensors"))
    state = {k.removeprefix("state_dict."): v for k, v in data.items() if k.startswith("state_dict.")}
    return state, data["input"], data["output"]


def assert_logits(out: torch.Tensor, ref: torch.Tensor) -> None:
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def paper_format(model: torch.nn.Module, layer: str) -> dict[str, torch.Tensor]:
    """A lipzoo model's state dict written the paper's way (parametrization keys)."""
    state = model.state_dict()
    renamed = {"aol": lambda k: k.endswith(".weight"), "bcop": lambda k: k == "ClassificationHead.1.weight"}
    rule = renamed.get(layer, lambda k: False)
    return {(k[: -len("weight")] + "parametrizations.weight.original" if rule(k) else k): v.clone()
            for k, v in state.items()}


# --- golden logits: the one golden test path of the seven paper layers ------------------------------
@needs_golden
@pytest.mark.parametrize("layer", list(PAPER_LAYERS))
def test_golden_logits_after_conversion(layer):
    state, centred, ref = golden(layer)
    model = lipzoo.load_1llc_model(state, layer, "xs")  # the centring is built in: takes [0, 1] images
    assert not model.training and isinstance(model[0], lipzoo.layers.structural.Centering)
    with torch.no_grad():
        out = model(centred + MEAN)
    assert_logits(out, ref)


@needs_golden
@pytest.mark.parametrize("layer", ["cayley", "lot", "sll"])
def test_golden_logits_in_the_default_mode_where_it_is_the_papers_function(layer):
    """For these layers lipzoo's sound default computes the paper's function (a different code path for LOT)."""
    state, centred, ref = golden(layer)
    model = lipzoo.load_1llc_model(state, layer, "xs", paper_compatible=False)
    with torch.no_grad():
        assert_logits(model(centred[:4] + MEAN), ref[:4])


@needs_golden
@pytest.mark.parametrize("layer", ["cpl", "soc"])
def test_sound_mode_drops_the_power_iteration_state(layer):
    state, _, _ = golden(layer)
    converted = lipzoo.convert_1llc_state_dict(state, layer, "xs", paper_compatible=False)
    sound = lipzoo.create_model(f"convnet_xs_{layer}")
    assert list(converted) == list(sound.state_dict())
    assert len(converted) < len(state)
    sound.load_state_dict(converted, strict=True)
    # the trained parameters themselves are carried over unchanged
    key = "Block1.0.kernel" if layer == "cpl" else "Block1.0.random_conv_filter"
    assert torch.equal(converted[key], state[key])


# --- Cayley's lazily created alpha ------------------------------------------------------------------
def test_missing_cayley_alphas_are_recreated_as_the_paper_would():
    """A state dict saved before the first forward has no conv alphas; they become ||W_hat||_F at
    each layer's input size, exactly what lipzoo's CayleyConv2d gives a fresh layer."""
    torch.manual_seed(0)
    fresh = lipzoo.create_model("convnet_xs_cayley", paper_compatible=True)
    state = fresh.state_dict()
    conv_alphas = [k for k in state if k.endswith(".alpha") and not k.startswith("ClassificationHead")]
    assert len(conv_alphas) == 26
    lazy = {k: v for k, v in state.items() if k not in conv_alphas}
    converted = lipzoo.convert_1llc_state_dict(lazy, "cayley", "xs")
    for k in conv_alphas:
        torch.testing.assert_close(converted[k], state[k], rtol=1e-6, atol=0)
    first = next(m for m in fresh.modules() if isinstance(m, lipzoo.layers.cayley.CayleyConv2d))
    initial_alpha = lipzoo.layers.cayley.initial_alpha  # the one function the layer and the converter share
    assert initial_alpha(first.weight, first.input_size).item() == first.alpha.item()
    assert torch.equal(initial_alpha(first.weight, 8), initial_alpha(first.weight, (8, 8)))
    with pytest.raises(ValueError, match=r"conv kernel tensor \(out, in, k, k\), got \(3, 3\)"):
        lipzoo.layers.cayley.initial_alpha(torch.zeros(3, 3), 32)
    # the head's alpha is created at construction in the paper too: missing means a broken file
    with pytest.raises(ConversionError, match=r"missing key\(s\).*ClassificationHead\.1\.alpha"):
        lipzoo.convert_1llc_state_dict({k: v for k, v in lazy.items() if k != "ClassificationHead.1.alpha"},
                                       "cayley", "xs")


# --- strictness -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def aol_paper_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return paper_format(lipzoo.create_model("convnet_xs_aol"), "aol")


def test_parametrization_keys_round_trip(aol_paper_state):
    assert "FirstConv.parametrizations.weight.original" in aol_paper_state
    converted = lipzoo.convert_1llc_state_dict(aol_paper_state, "aol", "xs")
    assert torch.equal(converted["FirstConv.weight"], aol_paper_state["FirstConv.parametrizations.weight.original"])
    assert all(v.is_contiguous() for v in converted.values())
    converted["FirstConv.weight"].add_(1)  # fresh tensors: the input is not aliased
    assert not torch.equal(converted["FirstConv.weight"], aol_paper_state["FirstConv.parametrizations.weight.original"])


def test_extra_key_is_named(aol_paper_state):
    bad = dict(aol_paper_state, **{"Block1.0.extra_buffer": torch.zeros(3)})
    with pytest.raises(ConversionError, match=r"1 unexpected key\(s\).*Block1\.0\.extra_buffer"):
        lipzoo.convert_1llc_state_dict(bad, "aol", "xs")


def test_missing_key_is_named(aol_paper_state):
    bad = {k: v for k, v in aol_paper_state.items() if k != "Block2.4.bias"}
    with pytest.raises(ConversionError, match=r"1 missing key\(s\).*Block2\.4\.bias"):
        lipzoo.convert_1llc_state_dict(bad, "aol", "xs")


def test_wrong_shape_and_wrong_size_are_named(aol_paper_state):
    bad = dict(aol_paper_state, **{"Block1.0.bias": torch.zeros(17)})
    with pytest.raises(ConversionError, match=r"shape mismatch.*Block1\.0\.bias \(17,\) \(lipzoo expects \(16,\)\)"):
        lipzoo.convert_1llc_state_dict(bad, "aol", "xs")
    with pytest.raises(ConversionError, match="ConvNetS AOLConv2d"):  # an XS file read as S: every width differs
        lipzoo.convert_1llc_state_dict(aol_paper_state, "aol", "s")


def test_bad_arguments(aol_paper_state):
    with pytest.raises(ConversionError, match="expected one of aol, bcop"):
        lipzoo.convert_1llc_state_dict(aol_paper_state, "sandwich", "xs")
    with pytest.raises(ConversionError, match="unknown size"):
        lipzoo.convert_1llc_state_dict(aol_paper_state, "aol", "xxl")
    with pytest.raises(ConversionError, match="not .name -> tensor.*epoch"):
        lipzoo.convert_1llc_state_dict(dict(aol_paper_state, epoch=3), "aol", "xs")
    with pytest.raises(ConversionError, match="size, layer and dataset must be the checkpoint.s"):  # CIFAR-100 has a 100-way head: same keys
        lipzoo.convert_1llc_state_dict(dict(aol_paper_state, extra=torch.zeros(1)), "aol", "xs", "cifar100")


# --- the release table ---------------------------------------------------------------------------------
def test_release_table():
    assert len(PAPER_RELEASES) == 21
    assert {(r.size, r.layer) for r in PAPER_RELEASES.values()} == {(s, la) for s in ("xs", "s", "m") for la in PAPER_LAYERS}
    for name, r in PAPER_RELEASES.items():
        assert name == f"convnet_{r.size}_{r.layer}.cifar10_1llc" and r.architecture in lipzoo.list_models()
        rep = r.reported
        assert rep["label"] == "reported by the authors" and rep["run"] == r.run_id
        assert 0.7 <= rep["clean_accuracy"] < 0.8  # the best-available table: no diverged (10%) run
        cra = list(rep["certified_accuracy"].values())
        assert len(cra) == 4 and cra == sorted(cra, reverse=True) and cra[0] < rep["clean_accuracy"]
    r = PAPER_RELEASES["convnet_s_aol.cifar10_1llc"]
    assert r.url() == f"{DEFAULT_URL_BASE}/CIFAR10_final_training_24h_ConvNetS_AOLConv2d.pth"
    reruns = {n: r.run_id for n, r in PAPER_RELEASES.items() if r.run_id.startswith(("20230913", "20230918", "20230904"))}
    assert reruns == {"convnet_s_cpl.cifar10_1llc": "20230913_221656.2eps", "convnet_s_sll.cifar10_1llc": "20230918_082800.0eps2",
                      "convnet_m_sll.cifar10_1llc": "20230918_082800.1eps2", "convnet_m_lot.cifar10_1llc": "20230904_102819.5"}
    assert PAPER_RELEASES["convnet_m_soc.cifar10_1llc"].reported["certified_accuracy"]["0.141176"] == 0.663


def test_url_base_from_environment(monkeypatch):
    monkeypatch.setenv("LIPZOO_1LLC_URL", "http://127.0.0.1:1/mirror/")
    assert url_base() == "http://127.0.0.1:1/mirror"
    assert PAPER_RELEASES["convnet_xs_lot.cifar10_1llc"].url().startswith("http://127.0.0.1:1/mirror/CIFAR10_")


# --- the importer, against a server on 127.0.0.1 ---------------------------------------------------------
class _Files(http.server.BaseHTTPRequestHandler):
    files: dict[str, tuple[bytes, int]] = {}  # path -> (body, announced Content-Length)

    def do_GET(self):  # noqa: N802
        name = self.path.rsplit("/", 1)[-1]
        if name not in self.files:
            self.send_error(404, "Not Found")
            return
        body, length = self.files[name]
        self.send_response(200)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    handler = type("Handler", (_Files,), {"files": {}})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/weights", handler.files
    finally:
        httpd.shutdown()
        httpd.server_close()


def pth_bytes(obj, tmp_path: Path) -> bytes:
    p = tmp_path / "obj.pth"
    torch.save(obj, p)
    return p.read_bytes()


def serve_golden(files: dict, layer: str, tmp_path: Path):
    """Serve the paper's XS ``layer`` state dict as its release file; returns (release, served bytes)."""
    rel = PAPER_RELEASES[f"convnet_xs_{layer}.cifar10_1llc"]
    body = pth_bytes(golden(layer)[0], tmp_path)
    files[rel.filename] = (body, len(body))
    return rel, body


def only_final_files(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*")) if out.exists() else []


@needs_golden
def test_import_writes_a_verified_model_folder(server, tmp_path, capsys):
    base, files = server
    state, centred, ref = golden("sll")
    rel, body = serve_golden(files, "sll", tmp_path)
    out = tmp_path / "cards"
    (done,) = import_1llc([rel.name], out=out, base_url=base, progress=False, audit=False)  # the AOL test audits
    sha = hashlib.sha256(body).hexdigest()
    assert done.source_sha256 == sha and done.trusted_on_first_use and done.lipschitz_upper is None
    assert f"trusting {rel.filename} on first use: sha256 {sha}" in capsys.readouterr().out
    assert only_final_files(out) == [rel.name, f"{rel.name}/README.md", f"{rel.name}/config.json",
                                     f"{rel.name}/model.safetensors"]  # no pickle, no temporary left
    cfg = json.loads((out / rel.name / "config.json").read_text())
    assert cfg["provenance"]["source_sha256"] == sha and cfg["provenance"]["source_url"] == f"{base}/{rel.filename}"
    assert cfg["metrics"]["reported"]["label"] == "reported by the authors" and "audit" not in cfg["metrics"]
    assert cfg["layer_kwargs"] == {"paper_compatible": True} and cfg["recipe"] is None
    card = (out / rel.name / "README.md").read_text()
    assert "### Reported by the authors" in card and f"| run id | `{rel.run_id}` |" in card
    assert "Not audited yet" in card and "lipzoo train" not in card and "recipes/" not in card
    assert f"run `{rel.run_id}`, not by lipzoo" in card and sha in card
    model = lipzoo.create_model(rel.name, weights=out / rel.name)  # sha256-verified strict load, [0, 1] inputs
    with torch.no_grad():
        assert_logits(model(centred + MEAN), ref)

    # a second import checks the recorded hash; a changed file is refused and nothing is touched
    import_1llc([rel.name], out=out, base_url=base, progress=False, audit=False)
    assert "matches the recorded hash" in capsys.readouterr().out
    before = (out / rel.name / "model.safetensors").read_bytes()
    changed = dict(state, **{"Block1.0.bias": state["Block1.0.bias"] + 1})
    body2 = pth_bytes(changed, tmp_path)
    files[rel.filename] = (body2, len(body2))
    with pytest.raises(ImportError1LLC, match="the release file changed"):
        import_1llc([rel.name], out=out, base_url=base, progress=False, audit=False)
    assert (out / rel.name / "model.safetensors").read_bytes() == before
    assert json.loads((out / rel.name / "config.json").read_text())["provenance"]["source_sha256"] == sha
    assert len(only_final_files(out)) == 4
    import_1llc([rel.name], out=out, base_url=base, progress=False, force=True, audit=False)
    prov = json.loads((out / rel.name / "config.json").read_text())["provenance"]
    assert prov["source_sha256"] == hashlib.sha256(body2).hexdigest() and sha in prov["source_trust"]
    assert "accepted the CHANGED" in capsys.readouterr().out


@needs_golden
def test_reimport_replaces_the_model_folder_as_a_whole(server, tmp_path):
    """A re-import puts the complete new folder in place by renaming it, as publish does: nothing of
    the old folder survives beside the new files (a file-by-file move would leave a folder mixing
    the two, e.g. new weights with the old config.json, if it stopped half-way)."""
    base, files = server
    rel, _ = serve_golden(files, "sll", tmp_path)
    out = tmp_path / "cards"
    import_1llc([rel.name], out=out, base_url=base, progress=False, audit=False)
    (out / rel.name / "stale.txt").write_text("from the old folder")
    import_1llc([rel.name], out=out, base_url=base, progress=False, audit=False)
    assert only_final_files(out) == [rel.name, f"{rel.name}/README.md", f"{rel.name}/config.json",
                                     f"{rel.name}/model.safetensors"]  # no stale file, no temporary left
    lipzoo.create_model(rel.name, weights=out / rel.name)  # config.json and weights belong together


@needs_golden
@pytest.mark.parametrize("damage", ["not_json", "no_hash"])
def test_unreadable_recorded_config_is_refused_not_trusted_again(server, tmp_path, damage, capsys):
    base, files = server
    state, _, _ = golden("sll")
    rel, body = serve_golden(files, "sll", tmp_path)
    out = tmp_path / "cards"
    import_1llc([rel.name], out=out, base_url=base, progress=False, audit=False)
    cfg_path, weights = out / rel.name / "config.json", out / rel.name / "model.safetensors"
    if damage == "not_json":
        cfg_path.write_text('{"name": "truncated')
    else:
        cfg = json.loads(cfg_path.read_text())
        del cfg["provenance"]["source_sha256"]
        cfg_path.write_text(json.dumps(cfg))
    damaged, before = cfg_path.read_bytes(), weights.read_bytes()
    changed = pth_bytes(dict(state, **{"Block1.0.bias": state["Block1.0.bias"] + 1}), tmp_path)
    files[rel.filename] = (changed, len(changed))  # the release changed after the recorded hash was lost
    capsys.readouterr()
    with pytest.raises(ImportError1LLC, match="refusing to trust it again") as info:
        import_1llc([rel.name], out=out, base_url=base, progress=False, audit=False)
    assert str(cfg_path) in str(info.value) and "\n" not in str(info.value)
    assert cfg_path.read_bytes() == damaged and weights.read_bytes() == before  # nothing was written
    assert "on first use" not in capsys.readouterr().out
    res = CliRunner().invoke(main, ["import-1llc", rel.name, "--url-base", base, "--out", str(out), "--no-audit"])
    assert res.exit_code != 0 and "refusing to trust it again" in res.output
    # --force accepts the download, and says it could not be checked (not "first use")
    (done,) = import_1llc([rel.name], out=out, base_url=base, progress=False, audit=False, force=True)
    assert not done.trusted_on_first_use and done.source_sha256 == hashlib.sha256(changed).hexdigest()
    prov = json.loads(cfg_path.read_text())["provenance"]
    assert prov["source_sha256"] == done.source_sha256 and "unreadable" in prov["source_trust"]


@needs_golden
def test_cli_import_json(server, tmp_path):
    base, files = server
    rel, body = serve_golden(files, "aol", tmp_path)
    out = tmp_path / "cards"
    res = CliRunner().invoke(main, ["import-1llc", "convnet_xs_aol*", "--url-base", base, "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    (row,) = json.loads(res.stdout)
    assert row["name"] == rel.name and row["source_sha256"] == hashlib.sha256(body).hexdigest()
    assert "on first use" in res.stderr
    entry = lipzoo.registry.PretrainedEntry.from_folder(out / rel.name)
    assert entry.name == rel.name
    # the import audited the converted model and stored the proven bound where the card reads it
    rec = entry.metrics["audit"]
    assert rec["lipschitz_upper"] == row["lipschitz_upper"] and rec["method"].startswith("lipzoo.audit upper bound")
    assert rec["lipzoo_version"] == lipzoo.__version__ and rec["input_shape"] == [3, 32, 32]
    model = lipzoo.create_model(rel.name, weights=out / rel.name)
    assert rec["lipschitz_upper"] == lipzoo.audit(model, lower=False).upper  # the bound of the weights as saved
    assert 0 < rec["lipschitz_upper"] <= 1 + 1e-4 and rec["upper_ok"]  # AOL: 1-Lipschitz, so no L sentence
    card = (out / rel.name / "README.md").read_text()
    assert f"L <= {rec['lipschitz_upper']:.6g}" in card and "not 1." not in card
    assert "audited Lipschitz upper bound L" in res.stderr
    # --no-audit skips it
    out2 = tmp_path / "cards2"
    res = CliRunner().invoke(main, ["import-1llc", rel.name, "--url-base", base, "--out", str(out2), "--no-audit", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)[0]["lipschitz_upper"] is None
    assert "audit" not in json.loads((out2 / rel.name / "config.json").read_text())["metrics"]


@pytest.mark.parametrize("case", ["404", "garbage", "truncated", "not_weights_only"])
def test_bad_downloads_give_clear_errors_and_leave_nothing(server, tmp_path, case):
    base, files = server
    rel = PAPER_RELEASES["convnet_xs_sll.cifar10_1llc"]
    good = pth_bytes({"Block1.0.bias": torch.zeros(16)}, tmp_path)
    if case == "garbage":
        files[rel.filename] = (b"this is not a checkpoint" * 10, 240)
    elif case == "truncated":
        files[rel.filename] = (good[:100], len(good))
    elif case == "not_weights_only":  # an arbitrary object: torch.load(weights_only=True) refuses it
        bad = pth_bytes({"state": torch.zeros(1), "cfg": http.server.HTTPStatus}, tmp_path)
        files[rel.filename] = (bad, len(bad))
    expected = {"404": "HTTP 404.*no such release file", "garbage": "not a readable PyTorch state dict",
                "truncated": "(incomplete|broke off)", "not_weights_only": "not a readable PyTorch state dict.*weights_only"}
    out = tmp_path / "cards"
    with pytest.raises(ImportError1LLC, match=expected[case]) as info:
        import_1llc([rel.name], out=out, base_url=base, progress=False)
    if case == "404":
        assert f"{base}/{rel.filename}" in str(info.value)
    assert only_final_files(out) == []


def test_wrong_contents_and_bad_names(server, tmp_path):
    base, files = server
    rel = PAPER_RELEASES["convnet_xs_sll.cifar10_1llc"]
    body = pth_bytes({"Block1.0.bias": torch.zeros(16)}, tmp_path)  # readable, but not the model's state dict
    files[rel.filename] = (body, len(body))
    out = tmp_path / "cards"
    with pytest.raises(ImportError1LLC, match=r"(?s)does not convert to convnet_xs_sll\.cifar10_1llc.*80 missing key"):
        import_1llc([rel.name], out=out, base_url=base, progress=False)
    assert only_final_files(out) == []
    with pytest.raises(ImportError1LLC, match="no release of the paper matches 'convnet_l_sll'"):
        import_1llc(["convnet_l_sll"], out=out, base_url=base)
    res = CliRunner().invoke(main, ["import-1llc", "--out", str(out)])
    assert res.exit_code != 0 and "--all" in res.output
