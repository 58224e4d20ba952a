"""``python -m lipzoo.cli``: the ``lipzoo`` command (importing the package registered every command)."""

from __future__ import annotations

import sys

from ._app import main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
