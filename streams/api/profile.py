"""The profile page's model: the user view (``Views.user``) arranged as cards a person reads, with "how to earn".

One card per badge: the tiers of a tiered badge together, the occurrences of a repeatable one as
"Recruiter x2"; levels as a level bar (points, the next level by name and the points still to go),
not as badges. Locked and in-progress cards say what is still missing, in words: the explanation of
``evaluators.explain`` from the award database alone (no worker call for a public page), without the
CEL text of a ``when`` (the badge's description says that in words).
"""

from __future__ import annotations

from typing import Any

from evaluators.explain import AwardEvidence, ReportedProgress, explain_badge
from schemas.errors import CatalogError
from streams.api.explain import Explainer


def _earned_cards(badges: list[dict[str, Any]], levels: set[str]) -> list[dict[str, Any]]:
    cards: dict[str, dict[str, Any]] = {}
    for award in badges:  # oldest first
        if award["badge_id"] in levels:
            continue
        card = cards.setdefault(award["badge_id"], {
            "badge_id": award["badge_id"], "name": award["name"], "tiers": [], "times": 0, "points": 0})
        if award["tier"] is not None and award["tier"] not in card["tiers"]:
            card["tiers"].append(award["tier"])
        card["times"] = max(card["times"], award["occurrence"])
        card["points"] += award.get("points", 0)
        card["awarded_at"] = award["awarded_at"]  # the newest
        card["rarity"] = award["rarity"]
        card["top_tier"] = card["tiers"][-1] if card["tiers"] else None
    return list(cards.values())


def _progress_cards(progress: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One card per badge: the nearest tier (smallest target) still to go, the further tiers named."""
    by_badge: dict[str, list[dict[str, Any]]] = {}
    for row in progress:
        by_badge.setdefault(row["badge_id"], []).append(row)
    cards = []
    for rows in by_badge.values():
        rows = sorted(rows, key=lambda row: (row["remaining"] <= 0, row["target"]))
        cards.append({**rows[0], "next_tiers": [row["tier"] for row in rows[1:] if row["tier"] is not None]})
    return cards


def _how_to_earn(explainer: Explainer | None, user: dict[str, Any], badge_ids: list[str]) -> dict[str, list[str]]:
    if explainer is None or not badge_ids:
        return {}
    try:
        engine = explainer.engine
    except CatalogError:
        return {}  # the page still shows everything else
    evidence = [AwardEvidence(b["badge_id"], b["tier"], b["occurrence"], b["event_id"], b["awarded_at"],
                              points=b.get("points", 0)) for b in user["badges"]]
    out = {}
    for badge_id in badge_ids:
        reported = [ReportedProgress(p["tier"], p["progress"], p["target"]) for p in user["progress"]
                    if p["badge_id"] == badge_id]
        answer = explain_badge(engine, user["user_id"], badge_id, None, evidence=evidence, reported=reported)
        if answer is not None:
            out[badge_id] = [text for text in answer["missing"] if not text.startswith("only events where")]
    return out


def profile(user: dict[str, Any], explainer: Explainer | None) -> dict[str, Any]:
    """The page's model from ``Views.user``'s answer: earned, in-progress and locked cards, and the level bar."""
    levels: set[str] = set()
    if explainer is not None:
        try:
            levels = set(explainer.engine.catalog.levels_by_id)
        except CatalogError:
            levels = set()
    for known in (user.get("level"), user.get("next_level")):
        if known:
            levels.add(known["id"])
    progress = _progress_cards(user["progress"])
    earn = _how_to_earn(explainer, user, [c["badge_id"] for c in progress] + [b["badge_id"] for b in user["locked"]])
    for card in progress:
        card["how"] = earn.get(card["badge_id"], [])
    locked = [{**badge, "how": earn.get(badge["badge_id"], [])} for badge in user["locked"]]
    level_bar = None
    current, upcoming = user.get("level"), user.get("next_level")
    if current or upcoming:
        floor = current["at"] if current else 0
        level_bar = {"name": current["name"] if current else None, "points": user["points"],
                     "next": upcoming["name"] if upcoming else None,
                     "at": upcoming["at"] if upcoming else None,
                     "remaining": upcoming["remaining"] if upcoming else 0,
                     "value": user["points"] - floor, "span": (upcoming["at"] - floor) if upcoming else 1}
    return {"earned": _earned_cards(user["badges"], levels), "progress": progress, "locked": locked,
            "level": level_bar}
