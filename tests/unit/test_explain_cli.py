"""``badgestream evaluate --explain``, ``badgestream explain`` and ``badgestream what-if`` from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from streams.cli.main import main
from tests.functional.api_data import CATALOG, fill

DEMO = Path(__file__).resolve().parents[2] / "deploy" / "demo"


def quiz(event_id: str, day: int, quiz_id: str, score: int = 9) -> dict[str, object]:
    return {"event_id": event_id, "type": "quiz_completed", "user_id": "u1",
            "occurred_at": f"2026-06-{day:02d}T10:00:00+02:00", "tz": "Europe/Berlin",
            "data": {"quiz_id": quiz_id, "score": score, "total_questions": 10}}


def test_evaluate_explain_one_badge_as_of_the_files_last_event(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    events = tmp_path / "events.jsonl"
    lines = [quiz("e1", 1, "q1"), quiz("e2", 2, "q2"), quiz("e3", 3, "q2"), quiz("e4", 3, "q3", score=2)]
    events.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert main(["evaluate", "--catalog", str(DEMO / "catalog.yaml"), str(events), "--explain", "u1", "explorer",
                 "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)  # only the explanation on stdout, no award lines
    assert (answer["badge_id"], answer["state_source"], answer["held"]) == ("explorer", "offline", False)
    assert answer["parts"][0] == {"tier": None, "occurrence": 1, "held": False, "points": 20, "progress": 3,
                                       "target": 5, "remaining": 2}
    assert answer["last_event"] == {"at": "2026-06-03T10:00:00+02:00", "event_id": "e4", "what": "progress",
                                    "line": 4}
    assert answer["unknown"] == []

    assert main(["evaluate", "--catalog", str(DEMO / "catalog.yaml"), str(events), "--explain", "u1",
                 "first_quiz", "--json"]) == 0
    held = json.loads(capsys.readouterr().out)
    assert held["parts"][0]["award"] == {
        "award_id": held["parts"][0]["award"]["award_id"], "event_id": "e1", "awarded_at": "2026-06-01T10:00:00+02:00",
        "topic": str(events), "partition": None, "offset": 1, "points": 10}


def test_evaluate_explain_every_badge_and_level_in_words(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--catalog", str(DEMO / "catalog.yaml"), str(DEMO / "events.jsonl"),
                 "--explain", "ana"]) == 0
    out = capsys.readouterr().out
    assert "Daily Warrior (daily_warrior, streak badge) for ana: not held" in out
    assert "missing: 6 more days in a row with user logged in events (current run 1 of 7)" in out
    assert "Rookie (rookie, level) for ana: complete" in out  # levels by their names


def test_evaluate_explain_an_unknown_badge_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--catalog", str(DEMO / "catalog.yaml"), str(DEMO / "events.jsonl"),
                 "--explain", "ana", "nope"]) == 2
    assert "no badge or level 'nope'" in capsys.readouterr().err
    assert main(["evaluate", "--catalog", str(DEMO / "catalog.yaml"), str(DEMO / "events.jsonl"), "--explain", "ana",
                 "explorer", "more"]) == 2
    assert "--explain takes USER [BADGE]" in capsys.readouterr().err


def test_explain_and_what_if_over_the_award_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'awards.db'}"
    fill(url).dispose()
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml.safe_dump(CATALOG))
    common = ["--catalog", str(catalog), "--database-url", url]
    assert main(["explain", "u-1", "first_quiz", *common]) == 0
    out = capsys.readouterr().out
    assert "First Quiz (first_quiz, count badge) for u-1: complete" in out
    assert "event e-u-1-first_quiz-None-1 (user-events partition 2 offset 41)" in out
    assert main(["explain", "u-1", "secret_society", *common, "--json"]) == 0  # an operator sees hidden badges
    assert json.loads(capsys.readouterr().out)["hidden"] is True
    assert main(["explain", "u-1", "nope", *common]) == 1

    event = tmp_path / "event.json"
    event.write_text(json.dumps({"event_id": "w1", "type": "quiz_completed", "user_id": "u-1",
                                 "occurred_at": "2026-11-22T10:00:00+00:00", "data": {"quiz_id": "q7"}}))
    assert main(["what-if", "u-1", str(event), *common]) == 0
    out = capsys.readouterr().out
    assert "what if w1 (quiz_completed) arrived for u-1:" in out
    assert "Explorer: qualifies, progress 0 -> 1" in out and "points 35 -> 35" in out
    event.write_text(json.dumps({"event_id": "w1", "type": "quiz_completed", "user_id": "u-1"}))
    assert main(["what-if", "u-1", str(event), *common]) == 2
    assert "occurred_at: Field required" in capsys.readouterr().err
