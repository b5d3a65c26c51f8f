"""Run model-written Python on images in a sandboxed child process (the R1V4 `code` tool).

`run_code(code, images)` copies the images into a fresh temporary work folder (`image_0.png`, ...),
starts `python -I -S -B _sandbox_child.py` there in a new session with a scrubbed environment
(PATH, HOME = the work folder, LANG, one BLAS thread), and returns stdout, stderr, an error reason and
the images the code saved into `./outputs/`. Inside, the code sees `image` (PIL image of the first
input), `images`, `np`, `Image` and `save(img, name=None)`.

The fence is made of real OS mechanisms set up by the child before the code runs (see
`_sandbox_child.py`), in order of strength:

- Landlock: the process can read only the Python/venv install and system library folders, and read
  and write only its work folder; TCP bind/connect are denied; signals cannot leave the sandbox.
  This is what stops reading the user's files and writing outside the folder, also when r1v runs as
  root (where plain permissions stop nothing).
- seccomp: fork/vfork/execve/clone-without-CLONE_THREAD fail, so no child process can be started
  (fork bombs, subprocess). This matters as root, where RLIMIT_NPROC is not enforced by the kernel.
- user + network namespace: no network interface at all (UDP and DNS included).
- rlimits: CPU seconds (SIGXCPU), address space (MemoryError), file size, processes (per user; not
  applied to root), open files, no core dumps.
- the parent: wall-clock limit, the whole process group killed on timeout or on too much output,
  output read incrementally and capped, output files taken only when regular .png/.jpg files
  (symlinks ignored) and capped in number.
- an audit hook in the child: refuses sockets, process creation, ctypes and file access outside the
  allowed folders with readable messages. It is defence in depth only: Python-level, so native code
  could bypass it; the layers above are the fence.

A layer the kernel lacks is skipped; `sandbox_layers()` reports which ones are active here.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import selectors
import shutil
import signal
import site
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from r1v.errors import ConfigError, ImageError

_log = logging.getLogger(__name__)
_CHILD = Path(__file__).with_name("_sandbox_child.py")
MIN_MEMORY_MB = 128  # numpy + PIL + OpenBLAS need about 100 MB of address space to start
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_SYSTEM_READ_ROOTS = ["/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/local/lib", "/etc/ld.so.cache",
                      "/usr/share/zoneinfo", "/etc/localtime"]


@dataclass(frozen=True)
class SandboxLimits:
    """Limits for one sandboxed run (seconds, MB, bytes, counts)."""

    cpu_seconds: float = 10.0
    wall_seconds: float = 20.0
    memory_mb: int = 1024
    file_size_mb: int = 16
    max_processes: int = 32
    max_output_bytes: int = 64_000
    max_output_files: int = 8

    def __post_init__(self) -> None:
        minimum = {"cpu_seconds": 0.1, "wall_seconds": 0.1, "memory_mb": MIN_MEMORY_MB, "file_size_mb": 1,
                   "max_processes": 1, "max_output_bytes": 1, "max_output_files": 0}
        for name, low in minimum.items():
            if getattr(self, name) < low:
                raise ConfigError(f"SandboxLimits.{name} must be at least {low}, got {getattr(self, name)}")


@dataclass
class SandboxResult:
    """What a sandboxed run produced; `error` is a short reason when `ok` is False."""

    ok: bool
    stdout: str
    stderr: str
    error: str | None
    outputs: list[Path] = field(default_factory=list)
    layers: dict[str, str] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        return {"ok": self.ok, "stdout": self.stdout, "stderr": self.stderr, "error": self.error,
                "outputs": [str(p) for p in self.outputs]}


def _read_roots() -> list[str]:
    """Folders the child may read: the Python install, the venv and where numpy/PIL live."""
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             os.path.dirname(os.path.realpath(sys.executable))}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        roots.add(sysconfig.get_paths()[key])
    roots.update(site.getsitepackages())
    for module in ("numpy", "PIL"):
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.submodule_search_locations:
            roots.add(str(Path(next(iter(spec.submodule_search_locations))).parent))
    too_broad = {"/", os.path.realpath(Path.home()), os.path.realpath(tempfile.gettempdir())}
    return sorted({os.path.realpath(r) for r in roots if r} - too_broad | set(_SYSTEM_READ_ROOTS))


def _sys_path() -> list[str]:
    """Import folders for the child (it runs with -S, so site-packages are added explicitly)."""
    paths = list(site.getsitepackages())
    for module in ("numpy", "PIL"):
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.submodule_search_locations:
            paths.append(str(Path(next(iter(spec.submodule_search_locations))).parent))
    return list(dict.fromkeys(paths))


def _stage_images(images: Sequence[Path], work: Path) -> list[str]:
    """Copy inputs into the work folder as image_<i>.png (PNG files copied, others converted)."""
    from PIL import Image, UnidentifiedImageError

    names = []
    for i, src in enumerate(images):
        src = Path(src)
        name = f"image_{i}.png"
        if not src.is_file():
            raise ImageError("image file not found", source=str(src))
        if src.suffix.lower() == ".png":
            shutil.copyfile(src, work / name)
        else:
            try:
                with Image.open(src) as im:
                    im.save(work / name, format="PNG")
            except (OSError, UnidentifiedImageError) as e:
                raise ImageError(f"cannot read image: {e}", source=str(src)) from e
        names.append(name)
    return names


def _collect_output(proc: subprocess.Popen, limits: SandboxLimits) -> tuple[bytes, bytes, str | None]:
    """Read stdout/stderr incrementally until exit, the wall limit or the output cap; never unbounded."""
    sel = selectors.DefaultSelector()
    bufs = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    for stream in bufs:
        sel.register(stream, selectors.EVENT_READ)
    deadline = time.monotonic() + limits.wall_seconds
    reason = None
    while sel.get_map():
        left = deadline - time.monotonic()
        if left <= 0:
            reason = f"timeout: wall {limits.wall_seconds:g} s"
            break
        for key, _ in sel.select(timeout=min(left, 0.5)):
            chunk = os.read(key.fd, 65536)
            if not chunk:
                sel.unregister(key.fileobj)
                continue
            buf = bufs[key.fileobj]
            room = limits.max_output_bytes - len(buf)
            buf += chunk[: max(room, 0)]
            if len(chunk) > room:
                reason = f"output limit: more than {limits.max_output_bytes} bytes of output"
        if reason:
            break
    sel.close()
    if reason:
        _kill_group(proc)
    try:
        proc.wait(timeout=max(0.1, deadline - time.monotonic()) if not reason else 5)
    except subprocess.TimeoutExpired:
        reason = reason or f"timeout: wall {limits.wall_seconds:g} s"
        _kill_group(proc)
        proc.wait()
    _kill_group(proc)  # anything left in the group
    return bytes(bufs[proc.stdout]), bytes(bufs[proc.stderr]), reason


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _take_outputs(folder: Path, out_dir: Path | None, limits: SandboxLimits) -> tuple[list[Path], str | None]:
    """Copy regular .png/.jpg files (no symlinks) from the sandbox outputs folder, capped in number."""
    found = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name) if folder.is_dir() else []:
        if entry.name.lower().endswith(_IMAGE_SUFFIXES) and entry.is_file(follow_symlinks=False):
            found.append(entry)
    error = None
    if len(found) > limits.max_output_files:
        error = f"too many output files: {len(found)} (limit {limits.max_output_files})"
        found = found[: limits.max_output_files]
    if not found:
        return [], error
    dest = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="r1v-sandbox-out-"))
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for entry in found:
        stem, suffix = os.path.splitext(entry.name)
        target, n = dest / entry.name, 1
        while target.exists():
            target, n = dest / f"{stem}_{n}{suffix}", n + 1
        shutil.copyfile(entry.path, target, follow_symlinks=False)
        copied.append(target)
    return copied, error


def _signal_reason(returncode: int, limits: SandboxLimits) -> str:
    sig = -returncode
    if sig == signal.SIGXCPU:
        return f"timeout: cpu {limits.cpu_seconds:g} s"
    if sig == signal.SIGKILL:  # the hard CPU limit (SIGXCPU ignored) or the kernel's OOM killer
        return f"killed: cpu limit {limits.cpu_seconds:g} s or out of memory"
    if sig == signal.SIGSEGV:
        return "crashed (segmentation fault; maybe the memory limit)"
    try:
        return f"killed by {signal.Signals(sig).name}"
    except ValueError:
        return f"killed by signal {sig}"


def run_code(code: str, images: Sequence[Path] = (), limits: SandboxLimits = SandboxLimits(),
             out_dir: Path | None = None, *, audit_hook: bool = True) -> SandboxResult:
    """Run `code` in the sandbox with copies of `images`; never raises for what the code does.

    `audit_hook=False` leaves out the Python-level hook so tests can show the OS layers hold alone.
    Raises ImageError only when an input image is missing or unreadable (a caller error).
    """
    root = Path(tempfile.mkdtemp(prefix="r1v-sandbox-"))
    try:
        work = root / "work"
        (work / "outputs").mkdir(parents=True)
        names = _stage_images(images, work)
        (root / "code.py").write_text(code, encoding="utf-8")
        cfg = {"work_dir": str(work), "code_path": str(root / "code.py"), "status_path": str(root / "status.json"),
               "image_names": names, "limits": asdict(limits), "sys_path": _sys_path(),
               "read_roots": _read_roots(), "rw_files": ["/dev/null"],
               "audit_hook": audit_hook}
        (root / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
        env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "LANG": "C.UTF-8", "TMPDIR": str(work),
               "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-B", str(_CHILD), str(root / "config.json")],
            cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True, close_fds=True)
        with proc:
            out, err, reason = _collect_output(proc, limits)
        status: dict = {}
        try:
            status = json.loads((root / "status.json").read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            pass
        error = reason or status.get("error")
        if error is None and proc.returncode < 0:
            error = _signal_reason(proc.returncode, limits)
        elif error is None and proc.returncode != 0:
            error = f"exit code {proc.returncode}"
        outputs, out_error = _take_outputs(work / "outputs", out_dir, limits)
        error = error or out_error
        _warn_missing_layers(status.get("layers", {}))
        return SandboxResult(ok=error is None, stdout=out.decode("utf-8", "replace"),
                             stderr=err.decode("utf-8", "replace"), error=error, outputs=outputs,
                             layers=status.get("layers", {}))
    finally:
        shutil.rmtree(root, ignore_errors=True)


_warned_layers: set[str] = set()


def _warn_missing_layers(layers: dict[str, str]) -> None:
    for name, state in layers.items():
        if state != "on" and name not in _warned_layers:
            _warned_layers.add(name)
            _log.warning("sandbox layer %s is off on this machine (%s); the others still apply", name, state)


def sandbox_layers() -> dict[str, str]:
    """Which fence layers the child could set up on this machine ("on" or the reason it is off)."""
    return run_code("pass").layers
