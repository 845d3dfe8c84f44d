"""End to end in a real headless Chromium (Debian's chromium + chromedriver, driven by Selenium)
against a live server: log in, upload a real X-ray, read the result, switch the heatmap, and save
screenshots at desktop and phone widths under the test's temp folder."""

import shutil
import tempfile
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
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,900",
    ):
        options.add_argument(argument)
    profile = tempfile.mkdtemp(prefix="lungsite-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


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


def _log_in(browser, site, wait):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    browser.get(site.url + "/login/")
    browser.find_element(By.ID, "id_username").send_keys("erin")
    browser.find_element(By.ID, "id_password").send_keys("pw-erin-browser")
    browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait.until(ec.presence_of_element_located((By.ID, "upload-form")))


def _upload_xray(browser, wait):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    xray = shared_data_path("nih_reproduce_chexnet", "images", "00000211_000.png")
    browser.find_element(By.ID, "id_image").send_keys(str(xray))
    # Two submits in a row, as a double click sends them: the second must not start another upload.
    browser.execute_script(
        "const f = document.getElementById('upload-form'); f.requestSubmit(); f.requestSubmit();"
    )
    wait.until(ec.url_matches(r"/predictions/\d+/$"))
    wait.until(lambda d: _image_loaded(d, ".viewer-base"))


def _viewport(browser, width: int, height: int) -> None:
    # The window's size includes the browser's own frame; the page's viewport is what matters.
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 500},
    )


def test_it_shows_nothing_on_back_after_logout(browser, site, starter_model, browser_user):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    _log_in(browser, site, wait)
    _upload_xray(browser, wait)
    assert Prediction.objects.count() == 1  # the second submit of the same form made no prediction
    result_url = browser.current_url
    assert "Prediction #" in browser.page_source

    browser.find_element(By.CSS_SELECTOR, "form.logout button[type=submit]").click()
    wait.until(ec.url_contains("/login/"))
    assert "You are logged out." in browser.find_element(By.ID, "logged-out").text

    browser.back()
    # The result page was not kept (no-store): going back asks the server, which sends a logged-out
    # browser to the login page. Neither the X-ray nor a finding is on screen.
    wait.until(lambda d: "/login/" in d.current_url)
    source = browser.page_source
    assert "Prediction #" not in source and "viewer-base" not in source and "Effusion" not in source
    browser.get(result_url)
    wait.until(ec.url_contains("/login/"))


def test_it_leaves_a_usable_upload_form_on_back_from_a_result(browser, site, starter_model, browser_user):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    _log_in(browser, site, wait)
    _upload_xray(browser, wait)
    browser.back()
    wait.until(ec.presence_of_element_located((By.ID, "upload-form")))
    submit = browser.find_element(By.ID, "upload-submit")
    wait.until(lambda d: submit.is_enabled())
    assert submit.text == "Analyse"
    assert not browser.find_element(By.ID, "upload-progress").is_displayed()

    # And it works: a second upload from the same page gives a second prediction.
    _upload_xray(browser, wait)
    assert Prediction.objects.count() == 2


def test_it_views_the_xray_with_zoom_window_level_invert_and_the_heat_layer(
    browser, site, starter_model, browser_user, tmp_path
):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    _log_in(browser, site, wait)
    _upload_xray(browser, wait)
    _viewport(browser, 1440, 900)
    browser.refresh()
    wait.until(lambda d: _image_loaded(d, ".viewer-base") and _image_loaded(d, "#heatmap"))

    # The whole image is above the fold at 1440x900.
    fits = browser.execute_script(
        "const r = document.getElementById('viewer-base').getBoundingClientRect();"
        "return r.top >= 0 && r.bottom <= window.innerHeight;"
    )
    assert fits, "the X-ray does not fit above the fold at 1440x900"

    stage = browser.find_element(By.ID, "viewer-stage")
    canvas = browser.find_element(By.ID, "viewer-canvas")
    base = browser.find_element(By.ID, "viewer-base")
    browser.find_element(By.CSS_SELECTOR, "[data-action=zoom-in]").click()
    assert "scale(1.25)" in canvas.get_attribute("style")

    # Window/level by dragging (the default tool), then invert: a filter on the X-ray only.
    ActionChains(browser).move_to_element(stage).click_and_hold().move_by_offset(-80, 40).release().perform()
    assert "url(" in base.value_of_css_property("filter")
    assert "W " in browser.find_element(By.ID, "viewer-readout").text
    browser.find_element(By.CSS_SELECTOR, "[data-action=invert]").click()
    slope = browser.execute_script(
        "return document.querySelector('#viewer-wl feFuncR').getAttribute('slope');"
    )
    assert float(slope) < 0
    assert browser.find_element(By.ID, "heatmap").value_of_css_property("filter") == "none"

    # Reset brings back the fitted, unfiltered image.
    browser.find_element(By.CSS_SELECTOR, "[data-action=reset]").click()
    assert "scale(1)" in canvas.get_attribute("style") and base.value_of_css_property("filter") == "none"

    # The heat layer follows the finding: on for a positive one, off for a negative one, and the
    # button toggles it.
    findings = {f["name"]: f["positive"] for f in Prediction.objects.get().results_json["findings"]}
    picker = Select(browser.find_element(By.ID, "heatmap-select"))
    toggle = browser.find_element(By.ID, "overlay-toggle")
    for name in (next(n for n, p in findings.items() if p), next(n for n, p in findings.items() if not p)):
        picker.select_by_value(name)
        suffix = f"/{name}.png"
        wait.until(lambda d, s=suffix: d.find_element(By.ID, "heatmap").get_attribute("src").endswith(s))
        wait.until(lambda d: d.find_element(By.ID, "viewer-stage").get_attribute("aria-busy") != "true")
        assert toggle.get_attribute("aria-pressed") == ("true" if findings[name] else "false")
        assert browser.find_element(By.ID, "heatmap").is_displayed() == findings[name]
    toggle.click()
    assert browser.find_element(By.ID, "heatmap").is_displayed()
    assert browser.find_element(By.ID, "colour-key").is_displayed()
    browser.save_screenshot(str(tmp_path / "viewer-1440.png"))
