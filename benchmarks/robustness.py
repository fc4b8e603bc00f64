"""What reviewlens does with broken input: one row per case, read strictly and with --skip-bad-rows.

    python benchmarks/robustness.py                       # readers, training resume, plus analysis with models/default
    python benchmarks/robustness.py --model path/to/bundle
    python benchmarks/robustness.py --no-model            # readers and training checks only

Each case is the shipped example file (examples/fashion_reviews.csv) with one kind of damage, or a small file
of its own. Columns: how the file is read, what the default (strict) read did, what a ``--skip-bad-rows`` read did, the rows it kept
and the rows it set aside in the rejects file. Training files are read as ``reviewlens train`` reads them
(labels required), analysis files as ``reviewlens analyze`` reads them (labels ignored). With a model, the
cases that load are also analysed and the model-level cases (a bundle of another schema) run.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "fashion_reviews.csv"
DEFAULT_MODEL = ROOT / "models" / "default"


@dataclass
class Case:
    name: str
    file: str  # file name, its extension decides the format
    content: bytes | Callable[[Path], None]
    mode: str = "train"  # train: read_reviews(require_labels=True); validation: the same with the example file's
    #                      schema (as `train --validation-data` and `evaluate` read); analyze: read_texts


def example_rows() -> tuple[list[str], list[list[str]]]:
    with open(EXAMPLES, encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


def to_csv(header: list[str], rows: list[list[str]], encoding: str = "utf-8") -> bytes:
    buffer = io.StringIO(newline="")
    csv.writer(buffer, lineterminator="\n").writerows([header, *rows])
    return buffer.getvalue().encode(encoding)


def cases() -> list[Case]:
    header, rows = example_rows()
    h = {name: i for i, name in enumerate(header)}

    def damaged(row: int, column: str, value: str) -> list[list[str]]:
        out = [list(r) for r in rows]
        out[row][h[column]] = value
        return out

    clean = to_csv(header, rows)
    text_lines = clean.decode().split("\n")
    unclosed = "\n".join(text_lines[:5] + [text_lines[5].replace(",", ',"', 1)] + text_lines[6:]).encode()
    comma = "\n".join(text_lines[:5] + [text_lines[5].replace(",", ",여기 쉼표, 하나 ", 1)] + text_lines[6:]).encode()
    no_labels = to_csv([c for c in header if c != "labels"], [[v for c, v in zip(header, r) if c != "labels"]
                                                              for r in rows])
    dup = [list(r) for r in rows] + [list(rows[3])]
    dup[-1][h["labels"]] = "배송 -1" if "배송 -1" not in rows[3][h["labels"]] else "배송 1"
    jsonl = [json.dumps({"id": r[h["id"]], "text": r[h["text"]], "labels": r[h["labels"]]}, ensure_ascii=False)
             for r in rows]
    null_text = "\n".join(jsonl[:7] + [json.dumps({"id": "n1", "text": None, "labels": "배송 1"})] + jsonl[7:]) + "\n"
    bad_json = "\n".join(jsonl[:4] + ['{"id": "j1", "text": "따옴표가 없는 키 ', "[1, 2, 3]"] + jsonl[4:]) + "\n"
    mixed = ["사이즈 good, 색감 ですね 최고", "배송 빨라요 مرحبا שלום Привет", "핏이 예뻐요 \u200f\u202e거꾸로\u202c 끝",
             "가격 ok 👍🏽 👨‍👩‍👧 e\u0301 \u0915\u094d\u0937"]
    control = [list(r) for r in rows]
    control[2][h["text"]] = "좋\x00아\x07요\x1b끝\x7f"
    control[9][h["text"]] = "줄\n바꿈\t탭"

    return [
        Case("clean UTF-8 CSV (baseline)", "clean.csv", clean),
        Case("CP949 CSV", "cp949.csv", to_csv(header, rows, "cp949")),
        Case("UTF-8 CSV with a BOM", "bom.csv", b"\xef\xbb\xbf" + clean),
        Case("bytes neither UTF-8 nor CP949", "latin.csv", clean[:200] + b"\xff\xfe\xfa\n" + clean[200:]),
        Case("broken quoting: unclosed quote", "unclosed.csv", unclosed),
        Case("broken quoting: unquoted comma", "comma.csv", comma),
        Case("missing text column", "notext.csv", clean.replace(b"id,text,", b"id,body,", 1)),
        Case("missing labels column (training)", "nolabels.csv", no_labels),
        Case("empty file", "empty.csv", b""),
        Case("header only", "header.csv", (",".join(header) + "\n").encode()),
        Case("unknown keyword in labels", "unknown.csv", to_csv(header, damaged(4, "labels", "배숑 -1")),
             "validation"),
        Case("unknown level in labels", "level.csv", to_csv(header, damaged(6, "labels", "디자인 7"))),
        Case("label without a level", "nolevel.csv", to_csv(header, damaged(8, "labels", "디자인 좋음"))),
        Case("duplicated id, different labels", "dup.csv", to_csv(header, dup)),
        Case("null text (JSONL)", "null.jsonl", null_text.encode()),
        Case("invalid JSON lines", "badjson.jsonl", bad_json.encode()),
        Case("50,000-character review", "long.csv",
             to_csv(header, damaged(10, "text", ("배송이 빨라요 색이 예뻐요 " * 4000)[:50_000]))),
        Case("control characters", "control.csv", to_csv(header, control), "analyze"),
        Case("mixed scripts", "mixed.csv", to_csv(["id", "text"], [[f"m{i}", t] for i, t in enumerate(mixed)]),
             "analyze"),
        Case("emoji-only reviews", "emoji.csv",
             to_csv(["id", "text"], [["e1", "😀😀👍"], ["e2", "🔥"], ["e3", "❤️❤️ ✨"]]), "analyze"),
        Case("not a Parquet file", "broken.parquet", b"PAR1 this is not parquet"),
    ]


def short(exc: Exception, width: int = 90) -> str:
    """The error type and its most specific line (the first row problem when there is one)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    line = lines[1] if len(lines) > 1 and "bad row(s)" in lines[0] else lines[0] if lines else ""
    for prefix in (str(getattr(exc, "source", "")) + " ", str(getattr(exc, "source", "")) + ": "):
        if prefix.strip() and line.startswith(prefix):
            line = line[len(prefix):]
    text = f"{type(exc).__name__}: {line}"
    return text if len(text) <= width else text[:width - 1] + "…"


def read(case: Case, path: Path, skip: bool, rejects: Path):
    from reviewlens.data import read_reviews, read_texts

    if case.mode == "analyze":
        ids, texts = read_texts(path, skip_bad_rows=skip, rejects_path=rejects)
        return texts
    schema = read_reviews(EXAMPLES).schema if case.mode == "validation" else None
    return read_reviews(path, schema, require_labels=True, skip_bad_rows=skip, rejects_path=rejects).texts


def run_case(case: Case, workdir: Path, analyzer) -> tuple[str, str, str, str, str]:
    from reviewlens.errors import ReviewlensError

    path = workdir / case.file
    path.write_bytes(case.content)
    rejects = workdir / f"{path.stem}.rejects.jsonl"
    try:
        texts = read(case, path, False, rejects)
        strict = f"loaded {len(texts)} rows"
    except ReviewlensError as exc:
        strict = short(exc)
    except Exception as exc:  # anything else is a bug the table must show
        strict = f"BUG {type(exc).__name__}: {exc}"
    rejects.unlink(missing_ok=True)
    kept = rejected = "-"
    analysed = ""
    try:
        texts = read(case, path, True, rejects)
        kept = str(len(texts))
        rejected = str(len(rejects.read_text(encoding="utf-8").splitlines())) if rejects.exists() else "0"
        skip = "loaded" + (f", {rejected} set aside" if rejected != "0" else "")
        if analyzer is not None:
            results = analyzer.analyze(texts, highlights=False)
            analysed = f"{sum(bool(r.keywords) for r in results)}/{len(results)} with keywords"
    except ReviewlensError as exc:
        skip = short(exc, 60)
        kept, rejected = "0", "whole file"
    except Exception as exc:
        skip = f"BUG {type(exc).__name__}: {exc}"
    return strict, skip, kept, rejected, analysed


def model_cases(model: Path, workdir: Path) -> list[tuple[str, str]]:
    """(case, what happened) for a bundle whose schema does not match the data or its own weights."""
    from reviewlens.analyzer import ReviewAnalyzer
    from reviewlens.errors import ReviewlensError
    from reviewlens.evaluation import evaluate_bundle

    out = []
    other = workdir / "nikl-like.csv"
    other.write_text("id,text,labels\n1,배터리가 오래가요,본품#품질 1\n2,브랜드가 좋아요,브랜드#일반 1\n", encoding="utf-8")
    try:
        result = evaluate_bundle(model, other)
        out.append(("evaluate: data of another schema", f"evaluated, no error: pipeline F1 {result.pipeline['f1']:.2f}"))
    except ReviewlensError as exc:
        out.append(("evaluate: data of another schema", short(exc)))
    except Exception as exc:
        out.append(("evaluate: data of another schema", f"BUG {type(exc).__name__}: {exc}"))
    copy = workdir / "mismatched-bundle"
    shutil.copytree(model, copy)
    manifest = json.loads((copy / "reviewlens.json").read_text(encoding="utf-8"))
    manifest["schema"]["keywords"] = manifest["schema"]["keywords"][:3]
    (copy / "reviewlens.json").write_text(json.dumps(manifest, ensure_ascii=False), encoding="utf-8")
    try:
        ReviewAnalyzer.from_pretrained(copy).analyze(["옷은 예쁘지만 배송은 늦어요"], highlights=False)
        out.append(("bundle manifest of another schema than its weights", "analysed, no error"))
    except ReviewlensError as exc:
        out.append(("bundle manifest of another schema than its weights", short(exc)))
    except Exception as exc:
        out.append(("bundle manifest of another schema than its weights", f"BUG {type(exc).__name__}: {exc}"))
    return out


def resume_case(workdir: Path) -> tuple[str, str]:
    """``train --resume`` onto checkpoints made for another schema (fails before any model is loaded)."""
    from reviewlens.data import read_reviews, train_validation_split
    from reviewlens.errors import ReviewlensError
    from reviewlens.training import TrainConfig, _prepare_checkpoints, _run_info, train

    config = TrainConfig(base="unused-base", checkpoint_dir=str(workdir / "ck"))
    first = read_reviews(EXAMPLES)
    part, held_out = train_validation_split(first, config.validation_size, config.seed)
    _prepare_checkpoints(Path(config.checkpoint_dir), _run_info(part, held_out, config), resume=False)
    other = workdir / "other.csv"
    other.write_text("id,text,labels\n1,배송이 빨라요,배송 1\n2,색이 예뻐요,색상 2\n3,가격이 싸요,가격 1\n",
                     encoding="utf-8")
    try:
        train(read_reviews(other), workdir / "model", config, resume=True)
        return "train --resume: checkpoints of another schema", "trained, no error"
    except ReviewlensError as exc:
        return "train --resume: checkpoints of another schema", short(exc, 110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="bundle for the analysis column (default: "
                        "models/default when present)")
    parser.add_argument("--no-model", action="store_true", help="skip the analysis column and model cases")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    model = None if args.no_model else args.model or (DEFAULT_MODEL if (DEFAULT_MODEL / "reviewlens.json").exists()
                                                      else None)
    analyzer = None
    if model is not None:
        from reviewlens.analyzer import ReviewAnalyzer

        analyzer = ReviewAnalyzer.from_pretrained(model)
    workdir = Path(tempfile.mkdtemp(prefix="reviewlens-robustness-"))
    start = time.perf_counter()
    print(f"# {EXAMPLES.name}: {len(example_rows()[1])} rows; model: {model or 'none'}")
    print()
    print("| case | reads as | default (strict) | with --skip-bad-rows | rows kept | rows rejected |"
          + (" analysed |" if analyzer else ""))
    print("|---|---|---|---|---:|---:|" + ("---|" if analyzer else ""))
    for case in cases():
        strict, skip, kept, rejected, analysed = run_case(case, workdir, analyzer)
        print(f"| {case.name} | {case.mode} | {strict} | {skip} | {kept} | {rejected} |"
              + (f" {analysed} |" if analyzer else ""))
    print()
    print("| model-level case | what happened |")
    print("|---|---|")
    name, what = resume_case(workdir)
    print(f"| {name} | {what} |")
    if model is not None:
        for name, what in model_cases(model, workdir):
            print(f"| {name} | {what} |")
    print(f"\n({time.perf_counter() - start:.1f} s; files in {workdir})")


if __name__ == "__main__":
    main()
