"""Certificates: float64 margins, the round-off slack, L >= 1, and the audited bound in the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner

import lipzoo
from lipzoo.certify import ROUNDOFF_SLACK, certified_radius, certify, margins
from lipzoo.cli import main as cli


def test_margins_are_float64_and_subtract_the_slack():
    z = torch.tensor([[2.0, 1.0, 0.5], [0.0, 3.0, 1.0]])
    y = torch.tensor([0, 0])
    m = margins(z, y)
    assert m.dtype == torch.float64
    assert math.isclose(float(m[0]), 1.0 - ROUNDOFF_SLACK * 2.0 - 1e-6, rel_tol=1e-12)
    assert float(m[1]) < 0  # misclassified
    r = certified_radius(z, y, lipschitz=2.0)
    assert math.isclose(float(r[0]), float(m[0]) / (math.sqrt(2) * 2.0)) and float(r[1]) == 0.0


def test_certify_counts_and_never_assumes_less_than_one():
    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return x.flatten(1)[:, :3]

    x = torch.tensor([[[[1.0, 0.0, 0.0]]], [[[0.0, 0.3, 0.0]]], [[[0.0, 0.0, 1.0]]]])
    y = torch.tensor([0, 1, 0])
    res = certify(Fixed(), x, y, eps=(0.1, 0.5), lipschitz=0.5)
    assert res.lipschitz == 1.0  # a bound below 1 is never used
    assert res.clean_accuracy == pytest.approx(2 / 3)
    # sample 0: margin 1 -> radius ~0.707; sample 1: margin 0.3 -> radius ~0.212
    assert res.certified_accuracy == {0.1: pytest.approx(2 / 3), 0.5: pytest.approx(1 / 3)}
    assert certify(Fixed(), x, y, eps=(0.5,), lipschitz=2.0).certified_accuracy[0.5] == 0.0
    with pytest.raises(ValueError, match="lipschitz"):
        certify(Fixed(), x, y, lipschitz=float("nan"))
    with pytest.raises(ValueError, match="labels"):
        certify(Fixed(), x, y[:2])


def test_cli_certifies_with_the_audited_bound():
    res = CliRunner().invoke(cli, ["certify", "convnet_xs_standard", "--limit", "16", "--json"])
    if "not found" in res.output:
        pytest.skip("real Fashion-MNIST not installed")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output[res.output.index("{"):])
    assert out["lipschitz_bound"] > 1.0  # the unconstrained model is certified with its proven (large) bound
    assert lipzoo.audit(lipzoo.create_model("convnet_xs_aol", in_chans=1), lower=False).upper <= 1 + 1e-4


class _Slice(torch.nn.Module):
    """Logits = the first three pixels (a 1-Lipschitz map), with the model's class count."""

    num_classes = 3

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return x.flatten(1)[:, :3] + 0 * self.p


def _batch():
    return torch.tensor([[[[1.0, 0.0, 0.0]]], [[[0.0, 0.3, 0.0]]], [[[0.0, 0.0, 1.0]]]]), torch.tensor([0, 1, 2])


@pytest.mark.parametrize("labels, match", [
    (torch.tensor([0.0, 1.0, 2.0]), "integer"),
    (torch.tensor([True, False, True]), "integer"),
    (torch.tensor([0, 1, 3]), r"\[0, 3\)"),
    (torch.tensor([0, -1, 2]), r"\[0, 3\)"),
    (torch.tensor([[0], [1], [2]]), "1-D"),
])
def test_certify_rejects_bad_labels(labels, match):
    x, _ = _batch()
    with pytest.raises(ValueError, match=match):
        certify(_Slice(), x, labels, eps=(0.1,))


def test_labels_beyond_the_logits_are_rejected_without_a_num_classes_attribute():
    z = torch.tensor([[2.0, 1.0, 0.5]])
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        margins(z, torch.tensor([3]))
    with pytest.raises(ValueError, match="integer"):
        certified_radius(z, torch.tensor([0.0]))


@pytest.mark.parametrize("eps", [-0.1, float("nan"), float("inf"), (0.1, -1.0), "0.1"])
def test_certify_rejects_bad_eps(eps):
    x, y = _batch()
    with pytest.raises(ValueError, match="eps"):
        certify(_Slice(), x, y, eps=eps)


def test_certify_accepts_a_single_radius():
    x, y = _batch()
    assert set(certify(_Slice(), x, y, eps=0.1, lipschitz=1.0).certified_accuracy) == {0.1}


@pytest.mark.parametrize("lip", [0.0, -1.0, float("inf"), float("-inf"), "1"])
def test_certify_rejects_bad_lipschitz(lip):
    x, y = _batch()
    with pytest.raises(ValueError, match="lipschitz"):
        certify(_Slice(), x, y, lipschitz=lip)


@pytest.mark.parametrize("scale, shift", [(255.0, 0.0), (1.0, -0.5)])
def test_certify_rejects_images_outside_unit_range(scale, shift):
    x, y = _batch()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        certify(_Slice(), x * scale + shift, y)


def test_certify_rejects_batch_size_zero_and_pgd_negative_eps():
    from lipzoo.certify import pgd_attack

    x, y = _batch()
    with pytest.raises(ValueError, match="batch_size"):
        certify(_Slice(), x, y, batch_size=0)
    with pytest.raises(ValueError, match="eps"):
        pgd_attack(_Slice(), x, y, -0.5)


def test_nan_images_are_left_to_the_models_own_check():
    model = lipzoo.create_model("convnet_xs_aol", in_chans=1)
    x = torch.rand(2, 1, 32, 32)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(lipzoo.InputError, match="NaN"):
        certify(model, x, torch.tensor([0, 1]))


# --- the bound and the float64 network ------------------------------------------------------------
def _tiny(layer: str = "aol", seed: int = 0):
    import lipzoo

    torch.manual_seed(seed)
    return lipzoo.create_model(f"convnet_xs_{layer}", num_classes=10, in_chans=1).eval()


def test_certify_uses_the_bound_audited_here_for_the_float64_network_and_says_so():
    from lipzoo.audit import audit

    model = _tiny("standard")  # unconstrained: its audited bound is far above 1
    x, y = torch.rand(16, 1, 32, 32), torch.randint(0, 10, (16,))
    res = certify(model, x, y)
    proven = float(audit(model, lower=False).upper)
    assert res.precision == "float64" and res.bound.audited == proven > 1
    assert res.lipschitz == proven and "audited on this machine" in res.bound.reason
    assert res.as_dict()["lipschitz_audited"] == proven
    with pytest.raises(ValueError, match="below the bound proven"):
        certify(model, x, y, lipschitz=proven / 2)  # a smaller L would give unsound certificates
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is left as it was


def test_a_lipschitz_model_is_certified_with_at_least_one():
    model = _tiny("aol")
    x, y = torch.rand(8, 1, 32, 32), torch.randint(0, 10, (8,))
    res = certify(model, x, y)
    assert res.lipschitz == 1.0 and res.bound.audited <= 1 + 1e-4
    assert certify(model, x, y, lipschitz=3.0).lipschitz == 3.0


def test_float64_round_off_is_far_below_the_slack():
    """Two evaluation orders of the float64 network differ by round-off only: far below the slack."""
    from lipzoo.certify import ROUNDOFF_SLACK, as_float64

    for layer in ("cayley", "lot", "soc"):
        m64 = as_float64(_tiny(layer))
        x = torch.rand(6, 1, 32, 32, dtype=torch.float64)
        with torch.no_grad():
            batched = m64(x)
            single = torch.cat([m64(x[i : i + 1]) for i in range(len(x))])
        scale = batched.abs().amax(dim=1)
        assert float(((batched - single).abs().amax(dim=1) / scale).max()) < 1e-3 * ROUNDOFF_SLACK, layer


def test_a_model_the_audit_cannot_analyse_needs_a_given_bound():
    x, y = _batch()
    with pytest.raises(ValueError, match="cannot audit _Slice.*pass lipschitz="):
        certify(_Slice(), x, y)
    res = certify(_Slice(), x, y, lipschitz=2.0)
    assert res.lipschitz == 2.0 and "not audited" in res.bound.reason


def test_radius_key_and_label_are_the_stored_forms():
    from lipzoo.radius import Radius

    # the keys of every result file and card: they must never change
    assert [Radius(e).key for e in lipzoo.DEFAULT_EPS] == ["0.141176", "0.282353", "0.423529", "1"]
    assert [Radius.parse(k).label for k in ("0.141176", "0.282353", "0.423529", "1")] == \
        ["36/255", "72/255", "108/255", "1"]
    assert Radius.of_steps(36) == Radius(36 / 255) and Radius.of_steps(36).label == "36/255"
    assert Radius.parse("0.141176").key == "0.141176"  # a key reads back to itself
    assert [Radius(e).label for e in (0.0, 0.5, 0.123456, 1 / 255)] == ["0", "0.5", "0.1235", "1/255"]
    assert Radius.keyed({36 / 255: 0.5, 1.0: 0.1}) == {"0.141176": 0.5, "1": 0.1}
    assert Radius.items({"1": 0.1, "0.141176": 0.5}) == [(Radius.parse("0.141176"), 0.5), (Radius(1.0), 0.1)]
    with pytest.raises(ValueError):
        Radius.parse("clean")


def test_the_certifying_bound_is_never_below_one():
    from lipzoo.certify import certifying_bound

    assert certifying_bound(0.86) == 1.0 and certifying_bound(1.0) == 1.0 and certifying_bound(45.5) == 45.5
