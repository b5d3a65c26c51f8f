"""The pipeline stage: scale cascade, hand-off validation, and a whole tiny run of configs/demo.yaml."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from r1v.config import load_config
from r1v.errors import ConfigError
from r1v.recipes import load_stage_config
from r1v.recipes.demo_data import chain, pair_rows, rendered_rows, short_rows, text_rows, write_prepared
from r1v.recipes.pipeline import PipelineConfig, Prepare, deep_merge, run, scaled, step_config
from r1v.recipes.pipeline_report import table, verdicts

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_deep_merge_and_scale_cascade() -> None:
    assert deep_merge({"a": {"b": 1, "c": 2}, "d": 1}, {"a": {"b": 3}}) == {"a": {"b": 3, "c": 2}, "d": 1}
    cfg = load_stage_config("pipeline", CONFIGS / "demo.yaml")
    sft = next(s for s in cfg.steps if s.name == "sft")
    full, quick = step_config(cfg, sft, "micro"), step_config(cfg, sft, "quick")
    tiny = step_config(cfg, sft, "tiny")
    assert (full.train.max_steps, quick.train.max_steps, tiny.train.max_steps) == (48, 6, 2)
    assert tiny.train.micro_batch_size == 4 and quick.train.micro_batch_size == 8  # tiny cascades onto quick
    assert str(tiny.train.out_dir).endswith("demo/sft") and tiny.data.endswith("data/train.jsonl")
    small = scaled(load_config(PipelineConfig, CONFIGS / "demo.yaml", ["scale=tiny"]))
    assert (small.prepare.train, small.eval.limit) == (16, 4)


def test_r1v_configs_hold_the_paper_numbers_at_full_scale() -> None:
    cfg = load_stage_config("pipeline", CONFIGS / "r1v.yaml")
    by = {s.name: step_config(cfg, s, "full") for s in cfg.steps if s.name != "reasoning-llm"}
    assert by["align"].train.lr == 2e-4 and by["align"].max_seq_len == 16384
    assert by["align"].train.weight_decay == 0.05 and by["align"].train.warmup_ratio == 0.03
    assert by["iterative-sft"].tau == [2, 3, 4, 5] and by["iterative-sft"].lr_per_round == [1e-4, 2e-5]
    g = by["grpo"]
    assert (g.train.lr, g.temperature, g.num_generations, g.max_completion_length) == (1e-6, 1.0, 8, 8192)
    assert g.engine == "vllm"


def test_bad_hand_offs_and_stages_name_the_step() -> None:
    base = ["steps=[{name: a, stage: sft}, {name: b, stage: sft, inputs: {model: c}}]"]
    with pytest.raises(ConfigError, match=r"\(b\)\.inputs\.model: 'c' is not an earlier step"):
        load_config(PipelineConfig, None, base)
    with pytest.raises(ConfigError, match="unknown stage 'nope'"):
        load_config(PipelineConfig, None, ["steps=[{name: a, stage: nope}]"])
    with pytest.raises(ConfigError, match="unique name"):
        load_config(PipelineConfig, None, ["steps=[{name: a, stage: sft}, {name: a, stage: sft}]"])
    with pytest.raises(ConfigError, match=r"steps.a \(sft, scale=tiny\):train: lr: must be > 0"):  # a stage config error surfaces at load, not mid-run
        load_config(PipelineConfig, None, ["steps=[{name: a, stage: sft, tiny: {train: {lr: -1}}}]"])


def test_verdicts_say_when_a_step_did_not_help() -> None:
    rows = [{"name": "re-assembled", "stage": "align", "accuracy": 0.2},
            {"name": "stage 1", "stage": "sft", "accuracy": 0.5},
            {"name": "RL", "stage": "grpo", "accuracy": 0.4}]
    text = " ".join(verdicts(rows))
    assert "stage 1: helped" in text and "RL: did NOT help" in text
    assert "Final vs stage-1 SFT: 0.400 vs 0.500 (NOT above)" in text


def test_verdicts_use_paired_intervals_and_diagnose_rl() -> None:
    base = [i % 2 == 0 for i in range(300)]
    better = [b or i % 4 == 1 for i, b in enumerate(base)]
    rows = [{"name": "SFT", "stage": "sft", "accuracy": 0.5, "correct": base},
            {"name": "DPO only", "stage": "mpo", "accuracy": 0.5, "correct": base, "versus": "SFT"},
            {"name": "MPO", "stage": "mpo", "accuracy": 0.75, "correct": better, "versus": "SFT",
             "pass_at_1": 0.6, "pass_at_k": 0.9, "k": 4, "mixed_share": 0.3},
            {"name": "RL", "stage": "grpo", "accuracy": 0.75, "correct": better, "versus": "MPO",
             "effective_ratio": 0.0, "effective_ratio_without": 0.0}]
    text = "\n".join(verdicts(rows))
    assert "DPO only: did not change held-out accuracy on any item" in text
    assert "MPO: helped beyond the noise (+0.250, 95% CI [+" in text and "vs SFT" in text
    assert "pass@1 0.600, pass@4 0.900" in text
    assert "RL: effective-sample ratio 0.00 with the buffer vs 0.00 from the rollouts alone; every group had zero" in text
    headers, cells = table(rows)
    change = headers.index("change [95% CI]")
    assert cells[0][change] == "-" and cells[2][change].startswith("+0.250 [+") and cells[3][change] == \
        "+0.000 [+0.000, +0.000]"


def test_preference_pairs_reject_a_hallucinated_figure(tmp_path: Path) -> None:
    from r1v.recipes.mpo_pairs import read_pairs

    pairs = pair_rows(24, seed=1, families=["count", "compare"], difficulties=[1], unanswerable_ratio=0.3)
    for p in pairs:
        s = p["sample"]
        assert p["chosen"].endswith(f"\\boxed{{{s.answer}}}") and not p["rejected"].endswith(f"\\boxed{{{s.answer}}}")
        if s.meta.get("unanswerable"):
            assert "I see no" in p["chosen"] and "there are 1." in p["rejected"]  # a number for an absent object
    assert any(p["sample"].meta.get("unanswerable") for p in pairs)
    prep = Prepare(pairs=6, heldout_pairs=3, val=2, families=["count"], difficulties=[1])
    files = write_prepared(prep, tmp_path, seed=0)
    back = read_pairs(files["pairs"])
    assert len(back) == 6 and len(read_pairs(files["heldout_pairs"])) == 3 and back[0].pair.chosen_score == 1.0
    assert Path(back[0].pair.sample.images[0]).exists() and files["val"].exists()


def test_worked_chains_agree_with_the_gold_answers() -> None:
    rows = rendered_rows(40, seed=3, unanswerable_ratio=0.3)
    for r in rows:
        thought, answer = chain(r.sample), r.sample.answer
        target = r.sample.messages[-1].content
        assert target.endswith(f"\\boxed{{{answer}}}") and thought in target
        if r.sample.meta["family"] == "arith" and not r.sample.meta["unanswerable"]:
            assert thought.endswith(f"= {answer}.")
    for r in text_rows(20, seed=1):
        assert r.sample.messages[-1].content.endswith(f"\\boxed{{{r.sample.answer}}}")
        assert f"= {r.sample.answer}." in r.sample.messages[-1].content


def test_short_answer_alignment_rows_answer_in_one_word_without_thinking() -> None:
    rows = short_rows(40, seed=3)
    chains = {json.dumps(r.sample.meta["scene"], sort_keys=True) for r in rendered_rows(40, seed=3)}
    assert {r.sample.meta["family"] for r in rows} == {"count", "arith", "digit", "bar", "compare"}
    for r in rows:
        question, answer = r.sample.messages[0].content, r.sample.messages[-1].content
        assert answer == r.sample.answer and " " not in answer and "<think>" not in answer
        assert question.startswith("<image>\n")
        assert question.endswith("Answer with its colour." if r.sample.meta["family"] == "compare"
                                 else "Answer with one word.")
    assert chains.isdisjoint(json.dumps(r.sample.meta["scene"], sort_keys=True) for r in rows)  # own stream


def test_prepared_rl_prompts_are_the_train_prompts_or_their_own_stream(tmp_path: Path) -> None:
    def scenes(path: Path) -> list[str]:
        return [json.dumps(json.loads(line)["meta"]["scene"], sort_keys=True) for line in path.read_text().splitlines()]

    kw = dict(train=6, heldout=2, image_size=64, families=["count", "compare"], difficulties=[1])
    same = write_prepared(Prepare(**kw), tmp_path / "same", seed=1)
    assert scenes(same["rl"]) == scenes(same["train"])
    own = write_prepared(Prepare(**kw, rl=5), tmp_path / "own", seed=1)
    rl = [json.loads(line) for line in own["rl"].read_text().splitlines()]
    assert len(rl) == 5 and all(r["answer"] and len(r["messages"]) == 1 for r in rl)  # prompts with gold answers
    assert set(scenes(own["rl"])).isdisjoint(scenes(own["train"]))
    assert all((own["rl"].parent / r["images"][0]).exists() for r in rl)


def test_tiny_pipeline_end_to_end(tmp_path: Path) -> None:
    cfg = load_config(PipelineConfig, CONFIGS / "demo.yaml", [f"out_dir={tmp_path}", "scale=tiny"])
    report = run(cfg)
    names = [s["name"] for s in report["stages"]]
    assert names == ["aligned M' (instruct LLM)", "re-assembled (reasoning LLM)", "stage 1 (SFT)", "iterative t=1",
                     "iterative (last round)", "RL (GRPO + SSB)"]
    for s in report["stages"]:
        assert 0.0 <= s["accuracy"] <= 1.0 and s["n"] == 4
        assert {"accuracy_by_family", "think_tokens_mean", "hallucination_rate", "model", "train_seconds"} <= set(s)
        assert Path(s["model"], "config.json").exists()
    rl = report["stages"][-1]
    assert 0.0 <= rl["effective_ratio"] <= 1.0 and rl["effective_ratio_without"] is not None
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert [s["name"] for s in on_disk["stages"]] == names and on_disk["verdicts"]
    for name in ("report.md", "report.html", "plots/accuracy_by_stage.png", "plots/reward_curve.png",
                 "plots/effective_ratio.png", "data/train.jsonl", "data/heldout.jsonl", "data/text.jsonl",
                 "data/align.jsonl"):
        assert (tmp_path / name).stat().st_size > 0, name
    # hand-offs through the named folders: each step started from the previous step's final model
    summary = {n: json.loads((tmp_path / n / "summary.json").read_text())
               for n in ("reasoning-llm", "align", "sft", "iterative-sft", "grpo")}
    assert summary["align"]["parts"]["reasoning_llm"] == summary["reasoning-llm"]["final"]
    assert summary["sft"]["model"] == summary["align"]["final"]
    assert summary["iterative-sft"]["model"] == summary["sft"]["final"]
    assert summary["grpo"]["model"] == summary["iterative-sft"]["final"]
    assert "stage 1 (SFT)" in (tmp_path / "report.md").read_text()
    # prune_checkpoints (on in demo.yaml): finished steps keep their final models, not resume checkpoints
    assert cfg.prune_checkpoints and not list(tmp_path.rglob("checkpoints"))


@pytest.mark.parametrize("generation", ["r1v2", "r1v3"])
def test_tiny_demo_generations_end_to_end(generation: str, tmp_path: Path) -> None:
    cfg = load_config(PipelineConfig, CONFIGS / f"demo_{generation}.yaml", [f"out_dir={tmp_path}", "scale=tiny"])
    report = run(cfg)
    names = [s["name"] for s in report["stages"]]
    for s in report["stages"]:
        assert 0.0 <= s["accuracy"] <= 1.0 and s["n"] == 4 and len(s["correct"]) == 4
        assert s["hallucination_rate"] is None or 0.0 <= s["hallucination_rate"] <= 1.0
    if generation == "r1v2":
        assert names == ["assembled (no SFT)", "SFT", "DPO only", "MPO", "MPO + GRPO (hybrid reward, SSB)"]
        rm = report["reward_model"]
        assert rm["after"]["heldout"] is not None and "held-out pair accuracy" in (tmp_path / "report.md").read_text()
        grpo = json.loads((tmp_path / "grpo" / "summary.json").read_text())
        assert grpo["config"]["reward_model"] == json.loads((tmp_path / "rm" / "summary.json").read_text())["final"]
        dpo = json.loads((tmp_path / "dpo" / "summary.json").read_text())
        assert dpo["config"]["weights"] == [1.0, 0.0, 0.0]
        assert report["stages"][3]["pass_at_k"] is not None and report["stages"][-1]["effective_ratio"] is not None
    else:
        assert names == ["assembled", "teacher (SFT)", "cold-start SFT", "RL first half (GRPO)", "RL last (GRPO)",
                         "entropy-chosen checkpoint", "connector-only tune"]
        sel = report["selection"]
        assert [s["path"] for s in sel["scores"]] == [str(tmp_path / "grpo-1" / "final"),
                                                     str(tmp_path / "grpo-2" / "final")]
        assert report["stages"][5]["model"] == sel["chosen"]
        assert "Checkpoint choice" in (tmp_path / "report.md").read_text()
    assert report["verdicts"] and (tmp_path / "report.html").exists()


@pytest.mark.slow
@pytest.mark.parametrize("generation", ["r1v", "r1v2", "r1v3"])
def test_generation_recipes_run_at_tiny_scale(generation: str, tmp_path: Path) -> None:
    cfg = load_config(PipelineConfig, CONFIGS / f"{generation}.yaml", [f"out_dir={tmp_path}", "scale=tiny"])
    report = run(cfg)
    assert report["generation"] == generation and report["stages"]
    ran = [s.name for s in cfg.steps if not s.only or "tiny" in s.only]
    for name in ran:
        assert (tmp_path / name / "summary.json").exists(), name
    assert all(0.0 <= s["accuracy"] <= 1.0 for s in report["stages"])
