"""``badgestream evaluate`` and ``badgestream catalog validate``: the offline commands for badge designers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deploy.demo.make_events import build
from streams.cli.main import main

DEMO = Path(__file__).resolve().parents[2] / "deploy" / "demo"


def test_evaluate_prints_awards_and_reports_bad_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = tmp_path / "events.jsonl"
    good = {"event_id": "e1", "type": "quiz_completed", "user_id": "u1", "occurred_at": "2026-03-07T10:00:00+00:00",
            "data": {"quiz_id": "q1", "score": 9, "total_questions": 10}}
    events.write_text("\n".join([
        json.dumps(good),
        "not json",
        json.dumps({**good, "event_id": "e2", "data": {"quiz_id": 1, "score": 9, "total_questions": 10}}),
        json.dumps({**good, "occurred_at": "2026-03-07T10:00:00"}),
        "",
        json.dumps(good),
        json.dumps({**good, "event_id": "e3", "type": "page_view"}),
    ]) + "\n")
    assert main(["evaluate", "--catalog", str(DEMO / "catalog.yaml"), str(events)]) == 0
    out, err = capsys.readouterr()
    awards = [json.loads(line) for line in out.splitlines()]
    assert [a["badge_id"] for a in awards] == ["first_quiz", "accuracy_expert", "weekend_warrior"]
    assert awards[0]["awarded_at"] == "2026-03-07T10:00:00Z" and awards[0]["event_id"] == "e1"
    assert "line 2: invalid_json: " in err
    assert "line 3: invalid_data: data.quiz_id: expected string, got int" in err
    assert "line 4: invalid_envelope: occurred_at: timestamp has no time zone" in err
    assert "6 events: 1 evaluated, 1 duplicates, 1 with no listening badge, 3 invalid; 1 users, 3 awards" in err


def test_demo_events_earn_every_badge(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--catalog", str(DEMO / "catalog.yaml"), str(DEMO / "events.jsonl")]) == 0
    out, err = capsys.readouterr()
    awards = [json.loads(line) for line in out.splitlines()]
    earned = {a["badge_id"] for a in awards}
    assert earned == {"first_quiz", "quiz_master", "accuracy_expert", "explorer", "point_collector", "daily_warrior",
                      "steady_learner", "weekly_regular", "weekend_warrior", "summer_scholar", "recruiter", "scholar",
                      "all_rounder", "comeback", "rookie", "regular", "legend"}
    assert all(isinstance(a["points"], int) for a in awards)
    # The freeze streak forgives a day that the plain seven-day streak does not.
    assert {a["user_id"] for a in awards if a["badge_id"] == "steady_learner"} - {
        a["user_id"] for a in awards if a["badge_id"] == "daily_warrior"}
    # Levels are ordinary award lines, worth nothing themselves, decided by the points before them.
    points: dict[str, int] = {}
    for award in awards:
        if award["badge_id"] in {"rookie", "regular", "legend"}:
            assert award["points"] == 0 and award["tier"] is None
            assert points[award["user_id"]] >= award["metadata"]["target"] == {"rookie": 50, "regular": 150,
                                                                               "legend": 300}[award["badge_id"]]
        points[award["user_id"]] = points.get(award["user_id"], 0) + award["points"]
    assert {a["tier"] for a in awards if a["badge_id"] == "quiz_master"} == {"bronze", "silver", "gold"}
    assert max(a["occurrence"] for a in awards if a["badge_id"] == "recruiter") >= 2
    assert "2 duplicates" in err and "0 invalid" in err


def test_demo_events_file_is_what_the_generator_makes() -> None:
    lines = (DEMO / "events.jsonl").read_bytes().splitlines()
    assert [json.loads(line) for line in lines] == build()
    assert len(lines) >= 200 and len({json.loads(line)["tz"] for line in lines}) >= 8


def test_catalog_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["catalog", "validate", str(DEMO / "catalog.yaml")]) == 0
    out, _ = capsys.readouterr()
    assert "valid — catalog 2026-11-26, 14 badges" in out
    assert "3 levels (rookie at 50, regular at 150, legend at 300)" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text('catalog_version: "1"\nbadges:\n  - {id: a, on: [q], rule: {cnt: 1}}\n'
                   "  - {id: b, rule: {badges: [ghost]}}\n  - {id: c, on: [q], rule: {evaluator: nope}}\n")
    assert main(["catalog", "validate", str(bad)]) == 2
    _, err = capsys.readouterr()
    assert f"{bad}: 3 problems:" in err
    assert f"{bad}:3: badge 'a', field 'rule': unknown rule kind 'cnt'" in err
    assert f"{bad}:4: badge 'b', field 'rule.badges': unknown badge 'ghost'" in err
    assert f"{bad}:5: badge 'c', field 'rule.evaluator': unknown custom evaluator 'nope'" in err
    assert main(["catalog", "validate", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read the catalog" in capsys.readouterr().err


def test_evaluate_with_a_bad_catalog_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("catalog_version: '1'\nbadges: [{id: a, rule: {count: 1}}]\n")
    assert main(["evaluate", "--catalog", str(bad), str(DEMO / "events.jsonl")]) == 2
    assert "'on' must list at least one event type" in capsys.readouterr().err


def test_evaluate_prints_nudges_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--nudges", "--catalog", str(DEMO / "catalog.yaml"), str(DEMO / "events.jsonl")]) == 0
    out, err = capsys.readouterr()
    records = [json.loads(line) for line in out.splitlines()]
    nudges = [r for r in records if "nudge_id" in r]
    assert {(n["badge_id"], n["threshold"]) for n in nudges} == {("quiz_master", 2), ("daily_warrior", 1)}
    assert all(0 < n["remaining"] <= n["threshold"] for n in nudges)
    assert len({n["nudge_id"] for n in nudges}) == len(nudges)  # once per (user, badge, tier, occurrence, threshold)
    assert f"{len(nudges)} nudges" in err
    # every user who got quiz_master gold was nudged for it first, in order
    for award in (r for r in records if "award_id" in r and r["badge_id"] == "quiz_master" and r["tier"] == "gold"):
        before = records[: records.index(award)]
        assert any(n.get("nudge_id") and n["user_id"] == award["user_id"] and n["tier"] == "gold" for n in before)
