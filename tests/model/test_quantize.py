"""`--quantize int8|int4`: which layers become bitsandbytes layers, what stays, memory, outputs, the CLI paths."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from typer.testing import CliRunner

from r1v.cli import app
from r1v.data.schema import Sample
from r1v.errors import ConfigError, ModelError
from r1v.model.build import build_preset, load_vlm, save_model
from r1v.rollout.engine import SamplingParams, TransformersEngine

bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes not installed (pip install 'r1v[quant]')")

from r1v.model import quantize as q  # noqa: E402

GREEDY = SamplingParams(max_new_tokens=8, temperature=0.0, repetition_penalty=1.0, think=False)


def _logits(vlm, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return vlm.model(input_ids=ids).logits.float()


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_llm_layers_become_bitsandbytes_layers_and_the_vision_side_stays(mode: str) -> None:
    ref = build_preset("tiny")
    vlm = load_vlm("tiny", quantize=mode)
    inner = vlm.model.model
    linear = bnb.nn.Linear8bitLt if mode == "int8" else bnb.nn.Linear4bit
    lm_linears = [m for m in inner.language_model.modules() if isinstance(m, torch.nn.Linear)]
    assert lm_linears and all(isinstance(m, linear) for m in lm_linears)  # 2 layers x 7
    assert len(lm_linears) == 14
    assert isinstance(vlm.model.lm_head, bnb.nn.Linear8bitLt)  # head and embedding: int8 in both modes
    assert isinstance(inner.language_model.embed_tokens, bnb.nn.Embedding8bit)
    # the vision tower and the connector: plain layers, the very same weights
    for part in ("vision_tower", "multi_modal_projector"):
        mods = list(getattr(inner, part).modules())
        assert not any(type(m).__module__.startswith("bitsandbytes") for m in mods)
        for (name, p), (_, p0) in zip(getattr(inner, part).named_parameters(),
                                      getattr(ref.model.model, part).named_parameters(), strict=True):
            assert torch.equal(p, p0), name
    summary = vlm.provenance["quantize"]
    assert summary["mode"] == mode and summary["library"].startswith("bitsandbytes")
    assert summary["full_precision"][:2] == ["vision_tower", "multi_modal_projector"]
    assert q.is_quantized(vlm.model) and not q.is_quantized(ref.model)


def test_weight_bytes_fall_and_count_scales() -> None:
    fp = q.weight_bytes(build_preset("tiny").model)
    int8 = load_vlm("tiny", quantize="int8")
    int4 = load_vlm("tiny", quantize="int4")
    b8, b4 = q.weight_bytes(int8.model), q.weight_bytes(int4.model)
    assert b4 < b8 < 0.6 * fp
    # the LLM linears alone: int8 = 1 byte per weight + one fp32 scale per row (counted once the layer ran)
    lin = int8.model.model.language_model.layers[0].mlp.down_proj
    assert lin.weight.dtype == torch.int8 and lin.weight.numel() == 64 * 128
    assert int8.provenance["quantize"]["weight_bytes"] == b8


@pytest.mark.parametrize(("mode", "floor"), [("int8", 0.999), ("int4", 0.95)])
def test_quantised_logits_follow_full_precision(mode: str, floor: float) -> None:
    ref, vlm = build_preset("tiny"), load_vlm("tiny", quantize=mode)
    ids = torch.randint(0, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    cos = _cos(_logits(vlm, ids), _logits(ref, ids))
    assert floor < cos < 1.0  # close, and really changed (a no-op would give exactly 1.0)


def test_tied_embedding_stays_one_int8_matrix() -> None:
    vlm = build_preset("tiny")
    lm = vlm.model.model.language_model
    vlm.model.lm_head.weight = lm.embed_tokens.weight  # a tied model, like SmolLM2
    ids = torch.randint(0, 200, (1, 10), generator=torch.Generator().manual_seed(1))
    before = _logits(vlm, ids)
    q.quantize_vlm(vlm, "int4")
    head, emb = vlm.model.lm_head, lm.embed_tokens
    assert head.weight.data_ptr() == emb.weight.data_ptr()
    assert "tied" in vlm.provenance["quantize"]["quantized"][1]
    for _ in range(2):  # the head's first call moves its row scales into its state: the embedding keeps its own
        after = _logits(vlm, ids)
        assert emb.weight.SCB is not None
    assert _cos(after, before) > 0.95


def test_decode_loop_equals_generate_on_a_quantised_model() -> None:
    """Our decode loop (no fused step, no MKL packing for bitsandbytes layers) = transformers' generate."""
    vlm = load_vlm("tiny", quantize="int4")
    samples = [Sample.from_question("a", "What colour is the sky?"), Sample.from_question("b", "Hi")]
    ours = TransformersEngine(vlm).generate(samples, GREEDY)
    hf = TransformersEngine(vlm, backend="hf").generate(samples, GREEDY)
    assert [c[0].token_ids for c in ours] == [c[0].token_ids for c in hf]
    assert all(len(c[0].token_ids) > 0 for c in ours)


def test_errors_name_the_fix(tmp_path, monkeypatch) -> None:
    with pytest.raises(ModelError, match="int8, int4"):
        load_vlm("tiny", quantize="int3")
    vlm = load_vlm("tiny", quantize="int8")
    with pytest.raises(ModelError, match="quantised for inference"):
        save_model(vlm, tmp_path / "out")
    with pytest.raises(ModelError, match="meta device"):
        q.quantize_model(build_preset("r1v-38b", device="meta").model, "int8")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "bitsandbytes" else real(n, *a))
    with pytest.raises(ModelError, match=r"r1v\[quant\]"):
        load_vlm("tiny", quantize="int8")


def test_cli_chat_eval_and_serve_take_quantize(tmp_path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["chat", "--model", "tiny", "--quantize", "int4", "--no-think", "--max-new-tokens",
                              "4", "--temperature", "0", "Hello?"])
    assert res.exit_code == 0, res.output
    assert "finish:" in res.output
    res = runner.invoke(app, ["chat", "--model", "tiny", "--quantize", "int2", "Hello?"])
    assert res.exit_code == 2 and "int8, int4" in res.output
    from r1v.eval.runner import EvalConfig

    with pytest.raises(ConfigError, match="quantize"):
        EvalConfig(model="tiny", benchmark="math500", data=tmp_path, quantize="fp8").validate()
    from r1v.serve.server import run_server

    with pytest.raises(ConfigError, match="compressed-tensors"):
        run_server(model="tiny", engine="vllm", quantize="int8")


def test_eval_runs_quantised(tmp_path) -> None:
    import json

    data = tmp_path / "math.jsonl"
    data.write_text("".join(json.dumps({"problem": f"What is {i} + 1?", "answer": str(i + 1), "unique_id": str(i)})
                            + "\n" for i in range(2)))
    from r1v.eval.runner import EvalConfig, evaluate

    cfg = EvalConfig(model="tiny", benchmark="math500", data=data, out=tmp_path / "ev", max_new_tokens=4,
                     temperature=0.0, quantize="int8")
    summary = evaluate(cfg)
    assert summary["items"] == 2 and summary["settings"]["quantize"] == "int8"


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "ratio"), [("int8", 0.3), ("int4", 0.2)])
def test_smol_quantised_memory_and_answers(mode: str, ratio: float) -> None:
    """The real SmolLM2 in the smol VLM: the issue's memory targets, and the greedy answer's start kept."""
    from r1v.errors import AssetError

    try:
        ref = load_vlm("smol")
    except AssetError as e:
        pytest.skip(str(e))
    vlm = load_vlm("smol", quantize=mode)
    assert q.weight_bytes(vlm.model) <= ratio * q.weight_bytes(ref.model)
    assert "tied" in vlm.provenance["quantize"]["quantized"][1]
    s = [Sample.from_question("a", "What is the capital of France?")]
    a = TransformersEngine(ref).generate(s, GREEDY)[0][0]
    b = TransformersEngine(vlm).generate(s, GREEDY)[0][0]
    assert "Paris" in a.text and b.token_ids[:4] == a.token_ids[:4]


def test_serve_loads_the_model_quantised(monkeypatch) -> None:
    """`r1v serve --quantize int4`: the app the server starts answers with the quantised model."""
    import uvicorn
    from fastapi.testclient import TestClient

    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.setdefault("app", app))
    res = CliRunner().invoke(app, ["serve", "--model", "tiny", "--quantize", "int4", "--port", "8765"])
    assert res.exit_code == 0, res.output
    with TestClient(started["app"]) as client:  # runs the app's start-up (its generation worker)
        reply = client.post("/v1/chat/completions", json={"model": "tiny", "max_tokens": 4, "temperature": 0,
                                                          "messages": [{"role": "user", "content": "Hi"}]})
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["completion_tokens"] >= 1
