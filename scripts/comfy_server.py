"""Start and stop a real ComfyUI server with this pack installed, in a private base directory.

Used by the main job (scripts/run_edit.py) and by the integration tests. Standard library only.
Flags follow ComfyUI 0.3.75 `main.py --help`; the in-memory database keeps ComfyUI's source tree
clean (its default SQLite file lives in the source tree whatever --user-directory says).
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

PACK_DIR = Path(__file__).resolve().parents[1]
PACK_NAME = "ComfyUI-Step1X-Edit"   # folder name under custom_nodes/ (also the template-browser group)
TINY_MODELS_DIR = PACK_DIR / "tests" / "tiny_models"   # tiny stand-in weights and their Load CLIP plugin
TINY_CLIP_PLUGIN = TINY_MODELS_DIR / "tiny_clip_loader.py"
BASE_SUBDIRS = ("custom_nodes", "input", "output", "temp", "user", "models")
# Log lines of ComfyUI 0.3.75 nodes.py when a pack fails to load (the server keeps running).
PACK_FAILURE_MARKERS = ("IMPORT FAILED", "Cannot import", "Error while calling comfy_entrypoint",
                        "did not return")
SERVER_START_TIMEOUT_S = 180         # measured 7 s on 2 CPU cores; generous for cold disks


def pack_import_failures(log: str) -> list[str]:
    """ComfyUI log lines saying this pack failed to import. They name its folder under custom_nodes/; core's own
    failed imports (comfy_extras/nodes_audio.py without torchaudio) may sit under a path that holds the pack's
    name, in a clone that keeps its ComfyUI under .work/."""
    pack_folder = str(Path("custom_nodes") / PACK_NAME)
    return [line for line in log.splitlines()
            if pack_folder in line and any(marker in line for marker in PACK_FAILURE_MARKERS)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tiny_weights(work_dir: Path, comfyui_dir: Path, python: str = sys.executable) -> Path:
    """Tiny random stand-ins for the official files (tests/tiny_models/make_tiny_weights.py), made once per
    generator version into <work>/tiny-weights/<hash> and reused."""
    generator = TINY_MODELS_DIR / "make_tiny_weights.py"
    cache = work_dir / "tiny-weights" / hashlib.sha256(generator.read_bytes()).hexdigest()[:12]
    if not (cache / ".complete").exists():
        subprocess.run([python, str(generator), str(cache), "--comfyui", str(comfyui_dir)], check=True)
        (cache / ".complete").touch()
    return cache


def link_models(source: Path, models_dir: Path) -> None:
    """Symlink every entry of source/<folder>/ into models_dir/<folder>/ (ComfyUI follows links)."""
    for folder in source.iterdir():
        if folder.is_dir():
            (models_dir / folder.name).mkdir(parents=True, exist_ok=True)
            for entry in folder.iterdir():
                link = models_dir / folder.name / entry.name
                if link.is_symlink():
                    link.unlink()
                if not link.exists():
                    link.symlink_to(entry, target_is_directory=entry.is_dir())


def link_tiny_weights(work_dir: Path, comfyui_dir: Path, base_dir: Path, python: str = sys.executable) -> None:
    """The tiny stand-ins in base_dir/models, and the plugin that lets core Load CLIP build the tiny
    Qwen2.5-VL from its single file (tests/tiny_models/tiny_clip_loader.py) in base_dir/custom_nodes."""
    link_models(tiny_weights(work_dir, comfyui_dir, python), base_dir / "models")
    plugin = base_dir / "custom_nodes" / TINY_CLIP_PLUGIN.name
    if plugin.is_symlink() and plugin.resolve() != TINY_CLIP_PLUGIN.resolve():   # a link from an older checkout
        plugin.unlink()
    if not plugin.exists():
        plugin.symlink_to(TINY_CLIP_PLUGIN)


def prepare_base_dir(base_dir: Path) -> Path:
    """Create ComfyUI's folders under base_dir and link this pack into custom_nodes/."""
    for name in BASE_SUBDIRS:
        (base_dir / name).mkdir(parents=True, exist_ok=True)
    link = base_dir / "custom_nodes" / PACK_NAME
    if link.is_symlink() and link.resolve() != PACK_DIR:
        link.unlink()
    if not link.exists():
        link.symlink_to(PACK_DIR, target_is_directory=True)
    return base_dir


class ComfyServer:
    """One ComfyUI process on 127.0.0.1 with its own base directory (models/, input/, output/...)."""

    def __init__(self, comfyui_dir: Path, base_dir: Path, *, python: str = sys.executable,
                 port: int | None = None, extra_args: tuple[str, ...] = ()):
        self.comfyui_dir = Path(comfyui_dir)
        self.base_dir = Path(base_dir)
        self.python = python
        self.port = port or free_port()
        self.extra_args = tuple(extra_args)
        self.log_path = self.base_dir / "server.log"
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def command(self) -> list[str]:
        base = str(self.base_dir)
        return [
            self.python, str(self.comfyui_dir / "main.py"),
            "--listen", "127.0.0.1", "--port", str(self.port), "--disable-auto-launch",
            "--base-directory", base, "--user-directory", f"{base}/user", "--temp-directory", f"{base}/temp",
            "--database-url", "sqlite:///:memory:", "--disable-api-nodes",
            *self.extra_args,
        ]

    def start(self, timeout_s: float = SERVER_START_TIMEOUT_S) -> "ComfyServer":
        if not (self.comfyui_dir / "main.py").is_file():
            raise FileNotFoundError(f"no ComfyUI at {self.comfyui_dir}: run scripts/setup_env.sh first")
        log = open(self.log_path, "w")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(self.command(), cwd=self.comfyui_dir, stdout=log,
                                        stderr=subprocess.STDOUT, env=env)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with code {self.process.returncode} while starting:\n"
                                   f"{self.log_tail()}")
            if self._answers():
                self._fail_on_pack_import_error()
                self._mark_tutorial_done()
                return self
            time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"ComfyUI did not answer within {timeout_s:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None and self._answers()

    def resident_memory_bytes(self) -> int:
        """The server process's resident set size: ``VmRSS`` of /proc/<pid>/status (Linux, given in kB)."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        (kilobytes,) = [line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")]
        return int(kilobytes) * 1024

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/system_stats", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def _fail_on_pack_import_error(self) -> None:
        # ComfyUI keeps running when a custom node pack fails to import; make that loud.
        log = self.log_text()
        if pack_import_failures(log):
            self.stop()
            raise RuntimeError(f"ComfyUI could not import the pack:\n{log[-6000:]}")

    def _mark_tutorial_done(self) -> None:
        # A fresh user folder opens the template browser on first page load, which swallows key presses.
        request = urllib.request.Request(f"{self.url}/settings/Comfy.TutorialCompleted",
                                         data=json.dumps(True).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10):
            pass

    def __enter__(self) -> "ComfyServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
