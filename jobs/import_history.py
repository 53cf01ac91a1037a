"""Import an existing history (Parquet or CSV) into the event lake, then build user sequences.

    python jobs/import_history.py --config configs/mine.yaml --input history.parquet
    python jobs/import_history.py --config configs/mine.yaml --input ratings.csv --delimiter ';'
    python jobs/import_history.py --config configs/mine.yaml --items catalogue.csv   # item texts

Rows go through `ingest.field_mapping` (your columns -> the event contract; for `--items`,
`ingest.item_field_mapping` -> the item contract) and the contract's checks; rejected rows become
the lake's dead letters (`reason` names the field), duplicates of event ids already in the lake
too. Re-running with the same file changes nothing; an interrupted import resumes where it stopped
(precise.ingest.history). Prints one JSON summary line.
"""

from __future__ import annotations

import sys
from dataclasses import asdict

from _common import run_job
from precise.ingest.batch import LakeError
from precise.ingest.history import ITEMS, import_history
from precise.ingest.job import connect_ray
from precise.ingest.sequences import SequenceBuilder


def main(argv: list[str] | None = None) -> int:
    def arguments(parser):  # noqa: ANN001, ANN202
        parser.add_argument("--input", help="the history of events: a .parquet or .csv file")
        parser.add_argument("--items", help="the item catalogue (ids and texts): a .parquet or .csv file")
        parser.add_argument("--name", help="a label recorded in the ledger (default: the file name)")
        parser.add_argument("--format", choices=["parquet", "csv"], help="default: from the file name")
        parser.add_argument("--delimiter", default=",", help="CSV field separator (default ',')")
        parser.add_argument("--batch-rows", type=int, default=200_000, help="rows per committed chunk")
        parser.add_argument("--no-sequences", action="store_true", help="do not build sequences afterwards")

    def body(config, args):  # noqa: ANN001, ANN202
        if not args.input and not args.items:
            raise ValueError("give --input PATH (the events history) and/or --items PATH (the catalogue)")
        options = {"name": args.name, "fmt": args.format, "delimiter": args.delimiter, "batch_rows": args.batch_rows}
        summary = {}
        if args.items:
            summary["items"] = import_history(config, args.items, kind=ITEMS, **options)
        if args.input:
            summary["events"] = import_history(config, args.input, **options)
        if config.ingest.build_sequences and not args.no_sequences:
            connect_ray()
            summary["sequences"] = [asdict(r) for r in SequenceBuilder(config).build()]
        return summary

    # another writer holding the lake (a running ingest job) is a failure to retry later: exit 1
    return run_job(__doc__, arguments, body, argv, failures=(LakeError, RuntimeError))


if __name__ == "__main__":
    sys.exit(main())
