"""The project's small InternViT-style vision tower, pretrained here in about three and a half minutes.

No vision checkpoint can be downloaded, so `smol` uses a tower pretrained by r1v itself (honestly
small): transformers' `InternVLVisionModel` with `SMOL_VISION_CONFIG`, trained with supervised heads on
easy-VQA (shape, colour, 3x3 position, size) plus any extra `LabelledImages` sources, then saved
without the heads as a plain `InternVLVisionModel` folder. Each label has a pooled head (mean and max
of the last layer's patch tokens, CLS dropped) and a per-token head (every patch token predicts the
image's label), on the same tokens InternVL's pixel shuffle and connector consume.

Config choice (CPU speed first, InternViT-6B style otherwise): 112 px tiles of 14 px patches give 8x8
patches, so 16 tokens per tile after pixel shuffle 0.5 (the released 448 px towers give 256); the demo's
rendered images are drawn at 112 px, so nothing is lost. Hidden 192, 4 layers, 4 heads of 48, MLP 4x
(~1.9 M parameters; ~130 training images/s on 2 cores); RMSNorm, qk-norm, no qkv bias, layer scale 0.1
and mean pooling (no final norm), as in InternViT-6B-448px-V2_5. Version 1 used 224 px tiles (64
tokens) and pooled heads only; its image tokens were 2.3x more expensive for the LLM and the LLM did
not learn to count from them within the demo's steps.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from r1v.assets.cache import build_atomically, r1v_home, read_manifest
from r1v.assets.easyvqa import LabelledImages, answer_question, easy_vqa_questions, load_easy_vqa
from r1v.errors import AssetError

SMOL_VISION_CONFIG: dict = {
    "image_size": 112,
    "patch_size": 14,
    "num_channels": 3,
    "hidden_size": 192,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 768,
    "hidden_act": "gelu",
    "norm_type": "rms_norm",
    "layer_norm_eps": 1e-6,
    "use_qk_norm": True,
    "attention_bias": False,
    "layer_scale_init_value": 0.1,
    "use_mean_pooling": True,
    "use_absolute_position_embeddings": True,
    "initializer_range": 0.02,
}
FOLDER = "vision-tower-smol"
VERSION = 2
METRICS = "metrics.json"
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def to_pixels(images: Sequence[Image.Image], size: int):
    """RGB images -> float32 tensor [N, 3, size, size]: PIL bicubic resize + ImageNet normalisation."""
    arrays = [np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.float32)
              for im in images]
    x = (np.stack(arrays) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def image_size_of(config: dict) -> int:
    size = config.get("image_size", 448)
    return int(size[0] if isinstance(size, list | tuple) else size)


class TowerWithHeads:
    """An `InternVLVisionModel` plus, per `source/head`, a pooled head and a per-token head.

    The pooled head (LayerNorm + Linear) reads the mean and max of the patch tokens. The per-token head
    (LayerNorm + Linear) reads every patch token on its own and is trained to predict the same image
    label: it makes each token carry the image's global facts (counts, the largest colour), so a
    connector and LLM that attend to any image token can read them after a few steps. Without it
    counting stayed near chance after 60 connector steps, while colour, a per-token fact, was learnt.
    """

    def __init__(self, config: dict, heads: dict[str, int], token_heads: bool = True) -> None:
        from transformers import InternVLVisionConfig, InternVLVisionModel

        self.tower = InternVLVisionModel(InternVLVisionConfig(**config))
        hidden = self.tower.config.hidden_size

        def head(width: int, n: int):
            return torch.nn.Sequential(torch.nn.LayerNorm(width), torch.nn.Linear(width, n))

        self.heads = torch.nn.ModuleDict({key.replace("/", "__"): head(2 * hidden, n) for key, n in heads.items()})
        self.token_heads = torch.nn.ModuleDict({key.replace("/", "__"): head(hidden, n) for key, n in heads.items()}
                                               if token_heads else {})
        self.size = image_size_of(config)

    def parameters(self):
        return [*self.tower.parameters(), *self.heads.parameters(), *self.token_heads.parameters()]

    def tokens(self, pixels):
        """The last layer's patch tokens (CLS dropped): [N, T, hidden], what the connector consumes."""
        return self.tower(pixel_values=pixels).last_hidden_state[:, 1:]

    @staticmethod
    def pool(tokens):
        """Mean and max of the patch tokens, concatenated: [N, 2 * hidden].

        The max half lets a small object's patches (an easy-VQA shape covers ~15% of the image) drive
        the heads directly; with the mean alone colour is learnt several times more slowly."""
        return torch.cat([tokens.mean(dim=1), tokens.amax(dim=1)], dim=-1)

    def features(self, pixels):
        return self.pool(self.tokens(pixels))

    def logits(self, features, key: str):
        return self.heads[key.replace("/", "__")](features)

    def token_logits(self, tokens, key: str):
        return self.token_heads[key.replace("/", "__")](tokens)

    def train(self, mode: bool = True) -> None:
        self.tower.train(mode)
        self.heads.train(mode)
        self.token_heads.train(mode)


def _progress(enabled: bool):
    from r1v.progress import progress_bar

    return progress_bar(enabled=enabled)


def train_tower(sources: Sequence[LabelledImages], *, config: dict | None = None, steps: int = 100,
                batch_size: int = 32, lr: float = 2e-3, weight_decay: float = 0.05, seed: int = 0,
                seconds_budget: float | None = None, progress: bool = True,
                token_heads: bool = True) -> tuple[TowerWithHeads, dict]:
    """Train a fresh tower with one head per `source/head` on the pooled images of all sources.

    AdamW, 10% linear warm-up then cosine decay to 10%, gradient clipping 1.0, summed cross-entropy
    over the heads that label each image, on the pooled features and (`token_heads`) on every patch
    token, averaged over the tokens. Deterministic for a seed unless `seconds_budget` (training
    seconds) stops it early. Returns the model and metrics (`losses` per step, `steps`, `seconds`,
    `images_per_second`, `stopped_by_budget`).
    """
    config = {**SMOL_VISION_CONFIG, **(config or {})}
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise AssetError(f"pretraining sources need distinct names, got {names}")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    heads = {f"{s.name}/{h}": len(c) for s in sources for h, c in s.classes.items()}
    model = TowerWithHeads(config, heads, token_heads=token_heads)
    # one pooled index over all sources: (source number, index inside it)
    pool = np.concatenate([np.stack([np.full(len(s), k), np.arange(len(s))], 1) for k, s in enumerate(sources)])
    if len(pool) == 0:
        raise AssetError("pretraining the vision tower: the sources hold no images")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    warmup = max(1, steps // 10)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    order = rng.permutation(len(pool))
    cursor, losses, start, stopped = 0, [], time.perf_counter(), False
    model.train()
    with _progress(progress) as bar:
        task = bar.add_task("pretraining vision tower", total=steps, info="")
        for _ in range(steps):
            if cursor + batch_size > len(order):
                order, cursor = rng.permutation(len(pool)), 0
            batch = pool[order[cursor:cursor + batch_size]]
            cursor += batch_size
            images = [sources[k].image(int(i)) for k, i in batch]
            tokens = model.tokens(to_pixels(images, model.size))
            feats = model.pool(tokens)
            loss = feats.new_zeros(())
            for k, source in enumerate(sources):
                rows = np.nonzero(batch[:, 0] == k)[0]
                if len(rows) == 0:
                    continue
                for head, values in source.labels.items():
                    target = torch.from_numpy(values[batch[rows, 1]])
                    sel, key = torch.from_numpy(rows), f"{source.name}/{head}"
                    logits = model.logits(feats[sel], key)
                    loss = loss + torch.nn.functional.cross_entropy(logits, target, ignore_index=-1,
                                                                    reduction="sum") / len(batch)
                    if token_heads:
                        per_token = model.token_logits(tokens[sel], key)  # [rows, T, classes]
                        t = target[:, None].expand(-1, per_token.shape[1])
                        loss = loss + torch.nn.functional.cross_entropy(
                            per_token.flatten(0, 1), t.flatten(), ignore_index=-1,
                            reduction="sum") / (len(batch) * per_token.shape[1])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            bar.update(task, advance=1, info=f"loss {losses[-1]:.3f}")
            if seconds_budget is not None and time.perf_counter() - start > seconds_budget:
                stopped = True
                break
    seconds = time.perf_counter() - start
    metrics = {"steps": len(losses), "planned_steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
               "seconds": round(seconds, 2), "images_per_second": round(len(losses) * batch_size / seconds, 1),
               "stopped_by_budget": stopped, "losses": [round(v, 4) for v in losses],
               "sources": {s.name: len(s) for s in sources}}
    return model, metrics


def evaluate(model: TowerWithHeads, source: LabelledImages, batch_size: int = 64,
             progress: bool = False) -> dict:
    """Per-head accuracy of `model` on a labelled source, plus the predictions per head."""
    model.train(False)
    preds: dict[str, list[int]] = {h: [] for h in source.labels}
    with torch.no_grad(), _progress(progress) as bar:
        task = bar.add_task(f"evaluating on {source.name}", total=len(source), info="")
        for lo in range(0, len(source), batch_size):
            idx = range(lo, min(lo + batch_size, len(source)))
            feats = model.features(to_pixels([source.image(i) for i in idx], model.size))
            for head in source.labels:
                preds[head].extend(model.logits(feats, f"{source.name}/{head}").argmax(-1).tolist())
            bar.update(task, advance=len(idx))
    accuracy = {}
    for head, values in source.labels.items():
        known = values >= 0
        accuracy[head] = float((np.array(preds[head])[known] == values[known]).mean()) if known.any() else None
    return {"accuracy": accuracy, "predictions": preds}


def easy_vqa_question_accuracy(test: LabelledImages, predictions: dict[str, list[int]]) -> float:
    """Accuracy on easy-VQA's test questions answered from the predicted shape and colour."""
    shapes, colors = test.classes["shape"], test.classes["color"]
    row = {image_id: k for k, image_id in enumerate(test.meta["image_ids"])}
    right = total = 0
    for question, answer, image_id in zip(*easy_vqa_questions("test"), strict=True):
        if image_id not in row:
            continue
        k = row[image_id]
        guess = answer_question(question, shapes[predictions["shape"][k]], colors[predictions["color"][k]])
        right += guess == answer
        total += 1
    return right / total if total else 0.0


def _is_current(folder: Path) -> bool:
    manifest = read_manifest(folder)
    return bool(manifest and manifest.get("version") == VERSION and (folder / "config.json").is_file())


def vision_tower_dir(home: str | os.PathLike | None = None) -> Path | None:
    """The cached pretrained tower folder (`InternVLVisionModel.from_pretrained` loads it), or None."""
    target = r1v_home(home) / FOLDER
    return target if _is_current(target) else None


def pretrain_vision_tower(home: str | os.PathLike | None = None, *, seconds_budget: float | None = None,
                          steps: int = 100, batch_size: int = 32, lr: float = 2e-3, seed: int = 0,
                          progress: bool = True,
                          extra_sources: Sequence[LabelledImages] = (), config: dict | None = None,
                          train_limit: int | None = None, eval_limit: int | None = None) -> Path:
    """Pretrain the tower on easy-VQA (+ `extra_sources`) and cache it; returns the folder.

    The folder holds the tower only (`InternVLVisionModel.save_pretrained`), `metrics.json` (training
    losses, seconds, easy-VQA test accuracy per head and question accuracy) and the manifest; it
    replaces any older one atomically. 100 steps of 32 images take ~25 s on 2 idle cores (~130
    images/s), far longer on a contended machine. `seconds_budget` (default: none) optionally caps
    training time; the run is deterministic for a seed unless the cap cuts it short (then the metrics
    say `stopped_by_budget` and the tower is weaker); `train_limit`/`eval_limit`/`config` shrink it for tests.
    """
    target = r1v_home(home) / FOLDER
    started = time.perf_counter()

    def build(tmp: Path) -> dict:
        train = load_easy_vqa("train", limit=train_limit)
        test = load_easy_vqa("test", limit=eval_limit)
        model, metrics = train_tower([train, *extra_sources], config=config, steps=steps,
                                     batch_size=batch_size, lr=lr, seed=seed, seconds_budget=seconds_budget,
                                     progress=progress)
        result = evaluate(model, test, progress=progress)
        metrics["easyvqa_test_images"] = len(test)
        metrics["easyvqa_test_accuracy"] = {k: round(v, 4) for k, v in result["accuracy"].items()}
        metrics["easyvqa_test_question_accuracy"] = round(easy_vqa_question_accuracy(test, result["predictions"]), 4)
        metrics["total_seconds"] = round(time.perf_counter() - started, 2)
        model.tower.save_pretrained(tmp)
        (tmp / METRICS).write_text(json.dumps(metrics, indent=2) + "\n")
        return {"name": "vision-tower-smol", "version": VERSION, "architecture": "InternVLVisionModel",
                "seed": seed, "sources": metrics["sources"], "config": {**SMOL_VISION_CONFIG, **(config or {})}}

    return build_atomically(target, build)


def load_metrics(folder: Path) -> dict:
    return json.loads((Path(folder) / METRICS).read_text())
