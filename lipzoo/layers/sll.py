"""SLL: SDP-based Lipschitz layers (Araujo, Havens, Delattre, Allauzen & Hu, ICLR 2023).

An SLL layer is the residual map ``y = x - K^T (t * ReLU(K x + b))`` with a per-channel
rescaling vector ``t = 2 / diag(T)``. The convolution form uses zero 'same' padding for both
``K`` and its adjoint ``K^T`` (``conv_transpose2d``), as the paper's code does (its
``padding_mode='circular'`` argument is ignored there too).

``T`` comes from a weighted Gershgorin (Schur) bound on ``K K^T`` over the OUTPUT channels::

    T_ii = sum_j sum_s |(K K^T)_ij(s)| * q~_j / q~_i + eps,    q~ = |q| + eps,  eps = 1e-6

where ``(K K^T)_ij(s)`` are the taps of the (2k-1)^2 autocorrelation of the kernel.

Why the default is provably 1-Lipschitz (and therefore equals the paper's formula):

* For any ``W`` and diagonal ``T > 0`` with ``T >= W W^T`` (Loewner order),
  ``h(x) = x - 2 W^T T^{-1} s(Wx + b)`` is 1-Lipschitz for every slope-restricted ``s`` (ReLU):
  ``h(x) - h(y) = (I - 2 W^T T^{-1} D W)(x - y)`` with ``D`` diagonal in [0, 1], and
  ``D T^{-1} W W^T T^{-1} D <= T^{-1} D^2 <= T^{-1} D`` gives ``J^T J <= I``
  (Araujo et al., Thm. 3).
* ``T >= W W^T``: with positive weights ``q~`` the weighted Gershgorin test makes
  ``T - W W^T`` diagonally dominant after the similarity ``Q~^{-1} (.) Q~``, hence PSD. The
  ``+ eps`` only enlarges ``T``; ``q~ > 0`` is used consistently in numerator and denominator
  (this is why the paper's epsilon variant is sound, cf. berndprach/1LipschitzLayersCompared#2).
* For a zero-padded conv ``K_z = R K_inf E`` (embed with zeros, convolve on the infinite grid,
  restrict), ``K_z K_z^T <= R K_inf K_inf^T R^T``, a compression of the Toeplitz operator whose
  taps ARE the autocorrelation; its weighted row sums are at most the full tap sums, so the
  bound holds for every input size.

``q_param="exp"`` offers the numerically stable parametrisation of upstream's later code
(``q~ = exp(q)``, ``t = 2 * safe_inv(sum_j |KK^T_ij| exp(q_j - q_i))`` with ``1/0 -> 0``, no
epsilon); it is equally sound (a zero row sum means a zero kernel row). Note: upstream's conv
version multiplies both weights onto the same axis so its ``q`` has no effect; here ``q``
weights the column index as the theory requires.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._base import check_kernel_size, check_square, LipschitzModule, map_size
from ._linalg import autocorrelation
from ._norms import residual_bound
from ._plain import potential_residual_conv, potential_residual_linear

__all__ = ["SLLConv2d", "SLLLinear", "sll_rescaling"]

EPS = 1e-6
Q_PARAMS = ("abs", "exp")


def sll_rescaling(gram: torch.Tensor, q: torch.Tensor, q_param: str = "abs", eps: float = EPS) -> torch.Tensor:
    """The SLL rescaling ``t`` (factor 2 included) from ``K K^T`` of shape (out, out[, s, s]).

    ``"abs"``: ``t_i = 2 / (sum_j |G_ij| q~_j / q~_i + eps)`` with ``q~ = |q| + eps`` (the paper).
    ``"exp"``: ``t_i = 2 * safe_inv(sum_j |G_ij| exp(q_j - q_i))`` (upstream's stable form).
    """
    extra = (1,) * (gram.ndim - 2)
    dims = tuple(range(1, gram.ndim))
    if q_param == "abs":
        q_abs = q.abs() + eps
        bound = (gram * q_abs.view(1, -1, *extra)).abs().sum(dims) / q_abs
        return 2 / (bound + eps)
    if q_param == "exp":
        ratio = torch.exp(q[None, :] - q[:, None])  # (i, j): q~_j / q~_i
        bound = (gram.abs() * ratio.view(*ratio.shape, *extra)).sum(dims)
        inv = torch.where(bound == 0, torch.zeros_like(bound), 1 / torch.where(bound == 0, torch.ones_like(bound), bound))
        return 2 * inv
    raise ValueError(f"q_param must be one of {Q_PARAMS}, got {q_param!r}")




def _check_q_param(q_param: str) -> None:
    if q_param not in Q_PARAMS:
        raise ValueError(f"q_param must be one of {Q_PARAMS}, got {q_param!r}")


class SLLConv2d(LipschitzModule):
    """SLL convolution ``x - K^T (t * ReLU(K x + b))`` with zero 'same' padding.

    Parameters ``kernel`` (out, in, k, k) xavier-normal, ``bias`` U(+-1/sqrt(fan_in)) and ``q``
    (out,) standard normal, as in the paper. The effective weight is the rescaling vector ``t``.
    ``paper_compatible`` changes nothing: the default already is the paper's (sound) formula.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        input_size: tuple[int, int] | int | None = None,
        paper_compatible: bool = False,
        q_param: str = "abs",
        eps: float = EPS,
    ) -> None:
        super().__init__()
        check_kernel_size(kernel_size)
        check_square("in_channels and out_channels", in_channels, out_channels)
        _check_q_param(q_param)
        if paper_compatible and q_param != "abs":
            raise ValueError("paper_compatible=True requires q_param='abs' (the paper's parametrisation)")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.paper_compatible, self.q_param, self.eps = paper_compatible, q_param, eps
        self.kernel = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels))
        # the paper's initialisation, in its order of random draws (q first)
        self.q = nn.Parameter(torch.randn(out_channels))
        nn.init.xavier_normal_(self.kernel)
        bound = 1 / math.sqrt(in_channels * kernel_size**2)
        nn.init.uniform_(self.bias, -bound, bound)

    def compute_weight(self, size: tuple[int, int] | None = None) -> torch.Tensor:
        return sll_rescaling(autocorrelation(self.kernel, over="out"), self.q, self.q_param, self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x, self.in_channels)
        p = self.kernel_size // 2
        t = self.effective_weight()
        res = F.relu(F.conv2d(x, self.kernel, self.bias, padding=p))
        # t folded into the (tiny) kernel: K^T diag(t) h = (diag(t) K)^T h, one full-size multiply fewer
        return x - F.conv_transpose2d(res, t[:, None, None, None] * self.kernel, padding=p)

    def norm_bound(self, shape: tuple[int, ...]) -> tuple[float, str, float | None, dict]:
        """``max(1, ||diag(sqrt t) K||^2 - 1)`` with the zero-padded conv norm on ``shape`` maps (see
        :func:`~lipzoo.layers._norms.residual_bound`): 1 exactly when ``K K^T <= 2 diag(t)^-1``."""
        k = self.kernel.detach().double()
        return residual_bound(type(self).__name__, k, self.effective_weight().detach().double(), map_size(shape))

    def plain(self, shape: tuple[int, ...] | None, circular: str) -> nn.Module:
        """``x - conv2(ReLU(conv1(x)))``: two zero-padded ``nn.Conv2d`` with t folded into ``conv2``."""
        return potential_residual_conv(self.kernel, self.bias, self.effective_weight())

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, padding=zeros, "
            f"q_param={self.q_param}"
        )


class SLLLinear(LipschitzModule):
    """Dense SLL layer ``x - W^T (t * ReLU(W x + b))``, the same maths as :class:`SLLConv2d`.

    Parameters ``weights`` (out, in), ``bias`` and ``q`` (out,), named and initialised as in the
    paper's (unused) ``SLLLinear`` (q ~ U[0, 1)). ``paper_compatible=True`` reproduces that
    class's formula ``2 / (sum_j |W W^T|_ij |q_j| / (|q_i| + eps) + eps)``, whose weights are
    not used consistently: it is NOT sound once some ``|q_i|`` is comparable to ``eps`` (W = I,
    q_0 = eps gives t_0 = 4, a Lipschitz constant of 3). The default uses ``q~ = |q| + eps`` on
    both sides, exactly like the convolution, and is provably 1-Lipschitz.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        paper_compatible: bool = False,
        q_param: str = "abs",
        eps: float = EPS,
    ) -> None:
        super().__init__()
        check_square("in_features and out_features", in_features, out_features)
        _check_q_param(q_param)
        if paper_compatible and q_param != "abs":
            raise ValueError("paper_compatible=True requires q_param='abs' (the paper's parametrisation)")
        self.in_features, self.out_features = in_features, out_features
        self.paper_compatible, self.q_param, self.eps = paper_compatible, q_param, eps
        self.weights = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        self.q = nn.Parameter(torch.rand(out_features) if q_param == "abs" else torch.randn(out_features))
        nn.init.xavier_normal_(self.weights)
        bound = 1 / math.sqrt(in_features)
        nn.init.uniform_(self.bias, -bound, bound)

    def compute_weight(self, size: tuple[int, int] | None = None) -> torch.Tensor:
        gram = self.weights @ self.weights.T
        if self.paper_compatible:
            q_abs = self.q.abs()
            q_inv = 1 / (q_abs + self.eps)
            return 2 / ((q_inv[:, None] * gram * q_abs[None, :]).abs().sum(1) + self.eps)
        return sll_rescaling(gram, self.q, self.q_param, self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x, self.in_features, ndim=(2,))
        t = self.effective_weight()
        res = F.relu(F.linear(x, self.weights, self.bias))
        return x - F.linear(t * res, self.weights.T)

    def norm_bound(self, shape: tuple[int, ...]) -> tuple[float, str, float | None, dict]:
        """``max(1, ||diag(sqrt t) W||^2 - 1)`` with the exact spectral norm (see
        :func:`~lipzoo.layers._norms.residual_bound`): 1 exactly when ``W W^T <= 2 diag(t)^-1``."""
        k = self.weights.detach().double()
        return residual_bound(type(self).__name__, k, self.effective_weight().detach().double(), None)

    def plain(self, shape: tuple[int, ...] | None, circular: str) -> nn.Module:
        """``x - lin2(ReLU(lin1(x)))``: two ``nn.Linear`` with t folded into ``lin2``."""
        return potential_residual_linear(self.weights, self.bias, self.effective_weight())

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, q_param={self.q_param}"
