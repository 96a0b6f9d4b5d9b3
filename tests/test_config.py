"""Configs: YAML sections, dotted overrides, type coercion, validation, closest-key suggestions."""
from pathlib import Path

import pytest
import yaml

from lmlab.config import load_config, parse_overrides, save_config
from lmlab.errors import LmlabError
from lmlab.models.gpt import GPTConfig

ROOT = Path(__file__).resolve().parents[1]


def yaml_file(tmp_path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_configs_load():
    baby = load_config(ROOT / "configs" / "shakespeare-char-baby.yaml")
    assert isinstance(baby.model, GPTConfig)
    assert (baby.model.n_layer, baby.model.n_embd, baby.model.block_size) == (4, 128, 64)
    assert baby.train.batch_size == 12 and baby.train.max_iters == 2000
    full = load_config(ROOT / "configs" / "shakespeare-char.yaml")
    assert (full.model.n_layer, full.model.n_head, full.model.n_embd, full.model.block_size) == (6, 6, 384, 256)
    assert full.model.dropout == 0.2 and full.train.batch_size == 64 and full.train.max_iters == 5000


def test_yaml_values_and_overrides_are_coerced_to_field_types(tmp_path):
    # PyYAML reads "1e-3" (no dot) as a string: it must still become a float.
    path = yaml_file(tmp_path, "model: {n_layer: 3, n_head: 2, n_embd: 64}\n"
                               "train: {learning_rate: 1e-3, min_lr: 0, compile: 'no'}\n")
    cfg = load_config(path, {"model.n_layer": "5", "train.batch_size": "7", "train.beta2": "0.95",
                             "train.tensorboard": "false", "train.lr_decay_iters": "none",
                             "train.save_interval": "3", "model.bias": "true", "data.dir": "elsewhere"})
    assert cfg.model.n_layer == 5 and type(cfg.model.n_layer) is int
    assert cfg.model.n_head == 2 and cfg.model.n_embd == 64
    assert cfg.train.learning_rate == 1e-3 and type(cfg.train.learning_rate) is float
    assert cfg.train.min_lr == 0.0 and type(cfg.train.min_lr) is float
    assert cfg.train.compile is False and cfg.train.tensorboard is False and cfg.model.bias is True
    assert cfg.train.batch_size == 7 and cfg.train.beta2 == 0.95
    assert cfg.train.lr_decay_iters is None and cfg.train.save_interval == 3
    assert cfg.data.dir == "elsewhere"


def test_defaults_without_a_file():
    cfg = load_config(None, {"model.n_layer": "1"})
    assert cfg.model.n_layer == 1 and cfg.model.n_head == GPTConfig().n_head
    assert cfg.train.max_iters == 5000


def test_save_then_load_round_trips(tmp_path):
    cfg = load_config(None, {"model.n_layer": "3", "model.pos_encoding": "sinusoidal", "train.seed": "9",
                             "train.lr_decay_iters": "123"})
    save_config(cfg, tmp_path / "saved.yaml")
    again = load_config(tmp_path / "saved.yaml")
    assert again.to_dict() == cfg.to_dict()
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))


def test_parse_overrides_both_forms():
    assert parse_overrides(["--model.n_layer", "4", "--train.seed=3"]) == {"model.n_layer": "4", "train.seed": "3"}
    with pytest.raises(LmlabError, match="needs a value"):
        parse_overrides(["--model.n_layer"])
    with pytest.raises(LmlabError, match="--model.n_layer 4"):
        parse_overrides(["n_layer", "4"])


@pytest.mark.parametrize("key, closest", [
    ("model.n_layers", "model.n_layer"),
    ("model.nembd", "model.n_embd"),
    ("train.learning_rat", "train.learning_rate"),
    ("train.batchsize", "train.batch_size"),
])
def test_unknown_override_names_the_closest_key(key, closest):
    with pytest.raises(LmlabError) as e:
        load_config(None, {key: "1"})
    assert f"'{closest}'" in str(e.value) and key in str(e.value)


def test_unknown_yaml_key_and_section(tmp_path):
    with pytest.raises(LmlabError, match="'model.n_head'"):
        load_config(yaml_file(tmp_path, "model: {n_heads: 2}\n"))
    with pytest.raises(LmlabError, match="'train'"):
        load_config(yaml_file(tmp_path, "trian: {max_iters: 2}\n"))
    with pytest.raises(LmlabError, match="--model.X"):
        load_config(None, {"modle.n_layer": "2"})


@pytest.mark.parametrize("key, value, message", [
    ("model.n_layer", "abc", "model.n_layer must be an integer"),
    ("model.n_layer", "2.5", "model.n_layer must be an integer"),
    ("model.n_layer", "0", "model.n_layer must be a positive integer"),
    ("train.batch_size", "-1", "train.batch_size must be a positive integer"),
    ("train.max_iters", "-5", "train.max_iters must be >= 0"),
    ("train.learning_rate", "fast", "train.learning_rate must be a number"),
    ("train.learning_rate", "0", "train.learning_rate must be > 0"),
    ("train.min_lr", "1", "train.min_lr must be between"),
    ("train.compile", "maybe", "train.compile must be true or false"),
    ("train.precision", "float8", "train.precision must be"),
    ("train.dtype", "fp8", "train.precision must be"),  # the field's old name
    ("train.strategy", "zero3", "train.strategy must be"),
    ("train.beta2", "1.0", "beta2 must be in"),
    ("model.dropout", "1.5", "model.dropout must be in"),
    ("model.n_embd", "30", "divisible by model.n_head"),
    ("model.pos_encoding", "rotary", "learned or sinusoidal"),
    ("model.activation", "relu", "gelu or gelu_tanh"),
])
def test_bad_values_are_named(key, value, message):
    overrides = {key: value}
    if key == "model.n_embd":
        overrides["model.n_head"] = "4"
    with pytest.raises(LmlabError) as e:
        load_config(None, overrides)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_yaml_wrong_types_are_named(tmp_path):
    with pytest.raises(LmlabError, match="model.n_layer must be an integer, got True"):
        load_config(yaml_file(tmp_path, "model: {n_layer: true}\n"))
    with pytest.raises(LmlabError, match="train.batch_size must be an integer"):
        load_config(yaml_file(tmp_path, "train: {batch_size: [1, 2]}\n"))


def test_unknown_family_lists_known_ones():
    with pytest.raises(LmlabError, match="unknown model family 'transformerxl'.*gpt"):
        load_config(None, {"model.family": "transformerxl"})
    with pytest.raises(LmlabError, match="did you mean 'gpt'"):
        load_config(None, {"model.family": "gpt2"})


def test_missing_and_invalid_yaml_files(tmp_path):
    with pytest.raises(LmlabError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(LmlabError, match="not valid YAML"):
        load_config(yaml_file(tmp_path, "model: {n_layer: 2\ntrain: [\n"))
    with pytest.raises(LmlabError, match="must be a mapping"):
        load_config(yaml_file(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(LmlabError, match="must be a mapping"):
        load_config(yaml_file(tmp_path, "model: 3\n"))
    assert load_config(yaml_file(tmp_path, "")).to_dict() == load_config(None).to_dict()
    assert yaml.safe_load((ROOT / "configs" / "shakespeare-char.yaml").read_text())  # sanity: shipped file parses
