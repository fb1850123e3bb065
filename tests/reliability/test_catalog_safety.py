"""Catalog safety: CEL reaches only its variables and stays cheap, bad catalogs refuse start-up, and
a changed badge definition never silently mixes old progress with the new rule.

Limits already covered by tests/unit (expression length, macro nesting, YAML alias bombs, rule
bounds) are not repeated here. The two cost tests below found missing limits (lists in events are
now at most 1000 items, and a macro body may read only its own variable).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from evaluators.engine import Engine
from evaluators.expressions import Expression
from evaluators.facts import EventFacts
from schemas.catalog import parse_catalog
from schemas.errors import EvaluatorError
from schemas.events import parse_event
from tests.integration import harness
from tests.integration.harness import StackConfig
from tests.reliability import support


def _facts(**data: object) -> EventFacts:
    return EventFacts(parse_event(orjson.dumps({
        "event_id": "e1", "type": "quiz_completed", "user_id": "u-1",
        "occurred_at": "2026-06-06T10:00:00+00:00", "data": data})))


@pytest.mark.parametrize("source", [
    "os.environ['HOME'] != ''", "__import__('os') == null", "globals().size() > 0", "now() > event.occurred_at",
    "env.PATH != ''", "open('/etc/passwd') != ''", "event.__class__ != null", "data.__dict__.size() > 0",
    "self.catalog != null", "state.badges.size() > 0", "sys.modules.size() > 0",
])
def test_cel_reaches_nothing_but_its_variables(source: str) -> None:
    """Anything else is refused when the catalog loads or fails (= does not qualify) per event."""
    try:
        expression = Expression.compile(source)
    except ValueError:
        return
    with pytest.raises(EvaluatorError):
        expression.matches(_facts(score=1))


def test_an_escaping_when_only_makes_its_badge_not_qualify() -> None:
    catalog = parse_catalog(
        'catalog_version: "1"\nbadges:\n'
        '  - {id: sneaky, on: [quiz_completed], when: "os.system(\'touch /tmp/pwned\') == 0", rule: {count: 1}}\n'
        '  - {id: honest, on: [quiz_completed], rule: {count: 1}}\n')
    result = Engine(catalog).evaluate(None, parse_event(orjson.dumps({
        "event_id": "e1", "type": "quiz_completed", "user_id": "u-1", "occurred_at": "2026-06-06T10:00:00+00:00"})))
    assert [a.badge_id for a in result.awards] == ["honest"]
    assert [(f.badge_id, f.kind) for f in result.errors] == [("sneaky", "cel")]
    assert not Path("/tmp/pwned").exists()


def test_no_function_repeats_or_builds_strings_and_lists_beyond_the_expression() -> None:
    """No ``repeat``/``join``/``range``: what an expression can build grows only with its own length."""
    facts = _facts(s="x" * 60_000)
    for source in ["'a'.repeat(1000000000) == ''", "range(1000000000).size() > 0", "[1].repeat(1000000000) == []",
                   "'ab'.join(['x']) == ''", "string(data) != ''"]:
        with pytest.raises((EvaluatorError, ValueError)):
            Expression.compile(source).matches(facts)
    # The most the length limit allows: ~110 copies of a 60 kB string, built and measured at once.
    longest = "size(" + " + ".join(["data.s"] * 113) + ") > 0"
    assert len(longest) <= 1024
    began = time.perf_counter()
    assert Expression.compile(longest).matches(facts)
    assert time.perf_counter() - began < 5


def _bounded_in_a_subprocess(source: str, items: int, cpu_seconds: int = 3) -> str:
    """Load ``source`` as a ``when`` and evaluate it on the largest event the parser accepts, in a
    subprocess with a CPU-time and memory limit. Returns how it ended."""
    program = f"""
import resource, sys, orjson
resource.setrlimit(resource.RLIMIT_CPU, ({cpu_seconds}, {cpu_seconds}))
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
from evaluators.expressions import Expression
from evaluators.facts import EventFacts
from schemas.errors import InvalidEventError
from schemas.events import parse_event
try:
    expression = Expression.compile({source!r})
except ValueError:
    print("refused-at-load"); sys.exit(0)
raw = orjson.dumps({{"event_id": "e", "type": "t", "user_id": "u", "occurred_at": "2026-06-06T10:00:00+00:00",
                     "data": {{"xs": [0] * {items}}}}})
try:
    event = parse_event(raw)
except InvalidEventError:
    print("refused-at-parse"); sys.exit(0)
try:
    expression.matches(EventFacts(event))
except Exception:
    pass
print("finished")
"""
    result = subprocess.run([sys.executable, "-c", program], cwd=harness.REPO, capture_output=True, text=True,
                            timeout=120, env={"PYTHONPATH": str(harness.REPO), "PATH": "/usr/bin:/bin"})
    return result.stdout.strip() or f"killed (exit {result.returncode})"


# 64 KiB of "[0,0,...]" holds ~32k list items.
def test_a_macro_over_the_largest_list_an_event_may_hold_stays_cheap() -> None:
    assert _bounded_in_a_subprocess("data.xs.filter(x, x == 0).size() > 0", items=32_000) in (
        "refused-at-load", "refused-at-parse", "finished")


def test_a_macro_over_the_longest_list_allowed_finishes_within_the_cpu_limit() -> None:
    from schemas.events import MAX_LIST_ITEMS

    assert _bounded_in_a_subprocess("data.xs.filter(x, x == 0).size() > 0", items=MAX_LIST_ITEMS) == "finished"


def test_a_macro_body_cannot_multiply_the_cost_by_the_list_again() -> None:
    assert _bounded_in_a_subprocess("data.xs.map(x, data.xs).size() > 0", items=2_000) in (
        "refused-at-load", "refused-at-parse", "finished")


# --- start-up refusal ---------------------------------------------------------------------------

BAD_CATALOGS = {
    "unknown rule": ('catalog_version: "1"\nbadges:\n  - id: a\n    on: [x]\n    rule: {fly: 3}\n',
                     ["'a'", "rule", ":5"]),
    "bad CEL": ('catalog_version: "1"\nbadges:\n  - id: b\n    on: [x]\n    when: "data.x >"\n'
                "    rule: {count: 1}\n", ["'b'", "when", ":5"]),
    "unknown prerequisite": ('catalog_version: "1"\nbadges:\n  - id: c\n    on: [x]\n    requires: [ghost]\n'
                             "    rule: {count: 1}\n", ["'c'", "requires", "ghost"]),
    "duplicate id": ('catalog_version: "1"\nbadges:\n  - {id: d, on: [x], rule: {count: 1}}\n'
                     "  - {id: d, on: [x], rule: {count: 2}}\n", ["'d'", "id", ":4"]),
    "nested macros": ('catalog_version: "1"\nbadges:\n  - id: e\n    on: [x]\n'
                      '    when: "data.a.all(x, data.b.exists(y, x == y))"\n    rule: {count: 1}\n',
                      ["'e'", "when", "nest"]),
}


@pytest.mark.parametrize("name", sorted(BAD_CATALOGS))
def test_the_worker_refuses_to_start_with_an_invalid_catalog(name: str, tmp_path: Path) -> None:
    text, words = BAD_CATALOGS[name]
    path = tmp_path / "catalog.yaml"
    path.write_text(text)
    # No broker at that address: the catalog must be refused before any connection is tried.
    env = {"PYTHONPATH": str(harness.REPO), "PATH": "/usr/bin:/bin",
           "BADGESTREAM_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "BADGESTREAM_DATA_DIR": str(tmp_path / "worker")}
    result = subprocess.run([sys.executable, "-m", "streams.cli", "worker", "--catalog", str(path)], env=env,
                            cwd=harness.REPO, capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    for word in words:
        assert word in output, f"{word!r} not in:\n{output}"


# --- a changed definition, through the worker ------------------------------------------------------

CATALOG_V1 = """\
catalog_version: "v1"
events:
  quiz_completed: {required: {quiz_id: string, score: int, total_questions: int}}
badges:
  - {id: first_quiz, name: First, on: [quiz_completed], rule: {count: 1}}
  - {id: five_quizzes, name: Five, on: [quiz_completed], rule: {count: 5}}
"""
# five_quizzes now only counts good scores: old progress (any score) must not count towards it.
CATALOG_V2 = CATALOG_V1.replace('catalog_version: "v1"', 'catalog_version: "v2"').replace(
    "{id: five_quizzes, name: Five, on: [quiz_completed], rule: {count: 5}}",
    '{id: five_quizzes, name: Five, on: [quiz_completed], when: "data.score >= 5", rule: {count: 5}}')


def _quiz(n: int, score: int = 9) -> bytes:
    return json.dumps({"event_id": f"q{n}", "type": "quiz_completed", "user_id": "u-7",
                       "occurred_at": f"2026-11-{n:02d}T10:00:00+00:00",
                       "data": {"quiz_id": f"q{n}", "score": score, "total_questions": 10}}).encode()


@pytest.fixture
def stack(kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path) -> Iterator[StackConfig]:
    stack = StackConfig(bootstrap=kafka_bootstrap, suffix=unique_name("catalog"), data_dir=tmp_path,
                        partitions=2).create_topics()
    yield stack
    support.cleanup_topics(stack.bootstrap, stack.suffix)


@pytest.mark.kafka
def test_a_changed_definition_restarts_progress_and_says_so(stack: StackConfig) -> None:
    v1, v2 = stack.data_dir / "v1.yaml", stack.data_dir / "v2.yaml"
    v1.write_text(CATALOG_V1)
    v2.write_text(CATALOG_V2)
    stack.catalog = v1
    worker = harness.worker(stack).start()
    try:
        harness.produce_lines(stack.bootstrap, stack.input_topic, [_quiz(n, score=1) for n in range(1, 5)])
        harness.wait_until(lambda: any(json.loads(m.value())["badge_id"] == "five_quizzes"
                                       and json.loads(m.value())["progress"] == 4
                                       for m in harness.consume(stack.bootstrap, stack.progress_topic, idle=1,
                                                                timeout=5)),
                           timeout=120, what="five_quizzes at 4/5 under v1")
        assert worker.stop() == 0
        stack.catalog = v2
        worker = harness.worker(stack, name="worker-v2").start()
        # One more quiz: under v1 it would complete five_quizzes with 4 old low-score quizzes.
        harness.produce_lines(stack.bootstrap, stack.input_topic, [_quiz(5, score=9)])
        harness.wait_until(lambda: "definition_changed" in worker.log(), timeout=120,
                           what="the worker to report the changed definition")
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{worker.env['BADGESTREAM_WEB_PORT']}/metrics",
                                         timeout=10).read().decode()
        state = json.loads(urllib.request.urlopen(
            f"http://127.0.0.1:{worker.env['BADGESTREAM_WEB_PORT']}/users/u-7/state", timeout=10).read())
        harness.produce_lines(stack.bootstrap, stack.input_topic, [_quiz(n, score=9) for n in range(6, 10)])
        awards = harness.consume(stack.bootstrap, stack.awards_topic, expected=2, idle=4, timeout=120, watch=worker)
    finally:
        worker.stop()
    got = sorted((json.loads(m.value())["badge_id"], json.loads(m.value())["event_id"]) for m in awards)
    # first_quiz from v1 is kept (not re-awarded); five_quizzes counts from the change: q5..q9.
    assert got == [("first_quiz", "q1"), ("five_quizzes", "q9")]
    assert re.search(r'badgestream_evaluator_errors_total\{badge="five_quizzes",kind="definition_changed"\} 1\.0',
                     metrics), metrics
    assert "first_quiz" not in re.findall(r'badge="(\w+)",kind="definition_changed"', metrics)
    assert state["badges"]["five_quizzes"].get("n") == 1, state
    log = worker.log()
    assert re.search(r"five_quizzes.*definition_changed.*progress restarted", log), log[-3000:]
