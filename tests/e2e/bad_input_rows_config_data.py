"""Bad-input rows: stage configs and overrides, training data files and the images they reference."""

from __future__ import annotations

import json

from bad_input_kit import (
    SFT,
    case,
    jpeg_bytes,
    parquet,
    png_bomb,
    png_bytes,
    sft,
    sft_data,
    sft_record,
    truncate,
    write_file,
    write_jsonl,
)

# --- stage configs: YAML + key=value overrides

@case("config-yaml-syntax", "config", r"cfg\.yaml line \d+: invalid YAML")
def _(d, p):
    return ["train", "sft", "--config", str(write_file(d / "cfg.yaml", "model: tiny\ntrain: [unclosed\n"))]


@case("config-yaml-not-a-mapping", "config", r"cfg\.yaml: expected a mapping")
def _(d, p):
    return ["train", "sft", "--config", str(write_file(d / "cfg.yaml", "- model\n- tiny\n"))]


@case("config-yaml-empty", "config", r"cfg\.yaml: .*empty")
def _(d, p):
    return ["train", "sft", "--config", str(write_file(d / "cfg.yaml", "# nothing here\n"))]


@case("config-yaml-not-text", "config", r"cfg\.yaml: .*(UTF-8|text)")
def _(d, p):
    return ["train", "sft", "--config", str(write_file(d / "cfg.yaml", b"model: \xff\xfe\x00tiny\n"))]


@case("config-yaml-unsafe-tag", "config", r"cfg\.yaml line \d+: invalid YAML")
def _(d, p):
    return ["train", "sft", "--config", str(write_file(d / "cfg.yaml", "model: !!python/object/apply:os.getcwd []\n"))]


@case("config-path-is-a-folder", "config", r"cfgdir: .*(folder|directory)")
def _(d, p):
    (d / "cfgdir").mkdir()
    return ["train", "sft", "--config", str(d / "cfgdir")]


@case("config-file-missing", "config", r"nope\.yaml: config file not found")
def _(d, p):
    return ["train", "sft", "--config", str(d / "nope.yaml")]


@case("config-unknown-key", "config", r"cfg\.yaml.*unknown key\(s\) \['modle'\]")
def _(d, p):
    return ["train", "sft", "--config", str(write_file(d / "cfg.yaml", "modle: tiny\n"))]


@case("config-unknown-nested-key", "config", r"cfg\.yaml.*train.*unknown key\(s\) \['lr_max'\]")
def _(d, p):
    return ["train", "sft", "--config", str(write_file(d / "cfg.yaml", "train:\n  lr_max: 0.1\n"))]


@case("config-non-string-keys", "config", r"cfg\.yaml.*unknown key\(s\)")
def _(d, p):
    return ["train", "sft", "--config", str(write_file(d / "cfg.yaml", "1: 2\nfoo: 3\n"))]


@case("override-unknown-key", "config", r"overrides.*train.*unknown key\(s\) \['max_step'\]")
def _(d, p):
    return [*SFT, "train.max_step=3"]


@case("override-without-equals", "config", r"override 'train\.max_steps': expected key=value")
def _(d, p):
    return ["train", "sft", "train.max_steps"]


@case("override-wrong-type", "config", r"train\.max_steps: expected an integer, got 'many'")
def _(d, p):
    return [*SFT, "train.max_steps=many"]


@case("override-out-of-range", "config", r"lr: must be > 0, got -1")
def _(d, p):
    return [*SFT, "train.lr=-1"]


@case("override-not-finite", "config", r"train\.lr: expected a finite number, got '?nan")
def _(d, p):
    return [*SFT, "train.lr=nan"]


@case("override-section-as-scalar", "config", r"train: expected a mapping for section TrainConfig")
def _(d, p):
    return ["train", "sft", "train=5"]


@case("override-bad-choice", "config", r"train\.precision: 'fp8' is not one of")
def _(d, p):
    return [*SFT, "train.precision=fp8"]


@case("stage-unknown", "config", r"No such command 'sfft'")
def _(d, p):
    return ["train", "sfft"]


# --- training data files (JSONL / JSON / parquet) and the images they reference

@case("jsonl-malformed-line", "data", r"data\.jsonl, record 2: malformed JSON")
def _(d, p):
    path = sft_data(d)
    path.write_text(path.read_text() + '{"id": "b", "messages": [\n')
    return sft(d, path)


@case("jsonl-truncated", "data", r"data\.jsonl, record 1: malformed JSON")
def _(d, p):
    return sft(d, truncate(sft_data(d)))


@case("jsonl-empty-file", "data", r"data\.jsonl: no records")
def _(d, p):
    sft_data(d)
    (d / "data.jsonl").write_text("")
    return sft(d, d / "data.jsonl")


@case("jsonl-blank-lines-only", "data", r"data\.jsonl: no records")
def _(d, p):
    sft_data(d)
    (d / "data.jsonl").write_text("\n\n  \n")
    return sft(d, d / "data.jsonl")


@case("jsonl-not-utf8", "data", r"data\.jsonl, record 1: .*UTF-8")
def _(d, p):
    sft_data(d)
    (d / "data.jsonl").write_bytes(b'{"id": "\xff\xfe"}\n')
    return sft(d, d / "data.jsonl")


@case("jsonl-record-not-object", "data", r"data\.jsonl, record 1: record must be a JSON object, got list")
def _(d, p):
    return sft(d, sft_data(d, [[1, 2]]))


@case("jsonl-wrong-type", "data", r"data\.jsonl, record 1, field 'messages': must be a non-empty list")
def _(d, p):
    return sft(d, sft_data(d, [{"id": "a", "messages": "hello"}]))


@case("jsonl-bad-role", "data", r"data\.jsonl, record 1, field 'messages\[1\]\.role': unknown role 'robot'")
def _(d, p):
    rec = sft_record()
    rec["messages"][1]["role"] = "robot"
    return sft(d, sft_data(d, [rec]))


@case("jsonl-no-question", "data", r"data\.jsonl, record 1, field 'question': record has no conversation")
def _(d, p):
    return sft(d, sft_data(d, [{"id": "a", "text": "hello"}]))


@case("jsonl-duplicate-id", "data", r"data\.jsonl, record 2, field 'id': duplicate id 'a'")
def _(d, p):
    return sft(d, sft_data(d, [sft_record(), sft_record()]))


@case("jsonl-no-assistant-turn", "data", r"data\.jsonl, record 1, field 'messages': .*must end with an assistant message")
def _(d, p):
    rec = sft_record()
    rec["messages"] = rec["messages"][:1]
    return sft(d, sft_data(d, [rec]))


@case("jsonl-image-tags-mismatch", "data", r"data\.jsonl, record 1, field 'messages': 2 <image> tags but 1 images")
def _(d, p):
    rec = sft_record()
    rec["messages"][0]["content"] = "<image><image> two?"
    return sft(d, sft_data(d, [rec]))


@case("image-missing", "image", r"data\.jsonl, record 1, field 'images\[0\]': image file not found")
def _(d, p):
    return sft(d, sft_data(d, [sft_record(image="gone.png")]))


@case("image-not-an-image", "image", r"data\.jsonl, record 1, field 'images\[0\]': .*img\.png: not a recognised image")
def _(d, p):
    return sft(d, sft_data(d, image=b"this is a text file, not a PNG\n"))


@case("image-truncated-png", "image", r"data\.jsonl, record 1, field 'images\[0\]': .*img\.png: .*(truncated|corrupt)")
def _(d, p):
    return sft(d, sft_data(d, image=png_bytes((64, 64))[:80]))


@case("image-corrupt-jpeg", "image", r"data\.jsonl, record 1, field 'images\[0\]': .*img\.png: .*(truncated|corrupt)")
def _(d, p):
    data = bytearray(jpeg_bytes())
    return sft(d, sft_data(d, image=bytes(data[: len(data) // 3])))


@case("image-decompression-bomb", "image", r"data\.jsonl, record 1, field 'images\[0\]': .*img\.png: image too large")
def _(d, p):
    return sft(d, sft_data(d, image=png_bomb()))


@case("image-empty-file", "image", r"data\.jsonl, record 1, field 'images\[0\]': .*img\.png: file is empty")
def _(d, p):
    return sft(d, sft_data(d, image=b""))


@case("image-path-is-a-folder", "image", r"data\.jsonl, record 1, field 'images\[0\]': image file not found")
def _(d, p):
    (d / "imgdir").mkdir()
    return sft(d, sft_data(d, [sft_record(image="imgdir")]))


@case("json-not-a-list", "data", r"data\.json: expected a JSON list of records")
def _(d, p):
    return sft(d, write_file(d / "data.json", '{"id": "a"}'))


@case("json-truncated", "data", r"data\.json: malformed JSON .* line 1")
def _(d, p):
    return sft(d, write_file(d / "data.json", json.dumps([sft_record(image=None)])[:30]))


@case("json-empty-list", "data", r"data\.json: no records")
def _(d, p):
    return sft(d, write_file(d / "data.json", '{"data": []}'))


@case("json-not-utf8", "data", r"data\.json: .*UTF-8")
def _(d, p):
    return sft(d, write_file(d / "data.json", b'[{"id": "\xff"}]'))


@case("parquet-truncated", "data", r"data\.parquet: not a readable parquet file")
def _(d, p):
    return sft(d, truncate(parquet(d / "data.parquet", [{"id": "a", "question": "q", "response": "r"}] * 50)))


@case("parquet-not-parquet", "data", r"data\.parquet: not a readable parquet file")
def _(d, p):
    return sft(d, write_file(d / "data.parquet", "id,question\n1,what\n"))


@case("parquet-wrong-schema", "data", r"data\.parquet, record 0, field 'question': record has no conversation")
def _(d, p):
    return sft(d, parquet(d / "data.parquet", [{"a": 1, "b": "x"}]))


@case("parquet-no-rows", "data", r"data\.parquet: no records")
def _(d, p):
    return sft(d, parquet(d / "data.parquet", []))


@case("parquet-bad-image-cell", "image", r"data\.parquet, record 0, field 'image': image bytes are not a readable image")
def _(d, p):
    return sft(d, parquet(d / "data.parquet", [{"id": "a", "question": "q", "response": "r",
                                                "image": {"bytes": b"junk", "path": "x.png"}}]))


@case("data-unknown-format", "data", r"data\.csv: unknown data format '\.csv'")
def _(d, p):
    return sft(d, write_file(d / "data.csv", "a,b\n"))


@case("data-file-missing", "data", r"nope\.jsonl: file not found")
def _(d, p):
    return sft(d, d / "nope.jsonl")


@case("data-path-is-a-folder", "data", r"data\.jsonl: is a folder, not a data file")
def _(d, p):
    (d / "data.jsonl").mkdir()
    return sft(d, d / "data.jsonl")


@case("pairs-wrong-type", "data", r"pairs\.jsonl, record 1, field 'chosen'")
def _(d, p):
    rec = {"id": "a", "question": "2+2?", "chosen": 4, "rejected": ["5"]}
    return ["train", "mpo", "model=tiny", f"data={write_jsonl(d / 'pairs.jsonl', [rec])}",
            f"train.out_dir={d / 'out'}", "train.max_steps=1"]


@case("pairs-empty-file", "data", r"pairs\.jsonl: no records")
def _(d, p):
    return ["train", "rm", "model=tiny", f"data={write_file(d / 'pairs.jsonl', '')}", f"train.out_dir={d / 'out'}"]


@case("reward-plugin-missing", "config", r"nofile\.py:score'.*not found")
def _(d, p):
    return ["train", "grpo", "model=tiny", f"reward_model={d / 'nofile.py'}:score", f"train.out_dir={d / 'out'}"]


@case("pipeline-step-summary-corrupt", "checkpoint", r"a/summary\.json: not a readable step summary")
def _(d, p):
    write_file(d / "out" / "a" / "summary.json", '{"final": ')
    return ["train", "pipeline", f"out_dir={d / 'out'}", "resume=true", "eval.data=null",
            "steps=[{name: a, stage: sft}]"]


@case("pipeline-unknown-stage", "config", r"unknown stage 'nope'")
def _(d, p):
    return ["train", "pipeline", f"out_dir={d / 'out'}", "steps=[{name: a, stage: nope}]"]


