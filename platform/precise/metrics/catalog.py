"""Every metric the platform exports, in one place: the stages record through these names, the
operations docs list them, and the Grafana dashboard (`configs/grafana/precise.json`) plots them.
Tests keep the three in step.

Prometheus names: Ray prefixes `ray_`; counters end in `_total`; histograms export `_bucket`,
`_sum` and `_count`. Every series also carries Ray's own tags (`WorkerId`, `NodeAddress`,
`SessionName`, ...), so aggregate with `sum by (...)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["counter", "gauge", "histogram"]

BATCH_SECONDS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
REQUEST_SECONDS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: Kind
    tags: tuple[str, ...]
    description: str
    watch: str  # what an operator looks for (the docs table)
    boundaries: tuple[float, ...] = ()

    @property
    def prometheus_name(self) -> str:
        return "ray_" + self.name + ("_total" if self.kind == "counter" else "")


CATALOG: tuple[MetricSpec, ...] = (
    # ---- ingest (driver of jobs/ingest.py or jobs/pipeline.py) ------------------------------------
    MetricSpec("precise_ingest_events_ingested", "counter", ("topic",),
               "Valid records committed to the lake",
               "rate = ingest throughput"),
    MetricSpec("precise_ingest_events_dead_lettered", "counter", ("topic", "reason_kind"),
               "Rejected records committed to the dead-letter sink",
               "any sustained rate: a producer sends bad data"),
    MetricSpec("precise_ingest_dead_letter_publish_failures", "counter", ("topic",),
               "Dead letters committed to the lake but not copied to the dead-letter topic",
               "> 0: the dead-letter topic is down or refuses; the lake's dead-letter files have them all"),
    MetricSpec("precise_ingest_retention_gap_records", "counter", ("topic",),
               "Offsets deleted by Kafka retention before they were ingested (recorded in the ledger)",
               "any: retention shorter than ingest downtime; those records are lost to the lake"),
    MetricSpec("precise_ingest_lag_records", "gauge", ("topic", "partition"),
               "Records in Kafka not yet committed to the lake, per partition",
               "should return near 0 after each batch"),
    MetricSpec("precise_ingest_batch_latency_s", "histogram", ("status",),
               "Wall time of one micro-batch",
               "growth: batches too big (`ingest.max_records_per_partition`) or the cluster too small",
               BATCH_SECONDS),
    MetricSpec("precise_ingest_batches", "counter", ("status",),
               "Micro-batches by outcome",
               "`failed` > 0: broker or Ray trouble (the job retries with backoff)"),
    MetricSpec("precise_ingest_files_compacted", "counter", ("stage",),
               "Lake files merged into larger ones (`merged`) and merged-away files deleted (`deleted`)",
               "`merged` flat while batches commit: compaction is off or sequence builds lag behind"),
    # ---- training (Ray Train workers; the version gauge from the job's driver) --------------------
    MetricSpec("precise_train_loss", "gauge", ("model", "task"),
               "Mean training loss of the last finished epoch (rank 0)",
               "should fall over epochs; NaN or a jump: lower `training.lr`"),
    MetricSpec("precise_train_val_ndcg_at_10", "gauge", ("model", "task"),
               "Validation NDCG@10 after the last finished epoch (rank 0)",
               "should rise, then level off; a fall across cycles: drift or a bad warm start"),
    MetricSpec("precise_train_samples_per_s", "gauge", ("model", "task"),
               "Sequences per second of the last epoch, all workers together",
               "capacity: compare with `benchmarks/train.py`"),
    MetricSpec("precise_train_samples", "counter", ("model", "task"),
               "Sequences trained on (every worker, every epoch)",
               "rate = training throughput; flat while a job runs: a stuck worker"),
    MetricSpec("precise_train_epochs", "counter", ("model", "task"),
               "Epochs finished",
               "progress of a running job"),
    MetricSpec("precise_model_version", "gauge", ("model", "task"),
               "Newest version registered by this job (the number in universal/000007)",
               "should step up once per cycle"),
    # ---- prediction (driver of jobs/predict.py or jobs/pipeline.py) ------------------------------
    MetricSpec("precise_snapshot_version", "gauge", ("task",),
               "Newest embedding snapshot published by this job",
               "should step up once per cycle; compare with the served version"),
    MetricSpec("precise_snapshot_index_recall", "gauge", ("task",),
               "The published index's recall@k against exact search",
               "below ~0.95: raise HNSW ef_search / IVF nprobe (`predict.index`)"),
    MetricSpec("precise_snapshots_published", "counter", ("task",),
               "Embedding snapshots published",
               "one per cycle"),
    # ---- pipeline (driver of jobs/pipeline.py) ----------------------------------------------------
    MetricSpec("precise_pipeline_cycles", "counter", ("mode", "task"),
               "Training cycles finished (ingest, universal, targeted, snapshot)",
               "one per `pipeline.cycle_s` of event time"),
    MetricSpec("precise_pipeline_cycle_seconds", "gauge", ("mode", "task"),
               "Wall time of the last cycle",
               "must stay well under the cycle period, or training falls behind the stream"),
    MetricSpec("precise_pipeline_trained_share", "gauge", ("mode", "task"),
               "Share of the cycle's exposed items that the serving model's UT trained on (figure 4a)",
               "falls with `mode: once`; stays high with `periodic`"),
    MetricSpec("precise_pipeline_gate_score", "gauge", ("task", "model"),
               "Each new model's validation score on the target task (the serving gate)",
               "targeted below universal cycle after cycle: targeted training is not earning its place"),
    MetricSpec("precise_pipeline_published_model", "gauge", ("task", "model"),
               "1 for the model the last cycle published for the target task, 0 for the other",
               "which model users get; forced by `pipeline.publish`, else the gate's choice"),
    # ---- serving (every Ray Serve replica that answers HTTP) -------------------------------------
    MetricSpec("precise_serve_requests", "counter", ("task", "endpoint", "status"),
               "HTTP requests answered, by route and status code",
               "5xx > 0: a bug or an overloaded replica; 503: no snapshot loaded"),
    MetricSpec("precise_serve_request_latency_s", "histogram", ("task", "endpoint", "status"),
               "Time from request to the last response byte, inside the replica",
               "p99 of U2I over 50 ms: add replicas (`serve.recall.max_replicas`)",
               REQUEST_SECONDS),
    MetricSpec("precise_serve_snapshot_version", "gauge", ("task",),
               "Embedding snapshot this replica serves",
               "should follow `precise_snapshot_version` within `serve.poll_interval_s`"),
    MetricSpec("precise_serve_model_version", "gauge", ("task", "model"),
               "Version number of the model behind the served snapshot",
               "the served model's age"),
    MetricSpec("precise_serve_snapshot_swaps", "counter", ("task",),
               "Snapshots swapped in by a replica",
               "one per published snapshot and replica"),
    MetricSpec("precise_serve_snapshot_failures", "counter", ("task",),
               "Published snapshots a replica refused (unreadable or inconsistent)",
               "any: the old snapshot keeps serving; see the replica log and `/v1/version` last_error"),
)

SPECS: dict[str, MetricSpec] = {spec.name: spec for spec in CATALOG}
