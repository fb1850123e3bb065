"""Each badge's emblem, drawn as a small SVG: its initials on a disc in its tier's colour.

Generated, not designed: every badge gets a recognisable picture without anyone drawing one.
Tiers use their metal's colour; untiered badges get a hue derived from the badge id, so the same
badge always looks the same. Locked badges are drawn in grey.
"""

from __future__ import annotations

import hashlib
import re

from markupsafe import Markup, escape

TIER_COLOURS = {
    "bronze": ("#b0713a", "#fff"),
    "silver": ("#a8b0b8", "#1d2126"),
    "gold": ("#e0b422", "#1d2126"),
    "platinum": ("#7fb7c9", "#1d2126"),
    "diamond": ("#5ec8e5", "#1d2126"),
}
LOCKED = ("#d5d8dc", "#6b7178")


def initials(name: str) -> str:
    """Up to two letters: the first of the first two words ("Quiz Master" -> "QM", "explorer" -> "EX")."""
    words = [w for w in re.split(r"[\s_\-]+", name) if w]
    if not words:
        return "?"
    if len(words) == 1:
        return words[0][:2].upper()
    return (words[0][0] + words[1][0]).upper()


def colours(badge_id: str, tier: str | None, *, locked: bool = False) -> tuple[str, str]:
    """(fill, text) colours for a badge: the tier's metal, or a stable hue from the id."""
    if locked:
        return LOCKED
    if tier and tier.lower() in TIER_COLOURS:
        return TIER_COLOURS[tier.lower()]
    # Blues to purples (160..320): away from the metals, so an untiered badge never looks like a tier.
    hue = 160 + int.from_bytes(hashlib.sha256(badge_id.encode()).digest()[:2], "big") % 160
    return f"hsl({hue}, 55%, 42%)", "#fff"


def emblem_svg(badge_id: str, name: str, tier: str | None = None, *, locked: bool = False, size: int = 64) -> Markup:
    """The emblem as inline SVG markup (escaped, safe to put in a page or serve as image/svg+xml)."""
    fill, ink = colours(badge_id, tier, locked=locked)
    letters = escape(initials(name))
    label = escape(f"{name} ({tier})" if tier else name)
    ring = '<circle cx="32" cy="32" r="26" fill="none" stroke="#fff" stroke-opacity=".55" stroke-width="2"/>'
    return Markup(
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 64 64" width="{size}" height="{size}" '
        f'role="img" aria-label="{label}" class="emblem">'
        f'<circle cx="32" cy="32" r="31" fill="{fill}"/>{ring}'
        f'<text x="32" y="33" text-anchor="middle" dominant-baseline="middle" font-family="system-ui, sans-serif" '
        f'font-size="22" font-weight="700" fill="{ink}">{letters}</text></svg>'
    )
