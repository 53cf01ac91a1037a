"""Ingest stage: Kafka -> validated event lake (exactly once) -> per-user sequences.

    validate.py   raw record -> event / item / reject with a reason (runs in the read tasks)
    kafka.py      offset queries and the dead-letter topic (confluent-kafka, with timeouts)
    items.py      the item table (latest text, first-seen time), an idempotent upsert
    reader.py     one partition range read to its last delivered offset (read_committed, in a Ray task)
    batch.py      one micro-batch: plan, read + validate (Ray tasks), dedupe, write, commit
    sequences.py  the incremental builder of all-scene and target sequences (Ray Data)
    compact.py    merging a partition's small lake files
    job.py        --once / continuous modes, retries, graceful stop (jobs/ingest.py calls it)
    faults.py     test-only crash points (PRECISE_INGEST_CRASH_AT)

The lake's layout, schemas and ledger and the sequences' schema and readers belong to the store
(`precise.store.lake`, `precise.store.sequences`): every stage reads what ingest wrote through it.
"""
