"""Config: defaults, YAML, --set precedence, and errors that name the file and the key."""

from __future__ import annotations

import pytest

from rsam_dist.config import Config, ModelConfig, load_config
from rsam_dist.errors import UserError


def _write(tmp_path, text: str, name: str = "run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_are_the_papers():
    config = load_config()
    assert config == Config()
    assert config.model.glimpses == 4
    assert config.model.feedback is True
    assert config.model.attention_input == "downsample"
    assert config.model.loss == "all_glimpses"
    assert config.model.combine == "mean_softmax"
    assert config.model.relu_logits is False
    assert config.model.hidden_size == 256
    assert config.optim.lr == 0.01
    assert config.optim.momentum == 0.9
    assert config.optim.weight_decay == 1e-4
    assert config.optim.lr_decay == 0.95
    assert config.optim.batch_size == 128
    assert config.train.epochs == 20
    assert config.scaling.num_workers == 1
    assert config.data.name == "cifar10"


def test_yaml_values_override_defaults(tmp_path):
    text = "model:\n  glimpses: 6\n  feedback: false\noptim:\n  lr: 0.05\ndata:\n  name: digits\n"
    path = _write(tmp_path, text)
    config = load_config(path)
    assert config.model.glimpses == 6
    assert config.model.feedback is False
    assert config.optim.lr == 0.05
    assert config.data.name == "digits"
    assert config.optim.batch_size == 128  # untouched keys keep their defaults
    assert config.model.combine == "mean_softmax"


def test_set_overrides_beat_yaml(tmp_path):
    path = _write(tmp_path, "model:\n  glimpses: 6\noptim:\n  lr: 0.05\n")
    config = load_config(path, ["model.glimpses=2", "train.epochs=3", "data.limit_train=256"])
    assert config.model.glimpses == 2
    assert config.train.epochs == 3
    assert config.data.limit_train == 256
    assert config.optim.lr == 0.05  # from the YAML, not overridden


def test_empty_yaml_is_the_defaults(tmp_path):
    assert load_config(_write(tmp_path, "")) == Config()


def test_round_trip_through_yaml(tmp_path):
    config = load_config(None, ["model.glimpses=3", "data.limit_test=7", "train.name=x"])
    path = _write(tmp_path, config.to_yaml())
    assert load_config(path) == config


def test_unknown_key_names_file_key_and_allowed_keys(tmp_path):
    path = _write(tmp_path, "model:\n  glimpsez: 4\n")
    with pytest.raises(UserError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert "model.glimpsez" in message
    for allowed in ModelConfig.model_fields:
        assert allowed in message
    assert "\n" not in message


def test_unknown_section_lists_sections(tmp_path):
    path = _write(tmp_path, "modle:\n  glimpses: 4\n")
    with pytest.raises(UserError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and "modle" in message
    for section in ("model", "data", "optim", "train", "scaling"):
        assert section in message


def test_unknown_key_from_set(tmp_path):
    path = _write(tmp_path, "model:\n  glimpses: 4\n")
    with pytest.raises(UserError, match=r"optim\.learning_rate"):
        load_config(path, ["optim.learning_rate=0.1"])


@pytest.mark.parametrize(
    "yaml_text, key",
    [
        ("model:\n  glimpses: many\n", "model.glimpses"),  # wrong type
        ("model:\n  glimpses: 0\n", "model.glimpses"),  # below range
        ("optim:\n  momentum: 1.5\n", "optim.momentum"),  # above range
        ("optim:\n  lr: -1\n", "optim.lr"),
        ("model:\n  attention_input: conv\n", "model.attention_input"),  # not a choice
        ("model:\n  hidden_size: 100\n", "model.hidden_size"),  # not a multiple of 64
    ],
)
def test_wrong_type_or_range_names_the_key(tmp_path, yaml_text, key):
    path = _write(tmp_path, yaml_text)
    with pytest.raises(UserError) as info:
        load_config(path)
    message = str(info.value)
    assert key in message
    assert str(path) in message


def test_wrong_type_from_set_names_the_key():
    with pytest.raises(UserError, match=r"train\.epochs"):
        load_config(None, ["train.epochs=ten"])


def test_batch_not_divisible_by_workers():
    with pytest.raises(UserError) as info:
        load_config(None, ["optim.batch_size=100", "scaling.num_workers=3"])
    message = str(info.value)
    assert "batch_size" in message and "num_workers" in message
    load_config(None, ["optim.batch_size=99", "scaling.num_workers=3"])  # divisible: fine


def test_malformed_yaml_is_a_user_error(tmp_path):
    path = _write(tmp_path, "model:\n  glimpses: [4\n")
    with pytest.raises(UserError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "malformed YAML" in str(info.value)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_config(tmp_path / "absent.yaml")


def test_bad_override_syntax():
    with pytest.raises(UserError, match="section.key=value"):
        load_config(None, ["model.glimpses"])
