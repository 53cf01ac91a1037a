"""Ingest stage: Kafka -> validated event lake (exactly once) -> per-user sequences.

    storage.py    the storage root (local path or pyarrow/fsspec URI), atomic whole-file writes
    lake.py       lake layout, file names, schemas, the offset ledger; readers for other stages
    validate.py   raw record -> event / item / reject with a reason (runs in Ray Data tasks)
    kafka.py      offset queries and the dead-letter topic (confluent-kafka, with timeouts)
    items.py      the item table (latest text, first-seen time), an idempotent upsert
    batch.py      one micro-batch: plan, read (ray.data.read_kafka), dedupe, write, commit
    sequences.py  all-scene and target sequences with the leave-one-out split (Ray Data)
    job.py        --once / continuous modes, retries, graceful stop (jobs/ingest.py calls it)
    faults.py     test-only crash points (PRECISE_INGEST_CRASH_AT)

Readers for training and tools: `precise.ingest.lake.{read_events, events_dataset, read_items,
read_dead_letters, event_files}` and `precise.ingest.sequences.{read_sequences, sequences_dataset}`.
"""
