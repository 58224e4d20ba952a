"""The ``lipzoo`` command line: thin wrappers over the library, one module per group of commands.

- :mod:`._app`: the ``lipzoo`` group (errors end in one line on stderr: exit status 2 for usage
  errors, 1 for failures; ``--debug`` shows the traceback), parameter types and shared helpers;
- :mod:`.listing`: ``list``, ``layers``, ``info``;
- :mod:`.certification`: ``certify``, ``audit``, ``export``;
- :mod:`.training`: ``train``, ``budget``, ``evaluate``, ``publish``;
- :mod:`.distribution`: ``download``, ``verify``, ``push``, ``card``, ``import-1llc``;
- :mod:`.benchmarks`: ``bench``, ``plot``.

The library is imported at module level. The zoo tooling that only some commands need
(``lipzoo.zoo``: the trainer, publishing, benchmarks, plots, cards, the paper importer) is
imported inside those commands, so that ``lipzoo list``, ``info`` or ``certify`` start without
loading it; those are the only imports of lipzoo modules inside functions in the package.
"""

from __future__ import annotations

from . import benchmarks, certification, distribution, listing, training  # noqa: F401 (each registers its commands)
from ._app import main

__all__ = ["main"]
