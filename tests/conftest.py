"""Test-session set-up. Runs before any test module imports lipzoo or huggingface_hub."""

import os
import sys
import tempfile
from pathlib import Path

_HF = Path(tempfile.mkdtemp(prefix="lipzoo-test-hf-"))
os.environ["HF_HOME"] = str(_HF)
os.environ["HF_HUB_CACHE"] = str(_HF / "hub")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

# Many tiny ops: one thread avoids oversubscription on the 2-core CI machine.
torch.set_num_threads(1)

GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "golden"
