"""`r1v train align`: only the connector trains against the substitute LLM; the swap keeps it and adds the
reasoning LLM untouched; accuracy is reported before and after the swap."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from recipe_fixtures import fast_train, write_dataset  # noqa: E402

from r1v.model.build import assemble, load_llm, load_vlm  # noqa: E402
from r1v.model.parts import part_of  # noqa: E402
from r1v.recipes import run_stage  # noqa: E402


def _reasoning_llm(folder: Path) -> dict[str, torch.Tensor]:
    """A tiny LLM with the tiny tokenizer but other weights, saved as a plain CausalLM folder."""
    llm, tok = load_llm("tiny")
    with torch.no_grad():
        gen = torch.Generator().manual_seed(7)
        for p in llm.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    llm.save_pretrained(folder)
    tok.save_pretrained(folder)
    return {n: p.detach().clone() for n, p in llm.named_parameters()}


def _part(model: torch.nn.Module, part: str) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters() if part_of(n) == part}


def test_align_trains_connector_only_then_swaps_without_training(tmp_path: Path) -> None:
    reasoning = tmp_path / "reasoning"
    reasoning_weights = _reasoning_llm(reasoning)
    data = write_dataset(tmp_path / "d", n=8)
    heldout = write_dataset(tmp_path / "h", n=4)
    out = tmp_path / "run"
    summary = run_stage("align", None, ["vision=tiny", "substitute_llm=tiny", f"reasoning_llm={reasoning}",
                                        f"data={data}", f"eval_data={heldout}", "eval_max_new_tokens=4",
                                        "train.lr=1e-2", "train.max_steps=2", "train.micro_batch_size=2",
                                        *fast_train(out)])
    fresh = assemble("tiny", "tiny").model  # deterministic: the starting point of the run
    aligned = load_vlm(out / "aligned").model
    final = load_vlm(out / "final")

    for part in ("vision", "llm"):
        for n, p in _part(fresh, part).items():
            assert torch.equal(p, _part(aligned, part)[n]), f"frozen {n} moved during alignment"
    conn_fresh, conn_aligned = _part(fresh, "connector"), _part(aligned, "connector")
    assert all(not torch.equal(p, conn_aligned[n]) for n, p in conn_fresh.items())
    # the swap: same vision tower and trained connector, the reasoning LLM's own weights, no training
    for part in ("vision", "connector"):
        for n, p in _part(aligned, part).items():
            assert torch.equal(p, _part(final.model, part)[n])
    final_llm = dict(final.model.named_parameters())
    for n, w in reasoning_weights.items():
        key = "lm_head.weight" if n == "lm_head.weight" else "model.language_model." + n.removeprefix("model.")
        assert torch.equal(final_llm[key].detach(), w), key
    assert final.provenance["llm"] == str(reasoning)

    assert summary["params"]["trainable"] == summary["params"]["trainable_connector"] > 0
    assert summary["steps"] == 2 and summary["samples"]["used"] == 8
    ev = summary["eval"]
    assert ev["n"] == 4
    for key in ("accuracy_untrained", "accuracy_aligned", "accuracy_swapped"):
        assert 0.0 <= ev[key] <= 1.0
    assert (out / "summary.json").is_file() and (out / "metrics.jsonl").is_file()
