"""End to end in a real headless Chromium (Debian's chromium + chromedriver, driven by Selenium)
against a live server: log in, upload a real X-ray, read the result, switch the heatmap, and save
screenshots at desktop and phone widths under the test's temp folder."""

import shutil
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission

from audit.models import Prediction
from tests.conftest import shared_data_path

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

pytestmark = pytest.mark.browser


@pytest.fixture
def browser():
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(
            "headless Chromium not found (/usr/bin/chromium and /usr/bin/chromedriver): "
            "install Debian's chromium and chromium-driver packages (.ci/run does) to run this test"
        )
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture
def site(live_server):
    """The live server, answering with this test's settings. The session-wide server built its
    middleware (SecurityMiddleware reads SECURE_SSL_REDIRECT once) before the autouse fixture turned
    HTTPS off, so it would redirect the browser to an https:// port that speaks no TLS."""
    from django.contrib.staticfiles.handlers import StaticFilesHandler
    from django.core.handlers.wsgi import WSGIHandler
    from django.test.testcases import _MediaFilesHandler

    httpd = live_server.thread.httpd
    previous = httpd.get_app()
    httpd.set_app(StaticFilesHandler(_MediaFilesHandler(WSGIHandler())))
    yield live_server
    httpd.set_app(previous)


@pytest.fixture
def browser_user(django_user_model):
    # live_server runs on a flushed (transactional) database, where the roles migration's groups may
    # be gone: give the permissions of the clinician role directly.
    user = django_user_model.objects.create_user(username="erin", password="pw-erin-browser")
    user.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="audit", codename__in=["add_prediction", "view_prediction"]
        )
    )
    return user


def _image_loaded(driver, css: str) -> bool:
    return driver.execute_script(
        "const img = document.querySelector(arguments[0]);"
        "return !!img && img.complete && img.naturalWidth > 0;",
        css,
    )


def _overflow(driver) -> int:
    """How many pixels the page is wider than the window (0 when it fits)."""
    return driver.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )


def _save(driver, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    # The whole page, not only the window: resize to the document's height for the shot.
    width = driver.get_window_size()["width"]
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, max(height + 140, 600))
    assert driver.save_screenshot(str(path))
    return path


def test_it_logs_in_uploads_an_xray_and_shows_its_heatmaps(
    browser, site, starter_model, browser_user, tmp_path
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    xray = shared_data_path("nih_reproduce_chexnet", "images", "00000211_000.png")
    wait = WebDriverWait(browser, 60)
    shots = tmp_path / "screenshots"
    shots.mkdir()

    # Log in.
    browser.get(site.url + "/")
    wait.until(ec.url_contains("/login/"))
    _save(browser, shots, "login-desktop")
    browser.set_window_size(1280, 900)
    browser.find_element(By.ID, "id_username").send_keys("erin")
    browser.find_element(By.ID, "id_password").send_keys("pw-erin-browser")
    browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()

    # Upload a real X-ray through the drop zone's file input; the script posts it with progress.
    wait.until(ec.presence_of_element_located((By.ID, "upload-form")))
    assert "UNTRAINED MODEL" in browser.find_element(By.CSS_SELECTOR, ".untrained-warning").text.upper()
    browser.find_element(By.ID, "id_image").send_keys(str(xray))
    assert "00000211_000.png" in browser.find_element(By.ID, "file-name").text
    _save(browser, shots, "upload-desktop")
    browser.set_window_size(1280, 900)
    browser.find_element(By.ID, "upload-submit").click()

    # The result page: 13 findings, the analysed image and the top finding's heatmap loaded.
    wait.until(ec.url_matches(r"/predictions/\d+/$"))
    prediction = Prediction.objects.get()
    assert prediction.user == browser_user and prediction.source == "web"
    rows = browser.find_elements(By.CSS_SELECTOR, "#findings tbody tr")
    assert len(rows) == 13
    top = max(prediction.results_json["findings"], key=lambda f: f["probability"])["name"]
    assert rows[0].get_attribute("data-finding") == top
    wait.until(lambda d: _image_loaded(d, ".viewer-base") and _image_loaded(d, "#heatmap"))
    assert browser.find_element(By.ID, "heatmap").get_attribute("src").endswith(f"/heatmaps/{top}.png")

    # Switch the heatmap with the selector, then with a finding's link in the table.
    picker = Select(browser.find_element(By.ID, "heatmap-select"))
    second = picker.options[1].get_attribute("value")
    picker.select_by_index(1)
    wait.until(lambda d: d.find_element(By.ID, "heatmap").get_attribute("src").endswith(f"/{second}.png"))
    wait.until(lambda d: _image_loaded(d, "#heatmap"))
    assert browser.find_element(By.ID, "heatmap-name").text == second.replace("_", " ")

    last = rows[-1].get_attribute("data-finding")
    rows[-1].find_element(By.CSS_SELECTOR, "a[data-heatmap]").click()
    wait.until(lambda d: d.find_element(By.ID, "heatmap").get_attribute("src").endswith(f"/{last}.png"))
    wait.until(lambda d: _image_loaded(d, "#heatmap"))
    assert "is-selected" in rows[-1].get_attribute("class")
    assert browser.current_url.endswith(f"?heatmap={last}")

    # The opacity control changes the overlay's opacity.
    slider = browser.find_element(By.ID, "heatmap-opacity")
    browser.execute_script("arguments[0].value = 40; arguments[0].dispatchEvent(new Event('input'));", slider)
    wait.until(lambda d: d.find_element(By.ID, "heatmap").value_of_css_property("opacity") == "0.4")
    assert browser.find_element(By.ID, "heatmap-opacity-value").text == "40 %"
    browser.execute_script("arguments[0].value = 85; arguments[0].dispatchEvent(new Event('input'));", slider)

    picker = Select(browser.find_element(By.ID, "heatmap-select"))
    picker.select_by_value(top)
    wait.until(lambda d: _image_loaded(d, "#heatmap"))
    browser.execute_script("window.scrollTo(0, 0)")
    desktop = _save(browser, shots, "result-desktop")

    # A phone-sized window: the same page, nothing wider than the screen.
    browser.set_window_size(390, 844)
    browser.refresh()
    wait.until(lambda d: _image_loaded(d, ".viewer-base") and _image_loaded(d, "#heatmap"))
    assert _overflow(browser) <= 0, "the result page is wider than a 390px screen"
    phone = _save(browser, shots, "result-phone")

    browser.set_window_size(390, 844)
    browser.get(site.url + "/history/")
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "table.list")))
    assert f"/predictions/{prediction.pk}/" in browser.page_source
    assert _overflow(browser) <= 0, "the history page is wider than a 390px screen"
    _save(browser, shots, "history-phone")

    # The default theme is dark; headless Chromium reports a light system preference, so ask.
    browser.execute_cdp_cmd(
        "Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "dark"}]}
    )
    browser.set_window_size(1280, 900)
    browser.get(site.url + f"/predictions/{prediction.pk}/")
    wait.until(lambda d: _image_loaded(d, ".viewer-base") and _image_loaded(d, "#heatmap"))
    _save(browser, shots, "result-desktop-dark")
    browser.set_window_size(360, 740)
    browser.get(site.url + "/")
    wait.until(ec.presence_of_element_located((By.ID, "upload-form")))
    assert _overflow(browser) <= 0, "the upload page is wider than a 360px screen"
    _save(browser, shots, "upload-phone-dark")

    for path in (desktop, phone):
        assert path.stat().st_size > 10_000
    # Where CI collects artefacts from, when it asks for them.
    export = __import__("os").environ.get("LUNGSITE_SCREENSHOT_DIR")
    if export:
        Path(export).mkdir(parents=True, exist_ok=True)
        for path in shots.iterdir():
            shutil.copy(path, Path(export) / path.name)
