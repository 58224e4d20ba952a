"""Test helpers for the distribution tests: tiny checkpoints, HF-shaped git repos, an olah server.

Nothing here reaches any address but 127.0.0.1: olah runs offline, its upstream is set to a
closed port on 127.0.0.1, and the clients are given explicit 127.0.0.1 endpoints.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch

import lipzoo
from lipzoo.data import DATASETS
from lipzoo.hub import save_pretrained
from lipzoo.registry import PretrainedEntry

ARCH, DATASET = "convnet_xs_aol", "fashion_mnist"
#: test entries carry a budget suffix so they never collide with real zoo entries in cards/
NAME = f"{ARCH}.{DATASET}_test"
METRICS = {"n": 100, "split": "test", "lipschitz_bound": 1.0, "clean_accuracy": 0.81,
           "certified_accuracy": {f"{36 / 255:.6g}": 0.62, f"{72 / 255:.6g}": 0.41, "1": 0.05}}
TIMING = {"train_time_s": 5400.0, "epochs": 3, "train_images_per_s": 12000.0, "peak_memory_mb": 812.0,
          "hardware": {"gpu": "NVIDIA H100", "device": "cuda"}}
GIT = ["git", "-c", "user.name=lipzoo-test", "-c", "user.email=test@lipzoo.invalid", "-c", "commit.gpgsign=false"]


def make_checkpoint(root: Path, seed: int = 0, name: str = NAME) -> PretrainedEntry:
    """A convnet_xs_aol for Fashion-MNIST saved with save_pretrained into ``root/name``."""
    torch.manual_seed(seed)
    info = DATASETS[DATASET]
    model = lipzoo.create_model(ARCH, num_classes=info.num_classes, in_chans=info.in_chans, input_mean=info.mean)
    return save_pretrained(model, root / name, dataset=DATASET, name=name, metrics=METRICS, timing=TIMING,
                           provenance={"commit": "0" * 40, "date": "2024-06-01T00:00:00Z"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- HF-shaped git repos (LFS pointers, objects under .git/lfs, no git-lfs binary needed) --------
def _git(repo: Path, *args: str) -> str:
    out = subprocess.run([*GIT, *args], cwd=repo, check=True, capture_output=True, text=True)
    return out.stdout.strip()


def lfs_pointer(data: bytes) -> tuple[str, bytes]:
    sha = hashlib.sha256(data).hexdigest()
    return sha, f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {len(data)}\n".encode()


def commit_folder(repo: Path, folder: Path, message: str, lfs: tuple[str, ...] = ("model.safetensors",),
                  weights: bytes | None = None) -> str:
    """Commit every file of ``folder`` into the git repo ``repo`` (created if new); LFS for ``lfs`` names.

    ``weights``: bytes to store as the LFS object instead of the real file (a tampered server copy;
    the pointer still names the real file's sha256). Returns the commit id.
    """
    if not (repo / ".git").is_dir():
        repo.mkdir(parents=True, exist_ok=True)
        _git(repo, "init", "-q", "-b", "main")
    for f in sorted(folder.iterdir()):
        data = f.read_bytes()
        if f.name in lfs:
            sha, pointer = lfs_pointer(data)
            obj = repo / ".git" / "lfs" / "objects" / sha[:2] / sha[2:4] / sha
            obj.parent.mkdir(parents=True, exist_ok=True)
            obj.write_bytes(weights if weights is not None else data)
            data = pointer
        (repo / f.name).write_bytes(data)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", message)
    return _git(repo, "rev-parse", "HEAD")


# --- the olah mirror server ----------------------------------------------------------------------
class Olah:
    """olah (offline mode) serving the git repos under ``mirrors/models/<org>/<name>`` on 127.0.0.1."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.mirrors = workdir / "mirrors"
        self.mirrors.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log = workdir / "olah.out"

    def repo_dir(self, repo_id: str) -> Path:
        return self.mirrors / "models" / repo_id

    def start(self, timeout: float = 60.0) -> None:
        cfg = self.workdir / "olah.toml"
        dead = free_port()  # upstream "huggingface" = a closed local port: nothing leaves the machine
        cfg.write_text(
            "[basic]\n"
            f'host = "127.0.0.1"\nport = {self.port}\n'
            f'repos-path = "{self.workdir / "cache"}"\n'
            f'mirrors-path = ["{self.mirrors}"]\n'
            f'hf-scheme = "http"\nhf-netloc = "127.0.0.1:{dead}"\nhf-lfs-netloc = "127.0.0.1:{dead}"\n'
            "metadata-cache-ttl = 0\n"
            "[accessibility]\noffline = true\n"
        )
        env = os.environ | {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
        for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
            env.pop(k, None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "olah.server", "-c", str(cfg), "--log-path", str(self.workdir / "logs")],
            cwd=self.workdir, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"olah exited with code {self.proc.returncode}: {self.tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"olah did not open 127.0.0.1:{self.port} within {timeout:.0f}s: {self.tail()}")

    def tail(self, n: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else "(no output)"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


# --- a proxy that cuts the weights download short --------------------------------------------------
class CuttingProxy:
    """Forwards to ``upstream``; the first GET of a ``.safetensors`` file sends half its body and drops
    the connection, later GETs of it get 503 (the server went away mid-download)."""

    def __init__(self, upstream: str) -> None:
        proxy = self
        self.cut = 0
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a) -> None:  # quiet
                pass

            def _forward(self, method: str) -> None:
                weights = method == "GET" and self.path.endswith(".safetensors")
                if weights and proxy.cut:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                req = urllib.request.Request(upstream + self.path, method=method,
                                             headers={k: v for k, v in self.headers.items() if k.lower() != "host"})
                try:
                    resp = opener.open(req, timeout=30)
                except urllib.error.HTTPError as e:
                    resp = e
                body = resp.read() if method == "GET" else b""
                self.send_response(resp.status if hasattr(resp, "status") else resp.code)
                for k, v in resp.headers.items():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length", "date", "server"):
                        self.send_header(k, v)
                length = resp.headers.get("Content-Length") if method == "HEAD" else str(len(body))
                if length is not None:
                    self.send_header("Content-Length", length)
                self.end_headers()
                if weights:
                    proxy.cut += 1
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._forward("GET")

            def do_HEAD(self) -> None:
                self._forward("HEAD")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "CuttingProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def prefill_cache(cache: Path, entry: PretrainedEntry, data: bytes, revision: str = "a" * 40,
                  branch: str | None = "main") -> Path:
    """Lay out the HF cache as hf_hub_download would: blobs/<sha256>, snapshots/<rev>/<file> -> blob, refs."""
    repo = cache / f"models--{entry.repo_id.replace('/', '--')}"
    blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    snap = repo / "snapshots" / revision / entry.filename
    snap.parent.mkdir(parents=True, exist_ok=True)
    snap.symlink_to(os.path.relpath(blob, snap.parent))
    if branch:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / branch).write_text(revision)
    return snap


def with_name(entry: PretrainedEntry, name: str, **changes) -> PretrainedEntry:
    return dataclasses.replace(entry, name=name, **changes)


def copy_folder(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
