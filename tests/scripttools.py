"""Test helper: import a stand-alone script (``scripts/*.py``, ``hubconf.py``) as a module."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def load_script(path: str | Path, name: str, register: bool = False) -> ModuleType:
    """The script at ``path`` executed as module ``name`` (its ``main`` guard does not run).

    ``register``: also put it in ``sys.modules`` (dataclasses defined in it look their module up
    there); the caller removes it again.
    """
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    if register:
        sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod
