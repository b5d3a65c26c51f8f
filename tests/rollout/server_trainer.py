"""A GRPO trainer process for the rollout-server test (run under torchrun): `engine: vllm` with `server_url`.

    torchrun --nproc_per_node 2 tests/rollout/server_trainer.py OUT URL

Every process rolls out its shard of each batch on the server; process 0 pushes the trained tensors after each
step. At the end process 0 writes OUT/greedy.json: the trained model's greedy tokens by our engine and by the
server, which must be equal (the server holds the trained weights).
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import torch


def main(out: Path, url: str) -> None:
    from r1v import distributed as dist
    from r1v.data.schema import Sample
    from r1v.model.build import build_preset
    from r1v.model.trainable import apply_trainable
    from r1v.recipes.grpo import GRPOConfig, RewardItem, train_grpo
    from r1v.rollout.engine import SamplingParams, TransformersEngine
    from r1v.rollout.policy import VLLMOptions
    from r1v.rollout.server import RemoteEngine
    from r1v.train import TrainConfig

    torch.set_num_threads(1)
    rank, world = dist.ensure_process_group()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vlm = build_preset("tiny64")
    apply_trainable(vlm, "full")
    prompts = [Sample.from_question(f"q{i}", f"Question {i}?", answer="1") for i in range(8)]
    cfg = GRPOConfig(num_generations=4, prompts_per_step=4, max_completion_length=6, think=False,
                     rewards=[RewardItem("format")], engine="vllm", vllm=VLLMOptions(server_url=url),
                     train=TrainConfig(out_dir=out, lr=1e-2, max_steps=2, micro_batch_size=4, report_to=["jsonl"],
                                       progress=False, plots=False, schedule="constant", warmup_ratio=0.0,
                                       weight_decay=0.0, policy="full", seed=0, device="cpu"))
    train_grpo(vlm, prompts, cfg)
    if rank == 0:
        greedy = SamplingParams(max_new_tokens=8, temperature=0.0, repetition_penalty=1.0, think=False)
        ours = [g[0].token_ids for g in TransformersEngine(vlm).generate(prompts, greedy)]
        server = [g[0].token_ids for g in RemoteEngine(url).generate(prompts, greedy)]
        (out / "greedy.json").write_text(json.dumps({"ours": ours, "server": server, "world": world}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
