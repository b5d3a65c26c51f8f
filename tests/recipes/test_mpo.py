"""`r1v train mpo` on the tiny preset: shared-prompt log-probs, reference modes, BCO delta across resume, pairs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from numerics import assert_close_scaled, assert_same_update, params  # noqa: E402
from recipe_fixtures import COLOURS, fast_train  # noqa: E402

from r1v.cli import app  # noqa: E402
from r1v.data.pairs import read_pairs  # noqa: E402
from r1v.errors import DataError  # noqa: E402
from r1v.model.build import build_preset, load_vlm  # noqa: E402
from r1v.processing.processor import Processor  # noqa: E402
from r1v.recipes import run_stage  # noqa: E402
from r1v.recipes.mpo import collate_pairs, encode_pair, pair_logps  # noqa: E402
from r1v.rewards.reward_model import with_answer  # noqa: E402
from r1v.train import TrainConfig  # noqa: E402

pytestmark = pytest.mark.numerics  # float tolerances: `make test-portable` reruns these


def answer(colour: str) -> str:
    return f"<think>\nThe square is {colour}.\n</think>\n\n\\boxed{{{colour}}}"


def write_pairs(folder: Path, n: int = 8, extra: list[str] = (), ill_formed: bool = False) -> Path:
    """`folder/pairs.jsonl`: n one-image colour questions, chosen = right colour, rejected = wrong colour
    (`ill_formed`: rejected = a bare guess without reasoning or box)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    lines = []
    for i in range(n):
        colour, wrong = names[i % 4], names[(i + 1) % 4]
        Image.new("RGB", (56, 56), COLOURS[colour]).save(folder / f"img{i}.png")
        lines.append(json.dumps({"id": f"p{i}", "question": "What colour is the square?", "image": f"img{i}.png",
                                 "answer": colour, "chosen": answer(colour),
                                 "rejected": f"maybe {wrong}?" if ill_formed else answer(wrong),
                                 "chosen_score": 1.0, "rejected_score": 0.0}))
    path = folder / "pairs.jsonl"
    path.write_text("\n".join([*lines, *extra]) + "\n")
    return path


def _metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_pair_logps_share_the_prompt_and_match_a_plain_forward(tmp_path: Path) -> None:
    vlm = build_preset("tiny")
    proc = Processor(vlm.tokenizer, vlm.spec)
    pairs = [r.pair for r in read_pairs(write_pairs(tmp_path, n=3))]
    items = [encode_pair(proc, p) for p in pairs]
    for p, it in zip(pairs, items, strict=True):
        full = proc.encode_for_training(with_answer(p.sample, p.chosen))
        n = len(it["prompt_ids"])
        assert torch.equal(full["input_ids"][:n], it["prompt_ids"])
        assert (full["labels"][:n] == -100).all() and full["labels"][n] != -100  # answer starts right after
    batch = collate_pairs(proc.pad_id)(items)
    model = vlm.model.eval()
    with torch.no_grad():
        shared = pair_logps(model, batch, shared_prompt=True)
        rows = pair_logps(model, batch, shared_prompt=False)
        # reference: one whole sequence at a time, log-softmax over every position, labelled tokens summed
        want = []
        for p in pairs:
            enc = proc.encode_for_training(with_answer(p.sample, p.chosen))
            logits = model(input_ids=enc["input_ids"][None], pixel_values=enc["pixel_values"]).logits[0, :-1]
            lp = torch.log_softmax(logits.float(), -1).gather(-1, enc["input_ids"][1:, None]).squeeze(-1)
            want.append(float((lp * (enc["labels"][1:] != -100)).sum()))
    assert_close_scaled(shared[0], torch.tensor(want), msg="chosen log-probs vs whole sequences")
    assert_close_scaled(shared[0], rows[0], msg="chosen log-probs, shared vs per-row prompts")
    assert_close_scaled(shared[1], rows[1], msg="rejected log-probs, shared vs per-row prompts")
    assert shared[2].tolist() == [int(it["chosen_mask"].sum()) for it in items]


def test_precomputed_and_frozen_reference_give_the_same_training(tmp_path: Path) -> None:
    data = write_pairs(tmp_path / "d", n=4)
    base = ["model=tiny", f"data={data}", "train.lr=1e-2", "train.max_steps=2", "train.micro_batch_size=2",
            "train.policy=connector"]  # what this test was tuned on (lr 1e-2 would overshoot the whole LLM)
    runs = {}
    for ref in ("precompute", "frozen"):
        out = tmp_path / ref
        runs[ref] = run_stage("mpo", None, [*base, f"reference={ref}", *fast_train(out)])
        runs[ref]["rows"] = _metrics(out)
    a, b = runs["precompute"]["rows"], runs["frozen"]["rows"]
    for key in ("mpo", "dpo", "bco", "nll", "delta"):
        assert [r[key] for r in a] == pytest.approx([r[key] for r in b], rel=1e-4, abs=1e-5), key
    # step 1: policy == reference, so DPO is exactly log 2 and the implicit rewards are 0
    assert a[0]["dpo"] == pytest.approx(0.6931, abs=1e-3) and a[0]["delta"] == pytest.approx(0.0, abs=1e-5)
    assert a[1]["reward_margin"] > 0  # after one step the chosen answers gained on the rejected ones
    start, final = build_preset("tiny").model, load_vlm(tmp_path / "precompute" / "final").model
    frozen = params(load_vlm(tmp_path / "frozen" / "final").model)
    assert_same_update(params(final), frozen, params(start))
    moved = 0
    for (name, p0), (_, p1) in zip(start.named_parameters(), final.named_parameters(), strict=True):
        moved += not torch.equal(p0, p1)
        if "vision_tower" in name:
            assert torch.equal(p0, p1), f"frozen {name} moved"
    assert moved > 0


def test_resume_restores_the_bco_delta(tmp_path: Path) -> None:
    data = write_pairs(tmp_path / "d", n=4)
    base = ["model=tiny", f"data={data}", "train.lr=1e-2", "train.micro_batch_size=2", "train.save_every=1"]
    straight = run_stage("mpo", None, [*base, "train.max_steps=3", *fast_train(tmp_path / "a")])
    first = run_stage("mpo", None, [*base, "train.max_steps=1", *fast_train(tmp_path / "b")])
    assert first["bco_delta"]["count"] == 1 and not first["delta_restored"]
    extra = torch.load(tmp_path / "b" / "checkpoints" / "step-00000001" / "extra.pt", weights_only=False)
    assert extra["bco_delta"] == first["bco_delta"]
    resumed = run_stage("mpo", None, [*base, "train.max_steps=3", "train.resume=true", *fast_train(tmp_path / "b")])
    assert resumed["delta_restored"] and resumed["resumed_from"]
    assert resumed["bco_delta"]["count"] == straight["bco_delta"]["count"] == 3
    assert resumed["bco_delta"]["mean"] == pytest.approx(straight["bco_delta"]["mean"], rel=1e-4, abs=1e-6)
    # a fresh delta would average only the resumed steps: make sure that differs, so the check has teeth
    rows = _metrics(tmp_path / "a")
    assert abs(rows[2]["delta"] - rows[0]["delta"]) > 1e-6


def test_bad_pairs_name_file_record_and_field(tmp_path: Path) -> None:
    data = write_pairs(tmp_path / "d", n=4, extra=[json.dumps({"id": "bad", "question": "Q?", "chosen": "a"})])
    base = ["model=tiny", f"data={data}", "train.max_steps=1", "train.micro_batch_size=2", *fast_train(tmp_path / "r")]
    with pytest.raises(DataError, match=r"record 5, field 'rejected'"):
        run_stage("mpo", None, base)
    res = CliRunner().invoke(app, ["train", "mpo", *base])
    assert res.exit_code == 2 and "record 5" in res.output and "Traceback" not in res.output
    summary = run_stage("mpo", None, [*base, "on_bad_sample=skip"])
    assert summary["bad_samples"]["skipped"] == 1 and summary["pairs"]["used"] == 4


def test_iterative_mpo_regenerates_pairs_from_the_current_policy(tmp_path: Path, monkeypatch) -> None:
    """`regenerate_every: 1`: round 0 trains on pairs from the starting model, round 1 on new pairs sampled
    from the model round 0 left. The tiny random model never answers right, so the judge here calls a
    completion good when its text has an even length (the pairing and the rounds are what is tested)."""
    from r1v.errors import ConfigError
    from r1v.eval import generate as gen
    from r1v.recipes.mpo import MPOConfig

    def parity_verdicts(samples, texts, truncated):
        return [{"correct": len(t) % 2 == 0, "well_formed": True, "hallucinated": False, "truncated": tr,
                 "rule_score": float(len(t) % 2 == 0)} for t, tr in zip(texts, truncated, strict=True)]

    monkeypatch.setattr(gen, "rule_verdicts", parity_verdicts)
    out = tmp_path / "it"
    summary = run_stage("mpo", None, ["source=generate", "data=synthetic:8", "samples_per_prompt=4",
                                      "max_new_tokens=6", "regenerate_every=1", "train.max_steps=2",
                                      "train.micro_batch_size=2", "train.lr=1e-2", "max_seq_len=2048",
                                      *fast_train(out)])
    assert [r["round"] for r in summary["rounds"]] == [0, 1] and [r["steps"] for r in summary["rounds"]] == [1, 1]
    first, second = (out / "pairs.jsonl").read_text(), (out / "rounds" / "round-1" / "pairs.jsonl").read_text()
    assert first and second and first != second  # new pairs from the updated policy
    assert (out / "rounds" / "round-1" / "checkpoints").is_dir() and (out / "final" / "r1v.json").exists()
    with pytest.raises(ConfigError, match="regenerate_every"):
        MPOConfig(regenerate_every=2).validate()  # source: file
    with pytest.raises(ConfigError, match="unsharded"):
        MPOConfig(source="generate", regenerate_every=2, train=TrainConfig(max_steps=4, fsdp=True)).validate()
