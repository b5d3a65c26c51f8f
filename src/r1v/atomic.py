"""Atomic outputs: a file or a folder appears whole under its final name, or not at all.

Every writer of a report, a summary, a run file or a model folder goes through these, so a run that fails
(or is killed) midway leaves the previous output, or nothing, never a half-written one:

- `atomic_write_text(path, text)` / `atomic_write_bytes(path, data)`: a temp file in the same folder,
  fsync, then `os.replace` onto `path`.
- `write_summary(out_dir, summary)`: `out_dir/summary.json`, the same way.
- `atomic_savefig(fig, path)`: a matplotlib figure as PNG, the same way.
- `with atomic_dir(folder) as tmp:` write everything into `tmp`; when the block ends without an error,
  `tmp` takes the place of `folder` (an old `folder` is moved aside, then deleted); on an error `tmp` is
  deleted and `folder` is left as it was.

A path that cannot be written (a read-only folder, a file where a folder should be, a full disk) raises
`OutputError` naming it, before or instead of anything half-done.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from r1v.errors import OutputError


def _fail(path: Path, e: OSError) -> OutputError:
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    why = f"{blocker} is a file, not a folder" if blocker is not None else (e.strerror or str(e))
    return OutputError(f"{path}: cannot write ({why})")


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` through a temp file in the same folder and an atomic rename."""
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    except OSError as e:
        raise _fail(p, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise _fail(p, e) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` through a temp file in the same folder and an atomic rename."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_summary(out_dir: str | Path, summary: dict[str, Any]) -> Path:
    """Write `out_dir/summary.json` (a run's summary, indented JSON) atomically."""
    return atomic_write_text(Path(out_dir) / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")


def atomic_savefig(fig: Any, path: str | Path, dpi: int = 100) -> Path:
    """Save a matplotlib figure as PNG through `atomic_write_bytes`."""
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    return atomic_write_bytes(path, buf.getvalue())


@contextmanager
def atomic_dir(folder: str | Path) -> Iterator[Path]:
    """An empty temp folder beside `folder` that becomes `folder` when the block succeeds (see above)."""
    final = Path(folder)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = final.parent / f".tmp-{final.name}-{tag}"
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as e:
        raise _fail(final, e) from None
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.parent / f".old-{final.name}-{tag}"
    try:
        if final.exists() or final.is_symlink():
            os.replace(final, old)
        os.replace(tmp, final)
    except OSError as e:
        if old.exists() and not final.exists():
            os.replace(old, final)  # put the previous output back
        shutil.rmtree(tmp, ignore_errors=True)
        raise _fail(final, e) from None
    shutil.rmtree(old, ignore_errors=True)
