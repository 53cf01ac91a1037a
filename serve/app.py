"""The PRECISE recall service: embeddings and FAISS recall (U2I, U2I2I) over HTTP with Ray Serve.

    serve run serve.app:app root=/path/to/precise-root task=ml1m
    serve deploy configs/serve.yaml

Deployments:
- `Recall`: holds the served embedding snapshot (user vectors + item vectors + FAISS index +
  the embedder of the same model version, one immutable object swapped by reference when a new
  LATEST appears) and answers every query from one snapshot reference; FAISS searches of
  concurrent requests are grouped with `@serve.batch`. A consumer thread per replica keeps each
  user's last N items from the live `behavior-events` stream (U2I2I seeds, exclude_seen, users
  newer than the user snapshot). Autoscaled with query load.
- `Ingress` (topology `split` only): FastAPI validation and errors in a deployment of its own,
  forwarding to Recall through a handle. With topology `single` (the default) Recall serves the
  FastAPI app itself: one actor hop less per request (on the 2-core dev machine about 1.6x the
  throughput of `split`; `python benchmarks/serve.py --topology split` measures it).

The HTTP edge (`precise.serving.edge`, in whichever deployment serves HTTP): bearer-token
authentication whenever Serve listens beyond loopback (`serve.auth`; `/healthz` stays open), a body
limit that holds for chunked bodies, body and answer timeouts. Each deployment's request queue is
bounded (`max_queued_requests`: 503 with Retry-After beyond it); cold-text embeddings are rate
limited per Recall replica (429). A vector that is not finite is an error (500), never an answer.

Application arguments (`serve run ... key=value` or `args:` in configs/serve.yaml) are `AppArgs`.
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations to parse bodies, and
# the app is pickled into the replicas; real classes there, not strings to resolve later.
import asyncio
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

import precise
from precise.config import PreciseConfig, load_config
from precise.events.feed import KafkaRecentFeed
from precise.metrics import best_effort
from precise.metrics.serve import ServeMetrics
from precise.predict.embedder import set_thread_counts
from precise.serving.edge import OPEN_PATHS, EdgeGuard, EdgeSettings, TokenBucket, is_loopback, required_token
from precise.serving.realtime import RealtimeUsers, RefreshAhead
from precise.serving.recall import VectorError, fetch_size, merge_u2i2i, rank_u2i, require_finite
from precise.serving.recent import RecentItems
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
from precise.store.snapshots import SnapshotStore

log = logging.getLogger("precise.serve")


def _error(status: int, message: str, retry_after_s: float | None = None) -> dict[str, Any]:
    """A domain error travelling back from Recall to Ingress as data (no exception pickling)."""
    error: dict[str, Any] = {"_error": status, "message": message}
    if retry_after_s is not None:
        error["retry_after"] = max(1, math.ceil(retry_after_s))
    return error


def _domain_errors(method: Callable[..., Awaitable[dict[str, Any]]]) -> Callable[..., Awaitable[dict[str, Any]]]:
    """Unknown ids become 404, vectors that are not finite 500 (logged: a broken snapshot or model)."""

    @functools.wraps(method)
    async def answer(self: Any, q: dict[str, Any]) -> dict[str, Any]:
        try:
            return await method(self, q)
        except NotFoundError as exc:
            return _error(404, str(exc))
        except VectorError as exc:
            log.error("%s", exc)
            return _error(500, str(exc))

    return answer


def _stored(snapshot: ServedSnapshot) -> str:
    return f"in snapshot {snapshot.task}/{snapshot.version} (model {snapshot.model_version})"


def _computed(snapshot: ServedSnapshot) -> str:
    return f"by model {snapshot.model_version} (snapshot {snapshot.task}/{snapshot.version})"


# ---- Recall -------------------------------------------------------------------------------------


class RecallCore:
    """The recall logic of a replica; the deployments below add HTTP (or not) around it."""

    def __init__(self, config: dict[str, Any]) -> None:
        cfg = PreciseConfig.model_validate(config)
        self.cfg = s = cfg.serve
        set_thread_counts(s.recall.threads)
        self._search_batch.set_max_batch_size(s.batch_max_size)
        self._search_batch.set_batch_wait_timeout_s(s.batch_wait_s)
        self._embed_batch.set_max_batch_size(s.batch_max_size)
        self._embed_batch.set_batch_wait_timeout_s(s.batch_wait_s)
        # Each replica follows the live stream itself: a lookup is a dict access instead of a call
        # to another deployment on every request (exclude_seen is on by default).
        self.recent = RecentItems(max_users=s.recent_max_users, per_user=s.recent_items,
                                  max_bytes=s.recent_max_bytes)
        self.realtime = RealtimeUsers(self.recent, s.realtime_cache_users)
        self.cold_text = TokenBucket(s.cold_text_rate_per_s, s.cold_text_burst)
        self.metrics = ServeMetrics(_routes(), s.task)
        store = SnapshotStore(cfg.storage.resolved_root(), s.task)
        self.watcher = SnapshotWatcher(store, s.poll_interval_s, s.embedder_allowed_prefixes,
                                       on_swap=self.metrics.swapped, on_refused=self.metrics.refused).start()
        # realtime mode: a user's event starts recomputing their vector at once, off the request path
        self.refresh: RefreshAhead | None = None
        if s.user_vector_mode == "realtime" and s.realtime_refresh_queue > 0:
            self.refresh = RefreshAhead(self.realtime, self._snapshot, s.realtime_refresh_queue).start()
        self.feed: KafkaRecentFeed | None = None
        if s.recent_enabled:
            self.feed = KafkaRecentFeed(self.recent, cfg.kafka.bootstrap_servers, cfg.kafka.events_topic,
                                        actions=s.recent_actions,
                                        backfill_per_partition=s.recent_backfill_per_partition,
                                        client_options=cfg.kafka.client_options,
                                        on_event=self.refresh.note if self.refresh else None).start()

    def check_health(self) -> None:
        if not self.watcher.alive():
            raise RuntimeError("the snapshot watcher thread has stopped")
        if self.feed is not None and not self.feed.alive():
            raise RuntimeError("the recent-items consumer thread has stopped")
        if self.refresh is not None and not self.refresh.alive():
            raise RuntimeError("the real-time refresh thread has stopped")

    def _stop(self) -> None:
        if getattr(self, "watcher", None) is not None:
            self.watcher.stop()
        if getattr(self, "feed", None) is not None:
            self.feed.stop(timeout=2)
        if getattr(self, "refresh", None) is not None:
            self.refresh.stop()

    async def version(self) -> dict[str, Any]:
        info = self.watcher.describe()
        info["recent_items"] = self.feed.stats() if self.feed else {"enabled": False}
        info["realtime"] = {"user_vector_mode": self.cfg.user_vector_mode,
                            **(self.refresh.stats() if self.refresh else
                               {"cache_hits": self.realtime.hits, "cache_misses": self.realtime.misses})}
        return info

    # One search call for the requests that queued up while the previous batch ran: FAISS scans the
    # catalogue once per batch (a matrix product for exact search). With batch_wait_s = 0 a lone
    # request waits for nobody; under load batches form by themselves. Requests are grouped by the
    # snapshot they hold. The search runs on the event loop: it is short, and a thread hand-off
    # would cost more than it saves.
    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)
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
            scores, ids = snapshot.search(queries, k_max)
            offset = 0
            for n in rows:
                q, k = len(requests[n][1]), requests[n][2]
                out[n] = (scores[offset:offset + q, :k], ids[offset:offset + q, :k])
                offset += q
        return out

    # Real-time user vectors of the requests that queued up meanwhile: one thread hand-off and one
    # model call (a batched forward pass where the embedder has one) for all of them, off the event
    # loop so that cache hits and stored vectors keep being answered while the model runs.
    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)
    async def _embed_batch(self, requests: list[tuple[ServedSnapshot, list[str]]]) -> list[Any]:
        def run() -> list[Any]:
            out: list[Any] = [None] * len(requests)
            groups: dict[int, list[int]] = {}
            for n, (snapshot, _) in enumerate(requests):
                groups.setdefault(id(snapshot), []).append(n)
            for rows in groups.values():
                snapshot = requests[rows[0]][0]
                for n, vector in zip(rows, snapshot.embed_sequences([requests[n][1] for n in rows]), strict=True):
                    out[n] = vector
            return out

        return await asyncio.to_thread(run)

    def _snapshot(self) -> ServedSnapshot | None:
        return self.watcher.current  # read once per request: everything below uses this reference

    def _recent(self, user_id: str) -> list[str]:
        return self.recent.get(user_id)  # most recent first

    async def _realtime_vector(self, snapshot: ServedSnapshot, user_id: str) -> tuple[np.ndarray | None, int]:
        """(the user's real-time vector, live events it saw) with the snapshot's own model; (None, 0)
        when the user has no live events since the snapshot (the stored vector is current)."""
        live, newest = self.realtime.known_live(snapshot, user_id)
        if not live:
            return None, 0
        vector = self.realtime.cached(snapshot, user_id, live, newest)
        if vector is None:
            vector = await self._embed_batch((snapshot, self.realtime.sequence(snapshot, user_id, live)))
            if isinstance(vector, NotFoundError):
                raise vector
            require_finite(vector, f"the real-time vector of user {user_id!r} {_computed(snapshot)}")
            self.realtime.store(snapshot, user_id, live, newest, vector)
        return vector, len(live)

    async def _query_vector(self, snapshot: ServedSnapshot, q: dict[str, Any],
                            recent: list[str] | None) -> tuple[np.ndarray, str, list[str], int | None]:
        """(normalised, finite query vector, how it was obtained, ignored ids, live events seen in
        realtime mode) for a user or a sequence."""
        user_id = q.get("user_id")
        if user_id is not None:
            vector = snapshot.user_vector(user_id)
            if vector is not None and self.cfg.user_vector_mode == "realtime":
                live_vector, live_events = await self._realtime_vector(snapshot, user_id)
                if live_vector is not None:
                    return live_vector, "realtime", [], live_events
                return require_finite(vector, f"the stored vector of user {user_id!r} {_stored(snapshot)}"), \
                    "user_vector", [], 0
            if vector is not None:
                return require_finite(vector, f"the stored vector of user {user_id!r} {_stored(snapshot)}"), \
                    "user_vector", [], None
            if not recent:  # a user newer than the user snapshot: embed their live recent items
                raise NotFoundError(f"user {user_id!r} is not in snapshot {snapshot.version} "
                                    f"and has no recent events")
            vector, _ = await asyncio.to_thread(snapshot.embed_sequence, list(reversed(recent)))
            what = f"the vector computed from the sequence of user {user_id!r}'s recent items {_computed(snapshot)}"
            return require_finite(vector, what), "sequence", [], None
        vector, ignored = await asyncio.to_thread(snapshot.embed_sequence, q["item_ids"])
        return require_finite(vector, f"the vector computed from the sequence {_computed(snapshot)}"), \
            "sequence", ignored, None

    @_domain_errors
    async def user_embedding(self, q: dict[str, Any]) -> dict[str, Any]:
        snapshot = self._snapshot()
        if snapshot is None:
            return _error(503, "no embedding snapshot is loaded yet")
        recent = None
        if q.get("user_id") is not None and snapshot.user_vector(q["user_id"]) is None:
            recent = self._recent(q["user_id"])
        vector, how, ignored, live_events = await self._query_vector(snapshot, q, recent)
        return {**snapshot.versions(), "vector": vector.tolist(), "dim": snapshot.dim,
                "source": "snapshot" if how == "user_vector" else "realtime", "user_id": q.get("user_id"),
                "ignored_item_ids": ignored, "user_vector_mode": self.cfg.user_vector_mode,
                "live_events": live_events}

    @_domain_errors
    async def item_embedding(self, q: dict[str, Any]) -> dict[str, Any]:
        snapshot = self._snapshot()
        if snapshot is None:
            return _error(503, "no embedding snapshot is loaded yet")
        item_id, text = q.get("item_id"), q.get("text")
        vector = snapshot.item_vector(item_id) if item_id is not None else None
        source = "snapshot"
        if vector is not None:
            require_finite(vector, f"the stored vector of item {item_id!r} {_stored(snapshot)}")
        else:
            if text is None:
                return _error(404, f"item {item_id!r} is not in snapshot {snapshot.version}; "
                                   f"send its text to embed it as a new item")
            # A cold item's text runs the model's text encoder (the LLM), and may fill its cache:
            # the expensive request, so the limited one.
            wait_s = self.cold_text.take()
            if wait_s:
                return _error(429, f"cold-text embeddings are limited to {self.cfg.cold_text_rate_per_s:g}/s "
                                   f"per replica (bursts of {self.cfg.cold_text_burst}); retry in {wait_s:.1f} s",
                              retry_after_s=wait_s)
            try:
                vector = await asyncio.to_thread(snapshot.embed_text, text, item_id)
            except NotFoundError as exc:
                return _error(422, str(exc))
            require_finite(vector, f"the vector computed from the text {_computed(snapshot)}")
            source = "text"
        return {**snapshot.versions(), "vector": vector.tolist(), "dim": snapshot.dim, "source": source,
                "item_id": item_id}

    @_domain_errors
    async def u2i(self, q: dict[str, Any]) -> dict[str, Any]:
        snapshot = self._snapshot()
        if snapshot is None:
            return _error(503, "no embedding snapshot is loaded yet")
        k, user_id = q["k"], q.get("user_id")
        recent: list[str] = []
        if user_id is not None and (q["exclude_seen"] or snapshot.user_vector(user_id) is None):
            recent = self._recent(user_id)
        vector, how, _, live_events = await self._query_vector(snapshot, q, recent)
        exclude = set(recent if user_id is not None else q["item_ids"]) if q["exclude_seen"] else set()
        scores, ids = await self._search_batch((snapshot, vector[None, :],
                                                fetch_size(k, len(exclude), snapshot.num_items)))
        hits = rank_u2i(snapshot.item_ids, scores[0], ids[0], k, exclude)
        return {**snapshot.versions(), "items": hits, "k": k, "query": how,
                "user_vector_mode": self.cfg.user_vector_mode, "live_events": live_events}

    @_domain_errors
    async def u2i2i(self, q: dict[str, Any]) -> dict[str, Any]:
        snapshot = self._snapshot()
        if snapshot is None:
            return _error(503, "no embedding snapshot is loaded yet")
        k, user_id = q["k"], q.get("user_id")
        if user_id is not None:
            history = self._recent(user_id)  # most recent first
            if not history:
                return _error(404, f"user {user_id!r} has no recent events to start U2I2I from")
        else:
            history = list(reversed(q["item_ids"]))
        seeds = [i for i in dict.fromkeys(history) if i in snapshot.item_row][: self.cfg.u2i2i_seeds]
        if not seeds:
            return _error(404, f"none of the user's recent items is in snapshot {snapshot.version}")
        exclude = set(history) if q["exclude_seen"] else set()
        queries = np.stack([snapshot.item_vectors[snapshot.item_row[s]] for s in seeds])
        finite = np.isfinite(queries).all(axis=1)
        if not finite.all():  # a broken item vector must not make every user who saw it unanswerable
            broken = [s for s, ok in zip(seeds, finite, strict=True) if not ok]
            log.error("stored vectors of items %s %s are not finite; U2I2I skips them", broken, _stored(snapshot))
            seeds, queries = [s for s, ok in zip(seeds, finite, strict=True) if ok], queries[finite]
            if not seeds:
                raise VectorError(f"the stored vectors of items {broken} {_stored(snapshot)} are not finite")
        per_seed = fetch_size(k, len(exclude | set(seeds)), snapshot.num_items)
        scores, ids = await self._search_batch((snapshot, queries, per_seed))
        hits = merge_u2i2i(snapshot.item_ids, seeds, scores, ids, k, exclude)
        return {**snapshot.versions(), "items": hits, "k": k, "query": "recent_items", "seeds": seeds}


# ---- HTTP API -----------------------------------------------------------------------------------
# The routes are plain functions over a "backend": the Recall replica itself (topology `single`:
# one hop, HTTP straight into the process holding the index) or a handle to the Recall deployment
# (topology `split`: a separate Ingress deployment scales HTTP work apart from the index).

class _API(FastAPI):
    def openapi(self) -> dict[str, Any]:
        """The OpenAPI document, declaring bearer authentication where this process requires it."""
        schema = super().openapi()  # built once, then cached on the app
        edge = _Process.edge
        if edge is not None and edge.token is not None and "securitySchemes" not in schema.get("components", {}):
            schema.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            for path, operations in schema["paths"].items():
                if path in OPEN_PATHS:
                    continue
                for operation in operations.values():
                    operation["security"] = [{"bearer": []}]
                    operation["responses"]["401"] = {
                        "description": "missing or invalid bearer token",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
        return schema


api = _API(
    title="PRECISE recall service",
    version=precise.__version__,
    description="User and item embeddings and FAISS recall (U2I, U2I2I) from the latest embedding "
                "snapshot. Every answer names the snapshot and model version it came from.",
)
# Any route: the queue of the deployment may be full (Serve's own plain-text 503, with Retry-After).
_ANY = {503: {"model": ErrorResponse, "description": "no snapshot loaded yet, or the request queue is full"},
        504: {"model": ErrorResponse, "description": "no answer within serve.request_timeout_s"}}
_ERRORS = {**_ANY,
           400: {"model": ErrorResponse, "description": "body cannot be parsed (e.g. not UTF-8)"},
           404: {"model": ErrorResponse, "description": "unknown id"},
           408: {"model": ErrorResponse, "description": "request body not received within serve.body_timeout_s"},
           413: {"model": ErrorResponse, "description": "request body too large"},
           422: {"model": ErrorResponse, "description": "invalid request"},
           500: {"model": ErrorResponse, "description": "a vector that is not finite (a broken snapshot or model)"}}
_TEXT_ERRORS = {**_ERRORS, 429: {"model": ErrorResponse,
                                 "description": "too many cold-text requests (serve.cold_text_rate_per_s)"}}


class _Process:
    """Per-process HTTP state. A replica process hosts one deployment, which sets it at start-up
    (Serve serves a copy of `api`, so `api.state` would not reach the routes)."""

    backend: Any = None
    edge: EdgeSettings | None = None
    metrics: ServeMetrics | None = None


def _proxy_host() -> str | None:
    """Where Serve's HTTP proxies listen (http_options.host); None if that cannot be learnt."""
    try:
        from ray.serve.context import _get_global_client  # Serve's client to its controller

        return _get_global_client().http_config.host
    except Exception:  # noqa: BLE001 - unknown counts as beyond loopback: authentication stays on
        log.warning("cannot learn where Serve listens; serve.auth mode auto treats it as beyond loopback")
        return None


def _edge_settings(cfg: Any) -> EdgeSettings:
    """The HTTP edge of this process, token included (read once, here). Raises AuthConfigError
    when authentication is on and no token is configured: the replica must not start open."""
    host = _proxy_host()
    token = required_token(cfg.auth, host)
    if cfg.auth.mode == "off" and not is_loopback(host):
        log.warning("serve.auth.mode is off while Serve listens on %s: the HTTP API is open to anyone", host)
    log.info("HTTP API (Serve on %s): bearer-token authentication %s", host, "on" if token else "off")
    return EdgeSettings(token=token, max_body_bytes=cfg.max_body_bytes, body_timeout_s=cfg.body_timeout_s,
                        request_timeout_s=cfg.request_timeout_s)


def _serve_http_from(backend: Any, edge: EdgeSettings, metrics: ServeMetrics) -> None:
    _Process.backend = backend
    _Process.edge = edge
    _Process.metrics = metrics


def _edge() -> EdgeSettings | None:
    return _Process.edge


def _routes() -> list[str]:
    # paths of the app's own routes (Serve's ingress adds path-less routers: skipped)
    return [path for path in (getattr(route, "path", None) for route in api.routes) if path]


class _HandleBackend:
    """The Recall deployment's methods, called through a handle (topology `split`)."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self.handle = handle

    def __getattr__(self, method: str) -> Any:
        async def call(*args: Any) -> Any:
            try:
                return await getattr(self.handle, method).remote(*args)
            except BackPressureError:  # Recall's queue at this Ingress replica is full
                return _error(503, "the Recall deployment is at capacity; retry later", retry_after_s=1)

        return call


class APIError(Exception):
    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


@api.exception_handler(APIError)
async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    return JSONResponse(status_code=exc.status, content={"error": exc.message}, headers=headers)


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


class _RequestMetrics:
    """Counts every HTTP answer by route and status code and times it to the last body byte.
    Added last, so it is the outermost layer: the edge's 401/408/413/504 and validation errors are
    counted too."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        metrics = _Process.metrics
        if scope["type"] != "http" or metrics is None:
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500  # 500 unless a response starts: Serve answers 500

        async def send_and_note(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            best_effort(metrics.request, scope["path"], status, time.perf_counter() - started)


api.add_middleware(EdgeGuard, settings=_edge)
api.add_middleware(_RequestMetrics)


def _unwrap(result: dict[str, Any]) -> dict[str, Any]:
    if "_error" in result:
        raise APIError(result["_error"], result["message"], result.get("retry_after"))
    return result


@api.get("/healthz", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
async def healthz() -> Any:
    info = await _Process.backend.version()
    if info.get("snapshot_version") is None:
        return JSONResponse(status_code=503, content={"status": "waiting", "snapshot_version": None,
                                                      "detail": info.get("last_error") or "no snapshot yet"})
    return {"status": "ok", "snapshot_version": info["snapshot_version"]}


@api.get("/v1/version", response_model=VersionResponse, responses=_ANY)
async def version() -> Any:
    return await _Process.backend.version()


@api.post("/v1/embeddings/users", response_model=VectorResponse, responses=_ERRORS)
async def user_embedding(body: UserQuery) -> Any:
    return _unwrap(await _Process.backend.user_embedding(body.model_dump()))


@api.post("/v1/embeddings/items", response_model=VectorResponse, responses=_TEXT_ERRORS)
async def item_embedding(body: ItemQuery) -> Any:
    return _unwrap(await _Process.backend.item_embedding(body.model_dump()))


@api.post("/v1/recall/u2i", response_model=RecallResponse, responses=_ERRORS)
async def u2i(body: RecallQuery) -> Any:
    return _unwrap(await _Process.backend.u2i(body.model_dump()))


@api.post("/v1/recall/u2i2i", response_model=RecallResponse, responses=_ERRORS)
async def u2i2i(body: RecallQuery) -> Any:
    return _unwrap(await _Process.backend.u2i2i(body.model_dump()))


# ---- Deployments --------------------------------------------------------------------------------


@serve.deployment(name="Recall", max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.25})
@serve.ingress(api)
class RecallHTTP(RecallCore):
    """Topology `single`: the Recall replica answers HTTP itself."""

    def __init__(self, config: dict[str, Any]) -> None:
        edge = _edge_settings(PreciseConfig.model_validate(config).serve)  # first: no threads if it fails
        super().__init__(config)
        _serve_http_from(self, edge, self.metrics)

    async def __del__(self) -> None:
        self._stop()
        await super().__del__()  # the ASGI wrapper's lifespan shutdown


@serve.deployment(name="Recall", max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.25})
class Recall(RecallCore):
    """Topology `split`: called by the Ingress deployment through a handle."""

    def __del__(self) -> None:
        self._stop()


@serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 0.25})
@serve.ingress(api)
class Ingress:
    """Topology `split`: HTTP, validation and errors; forwards queries to Recall."""

    def __init__(self, config: dict[str, Any], recall: DeploymentHandle) -> None:
        cfg = PreciseConfig.model_validate(config)
        set_thread_counts(cfg.serve.ingress.threads)
        _serve_http_from(_HandleBackend(recall), _edge_settings(cfg.serve), ServeMetrics(_routes(), cfg.serve.task))


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
    topology: str | None = None  # serve.topology: single | split


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
    if a.topology is not None:
        cfg.serve.topology = a.topology
    return PreciseConfig.model_validate(cfg.model_dump())  # re-validate the overridden values


def _scaling(s: Any, access_log: bool) -> dict[str, Any]:
    return {"autoscaling_config": {"min_replicas": s.min_replicas, "max_replicas": s.max_replicas,
                                   "target_ongoing_requests": s.target_ongoing_requests},
            "max_ongoing_requests": s.max_ongoing_requests,
            "max_queued_requests": s.max_queued_requests,
            "backpressure_config": {"status_code": 503, "retry_after_s": 1},
            "ray_actor_options": {"num_cpus": s.num_cpus},
            # per-request access logs cost CPU on every call; errors are still logged
            "logging_config": {"enable_access_log": access_log}}


def app(args: dict[str, Any]) -> serve.Application:
    """Serve application builder (`serve run serve.app:app key=value ...`)."""
    cfg = resolve_config(args)
    config = cfg.model_dump(mode="json")
    recall_options = _scaling(cfg.serve.recall, cfg.serve.access_log)
    if cfg.serve.topology == "single":
        return RecallHTTP.options(**recall_options).bind(config)
    recall = Recall.options(**recall_options).bind(config)
    return Ingress.options(**_scaling(cfg.serve.ingress, cfg.serve.access_log)).bind(config, recall)
