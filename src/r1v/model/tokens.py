"""Tokenizer helpers: the tiny offline tokenizer of the `tiny` preset, and adding the image tokens.

The tiny tokenizer is a byte-level BPE without merges (every byte is one token) plus the special
tokens the processor and templates need. It is built in memory with the `tokenizers` library, so it
is deterministic and needs no download.
"""

from __future__ import annotations

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedModel, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from r1v.errors import ModelError
from r1v.processing.spec import IMG_CONTEXT, IMG_END, IMG_START

IMAGE_TOKENS = (IMG_START, IMG_END, IMG_CONTEXT)
PAD = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
THINK = ("<think>", "</think>")

_CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (256 byte tokens + specials), ChatML chat template, eos `<|im_end|>`."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    specials = [PAD, IM_START, IM_END, *IMAGE_TOKENS]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=IM_END, pad_token=PAD)
    fast.chat_template = _CHATML
    return fast


def single_token_id(tokenizer: PreTrainedTokenizerBase, text: str) -> int | None:
    """The id of `text` if the tokenizer encodes it as exactly one token, else None."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None


def add_image_tokens(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel | None = None) -> list[str]:
    """Add `<img>`, `</img>`, `<IMG_CONTEXT>` as special tokens when missing; returns the added ones.

    With `model` (a CausalLM or the VLM), the input/output embeddings are resized when the tokenizer
    outgrows them and the rows of newly added tokens are set to the mean of the existing rows.
    """
    missing = [t for t in IMAGE_TOKENS if single_token_id(tokenizer, t) is None]
    if missing:
        tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in missing],
                             special_tokens=True)
    for t in IMAGE_TOKENS:
        if single_token_id(tokenizer, t) is None:
            raise ModelError(f"tokenizer cannot hold {t!r} as one token even after adding it")
    if model is not None and missing:
        new_ids = [tokenizer.convert_tokens_to_ids(t) for t in missing]
        grow_embeddings(model, len(tokenizer), new_ids)
    return missing


@torch.no_grad()
def grow_embeddings(model: PreTrainedModel, n_tokens: int, new_ids: list[int]) -> None:
    emb = model.get_input_embeddings()
    old = emb.weight.shape[0]
    keep = min(ids for ids in new_ids) if new_ids else old
    keep = min(keep, old)
    if n_tokens > old:
        model.resize_token_embeddings(n_tokens, mean_resizing=False)
    for layer in {id(m): m for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None}.values():
        w = layer.weight
        mean = w[:keep].float().mean(0).to(w.dtype)
        for i in new_ids:
            w[i] = mean
