"""The course website, built by `python3 course.py site OUT_DIR` and opened in a real browser
(Debian's headless Chromium driven by Playwright): pages load without console errors, figures
decode and are not blank, math renders, internal links resolve, the language switch lands on
the same lecture in the other language, Korean renders in a CJK font, nothing leaks.
Screenshots of one lecture per language are kept in tests/artifacts/ (ignored by git)."""
from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urljoin, urlparse

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "tests" / "artifacts"
# as the machine's probe starts it: without the background-networking flags Chromium keeps
# trying hosts this closed network refuses, and as root it needs --no-sandbox
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LECTURE = "01_self_attention"


@pytest.fixture(scope="module")
def site(tmp_path_factory, student_release):
    """The site built by the command a reader runs (COURSE_SITE_DIR: one already built, to
    iterate on these tests without rebuilding)."""
    if os.environ.get("COURSE_SITE_DIR"):
        return Path(os.environ["COURSE_SITE_DIR"])
    out = tmp_path_factory.mktemp("site") / "html"
    # the release the other tests use (building one records the reference: minutes)
    proc = subprocess.run([sys.executable, "-m", "autograder", "site", str(out), "--release", str(student_release)], cwd=ROOT,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def server(site):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is not installed: .ci/run installs Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


def open_page(browser, url):
    """(page, console errors, failed requests) once the page has loaded."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors, failed = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("requestfailed", lambda r: failed.append(r.url))
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.goto(url, wait_until="load")
    return page, errors, failed


def lecture_pages(site, lang):
    return sorted((site / lang / "lectures").glob("*.html"))


def test_the_site_has_every_lecture_in_both_languages_and_the_reference_pages(site):
    english = sorted(p.stem for p in (ROOT / "lectures").glob("*.ipynb"))
    for lang in ("en", "ko"):
        assert [p.stem for p in lecture_pages(site, lang)] == english
        for page in ("index", "api", "glossary", "adequacy"):
            assert (site / lang / f"{page}.html").exists(), f"{lang}/{page}.html"
        assert (site / lang / "exercises" / "attention.html").exists()
    assert (site / "index.html").exists() and (site / ".nojekyll").exists()


def test_no_solution_or_hidden_test_in_the_built_site(site):
    from autograder.website import site_leaks

    assert site_leaks(site) == []


def test_every_page_loads_without_errors_and_its_links_resolve(site, server, browser):
    pages = sorted(site.rglob("*.html"))
    pages = [p for p in pages if not p.name.startswith(("genindex", "search")) and "_static" not in p.parts]
    for path in pages:
        url = urljoin(server, str(path.relative_to(site)))
        page, errors, failed = open_page(browser, url)
        assert not errors, f"{path.relative_to(site)}: console errors {errors[:3]}"
        assert not failed, f"{path.relative_to(site)}: requests failed {failed[:3]}"
        for href in page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)"):
            target = urlparse(href)
            if target.netloc != urlparse(server).netloc or not target.path.endswith(".html"):
                continue  # outside links and anchors on the page itself
            local = site / target.path.lstrip("/")
            assert local.exists(), f"{path.relative_to(site)} links to a missing page {target.path}"
        page.close()


def test_figures_decode_and_are_not_blank(site, server, browser):
    for lang in ("en", "ko"):
        for path in lecture_pages(site, lang):
            page, _, _ = open_page(browser, urljoin(server, str(path.relative_to(site))))
            images = page.eval_on_selector_all(
                "article img",
                """els => els.map(img => {
                    const c = document.createElement('canvas');
                    c.width = img.naturalWidth; c.height = img.naturalHeight;
                    if (!img.complete || !c.width) return {src: img.src, ok: false, distinct: 0};
                    const g = c.getContext('2d'); g.drawImage(img, 0, 0);
                    const d = g.getImageData(0, 0, c.width, c.height).data;
                    const seen = new Set();
                    for (let i = 0; i < d.length; i += 4 * 97) seen.add(d[i] << 16 | d[i+1] << 8 | d[i+2]);
                    return {src: img.src.slice(0, 60), ok: true, distinct: seen.size};
                })""")
            assert images, f"{lang}/{path.name}: no figure"
            for image in images:
                assert image["ok"], f"{lang}/{path.name}: an image did not decode ({image['src']})"
                assert image["distinct"] > 2, f"{lang}/{path.name}: a blank figure ({image['src']})"
            page.close()


def test_math_renders(site, server, browser):
    """Formulas are MathML the browser lays out (a box of real size), never visible TeX."""
    page, _, _ = open_page(browser, urljoin(server, f"en/lectures/{LECTURE}.html"))
    boxes = page.eval_on_selector_all("article math", "els => els.map(e => e.getBoundingClientRect().height)")
    # prose only: code cells may hold TeX on purpose (matplotlib labels such as "$\\sqrt{d}$")
    page.evaluate("document.querySelectorAll('article pre, article .cell_input, article .cell_output')"
                  ".forEach(e => e.remove())")
    text = page.eval_on_selector_all("article", "els => els.map(e => e.innerText).join(' ')")
    assert len(boxes) > 10 and min(boxes) > 5, f"formulas not laid out: {boxes[:5]}"
    assert not page.query_selector_all("code.math-source"), "a formula was left as TeX source"
    assert "\\sqrt" not in text and "\\frac" not in text, "TeX source is visible on the page"
    page.close()


def test_the_language_switch_lands_on_the_same_lecture(site, server, browser):
    for lang, other, label in (("en", "ko", "한국어로 읽기"), ("ko", "en", "Read in English")):
        page, _, _ = open_page(browser, urljoin(server, f"{lang}/lectures/{LECTURE}.html"))
        page.click(f"text={label}")
        page.wait_for_load_state("load")
        assert urlparse(page.url).path.endswith(f"/{other}/lectures/{LECTURE}.html"), page.url
        page.close()


def test_korean_renders_in_a_cjk_font_and_screenshots_are_kept(site, server, browser):
    """The Korean page's text is drawn with glyphs (not tofu boxes): rendering a Hangul string in
    the page's font differs from rendering it in a font with no Hangul, which draws boxes."""
    ARTIFACTS.mkdir(exist_ok=True)
    for lang in ("en", "ko"):
        page, _, _ = open_page(browser, urljoin(server, f"{lang}/lectures/{LECTURE}.html"))
        page.screenshot(path=str(ARTIFACTS / f"site-{lang}-{LECTURE}.png"), full_page=False)
        if lang == "ko":
            hangul = page.eval_on_selector_all("article", "els => (els[0].innerText.match(/[가-힣]/g) || []).length")
            assert hangul > 200, "the Korean lecture page has little Korean text"
            drawn = page.evaluate("""() => {
                const family = getComputedStyle(document.querySelector('article')).fontFamily;
                const draw = (text) => {
                    const c = document.createElement('canvas'); c.width = 400; c.height = 60;
                    const g = c.getContext('2d'); g.font = '32px ' + family; g.fillText(text, 5, 40);
                    return c.toDataURL();
                };
                // U+10FFFD has no glyph in any font: what a missing glyph looks like here
                return {hangul: draw('트랜스포머'), tofu: draw('\\u{10FFFD}'.repeat(5)), empty: draw(''),
                        nanum: document.fonts.check('32px NanumGothic', '트랜스포머')};
            }""")
            assert drawn["nanum"], "no CJK font (NanumGothic) is available to the browser"
            assert drawn["hangul"] not in (drawn["tofu"], drawn["empty"]), "Korean text renders as empty boxes"
        page.close()
    assert all((ARTIFACTS / f"site-{lang}-{LECTURE}.png").stat().st_size > 10_000 for lang in ("en", "ko"))


def test_the_pages_workflow_builds_with_the_same_command():
    workflow = (ROOT / ".github" / "workflows" / "pages.yml").read_text()
    assert re.search(r"python3 course\.py site (\S+)", workflow), "the workflow must call `python3 course.py site`"
    out = re.search(r"python3 course\.py site (\S+)", workflow).group(1)
    assert "actions/upload-pages-artifact" in workflow and f"path: {out}" in workflow
    assert "actions/deploy-pages" in workflow and "branches: [main]" in workflow


def test_lectures_are_executed_again_only_when_they_change(tmp_path):
    """The site's execution cache: the same notebook comes from the cache; an edited one runs."""
    import nbformat

    from autograder.website import execute_lecture

    path = tmp_path / "tiny.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(6 * 7)")]), path)
    first, seconds_first = execute_lecture(path, cache=tmp_path / "cache")
    again, seconds_again = execute_lecture(path, cache=tmp_path / "cache")
    assert seconds_first > 0 and seconds_again == 0.0
    assert again.cells[0].outputs[0]["text"].strip() == "42"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(6 * 8)")]), path)
    edited, seconds_edited = execute_lecture(path, cache=tmp_path / "cache")
    assert seconds_edited > 0 and edited.cells[0].outputs[0]["text"].strip() == "48"
    assert len(list((tmp_path / "cache").glob("tiny-*.ipynb"))) == 1  # the stale copy is gone
