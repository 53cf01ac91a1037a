"""The orchestrator's records in the store: which cycle boundaries are done, and one report per cycle.

    pipeline/<mode>/state.json            {"done_boundaries": [...], "reports": [...]}
    pipeline/<mode>/cycles/<NNNNN>.json   the report of cycle N
"""

from __future__ import annotations

import json
import os
from typing import Any

from precise.store.files import Files


class PipelineRecords:
    def __init__(self, root: str | os.PathLike[str] | Files, mode: str) -> None:
        self.files = root if isinstance(root, Files) else Files(root)
        self.folder = self.files.path("pipeline", mode)

    @property
    def cycles_folder(self) -> str:
        return f"{self.folder}/cycles"

    def state(self) -> dict[str, Any]:
        data = self.files.read_bytes(f"{self.folder}/state.json")
        return json.loads(data) if data else {"done_boundaries": [], "reports": []}

    def save_state(self, state: dict[str, Any]) -> None:
        """Written after the cycle's outputs: a restart continues after the last recorded boundary."""
        self.files.write_bytes(f"{self.folder}/state.json", json.dumps(state, indent=2, default=str).encode())

    def save_report(self, cycle: int, report: dict[str, Any]) -> None:
        self.files.write_bytes(f"{self.cycles_folder}/{cycle:05d}.json",
                               json.dumps(report, indent=2, default=str).encode())

    def reports(self) -> list[dict[str, Any]]:
        return [json.loads(self.files.read_bytes(p) or b"{}") for p in self.files.list_files(self.cycles_folder)
                if p.endswith(".json")]
