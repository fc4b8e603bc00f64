"""Reading, checking, writing and splitting review datasets.

Formats (``detect_format`` picks one from the extension, and for ``.jsonl`` from the first line):

- ``csv``, ``jsonl``, ``parquet``: columns ``id``, ``text`` (or ``review`` / ``sequence``), ``labels`` (or
  ``completion``: a completion string such as ``"디자인 1, 배송 -1"``; empty or missing for unlabeled
  reviews), and optional ``shop`` and ``category``. CSV files may be UTF-8 (with or without a BOM) or CP949.
- ``nikl``: the NIKL 2022 ABSA jsonl (``id``, ``sentence_form``, ``annotation``); each category
  (``본품#품질``) is a keyword, polarity positive / neutral / negative is level 1 / 0 / -1.
- ``aihub``: the AI Hub ABSA jsonl (``id``, ``text``, ``aspects``); each aspect is a keyword (through
  ``aliases``), polarity as for NIKL.

In the NIKL and AI Hub files one review may mention a keyword several times with different polarity.
The review's level for that keyword is the majority of its mentions; on a tie the lowest level wins
(negative over neutral over positive), because complaints are the rarer and more informative signal.
Each mention is kept in ``Review.spans``. A review whose annotation list is empty is read as unlabeled
(that is how the NIKL test sentences come).

Every row is checked, and every bad row is reported at once in one ``DataError``. With
``skip_bad_rows=True`` the good rows load and the bad ones are written to a rejects file.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import os
import random
import tempfile
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from .errors import DataError, LabelError, ReviewlensError, RowProblem, UnreadableFileError
from .schema import DEFAULT_LEVELS, LabelSchema, order_by_frequency

logger = logging.getLogger(__name__)

FORMATS = ("csv", "jsonl", "parquet", "nikl", "aihub")
MAX_TEXT_CHARS = 20_000
ABSA_LEVELS = (-1, 0, 1)
POLARITY_LEVELS = {"positive": 1, "neutral": 0, "negative": -1}
TEXT_COLUMNS = ("text", "review", "sequence")
LABEL_COLUMNS = ("labels", "completion")
_EXTENSIONS = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}


def is_review_file(path: str | os.PathLike) -> bool:
    """True for an existing file of a type the readers take (CSV, JSONL, Parquet, or .txt for texts)."""
    path = Path(path)
    return (path.suffix.lower() in _EXTENSIONS or path.suffix.lower() == ".txt") and path.is_file()


@dataclass
class Review:
    """One review; ``labels`` is ``{keyword: level}``, or None when the review is unlabeled."""

    id: str
    text: str
    labels: dict[str, int] | None = None
    shop: str | None = None
    category: str | None = None
    spans: list[dict] | None = None  # gold mentions: {"keyword", "level", "text", "start", "end"}


@dataclass
class ReviewDataset:
    """Reviews with the label schema they are labeled in."""

    reviews: list[Review]
    schema: LabelSchema
    source: str = ""

    def __len__(self) -> int:
        return len(self.reviews)

    def __iter__(self) -> Iterator[Review]:
        return iter(self.reviews)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return ReviewDataset(self.reviews[index], self.schema, self.source)
        return self.reviews[index]

    @property
    def texts(self) -> list[str]:
        return [r.text for r in self.reviews]

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.reviews]

    @property
    def labeled(self) -> bool:
        """True when every review has labels."""
        return all(r.labels is not None for r in self.reviews)

    def subset(self, indices: Iterable[int]) -> "ReviewDataset":
        return ReviewDataset([self.reviews[i] for i in indices], self.schema, self.source)

    def completions(self) -> list[str]:
        """Each review's labels as a completion string ("" for unlabeled reviews)."""
        return [self.schema.format(r.labels) if r.labels is not None else "" for r in self.reviews]

    def fingerprint(self) -> str:
        """sha256 of the ids, texts and completions: the data hash recorded in model bundles."""
        digest = hashlib.sha256()
        for review, completion in zip(self.reviews, self.completions()):
            row = [review.id, review.text, completion if review.labels is not None else None]
            digest.update(json.dumps(row, ensure_ascii=False).encode("utf-8", "surrogatepass"))
            digest.update(b"\n")
        return digest.hexdigest()


# -- atomic writes --------------------------------------------------------------------------------------


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same directory and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        mode = _default_mode()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8",
                      errors: str = "strict") -> None:
    """``atomic_write_bytes`` for text."""
    atomic_write_bytes(path, text.encode(encoding, errors))


# -- format detection and decoding --------------------------------------------------------------------


def detect_format(path: str | os.PathLike) -> str:
    """``"csv"``, ``"jsonl"``, ``"parquet"``, ``"nikl"`` or ``"aihub"``, from the extension and first line."""
    path = Path(path)
    kind = _EXTENSIONS.get(path.suffix.lower())
    if kind is None:
        raise ReviewlensError(f"{path}: unknown file type {path.suffix or '(no extension)'!r}; "
                              f"use .csv, .jsonl or .parquet")
    if kind != "jsonl":
        return kind
    try:
        with open(path, "rb") as handle:
            first = b""
            while not first.strip():
                first = handle.readline()
                if not first:
                    break
    except FileNotFoundError:
        raise UnreadableFileError(str(path), "no such file") from None
    except OSError as exc:
        raise UnreadableFileError(str(path), f"cannot read the file: {exc.strerror or exc}") from exc
    try:
        obj = json.loads(first.decode("utf-8-sig", errors="replace"))
    except (ValueError, RecursionError):
        return "jsonl"
    if isinstance(obj, dict):
        if "sentence_form" in obj and "annotation" in obj:
            return "nikl"
        if "aspects" in obj and "text" in obj:
            return "aihub"
    return "jsonl"


def _read_bytes(path: Path, source: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UnreadableFileError(source, "no such file") from None
    except IsADirectoryError:
        raise UnreadableFileError(source, "is a directory, not a file") from None
    except OSError as exc:
        raise UnreadableFileError(source, f"cannot read the file: {exc.strerror or exc}") from exc


def _decode(data: bytes, source: str) -> str:
    """UTF-8 (BOM or not), else CP949, else an error naming the first bad byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as utf8_error:
        try:
            text = data.decode("cp949")
        except UnicodeDecodeError:
            line = data.count(b"\n", 0, utf8_error.start) + 1
            raise UnreadableFileError(
                source, f"not UTF-8 or CP949 text: byte offset {utf8_error.start} (line {line}) cannot be "
                        f"decoded; save the file as UTF-8", field="encoding", row=line) from None
        logger.info("%s: read as CP949 (not UTF-8)", source)
        return text


# -- raw records ----------------------------------------------------------------------------------------


@dataclass
class _Record:
    """One row as read, before checks."""

    row: int
    fields: Any  # what the rejects file shows
    id: Any = None
    text: Any = None
    labels: Any = None  # completion string, mapping, or list of ABSA mentions
    shop: Any = None
    category: Any = None
    spans: Any = None
    names: dict[str, str] = field(default_factory=dict)  # role -> field name in the file
    problems: list[tuple[str, str]] = field(default_factory=list)  # (field, reason)


def _roles(columns: Sequence[str]) -> dict[str, str]:
    """Which column plays which role (id, text, labels, shop, category)."""
    normalized = {}
    for column in columns:
        if isinstance(column, str):
            normalized.setdefault(column.strip().lower(), column)
    roles = {}
    for role, names in (("id", ("id",)), ("text", TEXT_COLUMNS), ("labels", LABEL_COLUMNS),
                        ("shop", ("shop",)), ("category", ("category",))):
        for name in names:
            if name in normalized:
                roles[role] = normalized[name]
                break
    return roles


def _read_csv(path: Path, source: str) -> tuple[list[_Record], dict[str, str]]:
    text = _decode(_read_bytes(path, source), source)
    reader = csv.reader(io.StringIO(text, newline=""))
    last_line = text.rstrip("\r\n").count("\n") + 1
    header: list[str] | None = None
    records: list[_Record] = []
    row = 0
    while True:
        line_before = reader.line_num
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise UnreadableFileError(source, f"not valid CSV near line {reader.line_num}: {exc}",
                                      row=reader.line_num) from None
        if header is None:
            if any(c.strip() for c in cells):
                header = [c.strip() for c in cells]
            continue
        row += 1
        if not any(c.strip() for c in cells):
            continue
        fields_ = dict(zip(header, cells))
        record = _Record(row=row, fields=fields_ if len(cells) == len(header) else cells)
        if len(cells) != len(header):
            hint = " (a comma inside unquoted text? quote the text)" if len(cells) > len(header) else ""
            if any("\n" in c for c in cells) and reader.line_num >= last_line:
                # an unclosed quote: the rest of the file went into one field, later rows with it
                hint = (f" (a quote opened on line {line_before + 1} is never closed: lines {line_before + 1}-"
                        f"{reader.line_num} were read as this row; close it, or double a quote inside text)")
            record.problems.append(("*", f"{len(cells)} fields but the header has {len(header)}{hint}"))
        records.append(record)
    if header is None:
        raise UnreadableFileError(source, "no rows (the file is empty)")
    roles = _roles(header)
    for record in records:
        record.names = roles
        if isinstance(record.fields, dict):
            for role, name in roles.items():
                value = record.fields.get(name)
                setattr(record, role, value if value is None or value.strip() or role == "text" else None)
    return records, roles


def _json_lines(path: Path, source: str) -> Iterator[tuple[int, Any, str | None]]:
    """(line number, parsed object or raw line, error) for each non-blank line."""
    text = _decode(_read_bytes(path, source), source)
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.strip()
        if not line:
            continue
        try:
            yield number, json.loads(line), None
        except (ValueError, RecursionError) as exc:
            yield number, line, f"invalid JSON: {exc}"


def _dict_records(objects: Iterable[tuple[int, Any, str | None]]) -> tuple[list[_Record], dict[str, str]]:
    """Records from JSON objects (one per line) or Parquet rows."""
    records = []
    columns: dict[str, None] = {}
    for number, obj, error in objects:
        record = _Record(row=number, fields=obj)
        if error:
            record.problems.append(("json", error))
        elif not isinstance(obj, dict):
            record.problems.append(("json", f"expected a JSON object, got {type(obj).__name__}"))
        else:
            columns.update(dict.fromkeys(k for k in obj if isinstance(k, str)))
        records.append(record)
    roles = _roles(list(columns))
    for record in records:
        if isinstance(record.fields, dict) and not record.problems:
            row_roles = _roles(list(record.fields))
            record.names = row_roles
            for role, name in row_roles.items():
                setattr(record, role, record.fields[name])
            record.spans = record.fields.get("spans")
    return records, roles


def _read_parquet(path: Path, source: str) -> tuple[list[_Record], dict[str, str]]:
    _read_bytes(path, source)  # the same errors as the other formats for missing files
    try:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        rows = table.to_pylist()
    except Exception as exc:  # pyarrow raises many types for broken files
        raise UnreadableFileError(source, f"not a readable Parquet file: {exc}") from exc
    records, roles = _dict_records((i, row, None) for i, row in enumerate(rows, start=1))
    return records, _roles(table.column_names) or roles


def _absa_records(path: Path, source: str, fmt: str,
                  ignore_labels: bool = False) -> tuple[list[_Record], dict[str, str]]:
    """NIKL (sentence_form, annotation) or AI Hub (text, aspects) lines as records with mentions.

    With ``ignore_labels`` the annotations are not read, so a broken one cannot reject a text of a pool."""
    text_key, labels_key = ("sentence_form", "annotation") if fmt == "nikl" else ("text", "aspects")
    records = []
    for number, obj, error in _json_lines(path, source):
        record = _Record(row=number, fields=obj, names={"text": text_key, "labels": labels_key, "id": "id"})
        records.append(record)
        if error:
            record.problems.append(("json", error))
            continue
        if not isinstance(obj, dict):
            record.problems.append(("json", f"expected a JSON object, got {type(obj).__name__}"))
            continue
        record.id, record.text = obj.get("id"), obj.get(text_key)
        raw = obj.get(labels_key)
        if ignore_labels or raw is None or raw == []:
            continue
        if not isinstance(raw, list):
            record.problems.append((labels_key, f"expected a list, got {type(raw).__name__}"))
            continue
        mentions, problems = (_nikl_mentions if fmt == "nikl" else _aihub_mentions)(raw)
        record.labels = mentions
        record.problems.extend((labels_key, p) for p in problems)
    return records, {"id": "id", "text": text_key, "labels": labels_key}


def _polarity(value: Any) -> int | None:
    return POLARITY_LEVELS.get(value.strip().lower()) if isinstance(value, str) else None


def _nikl_mentions(raw: list) -> tuple[list[dict], list[str]]:
    mentions, problems = [], []
    for i, item in enumerate(raw, start=1):
        ok = isinstance(item, list) and len(item) == 3 and isinstance(item[0], str) and item[0].strip()
        level = _polarity(item[2]) if ok else None
        if not ok or level is None:
            problems.append(f"annotation {i} should be [category, [span, start, end], positive|neutral|negative], "
                            f"got {item!r}")
            continue
        span, start, end = None, None, None
        target = item[1]
        if isinstance(target, list) and len(target) == 3 and isinstance(target[0], str):
            span = target[0]
            if all(isinstance(x, int) and not isinstance(x, bool) for x in target[1:]):
                start, end = target[1], target[2]
        mentions.append({"keyword": item[0], "level": level, "text": span, "start": start, "end": end})
    return mentions, problems


def _aihub_mentions(raw: list) -> tuple[list[dict], list[str]]:
    mentions, problems = [], []
    for i, item in enumerate(raw, start=1):
        ok = isinstance(item, dict) and isinstance(item.get("aspect"), str) and item["aspect"].strip()
        level = _polarity(item.get("polarity")) if ok else None
        if not ok or level is None:
            problems.append(f"aspect {i} should be {{aspect, polarity: positive|neutral|negative, span}}, "
                            f"got {item!r}")
            continue
        span = item.get("span") if isinstance(item.get("span"), str) else None
        mentions.append({"keyword": item["aspect"], "level": level, "text": span, "start": None, "end": None})
    return mentions, problems


# -- checks -----------------------------------------------------------------------------------------------


def _clean_text(text: str) -> str:
    """Drop control characters other than newline and tab."""
    if text.isprintable():
        return text
    return "".join(c for c in text if c in "\n\t" or unicodedata.category(c) != "Cc")


def _unencodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _optional_string(value: Any) -> tuple[str | None, str | None]:
    """(value, problem) for shop and category."""
    if value is None:
        return None, None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None, f"expected a string, got {type(value).__name__}"
    if isinstance(value, float) and value != value:  # NaN from pandas-written files
        return None, None
    value = _clean_text(str(value)).strip()
    if _unencodable(value):
        return None, "contains invalid Unicode (a lone surrogate)"
    return value or None, None


def _locate_spans(text: str, mentions: list[dict], schema: LabelSchema) -> list[dict]:
    """Spans with the keyword folded and character offsets checked, or found from a running position."""
    spans, position = [], 0
    for mention in mentions:
        span, start, end = mention["text"], mention["start"], mention["end"]
        if span is not None:
            span = _clean_text(span)
            if start is None or text[start:end] != span or start < 0:
                found = text.find(span, position) if span else -1
                if found < 0:
                    found = text.find(span) if span else -1
                start, end = (found, found + len(span)) if found >= 0 else (None, None)
            if end is not None:
                position = end
        else:
            start = end = None
        spans.append({"keyword": schema.canonical(mention["keyword"]), "level": mention["level"],
                      "text": span, "start": start, "end": end})
    return spans


def _check_record(record: _Record, schema: LabelSchema, *, fmt: str, allow_new_keywords: bool,
                  require_labels: bool) -> Review | None:
    """The review, or None with ``record.problems`` filled."""
    names = {"id": "id", "text": "text", "labels": "labels", "shop": "shop", "category": "category"}
    names.update(record.names)
    if record.problems:
        return None
    problems = record.problems

    review_id = record.id
    if isinstance(review_id, float) and review_id.is_integer():  # integer ids from pandas-written files
        review_id = int(review_id)
    if review_id is None or (isinstance(review_id, str) and not review_id.strip()):
        review_id = str(record.row)
    elif isinstance(review_id, bool) or not isinstance(review_id, (str, int)):
        problems.append((names["id"], f"expected a string or integer id, got {type(review_id).__name__}"))
    else:
        review_id = str(review_id).strip()
        if _unencodable(review_id):
            problems.append((names["id"], "contains invalid Unicode (a lone surrogate)"))

    text = record.text
    if text is None:
        problems.append((names["text"], "missing text"))
    elif not isinstance(text, str):
        problems.append((names["text"], f"text must be a string, got {type(text).__name__}"))
    else:
        text = _clean_text(text)
        if not text.strip():
            problems.append((names["text"], "empty text"))
        elif len(text) > MAX_TEXT_CHARS:
            problems.append((names["text"], f"too long ({len(text):,} characters, the limit is "
                                            f"{MAX_TEXT_CHARS:,}); split it into several reviews"))
        elif _unencodable(text):
            problems.append((names["text"], "contains invalid Unicode (a lone surrogate)"))

    labels, spans = None, None
    raw = record.labels
    try:
        if fmt in ("nikl", "aihub"):
            if raw:
                labels = schema.validate([(m["keyword"], m["level"]) for m in raw],
                                         allow_new_keywords=allow_new_keywords, resolve_conflicts=True)
                if isinstance(text, str) and not problems:
                    spans = _locate_spans(text, raw, schema)
        elif raw is None or (isinstance(raw, float) and raw != raw):
            pass
        elif isinstance(raw, str):
            if raw.strip():
                labels = schema.parse(raw, allow_new_keywords=allow_new_keywords)
        elif isinstance(raw, Mapping):
            labels = schema.validate(raw, allow_new_keywords=allow_new_keywords)
        else:
            problems.append((names["labels"], f"labels must be a completion string like '디자인 1, 배송 -1', "
                                              f"got {type(raw).__name__}"))
    except LabelError as exc:
        problems.append((names["labels"], str(exc)))
    if labels is None and require_labels and not any(f == names["labels"] for f, _ in problems):
        problems.append((names["labels"], "no labels (this needs labeled reviews)"))

    if fmt not in ("nikl", "aihub") and record.spans is not None:
        if isinstance(record.spans, list) and all(
                isinstance(s, dict) and isinstance(s.get("keyword"), str) for s in record.spans):
            spans = [{**s, "keyword": schema.canonical(s["keyword"])} for s in record.spans]
        else:
            problems.append(("spans", "spans must be a list of {keyword, level, text, start, end} objects"))

    shop, problem = _optional_string(record.shop)
    if problem:
        problems.append((names["shop"], problem))
    category, problem = _optional_string(record.category)
    if problem:
        problems.append((names["category"], problem))
    if problems:
        return None
    return Review(id=review_id, text=text, labels=labels, shop=shop, category=category, spans=spans)


def _write_rejects(path: Path, bad: list[_Record]) -> None:
    lines = []
    for record in bad:
        fields_ = record.fields
        entry = {"row": record.row, "fields": fields_,
                 "reasons": [{"field": f, "reason": r} for f, r in record.problems]}
        lines.append(json.dumps(entry, ensure_ascii=False, default=str))
    atomic_write_text(path, "\n".join(lines) + "\n", errors="backslashreplace")


# -- reading ----------------------------------------------------------------------------------------------


def read_reviews(path: str | os.PathLike, schema: LabelSchema | None = None, *, format: str | None = None,
                 skip_bad_rows: bool = False, allow_new_keywords: bool = False, require_labels: bool = False,
                 rejects_path: str | os.PathLike | None = None, aliases: Mapping[str, str] | None = None,
                 levels: Iterable[int] | None = None, ignore_labels: bool = False) -> ReviewDataset:
    """Read and check a review file; see the module docstring for the formats.

    Without ``schema`` one is inferred: keywords by frequency, levels ``levels`` or -2..2 (-1..1 for
    NIKL and AI Hub). With a ``schema``, unknown keywords are bad rows unless ``allow_new_keywords``
    (then they are appended to a copy of it: the returned dataset's schema). ``aliases`` are added to
    the schema's. Every bad row is reported in one DataError; with ``skip_bad_rows`` the good rows load,
    the bad ones go to ``rejects_path`` (default ``./<file stem>.rejects.jsonl``) and a warning says so.
    With ``ignore_labels`` every review is read as unlabeled (a pool to select from: ids, texts, shop and
    category only; completion strings are not parsed, so unknown keywords do not matter). Anything that goes
    wrong raises a ReviewlensError.
    """
    return _load(path, schema, format=format, skip_bad_rows=skip_bad_rows, allow_new_keywords=allow_new_keywords,
                 require_labels=require_labels, rejects_path=rejects_path, aliases=aliases, levels=levels,
                 ignore_labels=ignore_labels)


def _load(path, schema, *, format, skip_bad_rows, allow_new_keywords, require_labels, rejects_path, aliases,
          levels, ignore_labels: bool = False) -> ReviewDataset:
    """``read_reviews``; ``ignore_labels`` reads texts only (for ``read_texts``)."""
    levels = list(levels) if levels is not None else None
    path = Path(path)
    source = str(path)
    fmt = format or detect_format(path)
    if fmt not in FORMATS:
        raise ReviewlensError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")

    if schema is None:
        default_levels = ABSA_LEVELS if fmt in ("nikl", "aihub") else DEFAULT_LEVELS
        schema = LabelSchema([], list(levels if levels is not None else default_levels), dict(aliases or {}))
        inferring, allow_new_keywords = True, True
    else:
        if levels is not None and sorted(set(levels)) != schema.levels:
            raise ReviewlensError(f"levels {list(levels)} differ from the schema's levels {schema.levels}")
        schema = LabelSchema(list(schema.keywords), list(schema.levels), {**schema.aliases, **(aliases or {})})
        inferring = False
    known = set(schema.keywords)

    if fmt == "csv":
        records, roles = _read_csv(path, source)
    elif fmt == "parquet":
        records, roles = _read_parquet(path, source)
    elif fmt == "jsonl":
        records, roles = _dict_records(_json_lines(path, source))
    else:
        records, roles = _absa_records(path, source, fmt, ignore_labels)
    if not records:
        raise UnreadableFileError(source, "no rows")
    if "text" not in roles and any(not r.problems for r in records):
        raise UnreadableFileError(source, f"no text column (expected one of {', '.join(TEXT_COLUMNS)})",
                                  field="text", row="header")
    if require_labels and "labels" not in roles:
        raise UnreadableFileError(source, f"no labels column (expected one of {', '.join(LABEL_COLUMNS)})",
                                  field="labels", row="header")

    if ignore_labels:
        for record in records:
            record.labels = None

    good: list[tuple[_Record, Review]] = []
    bad: list[_Record] = []
    first_seen: dict[str, tuple[int, Review]] = {}
    duplicates = 0
    for record in records:
        review = _check_record(record, schema, fmt=fmt, allow_new_keywords=allow_new_keywords,
                               require_labels=require_labels)
        if review is not None and review.id in first_seen:
            row, other = first_seen[review.id]
            if (other.text, other.labels) == (review.text, review.labels):
                duplicates += 1
                continue
            what = "text" if other.text != review.text else "labels"
            record.problems.append(("id", f"id {review.id!r} is also on row {row}, with different {what}"))
            review = None
        if review is None:
            bad.append(record)
        else:
            first_seen[review.id] = (record.row, review)
            good.append((record, review))
    if duplicates:
        logger.warning("%s: dropped %d exact duplicate review(s) (same id, text and labels)", source, duplicates)

    if bad and not skip_bad_rows:
        raise DataError(source, [RowProblem(source, r.row, f, why) for r in bad for f, why in r.problems])
    if bad:
        target = Path(rejects_path) if rejects_path is not None else Path.cwd() / f"{path.stem}.rejects.jsonl"
        try:
            _write_rejects(target, bad)
        except OSError as exc:
            raise ReviewlensError(f"cannot write the rejects file {target}: {exc}") from exc
        logger.warning("%s: skipped %d bad row(s) of %d; they are in %s", source, len(bad), len(records), target)
    if not good:
        raise DataError(source, [RowProblem(source, r.row, f, why) for r in bad for f, why in r.problems]
                        or [RowProblem(source, "-", "file", "no rows")])

    reviews = [review for _, review in good]
    counts = Counter(k for review in reviews for k in (review.labels or {}))
    if inferring:
        schema.keywords = order_by_frequency(schema.keywords, counts)
    else:  # keep the given keywords; drop new ones that only rejected rows used
        schema.keywords = [k for k in schema.keywords if k in known or counts[k] > 0]
    schema._sync()
    return ReviewDataset(reviews, schema, source)


def read_texts(path: str | os.PathLike, *, skip_bad_rows: bool = False,
               rejects_path: str | os.PathLike | None = None) -> tuple[list[str] | None, list[str]]:
    """``(ids, texts)`` of reviews to analyze; labels, if the file has any, are ignored.

    ``.txt`` files hold one review a line (ids are then None); other files are read like ``read_reviews``.
    """
    path = Path(path)
    if path.suffix.lower() != ".txt":
        dataset = _load(path, None, format=None, skip_bad_rows=skip_bad_rows, allow_new_keywords=True,
                        require_labels=False, rejects_path=rejects_path, aliases=None, levels=None, ignore_labels=True)
        return dataset.ids, dataset.texts
    source = str(path)
    texts, problems = [], []
    for number, line in enumerate(_decode(_read_bytes(path, source), source).split("\n"), start=1):
        text = _clean_text(line)
        if not text.strip():
            continue
        if len(text) > MAX_TEXT_CHARS:
            problems.append(RowProblem(source, number, "text", f"too long ({len(text):,} characters, the limit is "
                                                               f"{MAX_TEXT_CHARS:,}); split it into several reviews"))
        elif _unencodable(text):
            problems.append(RowProblem(source, number, "text", "contains invalid Unicode (a lone surrogate)"))
        else:
            texts.append(text)
    if problems and not skip_bad_rows:
        raise DataError(source, problems)
    if problems:
        logger.warning("%s: skipped %d bad line(s)", source, len(problems))
    if not texts:
        raise UnreadableFileError(source, "no rows")
    return None, texts


# -- writing ----------------------------------------------------------------------------------------------


def write_reviews(dataset_or_reviews: ReviewDataset | Iterable[Review], path: str | os.PathLike, *,
                  schema: LabelSchema | None = None) -> None:
    """Write reviews as CSV, JSONL or Parquet (by extension), atomically.

    Columns: id, text, labels (a completion string; empty for unlabeled reviews), shop, category;
    JSONL also keeps ``spans`` when a review has them.
    """
    path = Path(path)
    kind = _EXTENSIONS.get(path.suffix.lower())
    if kind is None:
        raise ReviewlensError(f"{path}: unknown file type {path.suffix or '(no extension)'!r}; "
                              f"use .csv, .jsonl or .parquet")
    if isinstance(dataset_or_reviews, ReviewDataset):
        schema = schema or dataset_or_reviews.schema
        reviews = dataset_or_reviews.reviews
    else:
        reviews = list(dataset_or_reviews)

    def completion(review: Review) -> str | None:
        if review.labels is None:
            return None
        return schema.format(review.labels) if schema else LabelSchema.format_items(review.labels.items())

    rows = [{"id": r.id, "text": r.text, "labels": completion(r), "shop": r.shop, "category": r.category}
            for r in reviews]
    try:
        if kind == "csv":
            buffer = io.StringIO(newline="")
            writer = csv.DictWriter(buffer, fieldnames=["id", "text", "labels", "shop", "category"],
                                    lineterminator="\n")
            writer.writeheader()
            writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
            atomic_write_text(path, buffer.getvalue())
        elif kind == "jsonl":
            lines = []
            for row, review in zip(rows, reviews):
                if review.spans is not None:
                    row["spans"] = review.spans
                lines.append(json.dumps(row, ensure_ascii=False))
            atomic_write_text(path, "".join(line + "\n" for line in lines))
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.table({name: pa.array([row[name] for row in rows], type=pa.string())
                              for name in ("id", "text", "labels", "shop", "category")})
            buffer = io.BytesIO()
            pq.write_table(table, buffer)
            atomic_write_bytes(path, buffer.getvalue())
    except OSError as exc:
        raise ReviewlensError(f"cannot write {path}: {exc}") from exc


# -- splitting --------------------------------------------------------------------------------------------


def train_validation_split(dataset: ReviewDataset, validation_size: float = 0.1,
                           seed: int = 42) -> tuple[ReviewDataset, ReviewDataset]:
    """A deterministic split, stratified on keywords (a light iterative stratification).

    The rarest keyword is handled first: each of its reviews goes to the part that still wants most
    of that keyword (then the part that wants most reviews; then a seeded coin). Every keyword on two
    or more reviews is wanted at least once in each part, and a final pass moves one review when a
    keyword would otherwise be missing from a part. Reviews keep their order within each part.
    """
    n = len(dataset)
    if not 0 < validation_size < 1:
        raise ReviewlensError(f"validation_size must be between 0 and 1, got {validation_size}")
    if n < 2:
        raise ReviewlensError(f"cannot split {n} review(s) into training and validation parts")
    n_val = min(max(1, round(n * validation_size)), n - 1)
    rng = random.Random(seed)
    order = list(range(n))
    rng.shuffle(order)
    keyword_sets = [set(r.labels or {}) for r in dataset.reviews]
    counts = Counter(k for s in keyword_sets for k in s)
    rank = {k: i for i, k in enumerate(dataset.schema.keywords)}
    keywords = sorted(counts, key=lambda k: (rank.get(k, len(rank)), k))

    # want[0] is training, want[1] validation
    want: list[dict[str, float]] = [{}, {}]
    for k in keywords:
        val = counts[k] * validation_size
        if counts[k] >= 2:
            val = min(max(1.0, val), counts[k] - 1.0)
        want[1][k], want[0][k] = val, counts[k] - val
    total = [float(n - n_val), float(n_val)]
    part: list[int | None] = [None] * n
    remaining = dict(counts)
    by_keyword = {k: [i for i in order if k in keyword_sets[i]] for k in keywords}

    def assign(i: int, side: int) -> None:
        part[i] = side
        total[side] -= 1
        for k in keyword_sets[i]:
            want[side][k] -= 1
            remaining[k] -= 1

    def choose(keyword: str | None) -> int:
        if keyword is not None and want[0][keyword] != want[1][keyword]:
            return 0 if want[0][keyword] > want[1][keyword] else 1
        if total[0] != total[1]:
            return 0 if total[0] > total[1] else 1
        return rng.randrange(2)

    while True:
        live = [k for k in keywords if remaining[k] > 0]
        if not live:
            break
        keyword = min(live, key=lambda k: remaining[k])
        for i in by_keyword[keyword]:
            if part[i] is None:
                assign(i, choose(keyword))
    for i in order:
        if part[i] is None:
            assign(i, choose(None))

    # a keyword on 2+ reviews missing from one part: move a review over if that empties nothing else
    size = [part.count(0), part.count(1)]
    per_side = {k: [sum(part[i] == side for i in by_keyword[k]) for side in (0, 1)] for k in keywords}
    for k in sorted(keywords, key=lambda k: counts[k]):
        for side in (0, 1):
            other = 1 - side
            if counts[k] < 2 or per_side[k][side] > 0:
                continue
            for i in by_keyword[k]:
                if size[other] > 1 and all(counts[k2] < 2 or per_side[k2][other] > 1 for k2 in keyword_sets[i]):
                    part[i] = side
                    size[side] += 1
                    size[other] -= 1
                    for k2 in keyword_sets[i]:
                        per_side[k2][side] += 1
                        per_side[k2][other] -= 1
                    break
    for side in (0, 1):  # never an empty part
        if side not in part:
            part[next(i for i in reversed(order) if part[i] == 1 - side)] = side

    train = dataset.subset([i for i in range(n) if part[i] == 0])
    validation = dataset.subset([i for i in range(n) if part[i] == 1])
    return train, validation
