"""Sound l2 robustness certificates for Lipschitz classifiers.

For a model whose logits are L-Lipschitz in l2, the difference of two logits is
sqrt(2) * L-Lipschitz, so a prediction whose top-two margin exceeds sqrt(2) * L * eps cannot be
changed by any perturbation of l2 norm <= eps. Margins are taken in float64 from the model's
float32 logits; a relative slack (``ROUNDOFF_SLACK`` times the largest logit magnitude, plus
an absolute 1e-6) is subtracted from every margin to absorb the float32 round-off of the
forward pass, so a certificate is never granted on a margin that round-off could create.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

__all__ = ["DEFAULT_EPS", "eps_key", "CertificationResult", "certify", "margins", "certified_radius", "pgd_attack", "empirical_robust_accuracy"]

#: the paper's radii: 36/255, 72/255, 108/255 and 1.0 (exact fractions, not the paper's rounded decimals)
DEFAULT_EPS: tuple[float, ...] = (36 / 255, 72 / 255, 108 / 255, 1.0)
#: relative round-off slack of the float32 forward pass, applied to every margin
ROUNDOFF_SLACK = 1e-5


def eps_key(eps: float) -> str:
    """The one string form of a radius used as a key in every result file (``36/255`` -> ``'0.141176'``)."""
    return f"{float(eps):.6g}"


def margins(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Signed margin in float64: true logit minus the best other logit, minus the round-off slack."""
    z = logits.detach().double()
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError(f"logits must be (N, classes) with at least 2 classes, got {tuple(z.shape)}")
    labels = labels.to(z.device).long()
    true = z.gather(1, labels[:, None])[:, 0]
    other = z.scatter(1, labels[:, None], float("-inf")).max(dim=1).values
    slack = ROUNDOFF_SLACK * z.abs().amax(dim=1) + 1e-6
    return true - other - slack


def certified_radius(logits: torch.Tensor, labels: torch.Tensor, lipschitz: float = 1.0) -> torch.Tensor:
    """Per-sample certified l2 radius (0 for misclassified points)."""
    return (margins(logits, labels) / (math.sqrt(2) * lipschitz)).clamp_min(0.0)


@dataclass
class CertificationResult:
    n: int
    lipschitz: float
    clean_accuracy: float
    certified_accuracy: dict[float, float]
    radii: torch.Tensor = field(repr=False)
    predictions: torch.Tensor = field(repr=False)

    def as_dict(self) -> dict:
        return {
            "n": self.n,
            "lipschitz_bound": self.lipschitz,
            "clean_accuracy": self.clean_accuracy,
            "certified_accuracy": {f"{e:.6g}": a for e, a in self.certified_accuracy.items()},
            "median_radius": float(self.radii.median()) if self.n else 0.0,
        }

    def table(self) -> str:
        rows = [f"{'eps':>12} | {'accuracy':>9}", "-" * 25, f"{'clean':>12} | {100 * self.clean_accuracy:8.2f}%"]
        for e, a in self.certified_accuracy.items():
            label = f"{round(e * 255)}/255" if abs(e * 255 - round(e * 255)) < 1e-9 else f"{e:.4g}"
            rows.append(f"{label:>12} | {100 * a:8.2f}%")
        rows.append(f"(n={self.n}, Lipschitz bound L={self.lipschitz:.6g}, certified when margin > sqrt(2)*L*eps)")
        return "\n".join(rows)


@torch.no_grad()
def certify(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: tuple[float, ...] | list[float] = DEFAULT_EPS,
    *,
    lipschitz: float = 1.0,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> CertificationResult:
    """Clean and certified accuracy of ``model`` on ``(images, labels)`` at each radius in ``eps``.

    ``lipschitz`` is the model's proven Lipschitz bound L; values below 1 are raised to 1 (an
    audit may prove less, but certification never assumes a better constant than 1).
    """
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if not math.isfinite(lipschitz) or lipschitz <= 0:
        raise ValueError(f"lipschitz must be a positive finite bound, got {lipschitz}")
    lip = max(1.0, float(lipschitz))
    if device is None:
        device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    radii, preds = [], []
    it = range(0, len(images), batch_size)
    for start in tqdm(it, desc="certify", unit="batch", disable=not progress):
        x = images[start : start + batch_size].to(device)
        y = labels[start : start + batch_size].to(device)
        z = model(x)
        radii.append(certified_radius(z, y, lip).cpu())
        preds.append(z.argmax(dim=1).cpu())
    model.train(was_training)
    r = torch.cat(radii) if radii else torch.zeros(0, dtype=torch.float64)
    p = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)
    n = len(r)
    clean = float((p == labels.cpu()).double().mean()) if n else 0.0
    cert = {float(e): float((r > e).double().mean()) if n else 0.0 for e in eps}
    return CertificationResult(n=n, lipschitz=lip, clean_accuracy=clean, certified_accuracy=cert, radii=r, predictions=p)


def pgd_attack(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    *,
    steps: int = 20,
    step_size: float | None = None,
    clamp: tuple[float, float] | None = (0.0, 1.0),
) -> torch.Tensor:
    """l2 projected gradient ascent on the margin loss; returns perturbed images with ||x' - x|| <= eps.

    An empirical attack (a lower bound on robustness): it must never flip a certified point.
    Model parameters are not updated; eval mode is used.
    """
    if eps <= 0:
        return images.clone()
    step_size = 2.5 * eps / steps if step_size is None else step_size
    was_training = model.training
    model.eval()
    flat = lambda t: t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.ndim - 1)))  # noqa: E731
    delta = torch.zeros_like(images)
    for _ in range(steps):
        delta.requires_grad_(True)
        z = model(images + delta)
        true = z.gather(1, labels[:, None])[:, 0]
        other = z.scatter(1, labels[:, None], float("-inf")).max(dim=1).values
        loss = (other - true).sum()
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta = delta + step_size * grad / flat(grad)
            delta = delta * torch.clamp(eps / flat(delta), max=1.0)
            if clamp is not None:
                delta = (images + delta).clamp(*clamp) - images
    model.train(was_training)
    return (images + delta).detach()


def empirical_robust_accuracy(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: tuple[float, ...] | list[float] = DEFAULT_EPS,
    *, steps: int = 20, batch_size: int = 256, progress: bool = False,
) -> dict[float, float]:
    """Accuracy under the l2 PGD attack at each radius (an upper bound on true robust accuracy)."""
    device = next(model.parameters()).device
    correct = {float(e): 0 for e in eps}
    req = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():  # input gradients only: keeps the eval weight caches warm
        p.requires_grad_(False)
    try:
        for start in tqdm(range(0, len(images), batch_size), desc="attack", unit="batch", disable=not progress):
            x = images[start : start + batch_size].to(device)
            y = labels[start : start + batch_size].to(device)
            for e in eps:
                adv = pgd_attack(model, x, y, float(e), steps=steps)
                with torch.no_grad():
                    correct[float(e)] += int((model(adv).argmax(1) == y).sum())
    finally:
        for p, r in zip(model.parameters(), req):
            p.requires_grad_(r)
    n = max(len(images), 1)
    return {e: c / n for e, c in correct.items()}
