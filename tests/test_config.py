import pytest

from precise.config import ConfigError, load_config


def test_defaults_and_env_expansion(tmp_path, monkeypatch):
    monkeypatch.setenv("BROKERS", "10.0.0.1:9092")
    path = tmp_path / "c.yaml"
    path.write_text("kafka:\n  bootstrap_servers: ${BROKERS}\nstorage:\n  root: ${NOPE:-/data/precise}\n")
    config = load_config(path)
    assert config.kafka.bootstrap_servers == "10.0.0.1:9092"
    assert config.storage.root == "/data/precise"
    assert config.kafka.events_topic == "behavior-events"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kafka:\n  bootstrap: x\n", "kafka.bootstrap: Extra inputs are not permitted"),
        ("kafka:\n  partitions: 0\n", "kafka.partitions"),
        ("kafka: [1\n", "not valid YAML"),
        ("storage:\n  root: ${UNSET_VAR_FOR_TEST}\n", "UNSET_VAR_FOR_TEST is not set"),
        # training sections are typed: a typo or a bad value fails at load, not inside a worker
        ("training:\n  universal:\n    lr: fast\n", "training.universal.lr"),
        ("training:\n  universal:\n    epoch: 3\n", "training.universal.epoch: Extra inputs"),
        ("training:\n  model:\n    fusion: moo\n", "fusion must be one of"),
        ("training:\n  model:\n    id_dim: 11\n    num_heads: 4\n", "not divisible by num_heads"),
        ("training:\n  select_metric: N@30\n", "needs K=30 in eval_ks"),
        ("training:\n  targeted:\n    history: everything\n", "training.targeted.history"),
        ("quality:\n  variants: [ut, best]\n", "unknown variants"),
    ],
)
def test_bad_configs_name_the_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_yaml_1_1_exponents_are_numbers(tmp_path):
    """YAML reads `1e-3` as a string; the typed section makes it the float it means, at load."""
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  universal:\n    lr: 1e-3\n  targeted:\n    warm_start_lr: 1e-4\n")
    config = load_config(path)
    assert config.training.universal.lr == 0.001 and config.training.targeted.warm_start_lr == 0.0001


def test_missing_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/nonexistent/config.yaml")


def test_shipped_configs_are_valid():
    from pathlib import Path

    for path in sorted(Path(__file__).parents[1].glob("configs/*.yaml")):
        if path.name.startswith("serve"):
            continue  # Ray Serve configs, validated by the Serve tests
        load_config(path)
