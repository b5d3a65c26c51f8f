"""`r1v serve --engine vllm`: the `vllm serve` command line and chat template, built without vLLM installed."""

from __future__ import annotations

import importlib.util
import json

import jinja2
import pytest
from typer.testing import CliRunner

from r1v.cli import app
from r1v.data.schema import Message
from r1v.errors import ConfigError
from r1v.model.build import load_vlm, save_model
from r1v.processing.template import TEMPLATES, render_prompt
from r1v.serve.vllm_serve import chat_template_jinja, exec_vllm, vllm_command

CONVERSATIONS = [
    [Message("user", "<image>\nWhat is shown?")],
    [Message("system", "Be brief."), Message("user", "q1"), Message("assistant", "<think>\nhmm</think>\n\nA1"),
     Message("user", "<image>\nq2")],
    [Message("user", "q1"), Message("assistant", "plain answer"), Message("user", "q2")],
]


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("think", [True, False])
def test_jinja_template_renders_exactly_like_ours(template, think) -> None:
    jt = jinja2.Environment().from_string(chat_template_jinja(template))
    for conv in CONVERSATIONS:
        msgs = [{"role": m.role, "content": m.content} for m in conv]
        assert jt.render(messages=msgs, add_generation_prompt=True, enable_thinking=think) == \
            render_prompt(conv, template, think=think)
    # OpenAI-style content lists (what vLLM hands the template) become <image> lines + text
    parts = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}},
                                          {"type": "text", "text": "What is shown?"}]}]
    assert jt.render(messages=parts, add_generation_prompt=True, enable_thinking=think) == \
        render_prompt(CONVERSATIONS[0], template, think=think)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "tiny-ckpt"
    save_model(load_vlm("tiny"), out)
    return out


def test_command_for_our_checkpoint(tiny_dir, tmp_path) -> None:
    cmd, env, template_file = vllm_command(tiny_dir, port=9001, api_key="s3cret", tensor_parallel_size=4,
                                           max_images=3, template_dir=tmp_path)
    assert cmd[:3] == ["vllm", "serve", str(tiny_dir)]
    opts = dict(zip(cmd[3::2], cmd[4::2], strict=False))
    assert opts["--host"] == "127.0.0.1" and opts["--port"] == "9001"
    assert opts["--tensor-parallel-size"] == "4"
    assert json.loads(opts["--limit-mm-per-prompt"]) == {"image": 3}
    assert opts["--reasoning-parser"] == "deepseek_r1" and opts["--served-model-name"] == "tiny-ckpt"
    assert opts["--chat-template"] == str(template_file) and template_file.name == "r1v3.jinja"
    assert template_file.read_text() == chat_template_jinja("r1v3")
    assert "--trust-remote-code" not in cmd
    assert "s3cret" not in " ".join(cmd) and env == {"VLLM_API_KEY": "s3cret"}  # never in argv


def test_command_for_released_layout(tmp_path) -> None:
    ckpt = tmp_path / "Skywork-R1V2-38B"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"llm_config": {}, "vision_config": {}, "template": "r1v2"}))
    cmd, env, template_file = vllm_command(ckpt, template_dir=tmp_path / "t")
    assert "--trust-remote-code" in cmd and template_file.name == "r1v2.jinja" and env == {}


def test_presets_and_bad_args_are_clear_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="checkpoint folder"):
        vllm_command("tiny")
    with pytest.raises(ConfigError, match="no config.json"):
        vllm_command(tmp_path)
    with pytest.raises(ConfigError, match="unknown chat template"):
        chat_template_jinja("nope")


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_without_vllm_the_cli_says_so(tiny_dir) -> None:
    with pytest.raises(ConfigError, match="needs vLLM"):
        exec_vllm(["vllm", "serve", str(tiny_dir)], {})
    res = CliRunner().invoke(app, ["serve", "--engine", "vllm", "--model", str(tiny_dir)])
    assert res.exit_code == 2 and "needs vLLM" in res.output


def test_cli_rejects_unknown_engine_and_missing_model() -> None:
    res = CliRunner().invoke(app, ["serve", "--engine", "tgi", "--model", "tiny"])
    assert res.exit_code == 2 and "--engine must be" in res.output
    res = CliRunner().invoke(app, ["serve", "--model", "/no/such/folder"])
    assert res.exit_code == 2 and "no such folder" in res.output


@pytest.mark.vllm
def test_vllm_serve_answers_the_openai_client_with_the_reasoning_apart(tmp_path) -> None:
    """The real `vllm serve` (CPU build) started by `r1v serve --engine vllm` on a text-only checkpoint: the official
    client gets the thought apart from the answer. vLLM >= 0.11 names the field `reasoning` (it was
    `reasoning_content`, the name our own server and DeepSeek's API use); see docs/vllm.md."""
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    import openai

    from r1v.model.build import build_preset
    from r1v.rollout.vllm import export_llm

    folder = export_llm(build_preset("tiny64"), tmp_path / "tiny64-llm")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "r1v.cli", "serve", "--engine", "vllm", "--model", str(folder),
                             "--port", str(port), "--vllm-arg=--dtype=float32", "--vllm-arg=--enforce-eager",
                             "--vllm-arg=--max-model-len=512"], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
                time.sleep(2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
        reply = client.chat.completions.create(model="tiny64-llm", messages=[{"role": "user", "content": "Hi?"}],
                                               max_tokens=12, temperature=0)
        msg = reply.choices[0].message
        extra = msg.model_extra or {}
        reasoning = extra.get("reasoning") or extra.get("reasoning_content")
        # the thinking pre-fill opens the thought and a random model never closes it: all of it is reasoning
        assert isinstance(reasoning, str) and reasoning and not msg.content
        assert reply.usage.completion_tokens == 12 and reply.choices[0].finish_reason == "length"
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()
