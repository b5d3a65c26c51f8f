"""`Processor`: Sample -> model tensors (tiling + chat template + `<image>` expansion + tokens + labels).

The same code serves training, rollouts, eval and the server:

- `encode_prompt(sample)` / `encode_batch_prompts(samples)`: the prompt (conversation without its
  final assistant turn, plus the generation prompt) for generation; batches are LEFT padded.
- `encode_for_training(sample)` / `collate_training(encoded)`: the whole conversation with labels
  (-100 everywhere except the target assistant text and its end-of-turn token); RIGHT padded.

Each `<image>` placeholder (one per image of the sample, in order) becomes
`<img>` + `<IMG_CONTEXT>` x (spec.tokens_per_tile x tiles of that image) + `</img>`. The image tokens
are inserted as ids (looked up once with `convert_tokens_to_ids`), never re-tokenised, so they are
always single tokens; text between them is tokenised without adding special tokens (the templates
write BOS etc. themselves). Training text is tokenised segment by segment so the label mask follows
segment boundaries exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from r1v.errors import DataError, ImageError, ModelError
from r1v.processing.spec import IMG_CONTEXT, IMG_END, IMG_START, ProcessingSpec
from r1v.processing.template import render_prompt, render_training
from r1v.processing.tiling import tile_images

IMAGE_TAG = "<image>"
IGNORE_INDEX = -100


class Processor:
    """Turns `Sample`s into token ids, attention masks, labels and pixel values for one model."""

    def __init__(self, tokenizer: Any, spec: ProcessingSpec | None = None) -> None:
        self.tokenizer = tokenizer
        self.spec = spec or ProcessingSpec()
        self.img_start_id = self._special_id(IMG_START)
        self.img_end_id = self._special_id(IMG_END)
        self.img_context_id = self._special_id(IMG_CONTEXT)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise ModelError("the tokenizer has neither a pad token nor an eos token to pad batches with")
        self.pad_id = int(pad)

    def _special_id(self, token: str) -> int:
        ids = self.tokenizer.convert_tokens_to_ids([token])
        token_id = ids[0] if ids else None
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise ModelError(f"tokenizer has no {token!r} token; add {IMG_START}, {IMG_END} and {IMG_CONTEXT} "
                             "as special tokens (r1v assets does this for the built-in tokenizer)")
        return int(token_id)

    # ---- pieces -----------------------------------------------------------------------------
    def _text_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False) if text else []

    def _ids_with_images(self, text: str, tiles: list[int], cursor: int) -> tuple[list[int], int]:
        """Token ids of `text` with its `<image>` tags expanded, using tiles[cursor:]; new cursor."""
        pieces = text.split(IMAGE_TAG)
        ids = self._text_ids(pieces[0])
        for piece in pieces[1:]:
            n = tiles[cursor] * self.spec.tokens_per_tile
            ids += [self.img_start_id] + [self.img_context_id] * n + [self.img_end_id]
            cursor += 1
            ids += self._text_ids(piece)
        return ids, cursor

    def _images(self, sample: Any, messages: list[Any],
                cache: dict[Any, tuple[torch.Tensor, list[int]]] | None = None) -> tuple[torch.Tensor | None, list[int]]:
        """Tile the sample's images after checking one `<image>` tag per image; `cache` (per batch)
        tiles an image shared by several rows (e.g. GRPO's repeated prompts) once."""
        n_tags = sum(m.content.count(IMAGE_TAG) for m in messages)
        images = list(sample.images or [])
        if n_tags != len(images):
            raise DataError(f"{n_tags} {IMAGE_TAG} tags in the conversation but {len(images)} images",
                            record=sample.id, field="images")
        if not images:
            return None, []
        parts, tiles = [], []
        for i, image in enumerate(images):
            key = str(image) if isinstance(image, (str, Path)) else id(image)
            got = cache.get(key) if cache is not None else None
            if got is None:
                try:
                    got = self._tile([image])
                except ImageError as e:  # say which sample and which of its images
                    raise ImageError(e.message, source=e.source, record=sample.id, field=f"images[{i}]") from None
                if cache is not None:
                    cache[key] = got
            parts.append(got[0])
            tiles += got[1]
        return (parts[0] if len(parts) == 1 else torch.cat(parts)), tiles

    def _tile(self, images: list[Any]) -> tuple[torch.Tensor, list[int]]:
        spec = self.spec
        return tile_images(images, tile_size=spec.tile_size, min_tiles=spec.min_tiles, max_tiles=spec.max_tiles,
                           use_thumbnail=spec.use_thumbnail, alpha=spec.alpha)

    # ---- generation ---------------------------------------------------------------------------
    def encode_prompt(self, sample: Any, think: bool = True) -> dict[str, Any]:
        """One prompt: input_ids/attention_mask LongTensor [1, L], pixel_values [N,3,S,S] or None,
        num_tiles (tiles per image)."""
        return self._encode_prompt(sample, think, None)

    def _encode_prompt(self, sample: Any, think: bool,
                       cache: dict[Any, tuple[torch.Tensor, list[int]]] | None) -> dict[str, Any]:
        messages = sample.prompt_messages()
        pixel_values, tiles = self._images(sample, messages, cache)
        text = render_prompt(messages, self.spec.template, think=think, add_generation_prompt=True)
        ids, _ = self._ids_with_images(text, tiles, 0)
        input_ids = torch.tensor([ids], dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
                "pixel_values": pixel_values, "num_tiles": tiles}

    def encode_batch_prompts(self, samples: list[Any], think: bool = True) -> dict[str, Any]:
        """A LEFT-padded batch of prompts: input_ids/attention_mask [B, L], pixel_values of all images
        concatenated in sample order (or None), num_tiles (flat, per image), num_images (per sample)."""
        cache: dict[Any, tuple[torch.Tensor, list[int]]] = {}  # each distinct image tiled once
        encoded = [self._encode_prompt(s, think, cache) for s in samples]
        width = max(e["input_ids"].shape[1] for e in encoded)
        input_ids = torch.full((len(encoded), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, e in enumerate(encoded):
            length = e["input_ids"].shape[1]
            input_ids[row, width - length:] = e["input_ids"][0]
            attention_mask[row, width - length:] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, **_merge_images(encoded)}

    # ---- training -----------------------------------------------------------------------------
    def encode_for_training(self, sample: Any, think: bool = True) -> dict[str, Any]:
        """The whole conversation: input_ids and labels LongTensor [L] (labels -100 except the target
        assistant tokens and their end-of-turn token), attention_mask, pixel_values, num_tiles."""
        messages = list(sample.messages)
        pixel_values, tiles = self._images(sample, messages)
        try:
            segments = render_training(messages, self.spec.template, think=think)
        except DataError as exc:
            raise DataError(exc.detail, record=sample.id, field=exc.field) from None
        ids: list[int] = []
        labels: list[int] = []
        cursor = 0
        for seg in segments:
            seg_ids, cursor = self._ids_with_images(seg.text, tiles, cursor)
            ids += seg_ids
            labels += seg_ids if seg.assistant else [IGNORE_INDEX] * len(seg_ids)
        input_ids = torch.tensor(ids, dtype=torch.long)
        return {"input_ids": input_ids, "labels": torch.tensor(labels, dtype=torch.long),
                "attention_mask": torch.ones_like(input_ids), "pixel_values": pixel_values,
                "num_tiles": tiles}

    def collate_training(self, encoded: list[dict[str, Any]]) -> dict[str, Any]:
        """RIGHT-pad `encode_for_training` outputs into a batch [B, L]; images concatenated."""
        width = max(e["input_ids"].shape[0] for e in encoded)
        batch = len(encoded)
        input_ids = torch.full((batch, width), self.pad_id, dtype=torch.long)
        labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((batch, width), dtype=torch.long)
        for row, e in enumerate(encoded):
            length = e["input_ids"].shape[0]
            input_ids[row, :length] = e["input_ids"]
            labels[row, :length] = e["labels"]
            attention_mask[row, :length] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask,
                **_merge_images(encoded)}


def _merge_images(encoded: list[dict[str, Any]]) -> dict[str, Any]:
    parts = [e["pixel_values"] for e in encoded if e["pixel_values"] is not None]
    return {
        "pixel_values": torch.cat(parts) if parts else None,
        "num_tiles": [t for e in encoded for t in e["num_tiles"]],
        "num_images": [len(e["num_tiles"]) for e in encoded],
    }
