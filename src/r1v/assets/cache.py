"""The asset cache folder and atomic writes into it.

Every asset is a folder under `r1v_home()`. It is built in a temporary folder beside it and renamed into
place only when complete, so a killed or failed prepare never leaves a half-written asset behind; a
manifest (`r1v_asset.json`) inside each folder records what it was built from.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

MANIFEST = "r1v_asset.json"
_STALE_TMP_SECONDS = 6 * 3600


def r1v_home(home: str | os.PathLike | None = None) -> Path:
    """The cache folder: `home` if given, else $R1V_HOME, else ~/.cache/r1v (not created here)."""
    if home is not None:
        return Path(home).expanduser()
    env = os.environ.get("R1V_HOME")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "r1v"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(folder: Path) -> dict | None:
    """The manifest of an asset folder, or None when the folder or manifest is missing/unreadable."""
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _clean_stale_tmp(tmp_root: Path) -> None:
    """Remove temp folders left by killed prepares (older than a few hours, so live builds are safe)."""
    if not tmp_root.is_dir():
        return
    now = time.time()
    for child in tmp_root.iterdir():
        with contextlib.suppress(OSError):
            if now - child.stat().st_mtime > _STALE_TMP_SECONDS:
                shutil.rmtree(child, ignore_errors=True)


def build_atomically(target: Path, build: Callable[[Path], dict],
                     is_current: Callable[[Path], bool] = lambda p: False) -> Path:
    """Build an asset folder at `target` atomically.

    `build(tmp_dir)` writes every file into `tmp_dir` and returns the manifest dict; the manifest is
    written last and the folder renamed to `target`. Any exception removes the temp folder and leaves
    `target` untouched. If, when the build ends, `is_current(target)` says another process already
    finished the same asset, that folder is kept and ours discarded; an outdated one is replaced.
    """
    tmp_root = target.parent / ".tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    _clean_stale_tmp(tmp_root)
    tmp = Path(tempfile.mkdtemp(prefix=f"{target.name}-", dir=tmp_root))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the finished asset is an ordinary folder
    try:
        manifest = build(tmp)
        manifest = {**manifest, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if is_current(target):
            return target
        if target.exists():  # an old or broken version: move it aside, then swap in the new one
            old = Path(tempfile.mkdtemp(prefix=f"{target.name}-old-", dir=tmp_root))
            os.replace(target, old / "x")
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if not is_current(target):  # not a finished concurrent build: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
