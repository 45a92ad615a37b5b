"""The web UI in a real browser: headless Debian Chromium driven by playwright.

Types a prompt, clicks Generate, waits for the gallery and saves a screenshot, on the text-to-image,
text generation and mask filling tabs; also presses Stop mid-run. Screenshots go to the test's
temporary folder, or to $MMGEN_SCREENSHOT_DIR when set (to look at them).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from webui_support import full_bundle, serving

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic", "--disable-dev-shm-usage",
]
TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def page(tiny_bundle, tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium, or `make system-deps`)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
    from webui.app import build_app

    root = tmp_path_factory.mktemp("webui_browser")
    demo = build_app(full_bundle(tiny_bundle, root / "bundle"), root / "outputs")
    with serving(demo) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(url)
            page.wait_for_selector("#t2i-prompt textarea")
            page.demo = demo
            yield page
        finally:
            browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("MMGEN_SCREENSHOT_DIR") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def test_text_to_image_in_the_browser(page, shots):
    _open_tab(page, "Text to image")
    page.fill("#t2i-prompt textarea", "a small red circle")
    page.click("#t2i-generate")
    page.wait_for_function(
        "() => document.querySelectorAll('#t2i-gallery img').length >= 4"
        " && document.querySelector('#t2i-status').innerText.includes('Saved 4 PNG')"
    )
    status = page.inner_text("#t2i-status")
    assert "history #" in status
    page.screenshot(path=str(shots / "txt2img.png"), full_page=True)
    assert page.demo.studio.store.list(kind="txt2img")[1] == 1


def test_stop_button_in_the_browser(page, shots):
    studio = page.demo.studio
    hook = studio.t2i.image_decoder.register_forward_pre_hook(lambda module, args: time.sleep(0.05))
    try:
        _open_tab(page, "Text to image")
        page.fill("#t2i-prompt textarea", "a large blue square")
        page.click("#t2i-generate")
        page.wait_for_function("() => document.querySelector('#t2i-status').innerText.includes('Sampling')")
        page.click("#t2i-stop")
        page.wait_for_function("() => document.querySelector('#t2i-status').innerText.includes('Stopped; the unfinished images were not saved')")
        page.screenshot(path=str(shots / "txt2img_stopped.png"), full_page=True)
    finally:
        hook.remove()
    assert studio.store.list(kind="txt2img")[1] == 1  # the stopped run saved nothing


def test_text_generation_in_the_browser(page, shots):
    _open_tab(page, "Text generation")
    page.fill("#text-prompt textarea", "the cat sat")
    page.click("#text-generate")
    page.wait_for_function("() => document.querySelector('#text-status').innerText.includes('Done')")
    assert page.input_value("#text-output textarea").startswith("the cat sat")
    page.screenshot(path=str(shots / "text_generation.png"), full_page=True)


def test_mask_filling_in_the_browser(page, shots):
    _open_tab(page, "Mask filling")
    page.fill("#mask-text textarea", "the cat [MASK] on the mat")
    page.click("#mask-fill")
    page.wait_for_function("() => document.querySelector('#mask-label').innerText.includes('%')")
    page.screenshot(path=str(shots / "mask_filling.png"), full_page=True)


def test_text_tabs_have_examples_to_click(page):
    _open_tab(page, "Mask filling")
    page.get_by_text("the king is [MASK].", exact=True).first.click()
    page.wait_for_function("() => document.querySelector('#mask-text textarea').value === 'the king is [MASK].'")
    _open_tab(page, "Text generation")
    page.get_by_text("JULIET: Wherefore art thou").first.click()
    page.wait_for_function("() => document.querySelector('#text-prompt textarea').value.startsWith('JULIET:')")


def test_history_in_the_browser(page, shots):
    _open_tab(page, "History")
    page.click("#history-search")
    page.wait_for_function("() => document.querySelectorAll('#history-gallery img').length >= 4")
    page.screenshot(path=str(shots / "history.png"), full_page=True)


def test_png_info_restores_into_the_form(page, shots):
    png = next(page.demo.studio.outputs_dir.rglob("*.png"))
    _open_tab(page, "Text to image")
    page.fill("#t2i-prompt textarea", "something else")
    _open_tab(page, "PNG info")
    page.set_input_files("#png-info-image input[type=file]", str(png))
    page.wait_for_function("() => document.querySelector('#png-info-text textarea').value.includes('Seed:')")
    page.screenshot(path=str(shots / "png_info.png"), full_page=True)
    page.click("#png-info-send")
    page.wait_for_function("() => document.querySelector('#t2i-prompt textarea').value === 'a small red circle'")
    seed = page.input_value("#t2i-seed input")
    assert int(seed) == int(png.stem.split("-")[-1])  # the PNG's own seed, ready to regenerate it


def test_history_restore_fills_the_form(page, shots):
    _open_tab(page, "Text to image")
    page.fill("#t2i-prompt textarea", "something else")
    _open_tab(page, "History")
    page.fill("#history-query textarea", "red circle")
    page.get_by_label("keyword").check()
    page.click("#history-search")
    page.wait_for_function("() => !document.querySelector('#history-table').innerText.includes('fill_mask')")
    page.locator("#history-table").get_by_text("a small red circle", exact=True).locator("visible=true").first.click()
    page.wait_for_function("() => document.querySelector('#history-id input').value === '1'")
    page.click("#history-restore")
    page.wait_for_function("() => document.querySelector('#t2i-prompt textarea').value === 'a small red circle'")
    assert page.get_by_role("tab", name="Text to image").get_attribute("aria-selected") == "true"
