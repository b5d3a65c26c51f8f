"""Every bad input a clear error, nothing lost: one table over every entry point of r1v.

Each row builds one kind of bad input in a fresh folder, runs an `r1v` command on it in process (typer's
CliRunner), and checks four things:

1. the exit code (2 for bad input, like every `r1v` command's `error:` path; typer's own usage errors are 2 too);
2. no Python traceback: the command ends by `typer.Exit`, not by an exception escaping it;
3. exactly one `error:` line on stderr, matching the row's regex, which names the file, the record/line and
   the field where the input has them;
4. nothing half-written: the case folder (inputs and any output folder the command was pointed at) is
   exactly as it was before the command ran (same files, sizes and modification times).

API requests go through the server app in process (FastAPI's TestClient) and check the HTTP status and the
OpenAI-format error message instead. A few rows run the real `r1v` executable in a subprocess to show that
no traceback reaches the terminal. docs/reliability.md lists every row; a test keeps the two in step.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import bad_input_rows_config_data  # noqa: F401 - registers its rows
import bad_input_rows_models  # noqa: F401 - registers its rows
import pytest
from bad_input_kit import CASES, DOC, REPO, Case, Parts, png_bomb, png_bytes
from typer.testing import CliRunner

from r1v.cli import app

# ---------------------------------------------------------------------------------------------- running


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under `root` with its size and modification time."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        out[str(path.relative_to(root))] = (st.st_size if path.is_file() else -1, st.st_mtime_ns)
    return out


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:") or line.startswith("Error:")
            or "No such command" in line]


@pytest.fixture()
def home(tmp_path, monkeypatch):
    """A private R1V_HOME and working directory, so nothing the command writes escapes the case folder."""
    monkeypatch.setenv("R1V_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("row", CASES, ids=lambda r: r.kind)
def test_bad_input(row: Case, parts: Parts, tmp_path: Path, home: Path) -> None:
    d = tmp_path / "case"
    d.mkdir()
    argv = row.setup(d, parts)
    before = snapshot(tmp_path)
    res = CliRunner().invoke(app, argv)
    after = snapshot(tmp_path)
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        import traceback

        pytest.fail("traceback:\n" + "".join(traceback.format_exception(res.exception)))
    assert res.exit_code == row.code, res.output
    errors = error_lines(res.stderr)
    assert len(errors) == 1, f"expected one error line, got:\n{res.stderr}"
    assert re.search(row.message, errors[0]), f"{errors[0]!r} does not match {row.message!r}"
    assert "Traceback" not in res.output
    changed = sorted(set(before.items()) ^ set(after.items()))
    assert not changed, f"the failed command left files behind or changed them: {changed}"


# ---------------------------------------------------------------------------------------------- API requests


@dataclass(frozen=True)
class ApiCase:
    kind: str
    body: object  # JSON body, or bytes sent as they are
    status: int
    message: str  # regex on error.message
    param: str | None = None


def _img(url: str) -> dict:
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "hi"}]}


PNG_URL = "data:image/png;base64," + base64.b64encode(png_bytes((8, 8))).decode()
API_CASES = [
    ApiCase("api-body-not-json", b"{not json", 400, r"(JSON|json)"),
    ApiCase("api-messages-empty", {"messages": []}, 400, r"messages", "messages"),
    ApiCase("api-wrong-type", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": "many"}, 400,
            r"max_tokens", "max_tokens"),
    ApiCase("api-unknown-role", {"messages": [{"role": "robot", "content": "hi"}]}, 400, r"messages\.0\.role"),
    ApiCase("api-bad-base64-image", {"messages": [_img("data:image/png;base64,@@@not-base64@@@")]}, 400,
            r"invalid base64", "image_url"),
    ApiCase("api-not-an-image", {"messages": [_img("data:image/png;base64," + base64.b64encode(b"hello").decode())]},
            400, r"not a recognised image", "image_url"),
    ApiCase("api-image-bomb", {"messages": [_img("data:image/png;base64," + base64.b64encode(png_bomb()).decode())]},
            413, r"image", "image_url"),
    ApiCase("api-too-many-images", {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": PNG_URL}}] * 9}]}, 400, r"at most 8 images", "messages"),
    ApiCase("api-remote-image-url", {"messages": [_img("http://example.com/cat.png")]}, 400, r"not fetched",
            "image_url"),
    ApiCase("api-max-tokens-over-limit", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**6}, 400,
            r"over this server's limit", "max_tokens"),
]


@pytest.fixture(scope="module")
def api():
    from fastapi.testclient import TestClient

    from r1v.model.build import load_vlm
    from r1v.rollout.engine import TransformersEngine
    from r1v.serve.app import ServeSettings, create_app

    app_ = create_app(TransformersEngine(load_vlm("tiny")), ServeSettings(model_name="tiny", max_tokens_limit=64))
    with TestClient(app_, raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize("row", API_CASES, ids=lambda r: r.kind)
def test_bad_request(row: ApiCase, api) -> None:
    kw = {"content": row.body, "headers": {"content-type": "application/json"}} if isinstance(row.body, bytes) \
        else {"json": row.body}
    r = api.post("/v1/chat/completions", **kw)
    assert r.status_code == row.status, r.text
    err = r.json()["error"]
    assert re.search(row.message, err["message"]), err
    if row.param is not None:
        assert err["param"] == row.param, err
    assert "Traceback" not in r.text


# ---------------------------------------------------------------------------------------------- the real executable


@pytest.mark.parametrize("kind", ["config-yaml-not-text", "jsonl-not-utf8", "outputs-mathvista-scored-as-mmmu"])
def test_no_traceback_in_a_real_process(kind: str, parts: Parts, tmp_path: Path) -> None:
    """The same rows through `python -m r1v.cli`: stderr is the one error line (no traceback, no warnings)."""
    row = next(r for r in CASES if r.kind == kind)
    d = tmp_path / "case"
    d.mkdir()
    argv = row.setup(d, parts)
    env = {**os.environ, "R1V_HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, "-m", "r1v.cli", *argv], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == row.code, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and re.search(row.message, lines[0]), proc.stderr


# ---------------------------------------------------------------------------------------------- the list


def test_every_kind_is_listed_in_the_reliability_doc() -> None:
    text = DOC.read_text()
    kinds = [r.kind for r in CASES] + [r.kind for r in API_CASES]
    assert len(set(kinds)) == len(kinds), "duplicate kinds"
    missing = [k for k in kinds if f"`{k}`" not in text]
    assert not missing, f"docs/reliability.md does not list: {missing}"
    assert len(kinds) >= 40

