"""The multi-host harness's parts that need no root (precise.stack.cluster): the node environment
lacks the project but has its dependencies; brokers are configured for replication 3 / min ISR 2;
every Ray client and node uses token authentication; names fit Linux's limits."""

from __future__ import annotations

import subprocess

from precise.stack.cluster import BROKERS, RAY_NODES, LocalCluster


def test_node_environment_has_the_dependencies_but_not_the_project(tmp_path):
    cluster = LocalCluster(tmp_path)
    python = cluster.node_env()
    deps = subprocess.run([str(python), "-c", "import ray, torch, pyarrow, confluent_kafka"], capture_output=True,
                          text=True, cwd=tmp_path)
    assert deps.returncode == 0, deps.stderr
    project = subprocess.run([str(python), "-c", "import precise"], capture_output=True, text=True, cwd=tmp_path)
    assert "No module named 'precise'" in project.stderr


def test_brokers_replicate_three_times_and_need_two_in_sync(tmp_path):
    cluster = LocalCluster(tmp_path)
    props = dict(line.split("=", 1) for line in cluster._broker_config("k2").read_text().splitlines())
    assert (props["default.replication.factor"], props["min.insync.replicas"]) == ("3", "2")
    assert props["offsets.topic.replication.factor"] == "3" and props["unclean.leader.election.enable"] == "false"
    assert props["node.id"] == "2" and props["listeners"].startswith(f"PLAINTEXT://{cluster.hosts['k2'].address}:")
    assert props["controller.quorum.voters"].count("@") == len(BROKERS)
    assert cluster.bootstrap.count(",") == len(BROKERS) - 1


def test_addresses_names_and_token_auth(tmp_path):
    cluster = LocalCluster(tmp_path, prefix="t14", subnet="10.214.15")
    assert len({h.address for h in cluster.hosts.values()}) == len(RAY_NODES) + len(BROKERS)
    assert all(len(h.veth) <= 15 for h in cluster.hosts.values()) and len(cluster.bridge) <= 15
    env = cluster.client_env()
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN_PATH"] == str(cluster.token_path)
    assert env["RAY_ADDRESS"] == "10.214.15.10:6379"
    token = cluster.ensure_token()
    assert len(token) == 64 and oct(cluster.token_path.stat().st_mode & 0o777) == "0o600"
    assert cluster.ensure_token() == token
