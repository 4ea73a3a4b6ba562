from __future__ import annotations

import pytest

from domain_expert.config import RunConfig, apply_override, load_config, shipped_configs
from domain_expert.errors import ConfigError


@pytest.mark.parametrize("name", sorted(shipped_configs()))
def test_every_shipped_config_loads(name):
    cfg = load_config(name)
    assert isinstance(cfg, RunConfig)
    assert cfg.name
    assert cfg.lora.r > 0


def test_shipped_configs_cover_default_and_llama2():
    names = set(shipped_configs())
    assert {"medical-terms", "llama2-7b-lora", "llama2-7b-qlora"} <= names
    assert load_config("llama2-7b-qlora").train.quantization == "4bit"
    assert load_config("llama2-7b-lora").model == "meta-llama/Llama-2-7b-hf"
    t5 = load_config("flan-t5-large-lora")  # the encoder-decoder reference: PEFT's common T5 recipe
    assert t5.model == "google/flan-t5-large" and t5.lora.target_modules == ["q", "v"]
    assert (t5.lora.r, t5.lora.alpha, t5.lora.dropout, t5.train.packing) == (16, 32, 0.05, False)


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError) as e:
        load_config("medical-terms", ["train.learnin_rate=1e-4"])
    assert "train.learnin_rate" in str(e.value) and "learning_rate" in str(e.value)


def test_unknown_key_in_yaml_file_names_the_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: x\nlora:\n  rank: 8\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and "lora.rank" in msg
    assert "valid keys here" in msg and "target_modules" in msg


def test_unknown_key_inside_source_uses_source_fields():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["data.sources.0.brnch=HP:1"])
    assert "did you mean branch" in str(e.value)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.learning_rate=0", "train.learning_rate"),
        ("train.learning_rate=-1e-4", "train.learning_rate"),
        ("lora.r=0", "lora.r"),
        ("lora.target_modules=[]", "lora.target_modules"),
        ("data.test_fraction=0.9", "data.test_fraction"),
        ("train.batch_size=0", "train.batch_size"),
    ],
)
def test_out_of_range_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert key in str(e.value)


def test_all_problems_reported_at_once():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.learning_rate=0", "lora.r=0", "lora.target_modules=[]"])
    msg = str(e.value)
    assert "train.learning_rate" in msg and "lora.r" in msg and "lora.target_modules" in msg


def test_overrides_parse_yaml_values():
    cfg = load_config(None, ["train.epochs=2.5", "data.sources.0.branch=null", "lora.target_modules=[q_proj]"])
    assert cfg.train.epochs == 2.5
    assert cfg.data.sources[0].branch is None
    assert cfg.lora.target_modules == ["q_proj"]


def test_override_must_be_key_value():
    with pytest.raises(ConfigError):
        apply_override({}, "train.epochs")


def test_bad_yaml_reports_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\ntrain:\n  epochs: [1,\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert f"{p}:" in str(e.value)


def test_missing_config_file_suggests_shipped():
    with pytest.raises(ConfigError) as e:
        load_config("medical-term")
    assert "medical-terms" in str(e.value)


def test_file_source_needs_a_column_map():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["data.sources=[{kind: file, path: a.csv, columns: {prompt: q}}]"])
    assert "completion" in str(e.value)


def test_document_chunks_must_fit_the_sequence_length():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["data.sources=[{kind: documents, path: d, chunk_tokens: 512}]", "train.max_seq_len=256"])
    assert "chunk_tokens" in str(e.value) and "max_seq_len" in str(e.value)


def test_file_source_cannot_map_text_and_prompt():
    with pytest.raises(ConfigError):
        load_config(None, ["data.sources=[{kind: file, path: a.csv, columns: {prompt: q, completion: a, text: t}}]"])
