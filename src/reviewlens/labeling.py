"""Labeling rounds: write batch tables, and merge labeled batches back into the training data.

``merge_labels`` matches reviews by id. It never drops a base row, refuses conflicts (one id with other
labels or another text) unless told which side wins, and reports every change.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .data import Review, ReviewDataset, atomic_write_bytes, atomic_write_text, read_reviews
from .errors import LabelError, ReviewlensError

PREFER = ("base", "labeled")


def write_table(rows: Sequence[dict], path: str | os.PathLike, columns: Sequence[str]) -> Path:
    """Write ``rows`` (dicts) with ``columns`` as CSV, JSONL or Parquet (by extension), atomically."""
    path = Path(path)
    kind = path.suffix.lower()
    clean = [{c: row.get(c) for c in columns} for row in rows]
    try:
        if kind == ".csv":
            buffer = io.StringIO(newline="")
            writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
            writer.writeheader()
            writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in clean)
            atomic_write_text(path, buffer.getvalue())
        elif kind == ".jsonl":
            atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in clean))
        elif kind == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            buffer = io.BytesIO()
            pq.write_table(pa.Table.from_pylist(clean), buffer)
            atomic_write_bytes(path, buffer.getvalue())
        else:
            raise ReviewlensError(f"{path}: unknown file type {kind or '(no extension)'!r}; "
                                  "use .csv, .jsonl or .parquet")
    except OSError as exc:
        raise ReviewlensError(f"cannot write {path}: {exc}") from exc
    return path


def _read_column(path: Path, column: str) -> dict[str, str] | None:
    """``{id: value}`` of one extra column of a CSV/JSONL/Parquet table, or None when it has none."""
    import pandas as pd

    try:
        if path.suffix.lower() == ".csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
        elif path.suffix.lower() == ".jsonl":
            frame = pd.read_json(path, lines=True, dtype=False)
        elif path.suffix.lower() == ".parquet":
            frame = pd.read_parquet(path)
        else:
            return None
    except Exception:  # the batch was readable by read_reviews; a missing extra column is not an error
        return None
    if column not in frame.columns or "id" not in frame.columns:
        return None
    return {str(i).strip(): ("" if v is None or v != v else str(v)) for i, v in zip(frame["id"], frame[column])}


@dataclass
class LabelChange:
    """What the merge did with one review of the labeled batch."""

    id: str
    action: str  # added | updated | kept | filled | unchanged | skipped | conflict
    base: str | None  # the base completion (None: not in base, or unlabeled there)
    labeled: str | None  # the batch completion
    reason: str = ""


@dataclass
class MergeReport:
    """Every change of one merge, and the counts."""

    changes: list[LabelChange] = field(default_factory=list)
    base_rows: int = 0
    output_rows: int = 0
    prefilled: int = 0  # batch rows that carry the model's suggestion (model_labels)
    corrected: int = 0  # ... whose labels the labeler changed

    def counts(self) -> dict[str, int]:
        return dict(Counter(c.action for c in self.changes))

    def summary(self) -> str:
        counts = self.counts()
        parts = [f"{counts.get(a, 0)} {a}" for a in ("added", "updated", "filled", "kept", "unchanged", "skipped")
                 if counts.get(a)]
        text = (f"{self.base_rows} base row(s) + batch: {', '.join(parts) or 'nothing to merge'}; "
                f"{self.output_rows} row(s) written")
        if self.prefilled:
            text += f"; labelers corrected {self.corrected} of {self.prefilled} pre-filled suggestion(s)"
        return text

    def rows(self) -> list[dict]:
        return [{"id": c.id, "action": c.action, "base": c.base, "labeled": c.labeled, "reason": c.reason}
                for c in self.changes]


class MergeConflictError(ReviewlensError):
    """The batch gives an id other labels (or another text) than the base data."""

    def __init__(self, source: str, conflicts: list[LabelChange]) -> None:
        self.conflicts = conflicts
        shown = "\n".join(f"  id {c.id}: {c.reason}" for c in conflicts[:20])
        more = f"\n  ... and {len(conflicts) - 20} more" if len(conflicts) > 20 else ""
        super().__init__(f"{source}: {len(conflicts)} review(s) conflict with the base data; nothing was written. "
                         f"Pass --prefer labeled (the batch wins) or --prefer base (the base wins), or fix the "
                         f"rows:\n{shown}{more}")


def merge_labels(base: ReviewDataset, labeled: ReviewDataset, *, prefer: str | None = None,
                 model_labels: dict[str, str] | None = None) -> tuple[ReviewDataset, MergeReport]:
    """``base`` with the labeled batch merged in by id; raises MergeConflictError unless ``prefer`` says who wins.

    Batch rows without labels are skipped (reported); every base row is kept, in order, and new reviews
    follow in batch order. ``model_labels`` (id -> the model's pre-filled completion) counts corrections.
    """
    if prefer not in (None, *PREFER):
        raise ReviewlensError(f"prefer must be 'base' or 'labeled', not {prefer!r}")
    schema = labeled.schema  # the base's keywords, plus any new ones the batch was allowed to add
    fmt = lambda labels: None if labels is None else schema.format(labels)  # noqa: E731
    report = MergeReport(base_rows=len(base))
    position = {r.id: i for i, r in enumerate(base.reviews)}
    merged = [Review(r.id, r.text, dict(r.labels) if r.labels is not None else None, r.shop, r.category, r.spans)
              for r in base.reviews]
    added: list[Review] = []
    conflicts: list[LabelChange] = []
    for review in labeled.reviews:
        if model_labels is not None and review.id in model_labels and model_labels[review.id].strip():
            report.prefilled += 1
            try:
                suggestion = schema.parse(model_labels[review.id])
            except LabelError:
                suggestion = None
            report.corrected += int(suggestion != (review.labels or {}))
        if review.labels is None:
            report.changes.append(LabelChange(review.id, "skipped", None, None, "no labels in the batch"))
            continue
        if review.id not in position:
            added.append(review)
            report.changes.append(LabelChange(review.id, "added", None, fmt(review.labels)))
            continue
        current = merged[position[review.id]]
        same_text = current.text == review.text
        if same_text and current.labels == review.labels:
            report.changes.append(LabelChange(review.id, "unchanged", fmt(current.labels), fmt(review.labels)))
            continue
        if same_text and current.labels is None:
            current.labels = dict(review.labels)
            report.changes.append(LabelChange(review.id, "filled", None, fmt(review.labels), "unlabeled in base"))
            continue
        what = []
        if current.labels != review.labels:
            what.append(f"labels {fmt(current.labels)!r} in base, {fmt(review.labels)!r} in the batch")
        if not same_text:
            what.append(f"text {current.text[:40]!r} in base, {review.text[:40]!r} in the batch")
        change = LabelChange(review.id, "conflict", fmt(current.labels), fmt(review.labels), "; ".join(what))
        if prefer is None:
            conflicts.append(change)
        elif prefer == "labeled":
            merged[position[review.id]] = Review(review.id, review.text, dict(review.labels),
                                                 review.shop or current.shop, review.category or current.category,
                                                 current.spans if same_text else None)
            change.action = "updated"
            report.changes.append(change)
        else:
            change.action = "kept"
            report.changes.append(change)
    if conflicts:
        raise MergeConflictError(labeled.source, conflicts)
    result = ReviewDataset(merged + added, schema, base.source)
    report.output_rows = len(result)
    return result, report


def merge_label_files(base: str | os.PathLike, labeled: str | os.PathLike, output: str | os.PathLike, *,
                      prefer: str | None = None, allow_new_keywords: bool = False,
                      skip_bad_rows: bool = False) -> MergeReport:
    """Read the base data and a labeled batch, merge them (``merge_labels``) and write ``output`` atomically."""
    base_set = read_reviews(base, skip_bad_rows=skip_bad_rows)
    batch = read_reviews(labeled, schema=base_set.schema, allow_new_keywords=allow_new_keywords,
                         skip_bad_rows=skip_bad_rows)
    result, report = merge_labels(base_set, batch, prefer=prefer, model_labels=_read_column(Path(labeled),
                                                                                           "model_labels"))
    from .data import write_reviews

    write_reviews(result, output)
    return report
