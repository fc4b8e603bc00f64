"""The Streamlit demo: its HTML pieces, and the real app driven in Debian's Chromium through Playwright."""

from __future__ import annotations

import csv
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from reviewlens.analyzer import KeywordResult, ReviewAnalysis
from reviewlens.bundle import MANIFEST, ModelBundle
from reviewlens.highlight import Highlight
from reviewlens.serve.demo import (bundle_choices, highlighted_text_html, keyword_chips_html, level_color,
                                   results_csv, word_scores)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
REVIEW = "옷은 예쁘지만 배송은 늦어요 그래도 색이 정말 이뻐요"
UPLOAD = [("u1", "배송이 빨라요 디자인도 좋아요"), ("u2", "사이즈가 커요 핏은 예뻐요"), ("u3", "가격 대비 소재가 좋아요")]


# --------------------------------------------------------------------------- the HTML pieces, no browser


def _keyword(name: str, level: int, probability: float, words: list[tuple[str, int, int, float]]) -> dict:
    highlights = [Highlight(w, s, e, score) for w, s, e, score in words]
    return KeywordResult(name, probability, level, {str(level): 0.9}, highlights, []).to_dict()


def test_chips_are_colored_by_sentiment_and_escaped():
    html = keyword_chips_html([_keyword("디자인", 1, 0.9, []), _keyword("배송", -1, 0.8, []),
                               _keyword("<b>", 0, 0.7, [])], [-2, -1, 0, 1, 2])
    assert html.count('class="rl-chip"') == 3
    assert 'data-level="1"' in html and 'data-level="-1"' in html
    assert level_color(1, [-2, -1, 0, 1, 2]) in html and level_color(-1, [-2, -1, 0, 1, 2]) in html
    assert level_color(-2, [-2, 2]).startswith("rgba(220") and level_color(2, [-2, 2]).startswith("rgba(40")
    assert level_color(2, [-2, 2]) != level_color(1, [-2, 2])  # stronger sentiment, stronger color
    assert 'data-keyword="&lt;b&gt;"' in html and ">&lt;b&gt;<span" in html  # a keyword is text, never markup
    assert "키워드 없음" in keyword_chips_html([], [-1, 0, 1])


def test_highlighted_text_shades_words_by_their_best_score():
    text = "옷은 예쁘지만 배송은 늦어요"
    keywords = [_keyword("디자인", 1, 0.9, [("예쁘지만", 3, 7, 0.4), ("옷은", 0, 2, 0.1)]),
                _keyword("배송", -1, 0.8, [("늦어요", 12, 15, 0.2), ("예쁘지만", 3, 7, 0.05)])]
    scores = word_scores(keywords)
    assert scores == {(3, 7): 0.4, (0, 2): 0.1, (12, 15): 0.2}
    assert word_scores(keywords, only="배송") == {(12, 15): 0.2, (3, 7): 0.05}
    html = highlighted_text_html(text, scores)
    assert html.count('class="rl-hl"') == 3
    assert ">예쁘지만</mark>" in html and ">배송은<" not in html
    assert "rgba(255, 170, 0, 0.80)" in html  # the strongest word is the darkest
    plain = html.replace("</mark>", "")
    while "<mark" in plain:
        start = plain.index("<mark")
        plain = plain[:start] + plain[plain.index(">", start) + 1:]
    assert plain == f'<div class="rl-text">{text}</div>'
    assert highlighted_text_html("<script>", {}) == '<div class="rl-text">&lt;script&gt;</div>'


def test_results_csv_is_the_cli_csv_with_a_bom():
    results = [ReviewAnalysis("배송 빨라요", [KeywordResult("배송", 0.9, 1, {"1": 0.9})], id="r1"),
               ReviewAnalysis("그냥 그래요")]
    data = results_csv(results)
    assert data.startswith("\ufeff".encode())
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))
    assert [r["id"] for r in rows] == ["r1", ""]
    assert rows[0]["completion"] == "배송 1" and rows[1]["completion"] == ""
    assert '"keyword": "배송"' in rows[0]["keywords"]


def test_bundle_choices_lists_given_and_found_bundles(tmp_path):
    for name in ("b", "a"):
        (tmp_path / "models" / name).mkdir(parents=True)
        (tmp_path / "models" / name / MANIFEST).write_text("{}")
    (tmp_path / "models" / "not-a-bundle").mkdir()
    given = tmp_path / "elsewhere"
    given.mkdir()
    (given / MANIFEST).write_text("{}")
    choices = bundle_choices(given, models_dir=tmp_path / "models")
    assert choices[0] == str(given.resolve())
    found = [Path(c).name for c in choices if c.startswith(str((tmp_path / "models").resolve()))]
    assert found == ["a", "b"]
    assert not any(c.endswith("not-a-bundle") for c in choices)


# --------------------------------------------------------------------------- the app in a real browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_streamlit(url: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the demo exited with {process.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"the demo did not answer /_stcore/health in {timeout:.0f} s:\n{log.read_text(errors='replace')[-3000:]}")


def test_demo_in_chromium(tiny_bundle, tmp_path):
    """Type a review, analyse it, see chips and highlighted words; upload a CSV and download the results."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium (`make test` tries to)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is missing: pip install playwright "
                                   "(in the test extra)")
    pytest.importorskip("streamlit", reason="streamlit is missing: pip install 'reviewlens[serve]'")
    # thresholds at 0: every keyword is detected, whatever the few seconds of training taught the tiny model
    bundle_dir = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle_dir)
    bundle = ModelBundle.load(bundle_dir)
    bundle.thresholds = {k: 0.0 for k in bundle.schema.keywords}
    bundle.write_manifest()
    keywords = list(bundle.schema.keywords)
    upload = tmp_path / "upload.csv"
    upload.write_text("id,text\n" + "".join(f"{i},{t}\n" for i, t in UPLOAD), encoding="utf-8")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "demo.log"
    with open(log_path, "wb") as log:
        # through the CLI, so `reviewlens demo --ui` and launch() are what is tested; its own session, so the
        # streamlit child goes down with it
        process = subprocess.Popen([sys.executable, "-m", "reviewlens.cli", "demo", "--ui", "--model", str(bundle_dir),
                                    "--host", "127.0.0.1", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        _wait_for_streamlit(url, process, log_path, timeout=300)
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1500}, accept_downloads=True)
                page.goto(url, timeout=120_000)
                review_box = page.get_by_role("textbox", name="Review / 리뷰")
                review_box.wait_for(timeout=300_000)
                review_box.fill(REVIEW)
                page.get_by_role("button", name="Analyze / 분석").click()

                page.locator(".rl-chips").first.wait_for(timeout=300_000)  # the first analysis also loads the model
                chips = page.locator(".rl-chip")
                chip_texts = chips.all_inner_texts()
                chip_keywords = chips.evaluate_all("chips => chips.map(c => c.dataset.keyword)")
                assert sorted(chip_keywords) == sorted(keywords), chip_texts
                assert all(t.startswith(k) for t, k in zip(chip_texts, chip_keywords)), chip_texts
                assert all(chips.nth(i).is_visible() for i in range(chips.count()))
                marks = page.locator("mark.rl-hl")
                marks.first.wait_for(timeout=30_000)
                words = marks.all_inner_texts()
                assert words and all(w in REVIEW.split() for w in words), words
                assert float(marks.first.get_attribute("data-score")) > 0
                page.get_by_test_id("stVegaLiteChart").first.wait_for(timeout=30_000)
                assert page.get_by_test_id("stException").count() == 0
                page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)

                page.get_by_role("tab", name="CSV file / 파일").click()
                page.locator("input[type=file]").set_input_files(str(upload))
                page.get_by_role("button", name="Analyze file / 파일 분석").click()
                download_button = page.get_by_role("button", name="Download results (CSV)")
                download_button.wait_for(timeout=300_000)
                with page.expect_download(timeout=60_000) as download:
                    download_button.click()
                rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text(encoding="utf-8-sig"))))
                assert [(r["id"], r["text"]) for r in rows] == UPLOAD
                assert all(r["keywords"].startswith("[") for r in rows)
                page.screenshot(path=str(tmp_path / "demo-csv.png"), full_page=True)
            finally:
                browser.close()
        assert (tmp_path / "demo.png").stat().st_size > 10_000
        print(f"screenshots: {tmp_path / 'demo.png'}, {tmp_path / 'demo-csv.png'}")
    finally:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
