"""`r1v train sft` on the tiny preset: artefacts, which parts move, bad-sample policy, CLI."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from recipe_fixtures import fast_train, write_dataset  # noqa: E402

from r1v.cli import app  # noqa: E402
from r1v.errors import DataError  # noqa: E402
from r1v.model.build import build_preset, load_vlm  # noqa: E402
from r1v.model.parts import part_of  # noqa: E402
from r1v.recipes import run_stage  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _by_part(model: torch.nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    out: dict[str, dict[str, torch.Tensor]] = {"vision": {}, "connector": {}, "llm": {}}
    for n, p in model.named_parameters():
        out[part_of(n)][n] = p.detach()
    return out


def test_sft_trains_the_policy_parts_only_and_writes_a_loadable_model(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "d", n=8)
    out = tmp_path / "run"
    summary = run_stage("sft", None, ["model=tiny", f"data={data}", "eval_data=null", "train.policy=connector+llm",
                                      "train.lr=1e-2", "train.max_steps=2", "train.micro_batch_size=2",
                                      "train.grad_accum=2", *fast_train(out)])
    for f in ("final/config.json", "final/r1v.json", "metrics.jsonl", "summary.json"):
        assert (out / f).is_file(), f
    assert list((out / "checkpoints").glob("step-*/model/config.json"))
    assert summary["steps"] == 2 and summary["samples"]["used"] == 8
    assert summary["bad_samples"] == {"policy": "error", "skipped": 0, "by_reason": {}, "examples": []}
    assert json.loads((out / "summary.json").read_text())["final"] == str(out / "final")
    assert summary["params"]["trainable_vision"] == 0 and summary["params"]["trainable_connector"] > 0

    start, final = _by_part(build_preset("tiny").model), _by_part(load_vlm(out / "final").model)
    for name, p in start["vision"].items():
        assert torch.equal(p, final["vision"][name]), f"frozen {name} moved"
    for part in ("connector", "llm"):
        moved = [n for n, p in start[part].items() if not torch.equal(p, final[part][n])]
        assert len(moved) == len(start[part]), f"{part}: only {len(moved)} of {len(start[part])} tensors trained"
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["sft"] > 0 for r in rows)


def test_bad_samples_error_names_file_and_line_or_are_skipped_and_counted(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "d", n=8, long_ids={2}, missing_image_ids={5}, extra_lines=["{not json"])
    base = ["model=tiny", f"data={data}", "eval_data=null", "max_seq_len=600", "train.max_steps=1",
            "train.micro_batch_size=2", *fast_train(tmp_path / "run")]
    with pytest.raises(DataError, match=re.escape(f"{data}, record 6, field 'image': image file not found")):
        run_stage("sft", None, base)
    runner = CliRunner()
    res = runner.invoke(app, ["train", "sft", *base])
    assert res.exit_code == 2 and "record 6" in res.output and "Traceback" not in res.output

    summary = run_stage("sft", None, [*base, "on_bad_sample=skip"])
    bad = summary["bad_samples"]
    assert bad["skipped"] == 3 and bad["by_reason"] == {"image": 1, "malformed": 1, "too_long": 1}
    assert any("record 3" in m and "max_seq_len 600" in m for m in bad["examples"])  # line 3 = sample s2
    assert any("record 9" in m and "malformed JSON" in m for m in bad["examples"])
    assert summary["samples"] == {**summary["samples"], "read": 7, "used": 6}


def test_cli_runs_the_shipped_config_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    data, heldout = write_dataset(tmp_path / "d", n=4), write_dataset(tmp_path / "h", n=2)

    def args(*extra: str) -> list[str]:
        return ["train", "sft", "--config", str(CONFIGS / "sft.yaml"), "model=tiny", f"data={data}",
                f"eval_data={heldout}", "eval_max_new_tokens=4", "train.micro_batch_size=2",
                "train.grad_accum=1", f"train.out_dir={out}", "train.progress=false", "train.plots=false",
                "train.device=cpu", *extra]

    res = CliRunner().invoke(app, args("train.max_steps=2"))
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["eval"]["n"] == 2
    assert 0.0 <= summary["eval"]["accuracy_after"] <= 1.0
    res = CliRunner().invoke(app, args("train.max_steps=3", "train.resume=true"))
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["resumed_from"].endswith("step-00000002")


def test_lora_policy_exports_a_merged_plain_model(tmp_path: Path) -> None:
    out = tmp_path / "run"
    summary = run_stage("sft", None, ["model=tiny", f"data={write_dataset(tmp_path / 'd', n=4)}", "eval_data=null",
                                      "train.policy=lora", "train.lr=1e-2", "train.max_steps=2",
                                      "train.micro_batch_size=2", *fast_train(out)])
    p = summary["params"]
    assert p["trainable_vision"] == 0 and 0 < p["trainable_llm"] < p["total"] // 2 and p["trainable_connector"] > 0
    start, final = _by_part(build_preset("tiny").model), _by_part(load_vlm(out / "final").model)
    assert set(final["llm"]) == set(start["llm"])  # merged: no lora_ tensors left
    assert all(torch.equal(p, final["vision"][n]) for n, p in start["vision"].items())
    assert any(not torch.equal(p, final["llm"][n]) for n, p in start["llm"].items())
