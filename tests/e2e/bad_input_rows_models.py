"""Bad-input rows: checkpoints, model folders, benchmark outputs and data, other commands."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from bad_input_kit import (
    MATHVISTA_OUTPUTS,
    MMMU_RECORDS,
    case,
    model_copy,
    outputs,
    png_bomb,
    resume,
    sft,
    truncate,
    write_file,
)

# --- checkpoints (resume)

@case("checkpoint-weights-truncated", "checkpoint", r"step-00000001/trainable\.safetensors: .*(corrupt|truncated)")
def _(d, p):
    return resume(p, d, lambda ck: truncate(ck / "trainable.safetensors"))


@case("checkpoint-weights-garbage", "checkpoint", r"step-00000001/trainable\.safetensors: .*(corrupt|truncated)")
def _(d, p):
    return resume(p, d, lambda ck: (ck / "trainable.safetensors").write_bytes(b"\xff" * 64))


@case("checkpoint-weights-missing", "checkpoint", r"step-00000001/trainable\.safetensors: missing")
def _(d, p):
    return resume(p, d, lambda ck: (ck / "trainable.safetensors").unlink())


@case("checkpoint-weights-wrong-shape", "checkpoint",
      r"step-00000001/trainable\.safetensors: .*shape .* does not match")
def _(d, p):
    def damage(ck: Path) -> None:
        from safetensors.torch import load_file, save_file

        w = load_file(str(ck / "trainable.safetensors"))
        name = sorted(w)[0]
        w[name] = w[name].flatten()[:3].clone()
        save_file(w, str(ck / "trainable.safetensors"))
    return resume(p, d, damage)


@case("checkpoint-optimizer-truncated", "checkpoint", r"step-00000001/optimizer\.pt: .*(corrupt|truncated)")
def _(d, p):
    return resume(p, d, lambda ck: truncate(ck / "optimizer.pt"))


@case("checkpoint-optimizer-missing", "checkpoint", r"step-00000001/optimizer\.pt: missing")
def _(d, p):
    return resume(p, d, lambda ck: (ck / "optimizer.pt").unlink())


@case("checkpoint-scheduler-garbage", "checkpoint", r"step-00000001/scheduler\.pt: .*(corrupt|truncated)")
def _(d, p):
    return resume(p, d, lambda ck: (ck / "scheduler.pt").write_bytes(b"not a torch file"))


@case("checkpoint-state-json-corrupt", "checkpoint", r"step-00000001/state\.json: .*not valid JSON")
def _(d, p):
    return resume(p, d, lambda ck: (ck / "state.json").write_text('{"step": 1, '))


@case("checkpoint-state-json-wrong-fields", "checkpoint", r"step-00000001/state\.json: .*(field|key).*'stepp'")
def _(d, p):
    return resume(p, d, lambda ck: (ck / "state.json").write_text('{"stepp": 1}'))


@case("checkpoint-state-json-wrong-type", "checkpoint", r"step-00000001/state\.json: field 'step'")
def _(d, p):
    return resume(p, d, lambda ck: (ck / "state.json").write_text(
        json.dumps({**json.loads((ck / "state.json").read_text()), "step": "one"})))


@case("checkpoint-other-policy", "checkpoint", r"trainable\.safetensors: trainable weights do not match .*policy")
def _(d, p):
    return [*resume(p, d, lambda ck: None), "train.policy=connector+llm"]


@case("checkpoint-rng-missing", "checkpoint", r"step-00000001: no RNG state for process 0")
def _(d, p):
    return resume(p, d, lambda ck: shutil.rmtree(ck / "rng"))


@case("checkpoint-extra-truncated", "checkpoint", r"step-00000001/extra\.pt: .*(corrupt|truncated)")
def _(d, p):
    return resume(p, d, lambda ck: (ck / "extra.pt").write_bytes(b"PK\x03\x04"))


# --- model folders

@case("model-missing", "model", r"nowhere: no such folder and not a preset name")
def _(d, p):
    return sft(d, "synthetic:2", f"model={d / 'nowhere'}")


@case("model-config-corrupt", "model", r"model/config\.json: not valid JSON")
def _(d, p):
    return ["inspect", str(model_copy(p, d, lambda m: (m / "config.json").write_text('{"model_type": ')))]


@case("model-config-empty", "model", r"model/config\.json: not valid JSON")
def _(d, p):
    return ["inspect", str(model_copy(p, d, lambda m: (m / "config.json").write_text("")))]


@case("model-config-not-object", "model", r"model/config\.json: expected a JSON object")
def _(d, p):
    return ["inspect", str(model_copy(p, d, lambda m: (m / "config.json").write_text("[1, 2]")))]


@case("model-config-missing", "model", r"model/config\.json: missing")
def _(d, p):
    return ["inspect", str(model_copy(p, d, lambda m: (m / "config.json").unlink()))]


@case("model-config-wrong-field-type", "model", r"model/config\.json: invalid config .*'hidden_size'")
def _(d, p):
    def damage(m: Path) -> None:
        cfg = json.loads((m / "config.json").read_text())
        cfg["vision_config"]["hidden_size"] = "wide"
        (m / "config.json").write_text(json.dumps(cfg))
    return ["inspect", str(model_copy(p, d, damage))]


@case("model-wrong-architecture-bert", "model", r"bert/config\.json: unrecognised model \(model_type='bert'")
def _(d, p):
    write_file(d / "bert" / "config.json", json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    return ["convert", str(d / "bert"), str(d / "converted")]


@case("model-wrong-architecture-llm", "model", r"llm: a llm checkpoint, not a whole vision-language model")
def _(d, p):
    return ["convert", str(p.llm), str(d / "converted")]


@case("released-config-missing-field", "model", r"released/config\.json: vision_config has no 'hidden_size'")
def _(d, p):
    write_file(d / "released" / "config.json", json.dumps({
        "model_type": "internvl_chat", "vision_config": {"num_hidden_layers": 2},
        "llm_config": {"model_type": "qwen2", "hidden_size": 64}}))
    return ["inspect", str(d / "released")]


@case("model-weights-truncated", "model", r"model/model\.safetensors: .*(corrupt|truncated)")
def _(d, p):
    folder = model_copy(p, d, lambda m: truncate(m / "model.safetensors"))
    return ["convert", str(folder), str(d / "converted")]


@case("model-weights-missing", "model", r"model: no weights")
def _(d, p):
    folder = model_copy(p, d, lambda m: (m / "model.safetensors").unlink())
    return ["convert", str(folder), str(d / "converted")]


@case("model-tokenizer-missing", "model", r"model: no usable tokenizer")
def _(d, p):
    def damage(m: Path) -> None:
        for f in m.iterdir():
            if "token" in f.name or f.name.startswith("chat_template"):
                f.unlink()
    return ["convert", str(model_copy(p, d, damage)), str(d / "converted")]


@case("model-r1v-json-bad-spec", "model", r"model/r1v\.json spec.*template: 'llama' is not one of")
def _(d, p):
    def damage(m: Path) -> None:
        meta = json.loads((m / "r1v.json").read_text())
        meta["spec"]["template"] = "llama"
        (m / "r1v.json").write_text(json.dumps(meta))
    return ["convert", str(model_copy(p, d, damage)), str(d / "converted")]


@case("train-model-wrong-architecture", "model", r"bert/config\.json: unrecognised model \(model_type='bert'")
def _(d, p):
    write_file(d / "bert" / "config.json", json.dumps({"model_type": "bert", "architectures": ["BertForMaskedLM"]}))
    return sft(d, "synthetic:2", f"model={d / 'bert'}")


@case("reward-model-folder-corrupt", "model", r"rm/reward_model\.json: not valid JSON")
def _(d, p):
    folder = model_copy(p, d, lambda m: None).rename(d / "rm")
    write_file(folder / "reward_model.json", "{")
    write_file(folder / "reward_head.safetensors", b"")
    return ["train", "mpo", "model=tiny", "source=generate", "data=synthetic:2", f"reward_model={folder}",
            f"train.out_dir={d / 'out'}", "train.max_steps=1"]


@case("model-r1v-json-corrupt", "model", r"model/r1v\.json: not valid JSON")
def _(d, p):
    folder = model_copy(p, d, lambda m: (m / "r1v.json").write_text("{"))
    return ["convert", str(folder), str(d / "converted")]


@case("connector-file-missing", "model", r"nope\.safetensors: cannot read connector weights")
def _(d, p):
    return ["assemble", "--vision", "tiny", "--llm", "tiny", "--out", str(d / "vlm"),
            "--connector", str(d / "nope.safetensors")]


@case("connector-file-corrupt", "model", r"conn\.safetensors: cannot read connector weights")
def _(d, p):
    return ["assemble", "--vision", "tiny", "--llm", "tiny", "--out", str(d / "vlm"),
            "--connector", str(write_file(d / "conn.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{bad json"))]


@case("connector-wrong-shapes", "model", r"conn\.safetensors: connector weights do not fit")
def _(d, p):
    import torch
    from safetensors.torch import save_file

    save_file({"linear_1.weight": torch.zeros(3, 3)}, str(d / "conn.safetensors"))
    return ["assemble", "--vision", "tiny", "--llm", "tiny", "--out", str(d / "vlm"),
            "--connector", str(d / "conn.safetensors")]


@case("assemble-vision-is-an-llm", "model", r"llm: a llm checkpoint has no vision tower")
def _(d, p):
    return ["assemble", "--vision", str(p.llm), "--llm", "tiny", "--out", str(d / "vlm")]


@case("output-folder-unwritable", "output", r"blocker/vlm: cannot write")
def _(d, p):
    write_file(d / "blocker", "a file where a folder should be\n")
    return ["assemble", "--vision", "tiny", "--llm", "tiny", "--out", str(d / "blocker" / "vlm")]


@case("output-folder-not-a-model", "output", r"busy: .*not a model folder")
def _(d, p):
    write_file(d / "busy" / "notes.txt", "my own files\n")
    return ["assemble", "--vision", "tiny", "--llm", "tiny", "--out", str(d / "busy")]


@case("convert-dst-unwritable", "output", r"blocker/released: cannot write")
def _(d, p):
    write_file(d / "blocker", "x\n")
    return ["convert", str(p.model), str(d / "blocker" / "released"), "--to", "released"]


# --- benchmark outputs (`r1v score`)

@case("outputs-truncated-json", "outputs", r"outputs\.json: not valid JSON \(.* line 1, column \d+\)")
def _(d, p):
    return ["score", "--benchmark", "mmmu", "--outputs", str(truncate(outputs(d, MMMU_RECORDS)))]


@case("outputs-empty-file", "outputs", r"outputs\.jsonl: no records")
def _(d, p):
    return ["score", "--benchmark", "k12", "--outputs", str(write_file(d / "outputs.jsonl", ""))]


@case("outputs-empty-list", "outputs", r"outputs\.json: no records")
def _(d, p):
    return ["score", "--benchmark", "math500", "--outputs", str(outputs(d, []))]


@case("outputs-not-utf8", "outputs", r"outputs\.json: cannot read outputs")
def _(d, p):
    return ["score", "--benchmark", "mmmu", "--outputs", str(write_file(d / "outputs.json", b'[{"id": "\xff"}]'))]


@case("outputs-mmmu-scored-as-mathvista", "outputs",
      r"outputs\.json: no item could be scored as mathvista .*line 1, id validation_Art_1.*answer_type")
def _(d, p):
    return ["score", "--benchmark", "mathvista", "--outputs", str(outputs(d, MMMU_RECORDS))]


@case("outputs-mathvista-scored-as-mmmu", "outputs",
      r"outputs\.json: no item could be scored as mmmu .*line 1, id 1.*question_type 'free_form'")
def _(d, p):
    return ["score", "--benchmark", "mmmu", "--outputs", str(outputs(d, MATHVISTA_OUTPUTS))]


@case("outputs-no-id-matches-gold", "outputs", r"no item could be scored as mmmu .*unknown_id")
def _(d, p):
    gold = write_file(d / "answer_dict_val.json", json.dumps(
        {"validation_Music_7": {"question_type": "open", "ground_truth": "5"}}))
    return ["score", "--benchmark", "mmmu", "--outputs", str(outputs(d, MMMU_RECORDS)), "--gold", str(gold)]


@case("outputs-folder-without-files", "outputs", r"empty_run: no mmmu output files")
def _(d, p):
    (d / "empty_run" / "Art").mkdir(parents=True)
    return ["score", "--benchmark", "mmmu", "--outputs", str(d / "empty_run")]


@case("outputs-response-wrong-type", "outputs",
      r"no item could be scored as k12 .*line 1, id a: wrong_type: field 'response'")
def _(d, p):
    return ["score", "--benchmark", "k12", "--outputs", str(outputs(d, [{"id": "a", "response": 5, "answer": "1"}]))]


@case("outputs-gold-corrupt", "outputs", r"gold\.jsonl: .*bad gold file: .*line 1: malformed_json")
def _(d, p):
    gold = write_file(d / "gold.jsonl", '{"id": "a", "answer": \n')
    return ["score", "--benchmark", "k12", "--outputs", str(outputs(d, [{"id": "a", "response": "1"}])),
            "--gold", str(gold)]


@case("outputs-unknown-benchmark", "outputs", r"unknown benchmark 'mmlu'")
def _(d, p):
    return ["score", "--benchmark", "mmlu", "--outputs", str(outputs(d, MMMU_RECORDS))]


@case("score-json-unwritable", "output", r"blocker/report\.json: cannot write")
def _(d, p):
    write_file(d / "blocker", "x\n")
    return ["score", "--benchmark", "mmmu", "--outputs", str(outputs(d, MMMU_RECORDS)),
            "--json", str(d / "blocker" / "report.json")]


# --- benchmark data (`r1v eval --data`)

@case("benchmark-data-truncated", "benchmark data", r"k12\.json: malformed JSON")
def _(d, p):
    write_file(d / "k12" / "k12.json", '[{"id": "1", "question": "q", "answ')
    return ["eval", "--benchmark", "k12", "--data", str(d / "k12"), "--model", "tiny", "--out", str(d / "ev")]


@case("benchmark-data-no-records", "benchmark data", r"k12\.json: no records")
def _(d, p):
    write_file(d / "k12" / "k12.json", "[]")
    return ["eval", "--benchmark", "k12", "--data", str(d / "k12"), "--model", "tiny", "--out", str(d / "ev")]


@case("benchmark-data-missing-field", "benchmark data", r"k12\.json, record 0, field 'image_path': missing")
def _(d, p):
    write_file(d / "k12" / "k12.json", json.dumps([{"id": "1", "question": "q", "answer": "1"}]))
    return ["eval", "--benchmark", "k12", "--data", str(d / "k12"), "--model", "tiny", "--out", str(d / "ev")]


@case("benchmark-mathvista-corrupt", "benchmark data", r"testmini\.json: malformed JSON")
def _(d, p):
    write_file(d / "mv" / "testmini.json", '{"1": {"pid": ')
    return ["eval", "--benchmark", "mathvista", "--data", str(d / "mv"), "--model", "tiny", "--out", str(d / "ev")]


@case("benchmark-data-folder-empty", "benchmark data", r"k12: k12 data not found")
def _(d, p):
    (d / "k12").mkdir()
    return ["eval", "--benchmark", "k12", "--data", str(d / "k12"), "--model", "tiny", "--out", str(d / "ev")]


@case("benchmark-image-corrupt", "image", r"record 1, field 'images\[0\]': .*fig\.png: not a recognised image")
def _(d, p):
    write_file(d / "k12" / "images" / "fig.png", b"not a png")
    write_file(d / "k12" / "k12.json", json.dumps([{"id": "1", "question": "q", "answer": "1",
                                                "image_path": "images/fig.png"}]))
    return ["eval", "--benchmark", "k12", "--data", str(d / "k12"), "--model", "tiny", "--out", str(d / "ev")]


@case("eval-model-wrong-architecture", "model", r"llm: a llm checkpoint, not a whole vision-language model")
def _(d, p):
    write_file(d / "math500" / "test.jsonl", json.dumps({"unique_id": "u1", "problem": "1+1?", "answer": "2"}) + "\n")
    return ["eval", "--benchmark", "math500", "--data", str(d / "math500"), "--model", str(p.llm),
            "--out", str(d / "ev")]


# --- other commands

@case("chat-image-missing", "image", r"gone\.png: file not found")
def _(d, p):
    return ["chat", "--model", "tiny", "--image", str(d / "gone.png"), "hi"]


@case("chat-image-not-an-image", "image", r"notes\.png: not a recognised image format")
def _(d, p):
    return ["chat", "--model", "tiny", "--image", str(write_file(d / "notes.png", "plain text\n")), "hi"]


@case("chat-image-bomb", "image", r"bomb\.png: image too large")
def _(d, p):
    return ["chat", "--model", "tiny", "--image", str(write_file(d / "bomb.png", png_bomb())), "hi"]


@case("serve-model-wrong-architecture", "model", r"llm: a llm checkpoint, not a whole vision-language model")
def _(d, p):
    return ["serve", "--model", str(p.llm), "--port", "1"]


@case("serve-allow-file-dir-missing", "config", r"--allow-file-dir .*nowhere: not a folder")
def _(d, p):
    return ["serve", "--model", "tiny", "--allow-file-dir", str(d / "nowhere"), "--port", "1"]


@case("convert-unknown-layout", "config", r"--to must be 'hf', 'released', 'gguf' or 'compressed-tensors', got 'onnx'")
def _(d, p):
    return ["convert", str(p.model), str(d / "out"), "--to", "onnx"]


@case("plan-unknown-preset", "config", r"unknown preset 'r2v-70b'")
def _(d, p):
    return ["plan", "--preset", "r2v-70b"]


@case("plan-out-of-range", "config", r"gpus: must be >= 1, got 0")
def _(d, p):
    return ["plan", "--preset", "tiny", "--gpus", "0"]


@case("sandbox-script-not-text", "config", r"s\.py: cannot read script")
def _(d, p):
    return ["sandbox", "run", str(write_file(d / "s.py", b"\xff\xfe\x00"))]


