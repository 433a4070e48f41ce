"""JSON-lines files that survive a kill at any moment: whole lines appended in one
write, and a partial last line (a kill mid-write) dropped on read and cut before the
next append."""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def read_rows(path: Path | None) -> list[dict]:
    """The complete lines of a JSON-lines file (none if it does not exist)."""
    if path is None or not Path(path).exists():
        return []
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("dropping a partial line of %s (a killed run)", path)
    return rows


def append_rows(path: Path | None, rows: list[dict]) -> None:
    """Append whole lines in one write; a partial last line left by a kill goes first."""
    if path is None or not rows:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.stat().st_size:
        with path.open("rb") as file:
            file.seek(-1, 2)
            whole = file.read(1) == b"\n"
        if not whole:  # rare: read it all once to cut the partial line
            data = path.read_bytes()
            path.write_bytes(data[: data.rfind(b"\n") + 1])
    lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    with path.open("a", encoding="utf-8") as file:  # one write: a kill leaves at most one partial line
        file.write(lines)
        file.flush()
