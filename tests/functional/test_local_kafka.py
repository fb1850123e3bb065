"""The local broker's storage formatting, without starting a broker."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

import pytest

from deploy.kafka import broker


def test_a_cluster_id_starting_with_a_dash_is_formatted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A random base64 cluster id starts with "-" about once in 64 formats; the tool must not read it as an option."""
    dash_id = base64.urlsafe_b64decode("-" + "A" * 21 + "==")
    monkeypatch.setattr(broker.uuid, "uuid4", lambda: uuid.UUID(bytes=dash_id))
    local = broker.LocalBroker(data_dir=tmp_path, port=broker.free_port())
    tmp_path.mkdir(exist_ok=True)
    local._write_config()
    local._format_if_needed(broker._java(), f"{broker.fetch_libs()}/*")
    meta = (local.log_dirs / "meta.properties").read_text()
    assert "cluster.id=-AAAAAAAAAAAAAAAAAAAAA" in meta
