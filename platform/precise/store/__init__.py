"""The store: the only owner of what lives under `storage.root`. Every stage reads and writes its
artifacts through it.

    files.py      the root (local path or pyarrow/fsspec URI): atomic write, lock, sync, publish
    lake.py       the event lake: schemas, range files, the offset ledger, the superseded rule, readers
    sequences.py  per-user sequences: schema, build state, readers
    registry.py   the model registry: weights, vocabulary, text projection, metadata, LATEST
    snapshots.py  embedding snapshots: user and item vectors, FAISS index, manifest, LATEST
    pipeline.py   the orchestrator's state and cycle reports
"""
