"""The PRECISE recall service: embeddings and FAISS recall (U2I, U2I2I) over HTTP with Ray Serve.

    serve run serve.app:app root=/path/to/precise-root task=ml1m
    serve deploy configs/serve.yaml

Three deployments:
- `Ingress` (FastAPI): validates requests, maps errors to 4xx JSON, owns nothing else; scales
  with HTTP load.
- `Recall`: holds the served embedding snapshot (user vectors + item vectors + FAISS index +
  the embedder of the same model version, one immutable object swapped by reference when a new
  LATEST appears) and answers every query from one snapshot reference; FAISS searches from
  concurrent requests are grouped with `@serve.batch`. Scales with query load.
- `RecentItems`: each user's last N items from the live `behavior-events` stream (one replica:
  it reads every partition; sharding by partition is the scale-out path).

Application arguments (`serve run ... key=value` or `args:` in configs/serve.yaml) are `AppArgs`.
"""

# No `from __future__ import annotations` here: FastAPI must see the request body classes themselves,
# and @serve.ingress moves the route methods out of this module's namespace.
import asyncio
import logging
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

import precise
from precise.config import PreciseConfig, load_config
from precise.predict.embedder import set_thread_counts
from precise.predict.snapshot import SnapshotStore
from precise.serving.recall import fetch_size, merge_u2i2i, rank_u2i
from precise.serving.recent import KafkaRecentFeed, RecentItems
from precise.serving.schemas import (
    ErrorResponse,
    HealthResponse,
    ItemQuery,
    RecallQuery,
    RecallResponse,
    UserQuery,
    VectorResponse,
    VersionResponse,
)
from precise.serving.state import NotFoundError, ServedSnapshot
from precise.serving.swap import SnapshotWatcher

log = logging.getLogger("precise.serve")


def _error(status: int, message: str) -> dict[str, Any]:
    """A domain error travelling back from Recall to Ingress as data (no exception pickling)."""
    return {"_error": status, "message": message}


# ---- Recent items -------------------------------------------------------------------------------


@serve.deployment(num_replicas=1, max_ongoing_requests=256, ray_actor_options={"num_cpus": 0.1})
class RecentItemsService:
    def __init__(self, config: dict[str, Any]) -> None:
        cfg = PreciseConfig.model_validate(config)
        s = cfg.serve
        self.recent = RecentItems(max_users=s.recent_max_users, per_user=s.recent_items)
        self.feed: KafkaRecentFeed | None = None
        if s.recent_enabled:
            self.feed = KafkaRecentFeed(self.recent, cfg.kafka.bootstrap_servers, cfg.kafka.events_topic,
                                        actions=s.recent_actions,
                                        backfill_per_partition=s.recent_backfill_per_partition,
                                        client_options=cfg.kafka.client_options).start()

    async def get(self, user_id: str) -> list[str]:
        return self.recent.get(user_id)

    async def stats(self) -> dict[str, Any]:
        return self.feed.stats() if self.feed else {"enabled": False, "users": len(self.recent)}

    def check_health(self) -> None:
        if self.feed is not None and not self.feed.alive():
            raise RuntimeError("the recent-items consumer thread has stopped")

    def __del__(self) -> None:
        if getattr(self, "feed", None) is not None:
            self.feed.stop(timeout=2)


# ---- Recall -------------------------------------------------------------------------------------


@serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.25})
class Recall:
    def __init__(self, config: dict[str, Any], recent: DeploymentHandle) -> None:
        cfg = PreciseConfig.model_validate(config)
        self.cfg = cfg.serve
        set_thread_counts(self.cfg.recall.threads)
        self.recent = recent
        self._search_batch.set_max_batch_size(self.cfg.batch_max_size)
        self._search_batch.set_batch_wait_timeout_s(self.cfg.batch_wait_s)
        store = SnapshotStore(cfg.storage.resolved_root(), self.cfg.task)
        self.watcher = SnapshotWatcher(store, self.cfg.poll_interval_s, self.cfg.embedder_allowed_prefixes).start()

    def check_health(self) -> None:
        if not self.watcher.alive():
            raise RuntimeError("the snapshot watcher thread has stopped")

    def __del__(self) -> None:
        if getattr(self, "watcher", None) is not None:
            self.watcher.stop()

    async def version(self) -> dict[str, Any]:
        info = self.watcher.describe()
        try:
            info["recent_items"] = await self.recent.stats.remote()
        except Exception as exc:  # noqa: BLE001 - report, do not fail /v1/version
            info["recent_items"] = {"error": str(exc)}
        return info

    # One search call for many concurrent requests: FAISS scans the catalogue once per batch
    # (a matrix product for exact search). Requests are grouped by the snapshot they hold.
    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def _search_batch(self, requests: list[tuple[ServedSnapshot, np.ndarray, int]]
                            ) -> list[tuple[np.ndarray, np.ndarray]]:
        out: list[Any] = [None] * len(requests)
        groups: dict[int, list[int]] = {}
        for n, (snapshot, _, _) in enumerate(requests):
            groups.setdefault(id(snapshot), []).append(n)
        for rows in groups.values():
            snapshot = requests[rows[0]][0]
            k_max = max(requests[n][2] for n in rows)
            queries = np.concatenate([requests[n][1] for n in rows])
            scores, ids = await asyncio.to_thread(snapshot.search, queries, k_max)
            offset = 0
            for n in rows:
                q, k = len(requests[n][1]), requests[n][2]
                out[n] = (scores[offset:offset + q, :k], ids[offset:offset + q, :k])
                offset += q
        return out

    def _snapshot(self) -> ServedSnapshot | None:
        return self.watcher.current  # read once per request: everything below uses this reference

    async def _recent(self, user_id: str) -> list[str]:
        return await self.recent.get.remote(user_id)

    async def _query_vector(self, snapshot: ServedSnapshot, q: dict[str, Any],
                            recent: list[str] | None) -> tuple[np.ndarray, str, list[str]]:
        """(normalised query vector, how it was obtained, ignored ids) for a user or a sequence."""
        if q.get("user_id") is not None:
            vector = snapshot.user_vector(q["user_id"])
            if vector is not None:
                return vector, "user_vector", []
            if not recent:  # a user newer than the user snapshot: embed their live recent items
                raise NotFoundError(f"user {q['user_id']!r} is not in snapshot {snapshot.version} "
                                    f"and has no recent events")
            vector, _ = await asyncio.to_thread(snapshot.embed_sequence, list(reversed(recent)))
            return vector, "sequence", []
        vector, ignored = await asyncio.to_thread(snapshot.embed_sequence, q["item_ids"])
        return vector, "sequence", ignored

    async def user_embedding(self, q: dict[str, Any]) -> dict[str, Any]:
        snapshot = self._snapshot()
        if snapshot is None:
            return _error(503, "no embedding snapshot is loaded yet")
        try:
            recent = None
            if q.get("user_id") is not None and snapshot.user_vector(q["user_id"]) is None:
                recent = await self._recent(q["user_id"])
            vector, how, ignored = await self._query_vector(snapshot, q, recent)
        except NotFoundError as exc:
            return _error(404, str(exc))
        return {**snapshot.versions(), "vector": vector.tolist(), "dim": snapshot.dim,
                "source": "snapshot" if how == "user_vector" else "realtime", "user_id": q.get("user_id"),
                "ignored_item_ids": ignored}

    async def item_embedding(self, q: dict[str, Any]) -> dict[str, Any]:
        snapshot = self._snapshot()
        if snapshot is None:
            return _error(503, "no embedding snapshot is loaded yet")
        item_id, text = q.get("item_id"), q.get("text")
        vector = snapshot.item_vector(item_id) if item_id is not None else None
        source = "snapshot"
        if vector is None:
            if text is None:
                return _error(404, f"item {item_id!r} is not in snapshot {snapshot.version}; "
                                   f"send its text to embed it as a new item")
            try:
                vector = await asyncio.to_thread(snapshot.embed_text, text, item_id)
            except NotFoundError as exc:
                return _error(422, str(exc))
            source = "text"
        return {**snapshot.versions(), "vector": vector.tolist(), "dim": snapshot.dim, "source": source,
                "item_id": item_id}

    async def u2i(self, q: dict[str, Any]) -> dict[str, Any]:
        snapshot = self._snapshot()
        if snapshot is None:
            return _error(503, "no embedding snapshot is loaded yet")
        k, user_id = q["k"], q.get("user_id")
        try:
            recent: list[str] = []
            if user_id is not None and (q["exclude_seen"] or snapshot.user_vector(user_id) is None):
                recent = await self._recent(user_id)
            vector, how, _ = await self._query_vector(snapshot, q, recent)
        except NotFoundError as exc:
            return _error(404, str(exc))
        exclude = set(recent if user_id is not None else q["item_ids"]) if q["exclude_seen"] else set()
        scores, ids = await self._search_batch((snapshot, vector[None, :],
                                                fetch_size(k, len(exclude), snapshot.index.ntotal)))
        hits = rank_u2i(snapshot.item_ids, scores[0], ids[0], k, exclude)
        return {**snapshot.versions(), "items": hits, "k": k, "query": how}

    async def u2i2i(self, q: dict[str, Any]) -> dict[str, Any]:
        snapshot = self._snapshot()
        if snapshot is None:
            return _error(503, "no embedding snapshot is loaded yet")
        k, user_id = q["k"], q.get("user_id")
        if user_id is not None:
            history = await self._recent(user_id)  # most recent first
            if not history:
                return _error(404, f"user {user_id!r} has no recent events to start U2I2I from")
        else:
            history = list(reversed(q["item_ids"]))
        seeds = [i for i in dict.fromkeys(history) if i in snapshot.item_row][: self.cfg.u2i2i_seeds]
        if not seeds:
            return _error(404, f"none of the user's recent items is in snapshot {snapshot.version}")
        exclude = set(history) if q["exclude_seen"] else set()
        queries = np.stack([snapshot.item_vectors[snapshot.item_row[s]] for s in seeds])
        per_seed = fetch_size(k, len(exclude | set(seeds)), snapshot.index.ntotal)
        scores, ids = await self._search_batch((snapshot, queries, per_seed))
        hits = merge_u2i2i(snapshot.item_ids, seeds, scores, ids, k, exclude)
        return {**snapshot.versions(), "items": hits, "k": k, "query": "recent_items", "seeds": seeds}


# ---- Ingress ------------------------------------------------------------------------------------

api = FastAPI(
    title="PRECISE recall service",
    version=precise.__version__,
    description="User and item embeddings and FAISS recall (U2I, U2I2I) from the latest embedding "
                "snapshot. Every answer names the snapshot and model version it came from.",
)
_ERRORS = {400: {"model": ErrorResponse, "description": "body cannot be parsed (e.g. not UTF-8)"},
           404: {"model": ErrorResponse, "description": "unknown id"},
           413: {"model": ErrorResponse, "description": "request body too large"},
           422: {"model": ErrorResponse, "description": "invalid request"},
           503: {"model": ErrorResponse, "description": "no snapshot loaded yet"}}


class APIError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@api.exception_handler(APIError)
async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    return JSONResponse(status_code=exc.status, content={"error": exc.message})


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    # FastAPI's own errors (unparseable body, unknown route, wrong method) in the same JSON shape
    return JSONResponse(status_code=exc.status_code, content={"error": str(exc.detail)}, headers=exc.headers)


@api.exception_handler(RequestValidationError)
async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    summary = "; ".join(f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}"
                        for e in errors[:5])
    detail = [{k: v for k, v in e.items() if k != "ctx"} for e in errors]  # ctx may hold exceptions
    return JSONResponse(status_code=422, content={"error": f"invalid request: {summary}",
                                                  "detail": jsonable_encoder(detail)})


@api.middleware("http")
async def _limit_body(request: Request, call_next: Any) -> Any:
    limit = getattr(api.state, "max_body_bytes", 1 << 20)
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        return JSONResponse(status_code=413, content={"error": f"request body over {limit} bytes"})
    return await call_next(request)


def _unwrap(result: dict[str, Any]) -> dict[str, Any]:
    if "_error" in result:
        raise APIError(result["_error"], result["message"])
    return result


@serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 0.25})
@serve.ingress(api)
class Ingress:
    def __init__(self, config: dict[str, Any], recall: DeploymentHandle) -> None:
        cfg = PreciseConfig.model_validate(config)
        set_thread_counts(cfg.serve.ingress.threads)
        api.state.max_body_bytes = cfg.serve.max_body_bytes
        self.recall = recall

    @api.get("/healthz", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
    async def healthz(self) -> Any:
        info = await self.recall.version.remote()
        if info.get("snapshot_version") is None:
            return JSONResponse(status_code=503, content={"status": "waiting", "snapshot_version": None,
                                                          "detail": info.get("last_error") or "no snapshot yet"})
        return {"status": "ok", "snapshot_version": info["snapshot_version"]}

    @api.get("/v1/version", response_model=VersionResponse)
    async def version(self) -> Any:
        return await self.recall.version.remote()

    @api.post("/v1/embeddings/users", response_model=VectorResponse, responses=_ERRORS)
    async def user_embedding(self, body: UserQuery) -> Any:
        return _unwrap(await self.recall.user_embedding.remote(body.model_dump()))

    @api.post("/v1/embeddings/items", response_model=VectorResponse, responses=_ERRORS)
    async def item_embedding(self, body: ItemQuery) -> Any:
        return _unwrap(await self.recall.item_embedding.remote(body.model_dump()))

    @api.post("/v1/recall/u2i", response_model=RecallResponse, responses=_ERRORS)
    async def u2i(self, body: RecallQuery) -> Any:
        return _unwrap(await self.recall.u2i.remote(body.model_dump()))

    @api.post("/v1/recall/u2i2i", response_model=RecallResponse, responses=_ERRORS)
    async def u2i2i(self, body: RecallQuery) -> Any:
        return _unwrap(await self.recall.u2i2i.remote(body.model_dump()))


# ---- Application builder ------------------------------------------------------------------------


class AppArgs(BaseModel):
    """Arguments of `serve.app:app`; each overrides the matching key of the YAML `config`."""

    model_config = ConfigDict(extra="forbid")

    config: str | None = None  # a platform config YAML (storage, kafka, serve sections)
    root: str | None = None  # storage.root: snapshots are read from <root>/embeddings/<task>/
    task: str | None = None  # serve.task
    kafka_bootstrap: str | None = None
    events_topic: str | None = None
    poll_interval_s: float | None = None
    recent_enabled: bool | None = None


def resolve_config(args: dict[str, Any]) -> PreciseConfig:
    a = AppArgs.model_validate(args or {})
    cfg: PreciseConfig = load_config(a.config)
    if a.root is not None:
        cfg.storage.root = a.root
    if a.task is not None:
        cfg.serve.task = a.task
    if a.kafka_bootstrap is not None:
        cfg.kafka.bootstrap_servers = a.kafka_bootstrap
    if a.events_topic is not None:
        cfg.kafka.events_topic = a.events_topic
    if a.poll_interval_s is not None:
        cfg.serve.poll_interval_s = a.poll_interval_s
    if a.recent_enabled is not None:
        cfg.serve.recent_enabled = a.recent_enabled
    return PreciseConfig.model_validate(cfg.model_dump())  # re-validate the overridden values


def _scaling(s: Any) -> dict[str, Any]:
    return {"autoscaling_config": {"min_replicas": s.min_replicas, "max_replicas": s.max_replicas,
                                   "target_ongoing_requests": s.target_ongoing_requests},
            "max_ongoing_requests": s.max_ongoing_requests,
            "ray_actor_options": {"num_cpus": s.num_cpus}}


def app(args: dict[str, Any]) -> serve.Application:
    """Serve application builder (`serve run serve.app:app key=value ...`)."""
    cfg = resolve_config(args)
    config = cfg.model_dump(mode="json")
    recent = RecentItemsService.bind(config)
    recall = Recall.options(**_scaling(cfg.serve.recall)).bind(config, recent)
    return Ingress.options(**_scaling(cfg.serve.ingress)).bind(config, recall)
