"""Real-time user vectors end to end: real Kafka, real Ray Serve, real HTTP.

A replica with `serve.user_vector_mode: realtime` serves a snapshot that stores each user's
sequence tail. Events produced for a user after the snapshot change that user's U2I answer
without a new snapshot: the new items are excluded, and the query vector moves to the one the
snapshot's model computes from the tail plus the live items.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import requests

from _serve_support import deploy, make_topics
from precise.events.producer import EventProducer
from precise.predict.demo import publish_random_snapshot
from precise.predict.embedders import TableEmbedder
from precise.vectors import normalize

pytestmark = pytest.mark.integration

TASK = "rt"
TAILS = {"u0": ["i1", "i2", "i3"], "u1": ["i10", "i11"]}


def u2i(url: str, user: str, k: int = 20) -> dict:
    response = requests.post(url + "/v1/recall/u2i", json={"user_id": user, "k": k}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_live_events_move_a_snapshot_users_u2i_without_a_new_snapshot(ray_head, kafka_broker, tmp_path):
    from ray import serve

    kafka = make_topics(kafka_broker.bootstrap, "rt", partitions=2)
    snapshot_ms = int(time.time() * 1000) - 60_000
    ref, vecs = publish_random_snapshot(tmp_path, TASK, users=20, items=300, dim=16, seed=5, model_version="m-1",
                                        tails=TAILS, sequences_until_ms=snapshot_ms)
    config = {"storage": {"root": str(tmp_path)}, "kafka": kafka.model_dump(),
              "serve": {"task": TASK, "poll_interval_s": 0.25, "recent_backfill_per_partition": 1000,
                        "user_vector_mode": "realtime",
                        "ingress": {"min_replicas": 1, "max_replicas": 1, "num_cpus": 0.1},
                        "recall": {"min_replicas": 1, "max_replicas": 1, "num_cpus": 0.1}}}
    _, port = deploy(config, tmp_path, "precise-rt")
    url = f"http://127.0.0.1:{port}"
    try:
        before = u2i(url, "u0")
        assert before["query"] == "user_vector" and before["live_events"] == 0
        assert before["user_vector_mode"] == "realtime" and before["model_version"] == "m-1"
        stored = [h["item_id"] for h in before["items"]]
        assert stored == [vecs.item_ids[i] for i in np.argsort(-(vecs.items @ vecs.users[0]), kind="stable")[:20]]

        live = stored[:3]  # the user consumes their top three recommendations
        with EventProducer(kafka) as producer:
            for n, item in enumerate(live):
                producer.send_event({"event_id": f"live-{n}", "user_id": "u0", "item_id": item, "scene": "s",
                                     "action": "rate", "ts": snapshot_ms + 1_000 + n, "value": 4.0})
            producer.flush()
        deadline = time.monotonic() + 60
        while (after := u2i(url, "u0"))["live_events"] != len(live):
            assert time.monotonic() < deadline, f"live events not seen: {after}"
            time.sleep(0.2)
        assert after["query"] == "realtime" and after["snapshot_version"] == ref.version == before["snapshot_version"]
        got = [h["item_id"] for h in after["items"]]
        assert not set(live) & set(got)  # the new items are excluded
        query = normalize(TableEmbedder(str(vecs.table_path), model_version="m-1")
                          .embed_user_sequence(TAILS["u0"] + live))
        scores = vecs.items @ query
        want = [vecs.item_ids[i] for i in np.argsort(-scores, kind="stable")
                if vecs.item_ids[i] not in set(live)][:20]
        assert got == want  # the vector moved: the tail plus the live items, by the snapshot's model
        assert np.allclose([h["score"] for h in after["items"]],
                           [scores[vecs.item_ids.index(i)] for i in want], atol=1e-4)
        assert got != [i for i in stored if i not in set(live)][:20]
        # a user without live events keeps the stored vector
        other = u2i(url, "u1")
        assert other["query"] == "user_vector" and other["live_events"] == 0
    finally:
        serve.shutdown()
