"""Catalog loading: the DESIGN.md format, and every refusal naming file, line, badge and field."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from evaluators.registry import EvaluatorRegistry
from schemas.catalog import (
    BadgesRule,
    CatalogProblems,
    CountRule,
    DistinctRule,
    EvaluatorRule,
    StreakRule,
    SumRule,
    TiersRule,
    load_catalog,
    parse_catalog,
    validate_catalog,
)
from schemas.errors import CatalogError, InvalidEventError
from schemas.export import export_json_schemas
from tests.unit.support import catalog, event

DEMO = Path(__file__).resolve().parents[2] / "deploy" / "demo" / "catalog.yaml"


def problems(text: str, registry: EvaluatorRegistry | None = None) -> list[str]:
    with pytest.raises(CatalogProblems) as info:
        parse_catalog(textwrap.dedent(text), source="cat.yaml", registry=registry)
    return info.value.problems


def test_demo_catalog_loads_with_every_rule_kind() -> None:
    demo = load_catalog(DEMO, registry=EvaluatorRegistry.builtin())
    kinds = {type(b.rule) for b in demo.badges}
    assert kinds == {CountRule, TiersRule, DistinctRule, SumRule, StreakRule, BadgesRule, EvaluatorRule}
    assert demo.event_types() == {"quiz_completed", "user_logged_in", "referral_signup"}
    recruiter = demo.badges_by_id["recruiter"]
    assert recruiter.repeatable and recruiter.hidden and recruiter.requires == ["first_quiz"]


def test_shorthand_and_tagged_rules_are_the_same() -> None:
    short = catalog("""
        badges:
          - {id: a, on: [x], rule: {count: 2}}
          - {id: b, on: [x], rule: {streak: {weeks: 3}}}
          - {id: c, rule: {badges: [a, b], at_least: 1}}
          - {id: d, on: [x], rule: {evaluator: comeback}}
          - {id: e, on: [x], rule: {evaluator: {name: comeback, params: {days: 3}}}}
    """)
    tagged = catalog("""
        badges:
          - {id: a, on: [x], rule: {kind: count, count: 2}}
          - {id: b, on: [x], rule: {kind: streak, weeks: 3}}
          - {id: c, rule: {kind: badges, badges: [a, b], at_least: 1}}
          - {id: d, on: [x], rule: {kind: evaluator, name: comeback}}
          - {id: e, on: [x], rule: {kind: evaluator, name: comeback, params: {days: 3}}}
    """)
    assert [b.fingerprint for b in short.badges] == [b.fingerprint for b in tagged.badges]


def test_on_is_a_key_not_yaml_1_1_true() -> None:
    cat = catalog("badges:\n  - id: a\n    on: [x]\n    rule: {count: 1}\n")
    assert cat.badges[0].on == ["x"]


def test_unquoted_dates_and_versions_are_understood() -> None:
    cat = parse_catalog("catalog_version: 2026-11-26\nbadges:\n  - id: a\n    on: [x]\n"
                        "    window: {from: 2026-06-01, until: 2026-09-01}\n    rule: {count: 1}\n")
    assert cat.catalog_version == "2026-11-26"
    assert cat.badges[0].window is not None and str(cat.badges[0].window.until) == "2026-09-01"


def test_fingerprint_changes_only_with_rule_defining_fields() -> None:
    base = "badges:\n  - id: a\n    name: {name}\n    on: [x, y]\n    rule: {rule}\n"
    one = catalog(base.format(name="A", rule="{count: 1}")).badges[0].fingerprint
    renamed = catalog(base.format(name="Other", rule="{count: 1}")).badges[0].fingerprint
    changed = catalog(base.format(name="A", rule="{count: 2}")).badges[0].fingerprint
    reordered = catalog(base.replace("[x, y]", "[y, x]").format(name="A", rule="{count: 1}")).badges[0].fingerprint
    assert one == renamed == reordered != changed


def test_every_problem_is_reported_with_line_badge_and_field() -> None:
    found = problems("""\
        catalog_version: "1"
        badges:
          - id: a
            on: [x]
            rule: {cnt: 1}
          - id: b
            on: [x]
            rule: {count: 0}
          - id: c
            on: [x]
            window: {from: "2026-09-01", until: "2026-06-01"}
            rule: {count: 1}
          - id: d
            on: [x]
            repeatable: true
            rule: {streak: {days: 3}}
    """)
    assert found == [
        "cat.yaml:5: badge 'a', field 'rule': unknown rule kind 'cnt' "
        "(expected one of count, tiers, distinct, sum, streak, badges, evaluator)",
        "cat.yaml:8: badge 'b', field 'rule.count': Input should be greater than or equal to 1",
        "cat.yaml:11: badge 'c', field 'window': window 'from' (2026-09-01) must be before 'until' (2026-06-01)",
        "cat.yaml:13: badge 'd', field 'badge': repeatable makes no sense for a 'streak' rule "
        "(only count, evaluator, sum)",
    ]


def test_cross_badge_problems() -> None:
    found = problems("""\
        catalog_version: "1"
        badges:
          - id: a
            on: [x]
            when: "data.score >"
            rule: {count: 1}
          - id: a
            on: [x]
            requires: [ghost]
            rule: {count: 1}
          - id: m
            rule: {badges: [a, nobody]}
          - id: c
            on: [x]
            rule: {evaluator: not_registered}
    """, registry=EvaluatorRegistry.builtin())
    assert found[0].startswith("cat.yaml:5: badge 'a', field 'when': not valid CEL:")
    assert found[1:] == [
        "cat.yaml:7: badge 'a', field 'id': duplicate badge id (first defined on line 3)",
        "cat.yaml:9: badge 'a', field 'requires': unknown badge 'ghost'",
        "cat.yaml:12: badge 'm', field 'rule.badges': unknown badge 'nobody'",
        "cat.yaml:15: badge 'c', field 'rule.evaluator': unknown custom evaluator 'not_registered'",
    ]


def test_cycles_among_requires_and_meta_badges() -> None:
    found = problems("""\
        catalog_version: "1"
        badges:
          - {id: a, on: [x], requires: [b], rule: {count: 1}}
          - {id: b, on: [x], requires: [m], rule: {count: 1}}
          - {id: m, rule: {badges: [a]}}
          - {id: s, on: [x], requires: [s], rule: {count: 1}}
    """)
    assert "cat.yaml:3: badge 'a', field 'requires': cycle among requires/badges: a -> b -> m -> a" in found
    assert "cat.yaml:6: badge 's', field 'requires': a badge cannot require itself" in found


@pytest.mark.parametrize(
    ("badge", "words"),
    [
        ("{id: a, rule: {count: 1}}", "'on' must list at least one event type"),
        ("{id: a, on: [x], rule: {count: 1, tiers: {b: 1}}}", "exactly one kind"),
        ("{id: a, on: [x], rule: {streak: {days: 2, weeks: 2}}}", "exactly one of 'days' or 'weeks'"),
        ("{id: a, on: [x], rule: {distinct: {field: quiz_id, count: 2}}}", "must be 'data.<name>"),
        ("{id: a, on: [x], rule: {sum: {field: data.s, at_least: 0}}}", "at_least"),
        ("{id: a, on: [x], rule: {tiers: {}}}", "at least one tier"),
        ("{id: a, on: [x], rule: {badges: [x]}}", "evaluated on awards, not events"),
        ("{id: a, on: [x], rule: {count: 1}, reqires: [b]}", "Extra inputs"),
        ("{id: 'bad id!', on: [x], rule: {count: 1}}", "should match pattern"),
        ("{id: a, on: [x], window: {}, rule: {count: 1}}", "needs 'from', 'until' or both"),
        ("{id: a, on: [x, x], rule: {count: 1}}", "lists an event type twice"),
        ("{id: a, on: [x], tiers: 3, rule: {distinct: {field: data.q, count: 100000}}}", "less than or equal"),
    ],
)
def test_single_badge_refusals(badge: str, words: str) -> None:
    found = problems(f'catalog_version: "1"\nbadges:\n  - {badge}\n')
    assert any(words in p and p.startswith("cat.yaml:3:") for p in found), found


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("badges: [", "not valid YAML"),
        ("- a\n- b\n", "a catalog is a mapping"),
        ("catalog_version: '1'\ncatalog_version: '2'\n", "duplicate key 'catalog_version'"),
        ("a: &x [*x]\n", "refers to itself"),
        ("catalog_version: '1'\nbadges: {}\n", "field 'badges'"),
        ("badges: []\n", "field 'catalog_version'"),
    ],
)
def test_file_level_refusals(text: str, words: str) -> None:
    with pytest.raises(CatalogError, match=words.replace("(", r"\(")):
        parse_catalog(text, source="cat.yaml")


def test_missing_file_and_bad_encoding(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read the catalog"):
        load_catalog(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"catalog_version: \xff\n")
    with pytest.raises(CatalogError, match="not UTF-8"):
        load_catalog(bad)


def test_yaml_alias_bomb_is_bounded() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 9)]
    with pytest.raises(CatalogError, match="YAML nodes"):
        parse_catalog("\n".join(lines))


def test_when_cost_limits() -> None:
    long_when = "true && " * 200 + "true"
    found = problems(
        f'catalog_version: "1"\nbadges:\n  - {{id: a, on: [x], when: "{long_when}", rule: {{count: 1}}}}\n'
    )
    assert "limit is 1024" in found[0]
    nested = "data.xs.exists(x, data.ys.all(y, y > x))"
    found = problems(
        f'catalog_version: "1"\nbadges:\n  - {{id: a, on: [x], when: "{nested}", rule: {{count: 1}}}}\n'
    )
    assert "comprehension macros nest 2 deep" in found[0]
    # One level is fine, macros in sequence are fine, and a macro name inside a string is just text.
    catalog('badges:\n  - {id: a, on: [x], when: "data.xs.exists(x, x > 1) && data.ys.all(y, y != \'.map(\')"'
            ", rule: {count: 1}}\n")


def test_validate_catalog_checks_evaluators_only_with_a_registry() -> None:
    cat = catalog("badges:\n  - {id: a, on: [x], rule: {evaluator: elsewhere}}\n")
    validate_catalog(cat)
    with pytest.raises(CatalogError, match="unknown custom evaluator 'elsewhere'"):
        validate_catalog(cat, EvaluatorRegistry.builtin())


def test_event_data_checks() -> None:
    cat = catalog("""
        events:
          quiz_completed:
            required: {quiz_id: string, score: int, ratio: number}
            optional: {tags: list, meta: object, ok: bool}
        badges: []
    """)
    cat.validate_event_data(event(quiz_id="q", score=3, ratio=0.5, tags=[], meta={}, ok=True))
    cat.validate_event_data(event(quiz_id="q", score=3, ratio=1))
    cat.validate_event_data(event("other_type"))
    cases = [
        ({"score": 3, "ratio": 1.0}, "data.quiz_id: required field is missing"),
        ({"quiz_id": "q", "score": "3", "ratio": 1.0}, "data.score: expected int, got string"),
        ({"quiz_id": "q", "score": True, "ratio": 1.0}, "data.score: expected int, got bool"),
        ({"quiz_id": "q", "score": 3, "ratio": 1.0, "tags": "a"}, "data.tags: expected list, got string"),
    ]
    for data, reason in cases:
        with pytest.raises(InvalidEventError) as info:
            cat.validate_event_data(event(**data))
        assert (info.value.code, info.value.reason) == ("invalid_data", reason)


def test_dumped_catalog_reads_back() -> None:
    demo = load_catalog(DEMO)
    again = type(demo).model_validate(demo.model_dump(by_alias=True))
    assert again.fingerprint == demo.fingerprint


def test_json_schemas_export(tmp_path: Path) -> None:
    written = export_json_schemas(tmp_path)
    names = sorted(p.name for p in written)
    assert names == ["award-record.schema.json", "catalog.schema.json", "dead-letter-record.schema.json",
                     "event-envelope.schema.json", "nudge-record.schema.json", "progress-record.schema.json"]
    envelope = json.loads((tmp_path / "event-envelope.schema.json").read_text())
    assert set(envelope["required"]) == {"event_id", "type", "user_id", "occurred_at"}
    assert envelope["additionalProperties"] is False
