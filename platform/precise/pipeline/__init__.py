"""The event-time orchestrator: ingest, universal, targeted (re-warm-started), predict, per cycle."""
