"""The Streamlit page of ``reviewlens demo --ui`` (run by ``reviewlens.serve.demo.launch``).

    streamlit run src/reviewlens/serve/demo_app.py -- --model models/default
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import streamlit as st

from reviewlens.analyzer import ReviewAnalyzer
from reviewlens.cli import SEED_EXAMPLES
from reviewlens.data import read_texts
from reviewlens.errors import ReviewlensError
from reviewlens.serve.demo import (CSS, bundle_choices, highlighted_text_html, keyword_chips_html, results_csv,
                                   word_scores)

# No bare strings below the module docstring: Streamlit's "magic" would print them on the page.
MAX_UPLOAD_REVIEWS = 2000  # reviews analysed from one uploaded file (use `reviewlens analyze` for more)
OWN_TEXT = "(직접 입력 / type your own)"
OTHER_PATH = "other path…"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=None)
    return parser.parse_known_args(sys.argv[1:])[0]


@st.cache_resource(show_spinner="모델을 불러오는 중… (loading the model)")
def load_analyzer(path: str) -> ReviewAnalyzer:
    return ReviewAnalyzer.from_pretrained(path)


def choose_model(given: Path | None) -> str | None:
    """Sidebar: pick a bundle directory (the given one, the default, any under models/, or a typed path)."""
    st.sidebar.header("Model bundle")
    choices = bundle_choices(given)
    choice = st.sidebar.selectbox("Bundle", choices + [OTHER_PATH], key="bundle_choice")
    if choice != OTHER_PATH:
        return choice
    path = st.sidebar.text_input("Bundle path", placeholder="path/to/bundle (holds reviewlens.json)").strip()
    if not path:
        st.sidebar.info("Type the path of a bundle directory.")
    return path or None


def get_analyzer(path: str) -> ReviewAnalyzer | None:
    """The bundle's analyzer (loaded once per path), or None with the error shown in the sidebar."""
    try:
        analyzer = load_analyzer(path)
    except ReviewlensError as exc:
        st.sidebar.error(str(exc))
        return None
    bundle = analyzer.bundle
    st.sidebar.caption(f"{len(analyzer.keywords)} keywords · levels {', '.join(str(v) for v in analyzer.levels)} · "
                       f"base {bundle.base_model or '?'} · {bundle.kind}/{bundle.backend}")
    return analyzer


def show_analysis(analyzer: ReviewAnalyzer, stored: dict) -> None:
    """Chips, the shaded review text, the keyword probabilities chart and the raw JSON of one analysis."""
    import pandas as pd

    result = stored["result"]
    keywords = result["keywords"]
    st.subheader("Keywords")
    st.markdown(keyword_chips_html(keywords, analyzer.levels), unsafe_allow_html=True)

    st.subheader("Highlighted words")
    names = [k["keyword"] for k in keywords]
    focus = st.selectbox("Words behind", ["all keywords"] + names, key="focus") if names else "all keywords"
    scores = word_scores(keywords, None if focus == "all keywords" else focus)
    st.markdown(highlighted_text_html(result["text"], scores), unsafe_allow_html=True)
    if not scores:
        st.caption("No highlighted words (no keyword found, or highlights were off).")

    st.subheader("Keyword probabilities")
    import altair as alt

    found = set(names)
    frame = pd.DataFrame({"keyword": analyzer.keywords, "probability": stored["probabilities"],
                          "found": ["detected" if k in found else "below threshold" for k in analyzer.keywords],
                          "threshold": [analyzer.bundle.thresholds.get(k, 0.5) for k in analyzer.keywords]})
    order = frame.sort_values("probability", ascending=False)["keyword"].tolist()
    bars = alt.Chart(frame).mark_bar().encode(
        x=alt.X("probability:Q", scale=alt.Scale(domain=[0, 1])),
        y=alt.Y("keyword:N", sort=order, title=None),
        color=alt.Color("found:N", scale=alt.Scale(domain=["detected", "below threshold"],
                                                   range=["#2e7d32", "#b0b7bf"]), legend=alt.Legend(title=None)),
        tooltip=["keyword", alt.Tooltip("probability:Q", format=".3f"), alt.Tooltip("threshold:Q", format=".2f")])
    ticks = alt.Chart(frame).mark_tick(color="#333", thickness=2).encode(
        x="threshold:Q", y=alt.Y("keyword:N", sort=order))
    st.altair_chart(bars + ticks, width="stretch")
    st.caption("Bars: the keyword model's probability; ticks: the bundle's calibrated threshold.")
    with st.expander("JSON (as `reviewlens analyze --format json`)"):
        st.json(result)


def review_tab(path: str, highlights: bool, top_k: int) -> ReviewAnalyzer | None:
    """The form shows at once; the model loads (once) right after it. Returns the analyzer."""
    example = st.selectbox("Example review", [OWN_TEXT] + SEED_EXAMPLES, key="example")
    with st.form("analyze_form"):
        text = st.text_area("Review / 리뷰", value="" if example == OWN_TEXT else example, height=110,
                            placeholder="옷은 예쁘지만 배송은 늦어요")
        submitted = st.form_submit_button("Analyze / 분석", type="primary")
    analyzer = get_analyzer(path)
    if analyzer is None:
        return None
    if submitted:
        if not text.strip():
            st.warning("Type or pick a review first.")
        else:
            with st.spinner("Analyzing…"):
                result = analyzer.analyze([text], highlights=highlights, top_k=top_k)[0]
                probabilities = analyzer.keyword_probabilities([text])[0].tolist()
            st.session_state["single"] = {"model": path, "result": result.to_dict(), "probabilities": probabilities}
    stored = st.session_state.get("single")
    if stored and stored["model"] == path:
        show_analysis(analyzer, stored)
    return analyzer


def file_tab(path: str, analyzer: ReviewAnalyzer, highlights: bool, top_k: int) -> None:
    uploaded = st.file_uploader("Reviews: CSV with a text column (id optional), JSONL, or TXT with one a line",
                                type=["csv", "jsonl", "txt"], key="upload")
    if uploaded is None:
        return
    key = (path, uploaded.name, uploaded.size, highlights, top_k)
    if st.session_state.get("batch_key") != key:
        st.session_state.pop("batch", None)
    if st.button("Analyze file / 파일 분석", key="analyze_file"):
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / Path(uploaded.name).name
            target.write_bytes(uploaded.getvalue())
            try:
                ids, texts = read_texts(target)
            except ReviewlensError as exc:
                st.error(str(exc).replace(str(target), uploaded.name))
                return
        if len(texts) > MAX_UPLOAD_REVIEWS:
            st.warning(f"{len(texts):,} reviews: analysing the first {MAX_UPLOAD_REVIEWS:,} "
                       "(use `reviewlens analyze --input FILE` for the rest).")
            texts, ids = texts[:MAX_UPLOAD_REVIEWS], (ids[:MAX_UPLOAD_REVIEWS] if ids else None)
        progress = st.progress(0.0, text="Analyzing…")
        results, step = [], 32
        for start in range(0, len(texts), step):
            results += analyzer.analyze(texts[start:start + step], highlights=highlights, top_k=top_k,
                                        ids=ids[start:start + step] if ids else None)
            progress.progress(min(1.0, (start + step) / len(texts)), text=f"{len(results):,} / {len(texts):,}")
        progress.empty()
        st.session_state["batch"], st.session_state["batch_key"] = results, key
    results = st.session_state.get("batch")
    if results:
        import pandas as pd

        st.dataframe(pd.DataFrame([{"id": r.id or "", "text": r.text, "completion": r.completion()}
                                   for r in results]), hide_index=True)
        st.download_button("Download results (CSV)", results_csv(results), file_name="reviewlens-results.csv",
                           mime="text/csv", key="download", on_click="ignore")


def main() -> None:
    st.set_page_config(page_title="reviewlens", page_icon="🔎", layout="wide")
    st.markdown(CSS, unsafe_allow_html=True)
    st.title("reviewlens")
    st.caption("Korean product reviews → keywords, per-keyword sentiment and the words behind them.")
    path = choose_model(parse_args().model)
    if path is None:
        st.info("Choose a model bundle in the sidebar (train one with `reviewlens train`).")
        return
    highlights = st.sidebar.toggle("Highlight words", value=True)
    top_k = st.sidebar.slider("Words per keyword", 1, 10, 3)
    single, batch = st.tabs(["Review / 리뷰", "CSV file / 파일"])
    with single:
        analyzer = review_tab(path, highlights, top_k)
    if analyzer is None:
        return
    with batch:
        file_tab(path, analyzer, highlights, top_k)


main()
