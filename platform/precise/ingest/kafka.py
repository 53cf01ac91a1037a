"""Kafka clients of the ingest job (confluent-kafka / librdkafka, the client Ray's reader uses).

Every call has a timeout: when the broker is down, a query fails in seconds with an exception the
job's retry loop handles, instead of hanging the job.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from typing import Any

from precise.config import IngestConfig, KafkaConfig

log = logging.getLogger(__name__)

# kafka.client_options use kafka-python's names (the producer and tools use kafka-python).
_LIBRDKAFKA_NAMES = {
    "security_protocol": "security.protocol",
    "sasl_mechanism": "sasl.mechanism",
    "sasl_plain_username": "sasl.username",
    "sasl_plain_password": "sasl.password",
    "sasl_kerberos_service_name": "sasl.kerberos.service.name",
    "sasl_kerberos_name": "sasl.kerberos.principal",
    "ssl_cafile": "ssl.ca.location",
    "ssl_certfile": "ssl.certificate.location",
    "ssl_keyfile": "ssl.key.location",
    "ssl_password": "ssl.key.password",
    "ssl_ciphers": "ssl.cipher.suites",
    "ssl_crlfile": "ssl.crl.location",
}


def librdkafka_options(kafka: KafkaConfig, ingest: IngestConfig) -> dict[str, Any]:
    """Connection/security options for Confluent clients: mapped client_options + consumer_config."""
    options: dict[str, Any] = {}
    for key, value in kafka.client_options.items():
        if key in _LIBRDKAFKA_NAMES:
            options[_LIBRDKAFKA_NAMES[key]] = value
        else:
            log.warning("kafka.client_options.%s has no librdkafka equivalent here; set it in "
                        "ingest.consumer_config if the ingest job needs it", key)
    options.update(ingest.consumer_config)
    options.pop("bootstrap.servers", None)  # always kafka.bootstrap_servers
    return options


def watermarks(kafka: KafkaConfig, ingest: IngestConfig, topics: list[str]) -> dict[str, dict[int, tuple[int, int]]]:
    """(low, high) offsets per partition of each topic; a topic that does not exist maps to {}."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": "precise-ingest-offsets",
                         "enable.auto.commit": False, **librdkafka_options(kafka, ingest)})
    timeout = ingest.kafka_timeout_s
    try:
        metadata = consumer.list_topics(timeout=timeout)
        if not metadata.brokers:
            raise KafkaException(f"no broker reachable at {kafka.bootstrap_servers}")
        result: dict[str, dict[int, tuple[int, int]]] = {}
        for topic in topics:
            meta = metadata.topics.get(topic)
            if meta is None or meta.error is not None:
                result[topic] = {}
                continue
            result[topic] = {p: tuple(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout))
                             for p in sorted(meta.partitions)}
        return result
    finally:
        consumer.close()


class DeadLetterPublisher:
    """Publishes rejected records to the dead-letter topic (at least once: re-sent if a batch is re-run).

    The value is JSON with the reason, the source topic/partition/offset, the raw key and value in
    base64 cut to `ingest.dead_letter_max_bytes` (with their full sizes and `*_truncated` flags), and
    `lake_file` / `lake_row`: where the complete record lies in the lake's dead-letter folder, the
    record of truth. The key is "<topic>:<partition>:<offset>", so consumers can drop repeats.
    """

    def __init__(self, kafka: KafkaConfig, ingest: IngestConfig) -> None:
        from confluent_kafka import Producer

        self.topic = kafka.dead_letter_topic
        self.max_bytes = ingest.dead_letter_max_bytes
        self.timeout_s = max(ingest.kafka_timeout_s * 3, 30.0)
        self._producer = Producer({"bootstrap.servers": kafka.bootstrap_servers, "enable.idempotence": True,
                                   "linger.ms": 20, "message.timeout.ms": int(self.timeout_s * 1000),
                                   **librdkafka_options(kafka, ingest)})

    def message(self, row: dict[str, Any], now: int) -> dict[str, Any]:
        """The topic message of one dead-letter row: bounded in size whatever the record's size."""
        payload: dict[str, Any] = {
            "reason": row["reason"][:1000] if row["reason"] else row["reason"],
            "reason_kind": row["reason_kind"], "topic": row["topic"],
            "partition": row["partition"], "offset": row["offset"], "kafka_ts": row["kafka_ts"],
            "lake_file": row.get("lake_file"), "lake_row": row.get("lake_row"), "ingest_ts": now,
        }
        for name in ("key", "value"):
            raw = row[name]
            payload[f"{name}_b64"] = None if raw is None else base64.b64encode(raw[:self.max_bytes]).decode()
            payload[f"{name}_bytes"] = None if raw is None else len(raw)
            payload[f"{name}_truncated"] = raw is not None and len(raw) > self.max_bytes
        return payload

    def publish(self, rows: list[dict[str, Any]]) -> int:
        """Send every row and wait for the broker's acknowledgements; return how many failed.

        Never raises for a record or the broker: the rows are already in the lake; a failure is
        logged and counted (precise_ingest_dead_letter_publish_failures) by the caller.
        """
        from confluent_kafka import KafkaException

        errors: list[str] = []

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                errors.append(str(err))

        now = int(time.time() * 1000)
        for row in rows:
            key = f"{row['topic']}:{row['partition']}:{row['offset']}".encode()
            value = json.dumps(self.message(row, now)).encode()
            while True:
                try:
                    self._producer.produce(self.topic, value=value, key=key, on_delivery=delivered)
                    break
                except BufferError:  # local queue full: let deliveries drain
                    self._producer.poll(0.5)
                except KafkaException as exc:  # refused locally (e.g. size, unknown topic)
                    errors.append(str(exc))
                    break
        try:
            remaining = self._producer.flush(self.timeout_s)
        except KafkaException as exc:
            errors.append(str(exc))
            remaining = 0
        failed = remaining + len(errors)
        if failed:
            log.error("dead-letter topic %s: %d of %d records not published (%s); they are in the lake's "
                      "dead-letter files", self.topic, failed, len(rows), errors[:1])
        return failed

    def close(self) -> None:
        self._producer.flush(5)


def topic_ids(kafka: KafkaConfig, ingest: IngestConfig, topics: list[str]) -> dict[str, str]:
    """Kafka's topic id (a UUID, new for every creation) of each topic in `topics` (all must exist)."""
    from confluent_kafka import TopicCollection
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers, **librdkafka_options(kafka, ingest)})
    futures = admin.describe_topics(TopicCollection(topics), request_timeout=ingest.kafka_timeout_s)
    return {topic: str(future.result(ingest.kafka_timeout_s * 2).topic_id) for topic, future in futures.items()}


class KafkaAccessDenied(RuntimeError):
    """The broker refused the configured credentials: retrying cannot help, the config must change."""


def check_access(kafka: KafkaConfig, ingest: IngestConfig) -> None:
    """Connect once with the configured security settings; raise KafkaAccessDenied at once when the
    broker refuses them (a wrong SASL password or mechanism, a TLS handshake failure), instead of the
    "transport failure" / "unable to bootstrap" timeouts every client otherwise reports for it.
    A broker that is merely down is not this function's business (the callers retry)."""
    from confluent_kafka import Consumer, KafkaError

    denied: list[str] = []

    def on_error(err: KafkaError) -> None:
        if err.code() in (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED, KafkaError._SSL):
            denied.append(err.str())

    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": "precise-ingest-access",
                         "enable.auto.commit": False, **librdkafka_options(kafka, ingest), "error_cb": on_error})
    try:
        deadline = time.monotonic() + ingest.kafka_timeout_s
        while not denied and time.monotonic() < deadline:
            try:
                consumer.list_topics(timeout=min(1.0, max(0.1, deadline - time.monotonic())))
                return
            except Exception:  # down, or refused: the error callback says which
                consumer.poll(0.1)
    finally:
        consumer.close()
    if denied:
        options = kafka.client_options
        raise KafkaAccessDenied(
            f"Kafka at {kafka.bootstrap_servers} refused the credentials of kafka.client_options (security_protocol "
            f"{options.get('security_protocol', 'PLAINTEXT')}, sasl_mechanism {options.get('sasl_mechanism')}, "
            f"user {options.get('sasl_plain_username')!r}): {denied[0]}; check the user and password (or TLS files)")
