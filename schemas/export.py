"""JSON Schema of every wire model, written to files for upstream teams (``python -m schemas.export DIR``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import BaseModel

from schemas.catalog import Catalog
from schemas.events import EventEnvelope
from schemas.records import AwardRecord, DeadLetterRecord, NudgeRecord, ProgressRecord

# Inputs are described as they are validated, outputs as they are serialised.
WIRE_MODELS: dict[str, tuple[type[BaseModel], str]] = {
    "event-envelope": (EventEnvelope, "validation"),
    "catalog": (Catalog, "validation"),
    "award-record": (AwardRecord, "serialization"),
    "progress-record": (ProgressRecord, "serialization"),
    "nudge-record": (NudgeRecord, "serialization"),
    "dead-letter-record": (DeadLetterRecord, "serialization"),
}


def export_json_schemas(directory: str | Path) -> list[Path]:
    """Write ``<name>.schema.json`` for every wire model into ``directory``; returns the paths written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (model, mode) in WIRE_MODELS.items():
        schema = model.model_json_schema(mode=mode)  # type: ignore[arg-type]
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        path = directory / f"{name}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for written_path in export_json_schemas(sys.argv[1] if len(sys.argv) > 1 else "schemas-json"):
        print(written_path)
