"""The item table: latest text and first-seen time per item, upserted from the item topic.

The merge is idempotent and order-free (latest = greatest (Kafka timestamp, partition, offset);
first seen = smallest Kafka timestamp), so merging the same records twice changes nothing. That is
why the table may be written *before* the ledger commit: if the batch crashes afterwards, the
re-run merges the same records again and gets the same table.
"""

from __future__ import annotations

import pyarrow as pa

from precise.store.lake import ITEM_SCHEMA


def item_rows(validated: pa.Table) -> pa.Table:
    """Valid item records of a batch as ITEM_SCHEMA rows (one per record, not yet merged)."""
    return pa.table({
        "item_id": validated.column("item_id"),
        "text": validated.column("text"),
        "scene": validated.column("scene"),
        "created_ts": validated.column("created_ts"),
        "extra": validated.column("extra"),
        "first_seen_ts": validated.column("kafka_ts"),
        "updated_ts": validated.column("kafka_ts"),
        "deleted": validated.column("deleted"),
        "partition": validated.column("partition"),
        "offset": validated.column("offset"),
    }, schema=ITEM_SCHEMA)


def merge_items(current: pa.Table, new: pa.Table) -> pa.Table:
    """Upsert `new` item records into the table `current`; sorted by item id."""
    if new.num_rows == 0:
        return current
    frame = pa.concat_tables([current.cast(ITEM_SCHEMA), new.cast(ITEM_SCHEMA)]).to_pandas()
    frame = frame.sort_values(["item_id", "updated_ts", "partition", "offset"], kind="stable")
    groups = frame.groupby("item_id", sort=True)
    # last() takes the latest non-null value per column: a tombstone (text null, deleted true) keeps
    # the item's last known text and scene; deleted, partition, offset are never null.
    merged = groups.last()
    merged["first_seen_ts"] = groups["first_seen_ts"].min()
    merged = merged.reset_index()
    return pa.Table.from_pandas(merged[ITEM_SCHEMA.names], schema=ITEM_SCHEMA, preserve_index=False)

