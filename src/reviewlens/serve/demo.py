"""The Streamlit demo (``reviewlens demo --ui``): its launcher and the HTML pieces it draws.

The app script is ``demo_app.py`` next to this file; the pieces are plain functions here so tests can check
them without a browser.
"""

from __future__ import annotations

import html
import signal
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from ..errors import ReviewlensError, require

APP_SCRIPT = Path(__file__).with_name("demo_app.py")
"""The Streamlit script that ``launch`` runs."""

HANGUL_FONTS = ('"Source Sans Pro", "Source Sans 3", "Noto Sans KR", "Noto Sans CJK KR", "NanumGothic", '
                '"Nanum Gothic", "Apple SD Gothic Neo", "Malgun Gothic", sans-serif')
"""CSS font stack: Streamlit's Latin font first, then fonts that have Hangul."""

CSS = f"""
<style>
html, body, .stApp, .stMarkdown, textarea, input, button, .stDataFrame {{ font-family: {HANGUL_FONTS}; }}
.rl-chips {{ display: flex; flex-wrap: wrap; gap: 0.4rem; margin: 0.25rem 0 0.75rem 0; }}
.rl-chip {{ border-radius: 999px; padding: 0.2rem 0.7rem; font-size: 0.95rem; color: #111;
           border: 1px solid rgba(0, 0, 0, 0.15); white-space: nowrap; }}
.rl-chip .rl-level {{ font-weight: 700; margin-left: 0.3rem; }}
.rl-chip .rl-prob {{ opacity: 0.7; margin-left: 0.3rem; font-size: 0.85rem; }}
.rl-text {{ font-size: 1.15rem; line-height: 2.1rem; }}
.rl-hl {{ border-radius: 0.3rem; padding: 0.1rem 0.15rem; color: inherit; }}
</style>
"""


def launch(model: Path | None, host: str = "127.0.0.1", port: int = 8501) -> None:
    """Run the Streamlit demo (blocks until it stops): ``streamlit run demo_app.py ... -- --model DIR``."""
    require("streamlit", "serve")
    if model is not None:
        from ..bundle import ModelBundle

        ModelBundle.load(model)  # a wrong --model fails here, with the fix, not inside the page
    command = [sys.executable, "-m", "streamlit", "run", str(APP_SCRIPT), "--server.address", host,
               "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
               "--"]
    if model is not None:
        command += ["--model", str(Path(model).resolve())]
    process = subprocess.Popen(command)
    try:  # `docker stop` signals only this process: pass SIGTERM on, so Streamlit shuts down cleanly
        previous = signal.signal(signal.SIGTERM, lambda *_: process.terminate())
    except ValueError:  # not the main thread: leave the handlers alone
        previous = None
    try:
        code = process.wait()
    except KeyboardInterrupt:  # Ctrl+C reached Streamlit too (same process group)
        code = process.wait()
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if code not in (0, -2, -15, 130, 143):  # stopped with Ctrl+C or SIGTERM
        raise ReviewlensError(f"the Streamlit demo exited with status {code} (command: {' '.join(command)})")


# --------------------------------------------------------------------------- what the page shows


def level_color(level: int, levels: Sequence[int]) -> str:
    """A background color for a sentiment level: red shades below zero, grey at zero, green shades above."""
    span = max((abs(v) for v in levels), default=1) or 1
    strength = min(1.0, abs(level) / span)
    alpha = 0.25 + 0.45 * strength
    if level < 0:
        return f"rgba(220, 53, 69, {alpha:.2f})"
    if level > 0:
        return f"rgba(40, 167, 69, {alpha:.2f})"
    return "rgba(108, 117, 125, 0.25)"


def keyword_chips_html(keywords: Iterable[Mapping], levels: Sequence[int]) -> str:
    """One chip per detected keyword (dicts of ``KeywordResult.to_dict()``), colored by its sentiment level."""
    chips = []
    for k in keywords:
        level = int(k["level"])
        chips.append(
            f'<span class="rl-chip" data-keyword="{html.escape(k["keyword"], quote=True)}" data-level="{level}" '
            f'style="background: {level_color(level, levels)}">{html.escape(k["keyword"])}'
            f'<span class="rl-level">{level:+d}</span><span class="rl-prob">{float(k["probability"]):.2f}</span>'
            "</span>")
    if not chips:
        return '<div class="rl-chips"><span class="rl-none">no keyword found / 키워드 없음</span></div>'
    return f'<div class="rl-chips">{"".join(chips)}</div>'


def word_scores(keywords: Iterable[Mapping], only: str | None = None) -> dict[tuple[int, int], float]:
    """(start, end) of each highlighted word -> its highest score over the keywords' highlights (and sentiment
    highlights); ``only`` keeps one keyword."""
    scores: dict[tuple[int, int], float] = {}
    for k in keywords:
        if only is not None and k["keyword"] != only:
            continue
        for h in list(k.get("highlights", [])) + list(k.get("sentiment_highlights", [])):
            span = (int(h["start"]), int(h["end"]))
            scores[span] = max(scores.get(span, 0.0), float(h["score"]))
    return scores


def highlighted_text_html(text: str, scores: Mapping[tuple[int, int], float]) -> str:
    """The review with each highlighted word shaded by its score (the strongest word the darkest)."""
    top = max(scores.values(), default=0.0)
    out, position = [], 0
    for (start, end), score in sorted(scores.items()):
        if start < position or end > len(text) or score <= 0:
            continue  # overlapping or stale spans are not drawn
        alpha = 0.15 + 0.65 * (score / top if top else 0.0)
        out.append(html.escape(text[position:start]))
        out.append(f'<mark class="rl-hl" data-score="{score:.6f}" title="score {score:.4f}" '
                   f'style="background: rgba(255, 170, 0, {alpha:.2f})">{html.escape(text[start:end])}</mark>')
        position = end
    out.append(html.escape(text[position:]))
    return f'<div class="rl-text">{"".join(out)}</div>'


def results_csv(results: Sequence) -> bytes:
    """Results as the CSV of ``reviewlens analyze --format csv`` (id, text, completion, keywords as JSON), in
    UTF-8 with a byte-order mark so spreadsheet programs show the Hangul."""
    import pandas as pd

    from ..analyzer import ANALYSIS_COLUMNS, analysis_rows

    frame = pd.DataFrame(analysis_rows(results), columns=list(ANALYSIS_COLUMNS))
    return frame.to_csv(index=False).encode("utf-8-sig")


def bundle_choices(given: Path | None = None, models_dir: Path | None = None) -> list[str]:
    """Bundle directories to offer: the one given on the command line, the default and any under ``models/``."""
    from ..bundle import DEFAULT_BUNDLE, MANIFEST

    models_dir = models_dir or DEFAULT_BUNDLE.parent
    found: list[str] = []
    candidates = [given, DEFAULT_BUNDLE]
    if models_dir.is_dir():
        candidates += sorted(p for p in models_dir.iterdir() if p.is_dir())
    for path in candidates:
        if path is not None and (Path(path) / MANIFEST).is_file():
            resolved = str(Path(path).resolve())
            if resolved not in found:
                found.append(resolved)
    return found
