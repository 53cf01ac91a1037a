"""Pure pieces of the recall service: ranking, U2I2I merging, recent items, request schemas, config,
the HTTP edge's token handling and rate limit."""

from __future__ import annotations

import gc
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from precise.config import ServeAuthConfig
from precise.events.feed import parse_recent_event
from precise.serving.edge import AuthConfigError, TokenBucket, auth_is_on, is_loopback, read_token, required_token
from precise.serving.recall import VectorError, fetch_size, merge_u2i2i, rank_u2i, require_finite
from precise.serving.recent import RecentItems
from precise.serving.schemas import MAX_ITEM_IDS, MAX_K, ItemQuery, RecallQuery, UserQuery

ITEMS = ["a", "b", "c", "d", "e"]


def test_rank_u2i_excludes_and_drops_padding():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.0])
    ids = np.array([2, 0, 4, 1, -1])
    assert rank_u2i(ITEMS, scores, ids, 2, exclude={"c"}) == [
        {"item_id": "a", "score": 0.8}, {"item_id": "e", "score": 0.7}]
    assert [h["item_id"] for h in rank_u2i(ITEMS, scores, ids, 10)] == ["c", "a", "e", "b"]
    assert fetch_size(10, 5, 12) == 12 and fetch_size(10, 0, 100) == 10


def test_non_finite_vectors_and_scores_are_never_served():
    assert require_finite(np.ones(3, np.float32), "v") is not None
    for bad in [np.array([1.0, np.nan]), np.array([np.inf, 0.0])]:
        with pytest.raises(VectorError, match="the vector of u is not finite"):
            require_finite(bad, "the vector of u")
    # an item whose stored vector is NaN scores NaN: it is not an answer
    scores, ids = np.array([np.nan, 0.8, np.inf]), np.array([0, 1, 2])
    assert rank_u2i(ITEMS, scores, ids, 3) == [{"item_id": "b", "score": 0.8}]
    assert [h["item_id"] for h in merge_u2i2i(ITEMS, ["e"], scores[None, :], ids[None, :], 3)] == ["b"]


def test_merge_u2i2i_keeps_best_score_and_skips_seeds():
    seeds = ["a", "b"]  # most recent first
    scores = np.array([[1.0, 0.5, 0.4], [1.0, 0.6, 0.4]])
    ids = np.array([[0, 2, 3], [1, 3, 2]])  # a: a, c, d   b: b, d, c
    hits = merge_u2i2i(ITEMS, seeds, scores, ids, 5)
    assert hits == [{"item_id": "d", "score": 0.6, "seed_item_id": "b"},
                    {"item_id": "c", "score": 0.5, "seed_item_id": "a"}]
    assert merge_u2i2i(ITEMS, seeds, scores, ids, 5, exclude={"d"}) == [
        {"item_id": "c", "score": 0.5, "seed_item_id": "a"}]


def test_recent_items_order_dedupe_and_bounds():
    recent = RecentItems(max_users=2, per_user=3)
    for ts, item in [(1, "a"), (2, "b"), (3, "c"), (5, "a"), (4, "d")]:
        recent.add("u1", item, ts)
    assert recent.get("u1") == ["a", "d", "c"]  # newest first, a moved up, b fell off
    recent.add("u1", "c", 0)  # an older duplicate changes nothing
    assert recent.get("u1") == ["a", "d", "c"] and recent.get("u1", limit=1) == ["a"]
    recent.add("u2", "x", 1)
    recent.add("u1", "y", 9)  # u1 active again: u2 is now the least recently active
    recent.add("u3", "z", 1)
    assert recent.get("u2") == [] and recent.get("u1")[0] == "y" and len(recent) == 2
    assert recent.evicted_users == 1


def _allocated(build) -> tuple[int, object]:
    """Bytes still allocated after `build()` (tracemalloc), and what it built."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        built = build()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before, built
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(("users", "per_user", "item_of"), [
    (300, 50, lambda u, n: f"item-{(u * 7 + n) % 1000}"),  # a catalogue: ids shared between users
    (150, 50, lambda u, n: f"item-{u}-{n}"),  # every id distinct: nothing shared
    (3000, 1, lambda u, n: f"item-{u % 300}"),
])
def test_recent_items_count_their_memory_without_undercounting(users, per_user, item_of):
    """`bytes` against what tracemalloc measures, ids parsed from JSON as the feed gets them."""

    def build() -> RecentItems:
        recent = RecentItems(max_users=10**9, per_user=per_user, max_bytes=1 << 40)
        for u in range(users):
            for n in range(per_user):
                user, item, ts, _ = parse_recent_event(json.dumps(
                    {"user_id": f"user-{u}", "item_id": item_of(u, n), "ts": 1_700_000_000_000 + n}).encode())
                recent.add(user, item, ts)
        return recent

    measured, recent = _allocated(build)
    assert measured <= recent.bytes <= 1.3 * measured, (measured, recent.bytes)


def test_recent_items_stay_under_max_bytes():
    recent = RecentItems(max_users=10**9, per_user=10, max_bytes=1 << 16)
    for u in range(2000):
        for n in range(10):
            recent.add(f"user-{u}", f"item-{(u + n) % 50}", n)
        assert recent.bytes <= recent.max_bytes
    assert recent.evicted_users == 2000 - len(recent) > 0
    assert recent.get("user-1999") == [f"item-{(1999 + n) % 50}" for n in reversed(range(10))]
    assert recent.get("user-0") == []
    # an evicted user's items leave the shared table when nobody else holds them
    solo = RecentItems(max_users=1, per_user=5, max_bytes=1 << 16)
    solo.add("a", "only-a", 1)
    held = solo.bytes
    solo.add("b", "x", 1)
    assert solo.get("a") == [] and "only-a" not in solo._items and solo.bytes < held + 100
    with pytest.raises(ValueError, match="max_bytes"):
        RecentItems(max_users=1, per_user=1, max_bytes=1000)


def test_parse_recent_event():
    good = {"event_id": "e", "user_id": "u", "item_id": "i", "scene": "s", "action": "like", "ts": 5}
    assert parse_recent_event(json.dumps(good).encode()) == ("u", "i", 5, "like")
    assert parse_recent_event(json.dumps({**good, "item_id": "i" * 512}).encode())[1] == "i" * 512
    for bad in [b"{", b"[1]", json.dumps({**good, "ts": "5"}).encode(), json.dumps({**good, "user_id": ""}).encode(),
                json.dumps({**good, "ts": True}).encode(), json.dumps({**good, "item_id": "i" * 513}).encode(),
                json.dumps({**good, "user_id": "u" * 513}).encode(), json.dumps({**good, "ts": 1 << 63}).encode()]:
        with pytest.raises(ValueError):
            parse_recent_event(bad)


@pytest.mark.parametrize(("body", "message"), [
    ({}, "exactly one of user_id or item_ids"),
    ({"user_id": "u", "item_ids": ["a"]}, "exactly one"),
    ({"user_id": 7}, "valid string"),
    ({"item_ids": []}, "at least 1 item"),
    ({"item_ids": ["a"] * (MAX_ITEM_IDS + 1)}, f"at most {MAX_ITEM_IDS} items"),
    ({"user_id": "u", "k": 0}, "greater than or equal to 1"),
    ({"user_id": "u", "k": MAX_K + 1}, f"less than or equal to {MAX_K}"),
    ({"user_id": "u", "k": "10"}, "valid integer"),
    ({"user_id": "u", "exclude_sen": True}, "Extra inputs are not permitted"),
])
def test_recall_query_validation(body, message):
    with pytest.raises(ValidationError, match=message):
        RecallQuery.model_validate(body)


def test_queries_accept_valid_bodies():
    assert RecallQuery.model_validate({"user_id": "u"}).k == 10
    assert UserQuery.model_validate({"item_ids": ["a", "b"]}).item_ids == ["a", "b"]
    assert ItemQuery.model_validate({"text": "a film"}).item_id is None
    with pytest.raises(ValidationError, match="give item_id, text, or both"):
        ItemQuery.model_validate({})
    with pytest.raises(ValidationError, match="at most 16384 characters"):
        ItemQuery.model_validate({"text": "x" * 16385})


def test_serve_yaml_is_a_valid_serve_config_for_this_app():
    from ray.serve.schema import ServeDeploySchema

    from serve.app import AppArgs, resolve_config

    raw = yaml.safe_load((Path(__file__).parents[1] / "configs" / "serve.yaml").read_text())
    schema = ServeDeploySchema.model_validate(raw)
    (application,) = schema.applications
    assert application.import_path == "serve.app:app"
    AppArgs.model_validate(application.args)
    cfg = resolve_config({**application.args, "root": "/tmp/x"})
    assert cfg.storage.root == "/tmp/x"
    # one source of Serve scaling: the platform config (serve.recall / serve.ingress), never the file
    assert not application.deployments, "configs/serve.yaml must not set deployments (replicas: serve.recall)"


def test_recent_feed_counts_bad_records_and_filters_actions():
    from precise.events.feed import KafkaRecentFeed

    recent = RecentItems(max_users=10, per_user=5)
    feed = KafkaRecentFeed(recent, "127.0.0.1:1", "t", actions=["like"])  # never started: no broker needed
    event = {"user_id": "u", "item_id": "a", "ts": 1, "action": "like"}
    feed._ingest(json.dumps(event).encode())
    feed._ingest(json.dumps({**event, "item_id": "b", "action": "rate"}).encode())
    feed._ingest(b"\xff not json")
    assert recent.get("u") == ["a"]
    assert (feed.consumed, feed.filtered, feed.invalid) == (1, 1, 1)


def test_recent_feed_rejects_over_long_ids():
    from precise.events.feed import KafkaRecentFeed

    recent = RecentItems(max_users=10, per_user=5)
    feed = KafkaRecentFeed(recent, "127.0.0.1:1", "t")  # never started: no broker needed
    feed._ingest(json.dumps({"user_id": "u", "item_id": "i" * 100_000, "ts": 1}).encode())
    assert (feed.consumed, feed.invalid, len(recent), recent.bytes) == (0, 1, 0, 0)
    stats = feed.stats()
    assert (stats["bytes"], stats["max_bytes"], stats["invalid"]) == (0, 1 << 30, 1)


# ---- the HTTP edge: authentication and the cold-text rate limit ----------------------------------


def test_loopback_and_when_auth_is_on():
    for host in ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "LOCALHOST"]:
        assert is_loopback(host), host
    for host in ["0.0.0.0", "::", "10.0.0.5", "serve.example.com", None]:
        assert not is_loopback(host), host
    auto, on, off = ServeAuthConfig(), ServeAuthConfig(mode="on"), ServeAuthConfig(mode="off")
    assert not auth_is_on(auto, "127.0.0.1") and auth_is_on(auto, "0.0.0.0") and auth_is_on(auto, None)
    assert auth_is_on(on, "127.0.0.1") and not auth_is_on(off, "0.0.0.0")


def test_token_from_a_file_or_the_environment(tmp_path):
    token = "t0k3n-" + "x" * 20
    path = tmp_path / "token"
    path.write_text(token + "\n")
    from_file = ServeAuthConfig(token_file=str(path))
    assert read_token(from_file, environ={}) == token.encode()
    assert read_token(ServeAuthConfig(), environ={"PRECISE_SERVE_TOKEN": token}) == token.encode()
    assert read_token(ServeAuthConfig(token_env="MY_TOKEN"), environ={"MY_TOKEN": f" {token} "}) == token.encode()
    assert read_token(ServeAuthConfig(), environ={}) is None
    # loopback with mode auto: off, no token needed; beyond loopback: the token, or a clear error
    assert required_token(ServeAuthConfig(), "127.0.0.1", environ={}) is None
    assert required_token(from_file, "0.0.0.0", environ={}) == token.encode()
    with pytest.raises(AuthConfigError, match=r"Serve listens on 0.0.0.0, beyond loopback.*PRECISE_SERVE_TOKEN"):
        required_token(ServeAuthConfig(), "0.0.0.0", environ={})
    with pytest.raises(AuthConfigError, match="serve.auth.mode is on"):
        required_token(ServeAuthConfig(mode="on"), "127.0.0.1", environ={})
    assert required_token(ServeAuthConfig(mode="off"), "0.0.0.0", environ={}) is None
    for bad in ["short", "has a space in it......", "x" * 15]:
        with pytest.raises(AuthConfigError, match="unusable"):
            read_token(ServeAuthConfig(), environ={"PRECISE_SERVE_TOKEN": bad})
    with pytest.raises(AuthConfigError, match="cannot read it"):
        read_token(ServeAuthConfig(token_file=str(tmp_path / "missing")), environ={})


def test_token_bucket():
    now = [100.0]
    bucket = TokenBucket(rate_per_s=2.0, burst=3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() == pytest.approx(0.5)  # empty: the next token in 1 / rate seconds
    now[0] += 0.5
    assert bucket.take() == 0.0 and bucket.take() == pytest.approx(0.5)
    now[0] += 60  # refills up to the burst, not beyond
    assert [bucket.take() for _ in range(4)][-1] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        TokenBucket(0, 1)
