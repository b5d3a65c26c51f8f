"""Child bootstrap of the r1v code sandbox (run as a standalone script, never imported by r1v).

`r1v.agent.sandbox.run_code` starts `python -I -S -B _sandbox_child.py CONFIG.json` in a new session with
a scrubbed environment. This script fences itself in before any model-written code runs, in this order:

1. resource limits (CPU seconds, address space, file size, processes, open files, no core dumps),
   soft == hard so the code cannot raise them again;
2. a new user + network namespace (`unshare(CLONE_NEWUSER | CLONE_NEWNET)` through libc): no network
   interfaces except a down loopback, so no packet leaves the process;
3. Landlock (Linux >= 5.13): file access limited to read/execute under the Python install and system
   library folders and full access to the work folder only; TCP bind/connect denied (ABI >= 4); signals
   and abstract unix sockets scoped to the sandbox (ABI >= 6);
4. seccomp (after no_new_privs): fork, vfork, execve, execveat, ptrace, process_vm_* and clone without
   CLONE_THREAD fail with EPERM (clone3 with ENOSYS so libc falls back to clone); threads still work;
5. an audit hook (defence in depth, Python level only): refuses sockets, process creation, ctypes,
   opening files for writing outside the work folder and reading outside the work folder and the
   allowed install prefixes, with a clear PermissionError message.

Each layer that cannot be set up on this kernel is skipped and recorded in the status file; the parent
reports which layers were active. Then numpy and PIL are imported, the images are loaded as `image` and
`images`, `save(img, name=None)` is defined, and the code runs. The final error (if any) is written as
JSON to the status file opened before the fences went up.
"""

from __future__ import annotations

import ctypes
import json
import linecache
import os
import platform
import resource
import struct
import sys
import traceback

_MB = 1024 * 1024


# ----------------------------------------------------------------------------------------- limits
def _set_limits(lim: dict) -> None:
    cpu = max(1, int(-(-float(lim["cpu_seconds"]) // 1)))  # ceil
    pairs = [
        (resource.RLIMIT_CPU, cpu, cpu + 1),  # SIGXCPU at cpu s, SIGKILL one second later
        (resource.RLIMIT_AS, int(lim["memory_mb"]) * _MB, None),
        (resource.RLIMIT_FSIZE, int(lim["file_size_mb"]) * _MB, None),
        (resource.RLIMIT_NPROC, int(lim["max_processes"]), None),
        (resource.RLIMIT_NOFILE, 64, None),
        (resource.RLIMIT_CORE, 0, None),
    ]
    for which, soft, hard in pairs:
        resource.setrlimit(which, (soft, soft if hard is None else hard))


# ------------------------------------------------------------------------------------- namespaces
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_CLONE_NEWUSER, _CLONE_NEWNET = 0x10000000, 0x40000000


def _unshare() -> str | None:
    if _libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) != 0:
        return f"unshare failed: {os.strerror(ctypes.get_errno())}"
    return None


# --------------------------------------------------------------------------------------- landlock
_LL_CREATE, _LL_ADD, _LL_RESTRICT = 444, 445, 446  # same numbers on every Linux architecture
_FS_EXECUTE, _FS_WRITE_FILE, _FS_READ_FILE, _FS_READ_DIR = 1, 2, 4, 8
_FS_TRUNCATE, _FS_IOCTL_DEV = 1 << 14, 1 << 15
_PR_SET_NO_NEW_PRIVS = 38


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _fs_mask(abi: int) -> int:
    mask = (1 << 13) - 1  # ABI 1: EXECUTE .. MAKE_SYM
    if abi >= 2:
        mask |= 1 << 13  # REFER
    if abi >= 3:
        mask |= _FS_TRUNCATE
    if abi >= 5:
        mask |= _FS_IOCTL_DEV
    return mask


def _landlock(work: str, read_roots: list[str], rw_files: list[str]) -> str | None:
    abi = _libc.syscall(_LL_CREATE, None, 0, 1)  # LANDLOCK_CREATE_RULESET_VERSION
    if abi < 1:
        return f"landlock unavailable: {os.strerror(ctypes.get_errno())}"
    fs = _fs_mask(abi)
    net = 3 if abi >= 4 else 0  # BIND_TCP | CONNECT_TCP, no rule allows any port
    scoped = 3 if abi >= 6 else 0  # ABSTRACT_UNIX_SOCKET | SIGNAL
    attr = struct.pack("<QQQ", fs, net, scoped)[: 8 if abi < 4 else 16 if abi < 6 else 24]
    buf = ctypes.create_string_buffer(attr, len(attr))
    ruleset = _libc.syscall(_LL_CREATE, buf, len(attr), 0)
    if ruleset < 0:
        return f"landlock ruleset failed: {os.strerror(ctypes.get_errno())}"
    file_bits = _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | (fs & (_FS_TRUNCATE | _FS_IOCTL_DEV))
    rules = [(work, fs)] + [(p, _FS_EXECUTE | _FS_READ_FILE | _FS_READ_DIR) for p in read_roots]
    rules += [(p, _FS_WRITE_FILE | _FS_READ_FILE) for p in rw_files]
    try:
        for path, access in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # a listed folder that does not exist here
            try:
                if not os.path.isdir(path):
                    access &= file_bits
                rule = _PathBeneath(access, fd)
                if _libc.syscall(_LL_ADD, ruleset, 1, ctypes.byref(rule), 0) != 0:
                    return f"landlock rule for {path} failed: {os.strerror(ctypes.get_errno())}"
            finally:
                os.close(fd)
        if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            return "no_new_privs failed"
        if _libc.syscall(_LL_RESTRICT, ruleset, 0) != 0:
            return f"landlock restrict failed: {os.strerror(ctypes.get_errno())}"
    finally:
        os.close(ruleset)
    return None


# ---------------------------------------------------------------------------------------- seccomp
_SYSCALLS = {  # arch: (audit arch, clone, clone3, denied with EPERM)
    "x86_64": (0xC000003E, 56, 435, [57, 58, 59, 322, 101, 310, 311]),  # fork vfork execve execveat ptrace pvm_rw
    "aarch64": (0xC00000B7, 220, 435, [221, 281, 117, 270, 271]),
}


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def _seccomp() -> str | None:
    table = _SYSCALLS.get(platform.machine())
    if table is None:
        return f"seccomp filter not written for {platform.machine()}"
    arch, clone, clone3, denied = table
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, kill = 0x7FFF0000, 0x80000000
    eperm, enosys = 0x00050000 | 1, 0x00050000 | 38
    prog = [(ld, 0, 0, 4), (jeq, 1, 0, arch), (ret, 0, 0, kill), (ld, 0, 0, 0)]
    if arch == 0xC000003E:
        prog += [(jge, 0, 1, 0x40000000), (ret, 0, 0, kill)]  # no x32 syscalls
    prog += [(jeq, 0, 1, clone3), (ret, 0, 0, enosys)]
    for nr in denied:
        prog += [(jeq, 0, 1, nr), (ret, 0, 0, eperm)]
    # clone: allowed only with CLONE_THREAD (0x10000) in flags (args[0], low word at offset 16)
    prog += [(jeq, 0, 3, clone), (ld, 0, 0, 16), (jset, 1, 0, 0x10000), (ret, 0, 0, eperm), (ret, 0, 0, allow)]
    filters = (_SockFilter * len(prog))(*[_SockFilter(*ins) for ins in prog])
    fprog = _SockFprog(len(prog), filters)
    if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return "no_new_privs failed"
    if _libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
        return f"seccomp failed: {os.strerror(ctypes.get_errno())}"
    return None


# ------------------------------------------------------------------------------------- audit hook
_PROCESS_EVENTS = {"os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
                   "subprocess.Popen", "os.kill", "os.killpg", "pty.spawn"}
_PATH_EVENTS = {"os.remove", "os.rmdir", "os.mkdir", "os.rename", "os.symlink", "os.link", "os.chmod",
                "os.chown", "os.truncate", "os.utime", "shutil.rmtree", "shutil.copyfile", "shutil.move"}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _install_audit_hook(work: str, read_roots: list[str]) -> None:
    work_real = os.path.realpath(work)
    roots = [os.path.realpath(p) for p in read_roots]

    def inside(path: object, allowed: list[str]) -> bool:
        if isinstance(path, int):
            return True  # an already-open descriptor
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not isinstance(path, str | os.PathLike):
            return False
        real = os.path.realpath(os.path.abspath(os.fspath(path)))  # relative to the current folder
        return any(real == a or real.startswith(a.rstrip("/") + "/") for a in allowed)

    def hook(event: str, args: tuple) -> None:
        if event.startswith("socket."):
            raise PermissionError("network is disabled in the sandbox")
        if event in _PROCESS_EVENTS:
            raise PermissionError(f"starting or signalling processes is disabled in the sandbox ({event})")
        if event.startswith("ctypes."):
            raise PermissionError(f"ctypes is disabled in the sandbox ({event})")
        if event == "open":
            path, mode, flags = args
            if path is None:
                return
            writing = any(c in str(mode or "") for c in "wax+") or bool((flags or 0) & _WRITE_FLAGS)
            if writing and not inside(path, [work_real]):
                raise PermissionError(f"writing outside the sandbox folder is not allowed: {path}")
            if not writing and not inside(path, [work_real, *roots]):
                raise PermissionError(f"reading outside the sandbox folder is not allowed: {path}")
        elif event in _PATH_EVENTS:
            for arg in args:
                if isinstance(arg, str | bytes | os.PathLike) and not inside(arg, [work_real]):
                    raise PermissionError(f"changing files outside the sandbox folder is not allowed: {arg}")

    sys.addaudithook(hook)


# ------------------------------------------------------------------------------------------ main
def _error_line(exc: BaseException, memory_mb: int) -> str:
    line = traceback.format_exception_only(type(exc), exc)[-1].strip()
    if isinstance(exc, MemoryError):
        return f"memory limit ({memory_mb} MB): {line}"
    if isinstance(exc, RecursionError):
        return f"recursion limit: {line}"
    return line


def main() -> int:
    with open(sys.argv[1], encoding="utf-8") as f:
        cfg = json.load(f)
    status = open(cfg["status_path"], "w", encoding="utf-8")  # noqa: SIM115 - kept open across the fences
    with open(cfg["code_path"], encoding="utf-8") as f:
        code = f.read()
    work, lim = cfg["work_dir"], cfg["limits"]
    os.chdir(work)
    sys.stdout.reconfigure(errors="backslashreplace")
    sys.stderr.reconfigure(errors="backslashreplace")
    layers: dict[str, str] = {}
    _set_limits(lim)
    layers["rlimits"] = "on"
    for name, setup in (("namespaces", _unshare),
                        ("landlock", lambda: _landlock(work, cfg["read_roots"], cfg["rw_files"])),
                        ("seccomp", _seccomp)):
        try:
            problem = setup()
        except (AttributeError, OSError) as e:  # not Linux, or an interface this kernel lacks
            problem = f"unavailable: {e}"
        layers[name] = "on" if problem is None else problem
    sys.path.extend(p for p in cfg["sys_path"] if p not in sys.path)

    try:
        import numpy as np
        from PIL import Image

        Image.init()
        images = [Image.open(os.path.join(work, name)) for name in cfg["image_names"]]
    except BaseException as e:  # noqa: BLE001 - e.g. a memory limit too small to import numpy
        last = (str(e).strip().splitlines() or [""])[-1]
        status.write(json.dumps({"error": f"sandbox setup failed: {type(e).__name__}: {last}",
                                 "layers": layers}))
        status.close()
        return 1
    counter = [0]

    def save(img: object, name: str | None = None) -> str:
        """Save a PIL image or numpy array into ./outputs/ (PNG unless name ends .jpg); return its path."""
        if not isinstance(img, Image.Image):
            img = Image.fromarray(np.asarray(img))
        counter[0] += 1
        name = os.path.basename(name) if name else f"output_{counter[0]}.png"
        if not name.lower().endswith((".png", ".jpg", ".jpeg")):
            name += ".png"
        path = os.path.join("outputs", name)
        if name.lower().endswith((".jpg", ".jpeg")) and img.mode not in ("RGB", "L"):
            img = img.convert("RGB")
        img.save(path)
        return path

    env = {"__name__": "__main__", "__builtins__": __builtins__, "np": np, "numpy": np, "Image": Image,
           "images": images, "image": images[0] if images else None, "save": save}
    linecache.cache["<code>"] = (len(code), None, code.splitlines(True), "<code>")
    if cfg.get("audit_hook", True):
        _install_audit_hook(work, cfg["read_roots"])
    error = None
    try:
        exec(compile(code, "<code>", "exec"), env)  # noqa: S102 - this is the sandbox
    except SystemExit as e:
        if e.code not in (None, 0):
            error = f"exit code {e.code}"
    except BaseException as e:  # noqa: BLE001 - every failure of the code is reported
        tb = e.__traceback__.tb_next if e.__traceback__ is not None else None
        traceback.print_exception(type(e), e, tb, file=sys.stderr)
        error = _error_line(e, int(lim["memory_mb"]))
    sys.stdout.flush()
    sys.stderr.flush()
    status.write(json.dumps({"error": error, "layers": layers}))
    status.close()
    return 0 if error is None else 1


if __name__ == "__main__":
    sys.exit(main())
