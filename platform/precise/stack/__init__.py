"""The embedded local stack: a real Kafka broker and a Ray head, started and stopped together."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from precise.config import KafkaConfig, StackConfig
from precise.stack.kafka import KafkaBroker, kafka_jars
from precise.stack.process import StackError
from precise.stack.ray_head import RayHead

__all__ = ["KafkaBroker", "LocalStack", "RayHead", "StackError", "kafka_jars"]


class LocalStack:
    """`up` starts what is not running, `down` stops only what `up` started (recorded pids)."""

    def __init__(self, config: StackConfig, kafka: KafkaConfig | None = None) -> None:
        self.config = config
        self.state_dir = config.resolved_state_dir()
        self.kafka_config = kafka or KafkaConfig(bootstrap_servers=f"127.0.0.1:{config.kafka.port}")
        self.kafka = KafkaBroker(self.state_dir / "kafka", port=config.kafka.port,
                                 controller_port=config.kafka.controller_port, heap=config.kafka.heap,
                                 sasl_port=config.kafka.sasl_port, sasl_users=dict(config.kafka.sasl_users))
        r = config.ray
        self.ray = RayHead(self.state_dir / "ray", gcs_port=r.gcs_port, dashboard_port=r.dashboard_port,
                           client_port=r.client_port, agent_port=r.agent_port, metrics_port=r.metrics_port,
                           num_cpus=r.num_cpus, serve_ingress=r.serve_ingress)

    @property
    def env_file(self) -> Path:
        return self.state_dir / "stack.env"

    def up(self, with_ray: bool = True) -> dict[str, Any]:
        from precise.events.topics import ensure_topics

        self.kafka.start()
        topics = ensure_topics(self.kafka_config)
        if with_ray:
            self.ray.start()
        from precise.paths import precise_home

        env = {"PRECISE_KAFKA_BOOTSTRAP": self.kafka.bootstrap, "PRECISE_HOME": str(precise_home()),
               **self.ray.client_env()}
        self.env_file.write_text("".join(f"export {k}={v}\n" for k, v in env.items()))
        return {"topics": topics, **self.status()}

    def down(self) -> dict[str, bool]:
        return {"ray": self.ray.stop(), "kafka": self.kafka.stop()}

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "kafka": {"running": self.kafka.running(), "bootstrap": self.kafka.bootstrap,
                      "log": str(self.kafka.log_path)},
            "ray": {"running": self.ray.running(), "address": self.ray.address,
                    "dashboard": self.ray.dashboard_url,
                    "dashboard_healthy": self.ray.running() and self.ray.dashboard_ready(),
                    "auth_token_file": str(self.ray.token_path)},
            "env_file": str(self.env_file),
        }
        status["metrics"] = self._metrics_status() if status["ray"]["running"] else {
            "url": self.ray.metrics_url, "answering": False}
        if status["kafka"]["running"]:
            try:
                from precise.events.topics import end_offsets

                status["kafka"]["topics"] = {
                    t: sum(end_offsets(self.kafka.bootstrap, t).values())
                    for t in (self.kafka_config.events_topic, self.kafka_config.items_topic,
                              self.kafka_config.dead_letter_topic)
                }
            except Exception as exc:  # status must report, not crash
                status["kafka"]["error"] = str(exc)
        return status

    def _metrics_status(self) -> dict[str, Any]:
        """The head's Prometheus endpoint and the platform series on it (`ray_precise_*`)."""
        from precise.metrics.prometheus import platform_series, scrape

        try:
            series = platform_series(scrape(self.ray.metrics_url))
        except Exception as exc:  # status must report, not crash
            return {"url": self.ray.metrics_url, "answering": False, "error": str(exc)}
        return {"url": self.ray.metrics_url, "answering": True, "platform_series": series}

    def describe(self) -> str:
        return json.dumps(self.status(), indent=2)
