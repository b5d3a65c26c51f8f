"""The code sandbox: happy paths, and escape attempts that must all end as tool errors (ok=False).

Escape tests run twice where it matters: with the Python audit hook (the normal setting) and without
it, to show the OS layers (Landlock, seccomp, namespaces, rlimits) hold on their own.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import uuid
from pathlib import Path

import pytest
from PIL import Image

from r1v.agent.sandbox import SandboxLimits, SandboxResult, run_code, sandbox_layers
from r1v.errors import ConfigError, ImageError

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox fence is Linux-only")

FAST = SandboxLimits(cpu_seconds=5, wall_seconds=20)


@pytest.fixture(scope="module")
def layers() -> dict[str, str]:
    return sandbox_layers()


@pytest.fixture(params=[True, False], ids=["hook", "os-only"])
def hook(request: pytest.FixtureRequest, layers: dict[str, str]) -> bool:
    """Run an escape test with the audit hook, and without it when the OS layers are all on here."""
    if not request.param and any(v != "on" for v in layers.values()):
        pytest.skip(f"some OS layers are off on this kernel: {layers}")
    return request.param


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    img = Image.new("RGB", (200, 100), (0, 0, 255))
    img.paste((255, 0, 0), (150, 50, 200, 100))  # red bottom-right corner
    path = tmp_path / "photo.png"
    img.save(path)
    return path


def _contained(r: SandboxResult, *words: str) -> None:
    assert not r.ok, r
    assert r.error and any(w in r.error for w in words), r.error


# ------------------------------------------------------------------------------------ happy paths
def test_layers_reported(layers: dict[str, str]) -> None:
    assert layers["rlimits"] == "on"
    assert set(layers) == {"rlimits", "namespaces", "landlock", "seccomp"}


def test_crop_zoom_comes_back_as_output(photo: Path, tmp_path: Path) -> None:
    code = ("crop = image.crop((150, 50, 200, 100)).resize((100, 100))\n"
            "a = np.asarray(crop)\nprint(a.shape, a[..., 0].mean())\nsave(crop, 'zoom.png')\n")
    r = run_code(code, [photo], FAST, out_dir=tmp_path / "out")
    assert r.ok and r.error is None, r
    assert r.stdout == "(100, 100, 3) 255.0\n"
    assert [p.name for p in r.outputs] == ["zoom.png"] and r.outputs[0].parent == tmp_path / "out"
    with Image.open(r.outputs[0]) as out:
        assert out.size == (100, 100) and out.getpixel((0, 0)) == (255, 0, 0)
    assert r.to_dict() == {"ok": True, "stdout": r.stdout, "stderr": "", "error": None,
                           "outputs": [str(r.outputs[0])]}


def test_images_are_copied_and_listed(photo: Path, tmp_path: Path) -> None:
    jpg = tmp_path / "b.jpg"
    Image.new("RGB", (8, 8)).save(jpg)
    r = run_code("import os\nprint(sorted(os.listdir('.')), len(images), images[1].size)", [photo, jpg], FAST)
    assert r.ok, r
    assert r.stdout.strip() == "['image_0.png', 'image_1.png', 'outputs'] 2 (8, 8)"
    # the same out_dir twice does not overwrite earlier outputs
    first = run_code("save(image)", [photo], FAST, out_dir=tmp_path / "o").outputs
    second = run_code("save(image)", [photo], FAST, out_dir=tmp_path / "o").outputs
    assert first[0] != second[0] and first[0].exists() and second[0].exists()


def test_exception_reports_last_traceback_line() -> None:
    r = run_code("x = 1\n\ndef f():\n    return {}['missing']\nf()\n", limits=FAST)
    _contained(r, "KeyError")
    assert r.error == "KeyError: 'missing'"
    assert 'File "<code>", line 4' in r.stderr and "return {}['missing']" in r.stderr
    assert "_sandbox_child" not in r.stderr


def test_syntax_error_and_exit_codes() -> None:
    assert run_code("def (:", limits=FAST).error.startswith("SyntaxError")
    assert run_code("import sys; sys.exit(3)", limits=FAST).error == "exit code 3"
    assert run_code("import sys; sys.exit(0)", limits=FAST).ok


def test_bad_limits_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="memory_mb must be at least 128"):
        SandboxLimits(memory_mb=16)
    with pytest.raises(ConfigError, match="wall_seconds"):
        SandboxLimits(wall_seconds=0)


def test_missing_image_is_a_caller_error(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="nope.png"):
        run_code("pass", [tmp_path / "nope.png"])


# ------------------------------------------------------------------------------------- filesystem
def test_cannot_write_outside(hook: bool) -> None:
    name = f"r1v-escape-{uuid.uuid4().hex}"
    for target in (Path("/tmp") / name, Path.home() / name, Path("/dev/shm") / name):
        r = run_code(f"open({str(target)!r}, 'w').write('pwned')", limits=FAST, audit_hook=hook)
        _contained(r, "PermissionError")
        assert not target.exists()
    r = run_code(f"import os; os.rename('outputs', {str(Path('/tmp') / name)!r})", limits=FAST, audit_hook=hook)
    _contained(r, "PermissionError", "OSError")
    assert not (Path("/tmp") / name).exists()


def test_cannot_read_user_files(hook: bool, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-42")
    for code in (f"print(open({str(secret)!r}).read())", f"import os; print(os.listdir({str(tmp_path)!r}))",
                 f"import os; print(os.listdir({str(Path.home())!r}))", "print(open('/proc/1/environ').read())"):
        r = run_code(code, limits=FAST, audit_hook=hook)
        _contained(r, "PermissionError")
        assert "TOP-SECRET" not in r.stdout and "secret.txt" not in r.stdout


def test_symlink_or_link_to_secret_is_not_returned(hook: bool, tmp_path: Path) -> None:
    secret = tmp_path / "secret.png"
    secret.write_text("TOP-SECRET-42")
    r = run_code(f"import os\ntry:\n    os.link({str(secret)!r}, 'outputs/b.png')\nexcept OSError:\n    pass\n"
                 f"os.symlink({str(secret)!r}, 'outputs/a.png')\n", limits=FAST, audit_hook=hook)
    assert r.outputs == []


# ---------------------------------------------------------------------------------------- network
def test_no_network(hook: bool) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    port = server.getsockname()[1]
    accepted: list[object] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                accepted.append(server.accept())
            except OSError:
                pass

    stop = threading.Event()
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        r = run_code(f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
                     "s.sendall(b'hello')\n", limits=FAST, audit_hook=hook)
        _contained(r, "network is disabled", "PermissionError", "OSError", "unreachable")
        u = run_code("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                     "s.sendto(b'x', ('127.0.0.1', 53))\n", limits=FAST, audit_hook=hook)
        _contained(u, "network is disabled", "OSError", "PermissionError")
    finally:
        stop.set()
        thread.join()
        server.close()
    assert accepted == []


# -------------------------------------------------------------------------------------- processes
@pytest.mark.parametrize("bomb", [
    "import os\nwhile True:\n    os.fork()\n",
    "import subprocess, sys\nwhile True:\n    subprocess.Popen([sys.executable, '-c', 'pass'])\n",
    "import os\nos.system('echo hi > /tmp/r1v-system-escape')\nos.execv('/bin/sh', ['sh'])\n",
], ids=["fork", "subprocess", "system-exec"])
def test_fork_bombs_are_stopped(hook: bool, bomb: str) -> None:
    r = run_code(bomb, limits=FAST, audit_hook=hook)
    _contained(r, "PermissionError", "Operation not permitted", "disabled")
    assert not Path("/tmp/r1v-system-escape").exists()


def test_threads_still_work() -> None:
    r = run_code("import threading\nout = []\nts = [threading.Thread(target=out.append, args=(i,)) for i in range(4)]\n"
                 "[t.start() for t in ts]; [t.join() for t in ts]\nprint(sorted(out))\n", limits=FAST)
    assert r.ok and r.stdout == "[0, 1, 2, 3]\n", r


def test_ctypes_is_refused_by_the_hook() -> None:
    r = run_code("import ctypes\nctypes.CDLL(None).fork()\n", limits=FAST)
    _contained(r, "ctypes is disabled")


# -------------------------------------------------------------------------------- resource limits
def test_memory_bombs() -> None:
    r = run_code("x = bytearray(8 * 1024 ** 3)\n", limits=FAST)
    _contained(r, "memory limit")
    grow = run_code("chunks = []\nwhile True:\n    chunks.append(bytearray(10 ** 7))\n",
                    limits=SandboxLimits(memory_mb=512, cpu_seconds=10, wall_seconds=30))
    _contained(grow, "memory limit")
    assert "512 MB" in grow.error


def test_cpu_limit_stops_busy_loop() -> None:
    r = run_code("while True:\n    pass\n", limits=SandboxLimits(cpu_seconds=1, wall_seconds=30))
    _contained(r, "timeout: cpu 1 s")


def test_cpu_limit_holds_when_sigxcpu_is_ignored() -> None:
    code = "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True:\n    pass\n"
    r = run_code(code, limits=SandboxLimits(cpu_seconds=1, wall_seconds=30))
    _contained(r, "killed: cpu limit 1 s")


def test_relative_paths_after_chdir_are_checked(hook: bool) -> None:
    name = f"r1v-escape-{uuid.uuid4().hex}"
    r = run_code(f"import os\nos.chdir('/tmp')\nopen({name!r}, 'w').write('x')\n", limits=FAST, audit_hook=hook)
    _contained(r, "PermissionError")
    assert not (Path("/tmp") / name).exists()


def test_wall_limit_stops_sleeping_code() -> None:
    r = run_code("import time\nprint('started', flush=True)\ntime.sleep(60)\n",
                 limits=SandboxLimits(cpu_seconds=5, wall_seconds=1.5))
    _contained(r, "timeout: wall 1.5 s")
    assert r.stdout == "started\n"  # output before the kill is kept


def test_huge_output_is_truncated_and_stopped() -> None:
    limits = SandboxLimits(cpu_seconds=20, wall_seconds=30, max_output_bytes=10_000)
    r = run_code("while True:\n    print('x' * 1000)\n", limits=limits)
    _contained(r, "output limit")  # not a wall timeout: the run was stopped as soon as the cap was hit
    assert len(r.stdout) == 10_000
    big_err = run_code("import sys\nsys.stderr.write('e' * 50_000)\n", limits=limits)
    _contained(big_err, "output limit")
    assert len(big_err.stderr) == 10_000


def test_file_size_limit() -> None:
    r = run_code("open('big.bin', 'wb').write(b'0' * (3 * 1024 * 1024))\n",
                 limits=SandboxLimits(file_size_mb=1, cpu_seconds=5, wall_seconds=20))
    _contained(r, "File too large", "OSError", "file size")


def test_too_many_output_files(photo: Path) -> None:
    limits = SandboxLimits(max_output_files=3, cpu_seconds=5, wall_seconds=20)
    r = run_code("for i in range(5):\n    save(image, f'o{i}.png')\n", [photo], limits)
    _contained(r, "too many output files: 5 (limit 3)")
    assert [p.name for p in r.outputs] == ["o0.png", "o1.png", "o2.png"]


def test_environment_is_scrubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("R1V_TEST_SECRET", "hunter2-token")
    r = run_code("import os\nprint(dict(os.environ))\n", limits=FAST)
    assert r.ok, r
    assert "hunter2-token" not in r.stdout and "R1V_TEST_SECRET" not in r.stdout
    env = eval(r.stdout)  # noqa: S307 - our own dict repr
    assert os.path.basename(env["HOME"]) == "work" and env["PATH"] == "/usr/bin:/bin"


# --------------------------------------------------------------------------------------------- CLI
def test_cli_sandbox_run_json(photo: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from r1v.cli import app

    script = tmp_path / "script.py"
    script.write_text("print(image.size)\nsave(image.rotate(90, expand=True), 'rot.png')\n")
    res = CliRunner().invoke(app, ["sandbox", "run", str(script), "--image", str(photo), "--json",
                                   "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["ok"] and data["stdout"] == "(200, 100)\n" and data["error"] is None
    assert data["outputs"] == [str(tmp_path / "o" / "rot.png")]
    bad = tmp_path / "bad.py"
    bad.write_text("open('/etc/passwd').read()\n")
    res = CliRunner().invoke(app, ["sandbox", "run", str(bad), "--json"])
    assert res.exit_code == 1
    assert json.loads(res.stdout)["error"].startswith("PermissionError")
