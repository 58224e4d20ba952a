"""The l2 radius of a certificate and its two text forms, defined once.

- :attr:`Radius.key`: the string a radius is stored under in every result file (``metrics.jsonl``,
  ``eval.json``, ``check.json``, ``config.json``, run records): six significant digits,
  ``36/255`` -> ``"0.141176"``, ``1.0`` -> ``"1"``. :meth:`Radius.parse` reads it back.
- :attr:`Radius.label`: how a radius is shown (tables, cards, the CLI): ``"36/255"`` for a whole
  number of 1/255 steps strictly between 0 and 1, else the number (``"1"``, ``"0.5"``).

:meth:`Radius.keyed` writes ``{radius: accuracy}`` as stored keys; :meth:`Radius.items` reads
stored keys back as ``(Radius, value)`` pairs by increasing radius.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["Radius", "STEPS", "LABEL_TOLERANCE"]

#: pixel values have 255 steps; the paper's radii are 36, 72 and 108 of them
STEPS = 255
#: how far (in 1/255 steps) a radius may lie from a whole number of steps and still be labelled
#: ``k/255``: a stored key carries 6 significant digits, so its value is within 2e-4 steps of k/255
LABEL_TOLERANCE = 5e-4

V = TypeVar("V")


@dataclass(frozen=True, order=True)
class Radius:
    """An l2 radius in [0, 1] pixel units (``Radius(36 / 255)``, ``Radius.parse("0.141176")``)."""

    value: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", float(self.value))

    @classmethod
    def parse(cls, key: str | float) -> "Radius":
        """The radius of a stored key (``"0.141176"``) or a number; ``ValueError`` for anything else."""
        return key if isinstance(key, Radius) else cls(float(key))

    @classmethod
    def of_steps(cls, steps: int) -> "Radius":
        """``steps`` / 255, e.g. ``Radius.of_steps(36)``: the paper's smallest radius."""
        return cls(steps / STEPS)

    @property
    def key(self) -> str:
        """The one string form of this radius in every result file (``'0.141176'`` for 36/255)."""
        return f"{self.value:.6g}"

    @property
    def label(self) -> str:
        """``'36/255'`` for a whole number of 1/255 steps in (0, 1), else the number (``'1'``, ``'0.5'``)."""
        steps = self.value * STEPS
        whole = round(steps) if math.isfinite(steps) else 0
        if 0 < self.value < 1 and abs(steps - whole) < LABEL_TOLERANCE:
            return f"{whole}/{STEPS}"
        return f"{self.value:.4g}"

    def __float__(self) -> float:
        return self.value

    def __str__(self) -> str:
        return self.label

    @staticmethod
    def keyed(by_radius: Mapping[Any, V] | Iterable[tuple[Any, V]]) -> dict[str, V]:
        """``{radius: value}`` (radii as numbers or :class:`Radius`) -> ``{key: value}``, as stored."""
        pairs = by_radius.items() if isinstance(by_radius, Mapping) else by_radius
        return {Radius.parse(e).key: v for e, v in pairs}

    @staticmethod
    def items(stored: Mapping[str, V] | None) -> list[tuple["Radius", V]]:
        """The ``(Radius, value)`` pairs of a stored ``{key: value}`` mapping, by increasing radius."""
        return sorted(((Radius.parse(k), v) for k, v in (stored or {}).items()), key=lambda kv: kv[0])
