"""docs/configuration.md lists every setting with the default the code has: docs that match the code."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import SecretStr

from streams.settings import Settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
ROW = re.compile(r"^\| `BADGESTREAM_([A-Z0-9_]+)` \| ([^|]*) \|", re.MULTILINE)


def test_every_setting_is_documented_with_its_default() -> None:
    rows = {name: shown.strip() for name, shown in ROW.findall(DOC.read_text())}
    problems = []
    for name, field in Settings.model_fields.items():
        env = name.upper()
        if env not in rows:
            problems.append(f"BADGESTREAM_{env} is not in docs/configuration.md")
            continue
        default = field.get_default(call_default_factory=True)
        if isinstance(default, SecretStr):
            default = default.get_secret_value()
        if rows[env] in ("unset", "derived"):
            if default not in (None, [], ""):
                problems.append(f"BADGESTREAM_{env}: docs say {rows[env]}, the code {default}")
            continue
        shown = rows[env].strip("`")
        if isinstance(default, Path):
            expected = str(default)
            if not expected.endswith(shown):  # a path under the repository is shown relative to it
                problems.append(f"BADGESTREAM_{env}: docs say {shown}, the code {expected}")
        elif isinstance(default, list):
            if shown != ",".join(default):
                problems.append(f"BADGESTREAM_{env}: docs say {shown}, the code {','.join(default)}")
        elif shown != str(default):
            problems.append(f"BADGESTREAM_{env}: docs say {shown}, the code {default}")
    assert not problems, "\n".join(problems)
