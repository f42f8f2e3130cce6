"""The HTML feature browser in a real headless Chromium: it renders, shades, and its search filters.

Chromium is Debian's package (`apt-get install -y chromium`); CI installs it. Without it the tests
skip locally and fail in CI (CI=true), so a missing install step cannot pass silently.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import uuid
from urllib.parse import quote

import pytest
from test_eval import PLANTED, planted_eval

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (CI must run: apt-get install -y chromium)")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    return exe


def run_chromium(tmp_path, *args: str) -> str:
    profile = tmp_path / f"profile-{uuid.uuid4().hex}"  # a fresh profile per launch
    proc = subprocess.run(
        [_chromium(), *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.fixture(scope="module")
def browser(tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    result = planted_eval(root, tiny_llama)
    return result.files["browser"], result.results.data


def dump_dom(tmp_path, page, query: str | None = None) -> str:
    url = page.resolve().as_uri() + (f"#q={quote(query)}" if query is not None else "")
    return run_chromium(tmp_path, "--dump-dom", url)


def shown_features(dom: str) -> list[str]:
    """Keys of the feature sections the page left visible (the filter sets `hidden` on the others)."""
    sections = re.findall(r'<section class="feature" id="([^"]+)"([^>]*)>', dom)
    return [html.unescape(key) for key, attrs in sections if "hidden" not in attrs]


def test_page_is_self_contained(browser):
    page, _ = browser
    text = page.read_text()
    assert "://" not in text and not re.search(r"\b(?:src|href)\s*=", text)
    assert "<script>" in text and "<style>" in text


def test_chromium_renders_every_feature_with_both_explanations(browser, tmp_path):
    page, results = browser
    dom = dump_dom(tmp_path, page)
    assert shown_features(dom) == [f["feature"] for f in results["features"]]
    assert f"{len(PLANTED)} of {len(PLANTED)} features" in dom  # written by the page's script: JS ran
    for f in results["features"]:
        for name in ("teacher", "student_best_of_k"):
            e = f["results"][name]["explanation"]
            shown = html.escape(e["text"], quote=False) if e["ok"] else "unparseable"
            assert shown in dom, (name, e["text"])
        word = PLANTED[results["features"].index(f)]  # a planted feature shows its true rule beside the rest
        assert f'true explanation: <b>the word "{word}"</b>' in dom
    # the planted word is shaded at full strength, both as truth and as the teacher's simulation
    assert dom.count('class="t9"') >= len(PLANTED) and dom.count('class="s9"') >= len(PLANTED)


def test_screenshot_is_not_blank(browser, tmp_path):
    from matplotlib.image import imread

    page, _ = browser
    shot = tmp_path / "shot.png"
    run_chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,1400", page.resolve().as_uri())
    image = imread(shot)[..., :3]
    assert image.shape[:2] == (1400, 1200)
    non_white = (image < 0.95).any(axis=-1).mean()
    assert image.std() > 0.05 and non_white > 0.02, (image.std(), non_white)
    orange = ((image[..., 0] > 0.8) & (image[..., 2] < 0.5)).mean()  # the true-activation shading shows
    assert orange > 0


def test_search_from_the_url_filters_features_by_explanation_text(browser, tmp_path):
    page, results = browser
    keys = [f["feature"] for f in results["features"]]
    dom = dump_dom(tmp_path, page, PLANTED[2])
    assert shown_features(dom) == [keys[2]] and f"1 of {len(PLANTED)} features" in dom
    both = dump_dom(tmp_path, page, f"WORD {PLANTED[4].upper()}")  # every word must match, any case
    assert shown_features(both) == [keys[4]]
    assert shown_features(dump_dom(tmp_path, page, "no-such-explanation")) == []
