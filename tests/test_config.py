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
    ],
)
def test_bad_configs_name_the_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_missing_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/nonexistent/config.yaml")


def test_shipped_configs_are_valid():
    from pathlib import Path

    for path in sorted(Path(__file__).parents[1].glob("configs/*.yaml")):
        if path.name.startswith(("serve", "quality")):
            continue  # validated by their own stage's tests
        load_config(path)
