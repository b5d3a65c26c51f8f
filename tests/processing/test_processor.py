"""Processor: `<image>` expansion, prompts (left padded), training labels (right padded)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from r1v.data.schema import Message, Sample
from r1v.errors import DataError, ModelError
from r1v.processing.processor import IGNORE_INDEX, Processor
from r1v.processing.spec import ProcessingSpec

SPECIALS = ["<pad>", "<unk>", "<img>", "</img>", "<IMG_CONTEXT>", "<think>", "</think>", "<|im_start|>",
            "<|im_end|>", "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"]


def make_tokenizer(specials=SPECIALS) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=list(specials),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = ["What is shown in the image?", "The answer is 4.", "Be brief.", "system user assistant",
              "think about the triangle and its area", "\\boxed{4}"] * 20
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   eos_token="<|im_end|>")


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


SPEC = ProcessingSpec(template="r1v3", tile_size=28, patch_size=14, max_tiles=4)  # 1 token per tile


def sample(n_images=1, sizes=((28, 28),), answer=None, sid="s1"):
    imgs = [Image.new("RGB", s, (200, 100, 50)) for s in sizes[:n_images]]
    msgs = [Message("user", "<image>\n" * n_images + "What is shown in the image?")]
    if answer is not None:
        msgs.append(Message("assistant", answer))
    return Sample(id=sid, messages=msgs, images=imgs)


def test_missing_image_token_raises():
    tok = make_tokenizer([t for t in SPECIALS if t != "<IMG_CONTEXT>"])
    with pytest.raises(ModelError, match="IMG_CONTEXT"):
        Processor(tok, SPEC)


def test_prompt_expansion_multi_image(tokenizer):
    proc = Processor(tokenizer, SPEC)
    assert SPEC.tokens_per_tile == 1
    s = sample(2, sizes=((28, 28), (56, 28)))  # 1 tile; 2 tiles + thumbnail = 3
    enc = proc.encode_prompt(s)
    ids = enc["input_ids"][0].tolist()
    assert enc["num_tiles"] == [1, 3]
    assert enc["pixel_values"].shape == (4, 3, 28, 28)
    assert ids.count(proc.img_context_id) == 4
    assert ids.count(proc.img_start_id) == 2 and ids.count(proc.img_end_id) == 2
    first = ids.index(proc.img_start_id)
    assert ids[first + 1] == proc.img_context_id and ids[first + 2] == proc.img_end_id
    text = tokenizer.decode(ids)
    assert text.startswith("<|im_start|>user\n<img><IMG_CONTEXT></img>\n<img>")
    assert text.endswith("<|im_start|>assistant\n<think>\n")
    assert tokenizer.decode(proc.encode_prompt(s, think=False)["input_ids"][0]).endswith("assistant\n")
    # default spec: 256 tokens per 448 tile
    big = Processor(tokenizer, ProcessingSpec(template="r1v3"))
    enc = big.encode_prompt(sample(1, sizes=((448, 448),)))
    assert enc["input_ids"][0].tolist().count(big.img_context_id) == 256


def test_tag_count_mismatch_names_sample(tokenizer):
    proc = Processor(tokenizer, SPEC)
    bad = Sample(id="item-42", messages=[Message("user", "no tag here")], images=[Image.new("RGB", (8, 8))])
    with pytest.raises(DataError, match="item-42.*0 <image> tags in the conversation but 1 images"):
        proc.encode_prompt(bad)
    no_img = Sample(id="t", messages=[Message("user", "plain text")])
    enc = proc.encode_prompt(no_img)
    assert enc["pixel_values"] is None and enc["num_tiles"] == []


def test_batch_left_padding(tokenizer):
    proc = Processor(tokenizer, SPEC)
    a, b = sample(1), Sample(id="b", messages=[Message("user", "Be brief.")])
    batch = proc.encode_batch_prompts([a, b])
    single_a, single_b = proc.encode_prompt(a), proc.encode_prompt(b)
    width = batch["input_ids"].shape[1]
    assert width == max(single_a["input_ids"].shape[1], single_b["input_ids"].shape[1])
    lb = single_b["input_ids"].shape[1]
    assert torch.equal(batch["input_ids"][1, width - lb:], single_b["input_ids"][0])
    assert (batch["input_ids"][1, : width - lb] == tokenizer.pad_token_id).all()
    assert batch["attention_mask"][1].tolist() == [0] * (width - lb) + [1] * lb
    assert batch["num_tiles"] == [1] and batch["num_images"] == [1, 0]
    assert batch["pixel_values"].shape == (1, 3, 28, 28)


@pytest.mark.parametrize("template", ["r1v", "r1v2", "r1v3", "chatml"])
def test_training_labels_cover_only_assistant(tokenizer, template):
    spec = ProcessingSpec(template=template, tile_size=28, patch_size=14, max_tiles=4)
    proc = Processor(tokenizer, spec)
    answer = "<think>\nthink about the triangle\n</think>\n\nThe answer is 4."
    enc = proc.encode_for_training(sample(1, answer=answer))
    ids, labels = enc["input_ids"].tolist(), enc["labels"].tolist()
    assert len(ids) == len(labels)
    labelled = [i for i, lab in zip(ids, labels, strict=True) if lab != IGNORE_INDEX]
    eot = "<｜end▁of▁sentence｜>" if template == "r1v" else "<|im_end|>"
    assert tokenizer.decode(labelled) == "think about the triangle\n</think>\n\nThe answer is 4." + eot
    # the labelled span is contiguous and the unlabelled start equals the inference prompt
    first = next(i for i, lab in enumerate(labels) if lab != IGNORE_INDEX)
    prompt = proc.encode_prompt(sample(1))["input_ids"][0].tolist()
    assert ids[:first] == prompt
    assert proc.img_context_id not in labelled


def test_collate_right_padding(tokenizer):
    proc = Processor(tokenizer, SPEC)
    e1 = proc.encode_for_training(sample(1, answer="The answer is 4."))
    e2 = proc.encode_for_training(Sample(id="x", messages=[Message("user", "Be brief."),
                                                           Message("assistant", "4")]))
    batch = proc.collate_training([e1, e2])
    n2 = e2["input_ids"].shape[0]
    assert batch["input_ids"].shape == (2, e1["input_ids"].shape[0])
    assert torch.equal(batch["input_ids"][1, :n2], e2["input_ids"])
    assert (batch["labels"][1, n2:] == IGNORE_INDEX).all()
    assert batch["attention_mask"][1].sum().item() == n2
    assert batch["num_tiles"] == [1] and batch["pixel_values"].shape[0] == 1
    with pytest.raises(DataError, match="record x"):
        proc.encode_for_training(Sample(id="x", messages=[Message("user", "no answer")]))


def test_batch_tiles_each_distinct_image_once(tokenizer, monkeypatch):
    import r1v.processing.processor as mod

    calls = []
    real = mod.tile_images

    def counting(images, **kw):
        calls.append(len(images))
        return real(images, **kw)

    monkeypatch.setattr(mod, "tile_images", counting)
    proc = Processor(tokenizer, SPEC)
    s = sample(1, sizes=((56, 28),))
    batch = proc.encode_batch_prompts([s, s, s])  # e.g. GRPO: the same prompt n times
    assert calls == [1]
    assert batch["num_tiles"] == [3, 3, 3] and batch["pixel_values"].shape[0] == 9
    assert torch.equal(batch["pixel_values"][:3], batch["pixel_values"][6:])
