"""The label schema: which keywords exist, which sentiment levels, and how completion strings read.

A review's labels are written as a *completion string*, one ``<keyword> <level>`` item per keyword::

    디자인 1, 배송 -1
    디자인1, 배송-1          (spaces are optional)
    스타일 1, 만족도 2, 신축성 2
    ""                       (a review that mentions no keyword)

Items are separated by ``,`` ``，`` ``;`` ``；`` or newlines. The level is the trailing signed integer of each
item (``+``, ``-`` and the minus sign ``−`` are accepted), so keywords may contain spaces or ``/``
(``제품 전체#일반 1``, ``치수/사이즈 1``).
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from .errors import LabelError

DEFAULT_LEVELS = (-2, -1, 0, 1, 2)

_SEPARATORS = re.compile(r"[,，;；\r\n]")
_ITEM = re.compile(r"^(?P<keyword>.*?)\s*(?P<sign>[+\-\u2212])?\s*(?P<number>\d+)$", re.DOTALL)
_DECIMAL = re.compile(r"\d\.\d+$")
_NUMBER_INSIDE = re.compile(r"[+\-\u2212]?\d+\s")
_SIGN_CHARS = "+-\u2212"


def _keyword_problem(keyword: Any) -> str | None:
    """Why ``keyword`` cannot be a keyword (it would not survive format -> parse), or None."""
    if not isinstance(keyword, str):
        return f"a keyword must be a string, not {type(keyword).__name__}"
    if not keyword.strip():
        return "a keyword cannot be empty"
    if keyword != keyword.strip():
        return f"keyword {keyword!r} has leading or trailing spaces"
    if _SEPARATORS.search(keyword):
        return f"keyword {keyword!r} contains a separator (, ， ; or a newline)"
    if keyword[-1] in _SIGN_CHARS:
        return f"keyword {keyword!r} ends with a sign character"
    return None


def _show_levels(levels: list[int]) -> str:
    if len(levels) > 1 and levels == list(range(levels[0], levels[-1] + 1)):
        return f"{levels[0]}..{levels[-1]}"
    return ", ".join(str(level) for level in levels)


@dataclass
class LabelSchema:
    """Keywords (the keyword classifier's outputs, in order) and sentiment levels (ascending).

    ``aliases`` maps alternative names to canonical keywords (``"치수/사이즈" -> "사이즈"``,
    ``"착화감" -> "착용감"``); they are folded before any check.

    Conflicts: ``parse`` of one completion string raises when the same keyword (after alias folding)
    is given two different levels; the same level twice is fine. When a data file has several
    *mentions* of one keyword in one review with different polarity (NIKL and AI Hub spans, or two
    aliases folding to one keyword), ``reviewlens.data`` resolves them: the majority of the mentions
    wins, and on a tie the lowest level wins (negative over neutral over positive), because complaints
    are the rarer and more informative signal.
    """

    keywords: list[str]
    levels: list[int] = field(default_factory=lambda: list(DEFAULT_LEVELS))
    aliases: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.keywords, str) or not isinstance(self.keywords, Iterable):
            raise LabelError("keywords must be a list of strings")
        self.keywords = list(self.keywords)
        for keyword in self.keywords:
            problem = _keyword_problem(keyword)
            if problem:
                raise LabelError(problem)
        duplicates = [k for k, n in Counter(self.keywords).items() if n > 1]
        if duplicates:
            raise LabelError(f"keywords listed twice: {', '.join(duplicates)}")

        if isinstance(self.levels, (str, bytes)) or not isinstance(self.levels, Iterable):
            raise LabelError("levels must be a list of integers")
        levels = list(self.levels)
        if not levels or any(isinstance(v, bool) or not isinstance(v, int) for v in levels):
            raise LabelError(f"levels must be a non-empty list of integers, got {levels!r}")
        self.levels = sorted(set(levels))

        if not isinstance(self.aliases, Mapping):
            raise LabelError("aliases must be a mapping of alias -> keyword")
        self.aliases = dict(self.aliases)
        for alias, target in self.aliases.items():
            if not isinstance(alias, str) or not alias.strip():
                raise LabelError(f"alias {alias!r} must be a non-empty string")
            problem = _keyword_problem(target)
            if problem:
                raise LabelError(f"alias {alias!r}: {problem}")
            if alias.strip() in self.keywords and alias.strip() != target:
                raise LabelError(f"{alias!r} is both a keyword and an alias of {target!r}")
        self._index = {k: i for i, k in enumerate(self.keywords)}

    # -- lookups ----------------------------------------------------------------------------------

    @property
    def num_keywords(self) -> int:
        return len(self.keywords)

    @property
    def num_levels(self) -> int:
        return len(self.levels)

    def canonical(self, keyword: str) -> str:
        """The keyword with surrounding spaces stripped and its alias resolved."""
        keyword = keyword.strip()
        return self.aliases.get(keyword, keyword).strip()

    def keyword_index(self, keyword: str) -> int:
        """The classifier output index of ``keyword`` (aliases resolved)."""
        self._sync()
        canonical = self.canonical(keyword) if isinstance(keyword, str) else keyword
        try:
            return self._index[canonical]
        except (KeyError, TypeError):
            raise LabelError(self._unknown(canonical)) from None

    def level_index(self, level: int) -> int:
        """The index of ``level`` in ``levels``."""
        try:
            return self.levels.index(level)
        except ValueError:
            raise LabelError(f"level {level!r} is not one of the levels {_show_levels(self.levels)}") from None

    def level_names(self) -> list[str]:
        """The levels as strings, e.g. ``["-2", "-1", "0", "1", "2"]``."""
        return [str(level) for level in self.levels]

    # -- reading and writing completions ------------------------------------------------------------

    def parse(self, completion: str, *, row: int | str | None = None, source: str | None = None,
              allow_new_keywords: bool = False) -> dict[str, int]:
        """Read a completion string into ``{keyword: level}``, in the schema's keyword order.

        Raises LabelError (naming ``row``, ``source`` and the text) listing every problem: an item
        without a level, an unknown keyword (unless ``allow_new_keywords``: then it is appended to
        ``keywords``, only when the whole string is valid), a level outside ``levels``, or one keyword
        with two different levels.
        """
        if not isinstance(completion, str):
            raise LabelError(f"labels must be a completion string like '디자인 1, 배송 -1', "
                             f"not {type(completion).__name__}", row=row, source=source)
        problems: list[str] = []
        pairs: list[tuple[str, int]] = []
        for item in _SEPARATORS.split(completion):
            item = item.strip()
            if not item:
                continue
            if _DECIMAL.search(item):
                problems.append(f"{item!r}: the level must be a whole number")
                continue
            match = _ITEM.match(item)
            if match is None:
                problems.append(f"{item!r} has no level (write '<keyword> <level>', e.g. '디자인 1')")
                continue
            keyword = match.group("keyword").strip()
            if not keyword:
                problems.append(f"{item!r} has no keyword")
                continue
            level = int(match.group("number"))
            if match.group("sign") in ("-", "\u2212"):
                level = -level
            pairs.append((keyword, level))
        labels = self._check(pairs, problems, allow_new_keywords=allow_new_keywords, conflicts="raise")
        if problems:
            raise LabelError("; ".join(problems), text=completion, row=row, source=source)
        return labels

    def validate(self, labels: Mapping[str, int] | Iterable[tuple[str, int]], *, row: int | str | None = None,
                 source: str | None = None, allow_new_keywords: bool = False,
                 resolve_conflicts: bool = False) -> dict[str, int]:
        """Check ``{keyword: level}`` (or ``(keyword, level)`` mentions) like ``parse`` checks a string.

        With ``resolve_conflicts`` one keyword with several levels is resolved by the majority of its
        mentions, ties going to the lowest level (see the class docstring) instead of raising.
        """
        pairs = list(labels.items()) if isinstance(labels, Mapping) else list(labels)
        problems: list[str] = []
        checked = []
        for pair in pairs:
            keyword, level = pair
            if not isinstance(keyword, str) or not keyword.strip():
                problems.append(f"keyword {keyword!r} must be a non-empty string")
            elif isinstance(level, bool) or not isinstance(level, int):
                problems.append(f"level {level!r} of {keyword!r} must be an integer")
            else:
                checked.append((keyword.strip(), level))
        result = self._check(checked, problems, allow_new_keywords=allow_new_keywords,
                             conflicts="resolve" if resolve_conflicts else "raise")
        if problems:
            shown = self.format_items(pairs) if all(isinstance(k, str) for k, _ in pairs) else repr(pairs)
            raise LabelError("; ".join(problems), text=shown, row=row, source=source)
        return result

    def format(self, labels: Mapping[str, int]) -> str:
        """Write ``{keyword: level}`` as ``"디자인 1, 배송 -1"`` in the schema's keyword order."""
        return self.format_items(self.validate(labels).items())

    @staticmethod
    def format_items(pairs: Iterable[tuple[str, int]]) -> str:
        """Write ``(keyword, level)`` pairs as they come, without checks."""
        return ", ".join(f"{keyword} {level}" for keyword, level in pairs)

    def _check(self, pairs: list[tuple[str, int]], problems: list[str], *, allow_new_keywords: bool,
               conflicts: str) -> dict[str, int]:
        """Fold aliases, check keywords and levels, and apply the conflict rule; append to problems."""
        self._sync()
        mentions: dict[str, list[int]] = {}
        for keyword, level in pairs:
            mentions.setdefault(self.canonical(keyword), []).append(level)
        new: list[str] = []
        resolved: dict[str, int] = {}
        for keyword, levels in mentions.items():
            if keyword not in self._index:
                problem = _keyword_problem(keyword)
                if allow_new_keywords and problem is None:
                    new.append(keyword)
                elif allow_new_keywords:
                    problems.append(problem)
                    continue
                else:
                    problems.append(self._unknown(keyword))
                    continue
            distinct = sorted(set(levels))
            if len(distinct) > 1 and conflicts == "raise":
                problems.append(f"{keyword!r} has two different levels ({', '.join(map(str, distinct))})")
                continue
            level = resolve_levels(levels)
            if level not in self.levels:
                problems.append(f"level {level} of {keyword!r} is outside the levels {_show_levels(self.levels)}")
                continue
            resolved[keyword] = level
        if problems:
            return {}
        for keyword in new:
            self.keywords.append(keyword)
            self._index[keyword] = len(self.keywords) - 1
        return {k: resolved[k] for k in sorted(resolved, key=self._index.__getitem__)}

    def _sync(self) -> None:
        """Rebuild the index if ``keywords`` was changed in place."""
        if len(self._index) != len(self.keywords) or any(
                self._index.get(k) != i for i, k in enumerate(self.keywords)):
            self._index = {k: i for i, k in enumerate(self.keywords)}

    def _unknown(self, keyword: Any) -> str:
        message = f"unknown keyword {keyword!r}"
        if isinstance(keyword, str):
            close = difflib.get_close_matches(keyword, self.keywords, n=1)
            if _NUMBER_INSIDE.search(keyword):
                message += " (a comma missing between two items?)"
            elif close:
                message += f" (did you mean {close[0]!r}?)"
        shown = ", ".join(self.keywords[:20]) + (", ..." if len(self.keywords) > 20 else "")
        return f"{message}; known keywords: {shown or '(none)'}"

    # -- persistence ----------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {"keywords": list(self.keywords), "levels": list(self.levels), "aliases": dict(self.aliases)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "LabelSchema":
        if not isinstance(d, Mapping) or "keywords" not in d:
            raise LabelError(f"a label schema needs at least 'keywords', got {d!r}")
        return cls(keywords=d["keywords"], levels=d.get("levels", list(DEFAULT_LEVELS)),
                   aliases=d.get("aliases") or {})

    @classmethod
    def infer(cls, completions: Iterable[str], levels: Iterable[int] = DEFAULT_LEVELS, *,
              aliases: Mapping[str, str] | None = None) -> "LabelSchema":
        """A schema with every keyword seen in ``completions``, most frequent first, then first seen."""
        schema = cls([], list(levels), dict(aliases or {}))
        counts: Counter[str] = Counter()
        for row, completion in enumerate(completions, start=1):
            counts.update(list(schema.parse(completion, row=row, allow_new_keywords=True)))
        schema.keywords = order_by_frequency(schema.keywords, counts)
        schema._sync()
        return schema


def resolve_levels(levels: list[int]) -> int:
    """One level from several mentions: the majority, ties going to the lowest level."""
    counts = Counter(levels)
    return min(counts, key=lambda level: (-counts[level], level))


def order_by_frequency(keywords: list[str], counts: Mapping[str, int]) -> list[str]:
    """Keywords with a count above zero, most frequent first, ties in their given order."""
    order = {k: i for i, k in enumerate(keywords)}
    return sorted((k for k in keywords if counts.get(k, 0) > 0), key=lambda k: (-counts[k], order[k]))
