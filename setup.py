"""Build step of the wheel: the pretrained index.

``cards/<name>/config.json`` is the one source of truth for the pretrained entries. A checkout
reads those files directly; a wheel carries a byte-for-byte copy of each at
``lipzoo/_index/<name>/config.json`` (made here, never committed), which an installed lipzoo
reads instead (``lipzoo.registry.index_dir``). The weights are not packaged. All other metadata
lives in pyproject.toml.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

CARDS = Path(__file__).resolve().parent / "cards"
INDEX = ("lipzoo", "_index")


def index_files(cards: Path = CARDS) -> dict[str, bytes]:
    """``{<name>/config.json: bytes}`` of every card; a card that is not valid JSON naming its own
    folder stops the build (a wheel must not ship a broken or empty index)."""
    files: dict[str, bytes] = {}
    for cfg in sorted(cards.glob("*/config.json")):
        raw = cfg.read_bytes()
        try:
            name = json.loads(raw.decode("utf-8")).get("name")
        except (ValueError, AttributeError) as e:
            raise SystemExit(f"error: {cfg} is not a JSON object ({e}); fix it before building the wheel")
        if name != cfg.parent.name:
            raise SystemExit(f"error: {cfg} names {name!r}, not its folder {cfg.parent.name!r}")
        files[f"{cfg.parent.name}/config.json"] = raw
    if not files:
        raise SystemExit(f"error: no {cards}/*/config.json found; the wheel would ship without the pretrained index")
    return files


class build_py_with_index(build_py):
    """build_py, plus the pretrained index copied from cards/ (a fresh copy each build: removed
    cards never linger from an earlier build). Editable installs read cards/ and skip it."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib, *INDEX)
        shutil.rmtree(target, ignore_errors=True)
        for rel, raw in index_files().items():
            path = target / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(raw)


setup(cmdclass={"build_py": build_py_with_index})
