"""The recent-items feed against a real broker: its stats never race with partition assignment."""

from __future__ import annotations

import sys
import time

import pytest

from precise.events.feed import KafkaRecentFeed
from precise.events.topics import ensure_topics
from precise.serving.recent import RecentItems

pytestmark = pytest.mark.integration


def test_stats_while_new_partitions_are_assigned(kafka_config):
    """`stats()` (what /v1/version and /healthz return) runs in the request thread while the feed
    thread assigns partitions. The topic grows from 1 to 400 partitions under a tight loop of
    `stats()` calls, with the interpreter switching threads as often as it can."""
    from kafka.admin import KafkaAdminClient, NewPartitions

    kafka_config.partitions = 1
    ensure_topics(kafka_config)
    topic = kafka_config.events_topic
    feed = KafkaRecentFeed(RecentItems(max_users=100, per_user=5), kafka_config.bootstrap_servers, topic,
                           backfill_per_partition=10).start()
    admin = KafkaAdminClient(bootstrap_servers=kafka_config.bootstrap_servers)
    interval = sys.getswitchinterval()
    errors: list[str] = []
    calls = 0
    try:
        deadline = time.monotonic() + 30
        while feed.stats()["partitions"] != 1:
            assert time.monotonic() < deadline, feed.stats()
            time.sleep(0.05)
        admin.create_partitions({topic: NewPartitions(total_count=400)})
        sys.setswitchinterval(1e-6)
        deadline = time.monotonic() + 60
        partitions = 1
        while partitions != 400 and time.monotonic() < deadline:
            try:
                partitions = feed.stats()["partitions"]
                calls += 1
            except RuntimeError as exc:  # "dictionary changed size during iteration"
                errors.append(str(exc))
    finally:
        sys.setswitchinterval(interval)
        feed.stop()
        admin.close()
    assert not errors, f"{len(errors)} of {calls + len(errors)} stats() calls failed: {errors[0]}"
    assert partitions == 400, f"the feed did not pick up the new partitions: {feed.stats()}"
    assert feed.stats()["last_error"] is None
