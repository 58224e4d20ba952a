"""Sound l2 robustness certificates for Lipschitz classifiers.

For a model whose logits are L-Lipschitz in l2, the difference of two logits is
sqrt(2) * L-Lipschitz, so a prediction whose top-two margin exceeds sqrt(2) * L * eps cannot be
changed by any perturbation of l2 norm <= eps.

What is certified is the network evaluated in float64 (by default: :func:`certify` materialises the
effective weights exactly as the model computes them and runs them in float64, see
:func:`as_float64`), with L the bound :func:`lipzoo.audit` proves for those weights ON THIS MACHINE (:func:`resolve_bound`; a smaller
given L is refused, and L is never below 1). The float64 forward pass leaves a round-off of about
1e-13 of the logit scale; a relative slack (``ROUNDOFF_SLACK`` times the largest logit magnitude,
plus an absolute 1e-6) is subtracted from every margin, orders of magnitude more than that, so a
certificate is never granted on a margin that round-off could create. (The same slack also covers
most of the float32 round-off of the deployed float32 network, but for float32 it is an
empirical margin, not a proof: use ``precision="float64"``, the default, for certificates.)
"""

from __future__ import annotations

import copy
import hashlib
import math
import numbers
from collections.abc import Callable, Iterable
from typing import Any
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from ._provenance import cpu_model
from .audit import audit
from .export import to_plain
from .radius import Radius

__all__ = ["DEFAULT_EPS", "Radius", "eps_key", "certifying_bound", "Bound", "resolve_bound", "as_float64", "CertificationResult", "certify", "margins", "certified_radius", "pgd_attack",
           "empirical_robust_accuracy", "check_eps", "check_labels", "check_lipschitz", "check_images_range"]

#: the paper's radii: 36/255, 72/255, 108/255 and 1.0 (exact fractions, not the paper's rounded decimals)
DEFAULT_EPS: tuple[float, ...] = (36 / 255, 72 / 255, 108 / 255, 1.0)
#: relative round-off slack of the float32 forward pass, applied to every margin
ROUNDOFF_SLACK = 1e-5


def eps_key(eps: float) -> str:
    """The key of a radius in every result file (``36/255`` -> ``'0.141176'``): ``Radius(eps).key``."""
    return Radius(eps).key


def certifying_bound(bound: float) -> float:
    """THE rule for the L a certificate divides by: a proven (or given) Lipschitz bound, never below 1.

    Every 1-Lipschitz layer can only shrink distances, but the audited bound of a network may
    come out below 1 (its layers are not tight); certificates still use at least 1."""
    return max(1.0, float(bound))


def check_labels(labels: torch.Tensor, num_classes: int | None = None, n: int | None = None) -> None:
    """Raise ``ValueError`` unless ``labels`` is a 1-D integer tensor of class indices in
    ``[0, num_classes)`` (and of length ``n`` when given)."""
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"labels must be a torch.Tensor of class indices, got {type(labels).__name__}")
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must be an integer tensor of class indices (e.g. torch.int64), got dtype "
                         f"{labels.dtype}; convert with labels.long() only if the values are whole class numbers")
    if labels.ndim != 1:
        raise ValueError(f"labels must be a 1-D tensor (N,) of class indices, got shape {tuple(labels.shape)}")
    if n is not None and len(labels) != n:
        raise ValueError(f"{n} images (or logits) but {len(labels)} labels; expected one label per image")
    if labels.numel():
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or (num_classes is not None and hi >= num_classes):
            want = f"[0, {num_classes})" if num_classes is not None else "non-negative"
            raise ValueError(f"labels must be class indices in {want}, got values from {lo} to {hi}")


def check_eps(eps: float | Iterable[float]) -> tuple[float, ...]:
    """The radii as a tuple of floats; ``ValueError`` unless each is a finite number >= 0."""
    if isinstance(eps, numbers.Real) or (isinstance(eps, torch.Tensor) and eps.ndim == 0):
        eps = (eps,)
    try:
        values = list(eps)
    except TypeError:
        raise ValueError(f"eps must be a radius or a sequence of radii (finite numbers >= 0), got "
                         f"{type(eps).__name__}") from None
    out = []
    for e in values:
        if isinstance(e, torch.Tensor) and e.numel() == 1:
            e = e.item()
        if isinstance(e, bool) or not isinstance(e, numbers.Real) or not math.isfinite(e) or e < 0:
            raise ValueError(f"every eps must be a finite number >= 0 (an l2 radius in [0, 1] pixel units), got {e!r}")
        out.append(float(e))
    return tuple(out)


def check_lipschitz(lipschitz: float) -> float:
    """``lipschitz`` as a float; ``ValueError`` unless it is a finite number > 0."""
    if isinstance(lipschitz, bool) or not isinstance(lipschitz, numbers.Real) or not math.isfinite(lipschitz) \
            or lipschitz <= 0:
        raise ValueError(f"lipschitz must be a positive finite bound (the model's proven Lipschitz constant), "
                         f"got {lipschitz!r}")
    return float(lipschitz)


def check_images_range(images: torch.Tensor) -> None:
    """Raise ``ValueError`` when floating-point ``images`` hold values outside [0, 1].

    Certified radii are l2 distances in [0, 1] pixel units, so images scaled to 0..255 (or
    already centred/normalised) would give meaningless certificates. Dtype, shape and NaN/Inf
    are left to the model's own input check.
    """
    if isinstance(images, torch.Tensor) and images.is_floating_point() and images.numel():
        finite = images[torch.isfinite(images)]
        if finite.numel() and (float(finite.min()) < 0.0 or float(finite.max()) > 1.0):
            hint = "; divide 0..255 images by 255" if float(finite.max()) > 1.0 else ""
            raise ValueError(f"images must have pixel values in [0, 1] (the model centres them itself), got values "
                             f"from {float(finite.min()):.4g} to {float(finite.max()):.4g}{hint}")


def _check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    return int(batch_size)


def margins(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Signed margin in float64: true logit minus the best other logit, minus the round-off slack.

    ``labels`` must be integer class indices in ``[0, logits.shape[1])``, one per row (else ``ValueError``).
    """
    z = logits.detach().double()
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError(f"logits must be (N, classes) with at least 2 classes, got {tuple(z.shape)}")
    check_labels(labels, z.shape[1], len(z))
    labels = labels.to(z.device).long()
    true = z.gather(1, labels[:, None])[:, 0]
    other = z.scatter(1, labels[:, None], float("-inf")).max(dim=1).values
    slack = ROUNDOFF_SLACK * z.abs().amax(dim=1) + 1e-6
    return true - other - slack


def certified_radius(logits: torch.Tensor, labels: torch.Tensor, lipschitz: float = 1.0) -> torch.Tensor:
    """Per-sample certified l2 radius (0 for misclassified points)."""
    lipschitz = check_lipschitz(lipschitz)
    return (margins(logits, labels) / (math.sqrt(2) * lipschitz)).clamp_min(0.0)


@dataclass
class CertificationResult:
    n: int
    lipschitz: float
    clean_accuracy: float
    certified_accuracy: dict[float, float]
    radii: torch.Tensor = field(repr=False)
    predictions: torch.Tensor = field(repr=False)
    bound: "Bound | None" = None
    precision: str = "float64"

    def as_dict(self) -> dict:
        out = {
            "n": self.n,
            "lipschitz_bound": self.lipschitz,
            "clean_accuracy": self.clean_accuracy,
            "certified_accuracy": Radius.keyed(self.certified_accuracy),
            "median_radius": float(self.radii.median()) if self.n else 0.0,
            "precision": self.precision,
        }
        if self.bound is not None:
            out |= {"lipschitz_audited": self.bound.audited, "lipschitz_reason": self.bound.reason}
        return out

    def table(self) -> str:
        rows = [f"{'eps':>12} | {'accuracy':>9}", "-" * 25, f"{'clean':>12} | {100 * self.clean_accuracy:8.2f}%"]
        for e, a in self.certified_accuracy.items():
            rows.append(f"{Radius(e).label:>12} | {100 * a:8.2f}%")
        rows.append(f"(n={self.n}, Lipschitz bound L={self.lipschitz:.6g}, certified when margin > sqrt(2)*L*eps)")
        return "\n".join(rows)


@dataclass(frozen=True)
class Bound:
    """The Lipschitz constant a certificate divides by, and why.

    ``value`` = :func:`certifying_bound` (given or audited) and never below ``audited``, the guaranteed upper bound
    :func:`lipzoo.audit` proved for the evaluated network on this machine (``machine``).
    """

    value: float
    audited: float
    reason: str
    machine: str


_PROVEN: dict[tuple[str, str, str], Any] = {}  # (weights digest, input shape, machine) -> AuditResult


def _digest(model: nn.Module) -> str:
    h = hashlib.sha256(type(model).__qualname__.encode())
    for k, t in model.state_dict().items():
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                 if t.numel() else b"")
    return h.hexdigest()


def proven_audit(model: nn.Module, input_shape: tuple[int, ...] | None = None):
    """``lipzoo.audit(model, lower=False)`` at inputs of ``input_shape`` (C, H, W; default the
    model's native input), computed on this machine once per weights, shape and machine in this
    process (a changed weight is a new digest, so it is never stale)."""
    if input_shape is None and hasattr(model, "in_chans") and hasattr(model, "input_size"):
        input_shape = (model.in_chans, model.input_size, model.input_size)  # one key for the native input
    key = (_digest(model), str(None if input_shape is None else tuple(input_shape)), cpu_model())
    if key not in _PROVEN:
        _PROVEN[key] = audit(model, input_shape=input_shape, lower=False)
    return _PROVEN[key]


def proven_upper(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> float:
    """The guaranteed upper Lipschitz bound of :func:`proven_audit`."""
    return float(proven_audit(model, input_shape).upper)


def resolve_bound(model: nn.Module, lipschitz: float | None = None,
                  input_shape: tuple[int, ...] | None = None) -> Bound:
    """The L to certify ``model`` with: the audited bound (at least 1), or a given ``lipschitz``
    that is at least the audited bound (``ValueError`` naming both numbers otherwise).

    A model the audit cannot analyse (not built from lipzoo layers) needs a given ``lipschitz``;
    it is then used as given (at least 1), and the reason says that it was not audited.
    """
    machine = cpu_model()
    lip = None if lipschitz is None else check_lipschitz(lipschitz)
    try:
        audited = proven_upper(model, input_shape)
    except (ValueError, TypeError, NotImplementedError) as e:
        if lip is None:
            raise ValueError(f"cannot audit {type(model).__name__} ({e}); pass lipschitz= a bound you have "
                             f"proven for it") from None
        return Bound(certifying_bound(lip), float("nan"), f"given (--lipschitz / lipschitz=); not audited ({type(model).__name__} is not "
                     f"analysable by lipzoo.audit)", machine)
    if lip is None:
        if certifying_bound(audited) == audited:
            return Bound(audited, audited, "audited on this machine; at least 1", machine)
        return Bound(certifying_bound(audited), audited,
                     f"audited on this machine: {audited:.8g}; raised to 1, never below 1", machine)
    if lip < audited:
        raise ValueError(f"lipschitz={lip!r} is below the bound proven for these weights on this machine "
                         f"({audited!r}); certificates with it would be unsound: omit it or give a value >= {audited!r}")
    return Bound(certifying_bound(lip), audited, f"given (--lipschitz / lipschitz=); audited on this machine: "
                 f"{audited:.8g}" + ("; raised to 1" if certifying_bound(lip) != lip else ""), machine)


def _double(module: nn.Module) -> nn.Module:
    """Cast every floating parameter/buffer to float64 and every complex one to complex128."""
    return module._apply(lambda t: t.to(torch.complex128) if t.is_complex()
                         else (t.double() if t.is_floating_point() else t))


def as_float64(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """The network ``model`` computes, evaluated in float64 (the model itself is left as it is).

    The effective weights are materialised as ``model`` computes them (``lipzoo.to_plain``, in the
    model's dtype) and only then cast to float64, so the float64 network has exactly the weights
    the audit bounds and that a float32 deployment uses: the two differ by forward round-off only.
    Modules ``to_plain`` cannot convert are copied and cast as they are.
    """
    if all(p.dtype == torch.float64 for p in model.parameters() if p.is_floating_point()):
        return model
    try:
        plain = to_plain(model, input_shape=input_shape, circular="fft")
    except (TypeError, ValueError, NotImplementedError):
        plain = copy.deepcopy(model)
    return _double(plain).eval()


@torch.no_grad()
def certify(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float | Iterable[float] = DEFAULT_EPS,
    *,
    lipschitz: float | None = None,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    progress: bool = False,
    precision: str = "float64",
) -> CertificationResult:
    """Clean and certified accuracy of ``model`` on ``(images, labels)`` at each radius in ``eps``.

    ``precision="float64"`` (default) evaluates a float64 copy of the model and certifies that
    network; ``"float32"`` evaluates the model as it is (faster; the round-off slack is then an
    empirical margin, not a proof). A point counts as certified at ``e`` only when its margin
    (less the round-off slack) exceeds ``sqrt(2) * L * e``, with L from :func:`resolve_bound`:
    the bound audited for the evaluated network on this machine (at least 1), or the given
    ``lipschitz`` if it is not below that bound (``ValueError`` otherwise). The result says
    which L was used and why (``result.bound``).

    Raises ``ValueError`` (before any forward pass) for: ``eps`` that is negative, NaN or
    infinite; ``lipschitz`` that is not finite and > 0; labels that are not integers, not 1-D,
    not one per image or outside ``[0, num_classes)``; floating-point images with values
    outside [0, 1]; ``batch_size < 1``. Shape, dtype and NaN checks of the images are the model's.
    """
    eps = check_eps(eps)
    if lipschitz is not None:
        check_lipschitz(lipschitz)
    if precision not in ("float64", "float32"):
        raise ValueError(f"precision must be 'float64' or 'float32', got {precision!r}")
    batch_size = _check_batch_size(batch_size)
    check_labels(labels, getattr(model, "num_classes", None), len(images))
    check_images_range(images)
    if device is None:
        device = next(model.parameters()).device
    given, was_training = model, model.training
    if callable(getattr(model, "check_input", None)):
        model.check_input(images)  # the model's own checks (shape, dtype, NaN) before any work
    shape = tuple(images.shape[1:]) if images.ndim == 4 else None
    model.eval()
    bound = resolve_bound(model, lipschitz, shape)  # the weights as the model computes them, bounded in float64
    model = as_float64(model, shape) if precision == "float64" else model
    lip = bound.value
    r, p = _radii(model, images, labels, lip, batch_size, device, torch.float64 if precision == "float64" else None,
                  progress)
    given.train(was_training)
    n = len(r)
    clean = float((p == labels.cpu()).double().mean()) if n else 0.0
    cert = {float(e): float((r > e).double().mean()) if n else 0.0 for e in eps}
    return CertificationResult(n=n, lipschitz=lip, clean_accuracy=clean, certified_accuracy=cert, radii=r,
                               predictions=p, bound=bound, precision=precision)


def _radii(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, lip: float, batch_size: int, device,
           dtype: torch.dtype | None, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Certified radius and prediction of every image, a batch at a time (inputs cast to ``dtype``)."""
    radii, preds = [], []
    with tqdm(total=len(images), desc="certify", unit="img", disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].to(device)
            if dtype is not None and x.is_floating_point():
                x = x.to(dtype)
            y = labels[start : start + batch_size].to(device)
            z = model(x)
            radii.append(certified_radius(z, y, lip).cpu())
            preds.append(z.argmax(dim=1).cpu())
            bar.update(len(x))
    r = torch.cat(radii) if radii else torch.zeros(0, dtype=torch.float64)
    p = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)
    return r, p


def pgd_attack(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    *,
    steps: int = 20,
    step_size: float | None = None,
    clamp: tuple[float, float] | None = (0.0, 1.0),
    callback: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """l2 projected gradient ascent on the margin loss; returns perturbed images with ||x' - x|| <= eps.

    An empirical attack (a lower bound on robustness): it must never flip a certified point.
    Model parameters are not updated; eval mode is used. ``callback(step)`` is called after each
    of the ``steps`` gradient steps (1-based), e.g. to show progress.
    """
    (eps,) = check_eps(eps)
    if eps == 0:
        return images.clone()
    step_size = 2.5 * eps / steps if step_size is None else step_size
    was_training = model.training
    model.eval()
    flat = lambda t: t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.ndim - 1)))  # noqa: E731
    delta = torch.zeros_like(images)
    for step in range(steps):
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
        if callback is not None:
            callback(step + 1)
    model.train(was_training)
    return (images + delta).detach()


def empirical_robust_accuracy(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float | Iterable[float] = DEFAULT_EPS,
    *, steps: int = 20, batch_size: int = 256, progress: bool = False,
) -> dict[float, float]:
    """Accuracy under the l2 PGD attack at each radius (an upper bound on true robust accuracy).

    Inputs are validated as in :func:`certify`. With ``progress=True`` one bar counts images
    attacked (a batch at one radius at a time) with the throughput, and shows the radius and
    the PGD step of the batch in progress.
    """
    eps = check_eps(eps)
    batch_size = _check_batch_size(batch_size)
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    check_labels(labels, getattr(model, "num_classes", None), len(images))
    check_images_range(images)
    device = next(model.parameters()).device
    correct = {e: 0 for e in eps}
    req = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():  # input gradients only: keeps the eval weight caches warm
        p.requires_grad_(False)
    bar = tqdm(total=len(images) * len(eps), desc="attack", unit="img", disable=not progress, dynamic_ncols=True)
    try:
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].to(device)
            y = labels[start : start + batch_size].to(device)
            for e in eps:
                def show(step: int, e: float = e, start: int = start) -> None:
                    bar.set_postfix_str(f"eps {Radius(e).label}, images {start}-{start + len(x)}, step {step}/{steps}")

                adv = pgd_attack(model, x, y, e, steps=steps, callback=show if progress else None)
                with torch.no_grad():
                    correct[e] += int((model(adv).argmax(1) == y).sum())
                bar.update(len(x))
    finally:
        bar.close()
        for p, r in zip(model.parameters(), req):
            p.requires_grad_(r)
    n = max(len(images), 1)
    return {e: c / n for e, c in correct.items()}
