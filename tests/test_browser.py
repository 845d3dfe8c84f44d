"""End to end in a real headless Chromium (Debian's chromium + chromedriver, driven by Selenium)
against a live server: log in, upload real X-rays, read the results in the viewer (window/level on
16-bit levels, the findings outlined), and walk every page as a clinician, an auditor, a model-admin
and an integrator at 1440x900 and 390x844 with axe-core (no violation allowed, Swagger UI's own page
aside) and no sideways scrolling. Screenshots go to LUNGSITE_SCREENSHOT_DIR (default: the test's
temp folder).

axe-core comes from npm (`npm install --no-save axe-core@4.14.1` at the repository root, as .ci/run
does; node_modules/ is not committed); LUNGSITE_AXE_JS may name another copy of axe.min.js."""

import base64
import csv
import io
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission

from audit.filters import score_text
from audit.models import Prediction
from tests.conftest import ROOT, shared_data_path

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
AXE_JS = Path(os.environ.get("LUNGSITE_AXE_JS") or ROOT / "node_modules" / "axe-core" / "axe.min.js")
DESKTOP = (1440, 900)
PHONE = (390, 844)
NIH_PNG = ("nih_reproduce_chexnet", "images", "00000211_000.png")
CR_16BIT = ("pydicom_data", "RG1_UNCR.dcm")  # 1955x1841 CR, 15 bits stored, MONOCHROME1
CR_SMALL = ("dcmfx_fo-dicom", "CR-MONO1-10-chest.dcm")  # 440x440 CR, 10 bits, no File Meta

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
        "--disable-quic",
        "--disable-background-networking",
        "--disable-dev-shm-usage",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,900",
        # As Chrome's field trial ships it to users: pages sent with Cache-Control: no-store may
        # enter the back/forward cache. Off here by default, so without it Back always refetches
        # and the bfcache defence would go untested.
        "--enable-features=CacheControlNoStoreEnterBackForwardCache:level/restore-unless-http-only-cookie-change",
    ):
        options.add_argument(argument)
    profile = tempfile.mkdtemp(prefix="lungsite-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(120)
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
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("LUNGSITE_SCREENSHOT_DIR") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


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


def _pixels_shown(driver) -> bool:
    """The viewer drew the image's own gray levels (the canvas replaced the <img>)."""
    return driver.execute_script(
        "const c = document.getElementById('viewer-pixels');"
        "const stage = document.getElementById('viewer-stage');"
        "return !!c && !c.hidden && stage.getAttribute('aria-busy') === 'false';"
    )


def _pressed(driver, css: str) -> bool:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css).get_attribute("aria-pressed") == "true"


def _overflow(driver) -> int:
    """How many pixels the page is wider than the window (0 when it fits)."""
    return driver.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )


def _too_wide(driver) -> str:
    """The outermost elements that reach past the window's right edge (for the failure message)."""
    return driver.execute_script(
        "const w = document.documentElement.clientWidth; const out = [];"
        "for (const e of document.body.querySelectorAll('*')) {"
        "  if (e.getBoundingClientRect().right > w + 1 && !out.some(o => o.contains(e))) out.push(e);"
        "}"
        "const name = e => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '')"
        "  + (typeof e.className === 'string' && e.className ? '.' + e.className.split(' ').join('.') : '');"
        "return out.slice(0, 4).map(name).join(', ');"
    )


def _viewport(browser, width: int, height: int) -> None:
    # The window's size includes the browser's own frame; the page's viewport is what matters.
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 500},
    )


def _colour_scheme(browser, scheme: str) -> None:
    browser.execute_cdp_cmd(
        "Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": scheme}]}
    )


def _screenshot(browser, path: Path) -> Path:
    """The whole page at the current viewport's width, laid out for the viewport (not re-laid out
    for a window as tall as the page)."""
    width, height = browser.execute_script(
        "window.scrollTo(0, 0);"
        "return [document.documentElement.clientWidth, document.documentElement.scrollHeight]"
    )
    shot = browser.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
        },
    )
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def _axe(browser) -> list[str]:
    """axe-core's violations on the page as it is: "rule: target" lines (empty when none)."""
    if not AXE_JS.exists():
        pytest.skip(f"axe-core not found at {AXE_JS}: `npm install --no-save axe-core@4.14.1` (.ci/run does)")
    if not browser.execute_script("return !!window.axe"):
        browser.execute_script(AXE_JS.read_text())
    violations = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {resultTypes: ['violations']})"
        "  .then(r => done(r.violations.map(v => v.id + ' (' + v.impact + '): ' + v.help + ' at '"
        "     + v.nodes.slice(0, 4).map(n => n.target.join(' ')).join(' | '))))"
        "  .catch(e => done(['axe failed: ' + e]));"
    )
    return violations


def _log_in(browser, site, wait, username="erin", password="pw-erin-browser", landing="upload-form"):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    browser.delete_all_cookies()
    browser.get(site.url + "/login/")
    browser.find_element(By.ID, "id_username").send_keys(username)
    browser.find_element(By.ID, "id_password").send_keys(password)
    browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    if landing:
        wait.until(ec.presence_of_element_located((By.ID, landing)))
    else:
        wait.until(lambda d: "/login/" not in d.current_url)


def _upload(browser, wait, parts=NIH_PNG):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    xray = shared_data_path(*parts)
    browser.find_element(By.ID, "id_image").send_keys(str(xray))
    # Two submits in a row, as a double click sends them: the second must not start another upload.
    browser.execute_script(
        "const f = document.getElementById('upload-form'); f.requestSubmit(); f.requestSubmit();"
    )
    wait.until(ec.url_matches(r"/predictions/\d+/$"))
    wait.until(lambda d: _image_loaded(d, ".viewer-base") or _pixels_shown(d))


# ------------------------------------------------------------------------------------------------
# The result page, used


def test_it_logs_in_uploads_an_xray_and_outlines_its_positive_findings(
    browser, site, starter_model, browser_user, shots
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 90)
    _viewport(browser, *DESKTOP)
    _log_in(browser, site, wait)
    assert "UNTRAINED MODEL" in browser.find_element(By.CSS_SELECTOR, ".untrained-warning").text.upper()
    _upload(browser, wait)
    wait.until(_pixels_shown)

    prediction = Prediction.objects.get()
    assert prediction.user == browser_user and prediction.source == "web"
    findings = prediction.results_json["findings"]
    rows = browser.find_elements(By.CSS_SELECTOR, "#findings tbody tr")
    assert [row.get_attribute("data-finding") for row in rows] == [
        f["name"] for f in sorted(findings, key=lambda f: f["probability"], reverse=True)
    ]
    page = browser.find_element(By.TAG_NAME, "main").text
    # Scores 0-100, never "100.0 %"; the maps are read (heatmap_data), so no "no map stored".
    assert " %" not in browser.find_element(By.ID, "findings").text
    assert "no map stored" not in page
    assert "UNTRAINED" in browser.find_element(By.CSS_SELECTOR, ".result-side .honesty").text
    assert (
        browser.find_element(By.ID, "report-line")
        .get_attribute("value")
        .startswith("AI findings (lungsite starter-untrained")
    )

    # Outline display by default: every positive finding with a map above the cut-off is drawn
    # and named with its score in the key; the layer covers only a small part of the film.
    positives = [f for f in findings if f["positive"]]
    key = browser.find_element(By.ID, "key-findings").text.splitlines()
    labelled = [f"{f['name'].replace('_', ' ')} {score_text(f['probability'])}" for f in positives]
    assert positives and any(line in labelled for line in key), (key, labelled)
    assert (
        browser.find_element(By.CSS_SELECTOR, '[data-layer="outline"]').get_attribute("aria-pressed")
        == "true"
    )
    coverage = _layer_coverage(browser)
    assert 0 < coverage < 0.2, coverage

    # Filled is one toggle away and still leaves most of the film untinted; off hides the layer
    # and says how to bring it back (not "hidden for a negative finding").
    browser.find_element(By.CSS_SELECTOR, '[data-layer="filled"]').click()
    filled = _layer_coverage(browser)
    assert 0 < filled <= 0.2, filled
    print(f"findings layer: outline covers {coverage:.3f}, filled {filled:.3f} of the film")
    _screenshot(browser, shots / "clinician-result-nih-png-filled-desktop.png")
    browser.find_element(By.CSS_SELECTOR, '[data-layer="off"]').click()
    assert not browser.find_element(By.ID, "viewer-layer").is_displayed()
    caption = browser.find_element(By.ID, "layer-text").get_attribute("textContent")
    assert "layer off" in caption and "negative" not in caption

    # A negative finding picked in the table is outlined too (dashed), and the URL says which.
    negative = next(f for f in findings if not f["positive"] and f["name"] not in ("Hernia",))
    link = browser.find_element(By.CSS_SELECTOR, f'a[data-heatmap="{negative["name"]}"]')
    browser.execute_script("arguments[0].click()", link)
    assert browser.current_url.endswith(f"?heatmap={negative['name']}")
    # Picking a finding brings the layer back, in the last style used (filled).
    assert not _pressed(browser, '[data-layer="off"]')
    assert browser.find_element(By.ID, "viewer-layer").is_displayed()
    browser.find_element(By.CSS_SELECTOR, '[data-layer="outline"]').click()
    _screenshot(browser, shots / "clinician-result-nih-png-desktop.png")

    # Feedback: saved marks are confirmed where the form is, in the findings table's order.
    feedback_rows = [
        th.text.split("\n")[0] for th in browser.find_elements(By.CSS_SELECTOR, ".feedback tbody th")
    ]
    assert feedback_rows == [row.find_element(By.CSS_SELECTOR, "th a").text for row in rows]
    radio = browser.find_element(By.ID, f"label-{rows[0].get_attribute('data-finding')}-present")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'}); arguments[0].click()", radio)
    browser.find_element(By.CSS_SELECTOR, "#feedback button[type=submit]").click()
    wait.until(lambda d: d.current_url.endswith("#feedback"))
    saved = browser.find_element(By.CSS_SELECTOR, ".feedback-saved")
    assert "Feedback saved for 1 finding" in saved.text
    in_view = browser.execute_script(
        "const r = arguments[0].getBoundingClientRect();return r.top >= 0 && r.bottom <= window.innerHeight;",
        saved,
    )
    assert in_view, "the confirmation is not on screen after saving"


def _layer_coverage(browser) -> float:
    """The fraction of the findings layer's pixels that are not transparent."""
    return browser.execute_script(
        "const c = document.getElementById('viewer-layer');"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 8) n++;"
        "return n / (c.width * c.height);"
    )


def test_it_windows_a_16_bit_image_on_its_own_levels_with_the_keyboard(
    browser, site, starter_model, browser_user, shots
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 120)
    _viewport(browser, *DESKTOP)
    _log_in(browser, site, wait)
    _upload(browser, wait, CR_16BIT)
    wait.until(_pixels_shown)

    # The whole image is above the fold at 1440x900.
    fits = browser.execute_script(
        "const r = document.getElementById('viewer-pixels').getBoundingClientRect();"
        "return r.top >= 0 && r.bottom <= window.innerHeight;"
    )
    assert fits, "the X-ray does not fit above the fold at 1440x900"

    # The levels come as they are stored: 16-bit, so the readout counts to 65535.
    prediction = Prediction.objects.get()
    from audit.services import display_pixels

    display = display_pixels(prediction=prediction)
    assert display.maximum == 65535 and int(display.pixels.max()) > 4096
    stage = browser.find_element(By.ID, "viewer-stage")
    assert "of 0–65535" in browser.find_element(By.ID, "viewer-readout").text

    def window():
        return browser.execute_script("return JSON.parse(arguments[0].dataset.window)", stage)

    def rendered(x, y):
        return browser.execute_script(
            "const c = document.getElementById('viewer-pixels');"
            "return c.getContext('2d').getImageData(arguments[0], arguments[1], 1, 1).data[0];",
            x,
            y,
        )

    # What the canvas shows is the window applied to the 16-bit level of that pixel.
    def check_pixels():
        w = window()
        for x, y in ((display.width // 2, display.height // 2), (display.width // 3, display.height // 4)):
            level = int(display.pixels[y, x])
            expected = min(255, max(0, round((level - (w["level"] - w["width"] / 2)) * 255 / w["width"])))
            assert abs(rendered(x, y) - expected) <= 1, (x, y, level, w)

    check_pixels()
    auto = window()
    stage.click()
    stage.send_keys(Keys.ARROW_LEFT * 5)  # a narrower window
    stage.send_keys(Keys.ARROW_DOWN * 3)  # a higher level
    # Each key moves by 2 % of the auto window's span; the canvas (and the window it records) is
    # redrawn on the next animation frame, so wait for the state after all eight keys.
    step = 0.02 * auto["width"]
    target = {"width": auto["width"] - 5 * step, "level": auto["level"] + 3 * step}

    def settled(_):
        w = window()
        return w if all(abs(w[k] - target[k]) < 1e-3 for k in target) else False

    narrower = WebDriverWait(browser, 10).until(settled)
    assert narrower["width"] < auto["width"] and narrower["level"] > auto["level"]
    check_pixels()
    stage.send_keys("2")  # the lung preset
    assert _pressed(browser, '[data-preset="lung"]')
    WebDriverWait(browser, 10).until(lambda _: window() != narrower)
    check_pixels()
    stage.send_keys("i")  # invert
    w = window()
    x, y = display.width // 2, display.height // 2
    level = int(display.pixels[y, x])
    expected = min(255, max(0, round((level - (w["level"] - w["width"] / 2)) * 255 / w["width"])))
    WebDriverWait(browser, 10).until(lambda _: abs(rendered(x, y) - (255 - expected)) <= 1)
    stage.send_keys("0")  # reset
    WebDriverWait(browser, 10).until(lambda _: window() == auto)
    # Zoom and the layer keys.
    stage.send_keys("+")
    assert "scale(1.25)" in browser.find_element(By.ID, "viewer-canvas").get_attribute("style")
    stage.send_keys("o")
    assert _pressed(browser, '[data-layer="off"]')
    stage.send_keys("m")
    assert _pressed(browser, '[data-layer="filled"]')
    stage.send_keys("0")
    stage.send_keys("m")
    _screenshot(browser, shots / "clinician-result-cr16-keyboard-desktop.png")


def test_it_shows_nothing_on_back_after_logout(browser, site, starter_model, browser_user):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    _log_in(browser, site, wait)
    _upload(browser, wait)
    assert Prediction.objects.count() == 1  # the second submit of the same form made no prediction
    result_url = browser.current_url

    # A signed-in page that comes back from the back/forward cache is fetched again: the marker
    # set on this copy of the page is gone, and the restore did happen (pageshow said persisted).
    browser.execute_script(
        "window.__copy = 1; sessionStorage.removeItem('restored');"
        "window.addEventListener('pageshow', e => {"
        "  if (e.persisted) sessionStorage.setItem('restored', '1');"
        "});"
    )
    browser.get(site.url + "/history/")
    browser.back()
    wait.until(lambda d: d.execute_script("return document.readyState") == "complete")
    wait.until(lambda d: d.execute_script("return !window.__copy && !!document.getElementById('findings')"))
    assert browser.execute_script("return sessionStorage.getItem('restored')") == "1"

    browser.find_element(By.CSS_SELECTOR, "form.logout button[type=submit]").click()
    wait.until(ec.url_contains("/login/"))
    assert "You are logged out." in browser.find_element(By.ID, "logged-out").text

    browser.back()
    # Neither the X-ray nor a finding is on screen: the server sends a logged-out browser to login.
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
    _upload(browser, wait)
    browser.back()
    wait.until(ec.presence_of_element_located((By.ID, "upload-form")))
    submit = browser.find_element(By.ID, "upload-submit")
    wait.until(lambda d: submit.is_enabled())
    assert submit.text == "Analyse"
    assert not browser.find_element(By.ID, "upload-progress").is_displayed()

    # And it works: a second upload from the same page gives a second prediction.
    _upload(browser, wait)
    assert Prediction.objects.count() == 2


# ------------------------------------------------------------------------------------------------
# Every page, every role, both sizes, axe-core


class Walk:
    """Visits pages at both sizes, runs axe (light and dark at the desktop size, light on the phone),
    checks for sideways scrolling and saves a screenshot of each; problems are collected, so one
    run reports them all."""

    def __init__(self, browser, site, shots):
        from selenium.webdriver.support.ui import WebDriverWait

        self.browser = browser
        self.site = site
        self.shots = shots
        self.wait = WebDriverWait(browser, 120)
        self.problems: list[str] = []
        self.saved: list[Path] = []
        self.positions: dict[str, tuple[int, int]] = {}

    def visit(
        self, role: str, name: str, path: str, *, ready: str = "true", axe: bool = True, status: int = 200
    ) -> None:
        for size, (width, height) in (("desktop", DESKTOP), ("phone", PHONE)):
            _viewport(self.browser, width, height)
            _colour_scheme(self.browser, "light")
            self.browser.get(self.site.url + path)
            self._settle(ready)
            where = f"{role} {name} ({path}) at {width}x{height}"
            answered = self.browser.execute_script(
                "return performance.getEntriesByType('navigation')[0].responseStatus"
            )
            if answered != status:
                self.problems.append(f"{where}: HTTP {answered}, not {status}")
            if axe and _overflow(self.browser) > 0:
                wide = f"{_overflow(self.browser)} px of sideways scrolling, by {_too_wide(self.browser)}"
                self.problems.append(f"{where}: {wide}")
            if axe:
                self.problems += [f"{where}: {v}" for v in _axe(self.browser)]
            self.saved.append(_screenshot(self.browser, self.shots / f"{role}-{name}-{size}.png"))
            if name.startswith("result"):
                self._positions(where, size)
            if axe and size == "desktop":
                _colour_scheme(self.browser, "dark")
                self._settle(ready)
                self.problems += [f"{where}, dark: {v}" for v in _axe(self.browser)]
                if name.startswith("result"):
                    self.saved.append(
                        _screenshot(self.browser, self.shots / f"{role}-{name}-desktop-dark.png")
                    )
        _colour_scheme(self.browser, "light")

    def _positions(self, where: str, size: str) -> None:
        """On a phone the image starts near the top and the findings soon after it (they were 605
        and 1,200 px down)."""
        image, findings = self.browser.execute_script(
            "const top = id => document.getElementById(id).getBoundingClientRect().top + window.scrollY;"
            "return [top('viewer-stage'), top('findings-title')];"
        )
        self.positions[where] = (round(image), round(findings))
        if size == "phone" and (image > 300 or findings > 1100):
            self.problems.append(f"{where}: image at {image:.0f} px, findings at {findings:.0f} px")

    def _settle(self, ready: str) -> None:
        self.wait.until(lambda d: d.execute_script("return document.readyState") == "complete")
        self.wait.until(lambda d: d.execute_script(f"return !!({ready})"))
        # Every image loaded (lazy ones too: the screenshot shows the whole page), and no transition
        # running (a colour scheme switch fades colours for 0.15 s).
        self.browser.execute_script("document.querySelectorAll('img').forEach(i => { i.loading = 'eager'; })")
        self.wait.until(
            lambda d: d.execute_script(
                "return Array.from(document.images).every(i => i.complete)"
                " && document.getAnimations().every(a => a.playState !== 'running'"
                "    || a.effect.getTiming().iterations === Infinity)"
            )
        )


RESULT_READY = (
    "document.getElementById('viewer-stage') && "
    "document.getElementById('viewer-stage').getAttribute('aria-busy') === 'false' && "
    "!document.getElementById('viewer-pixels').hidden"
)


def _walk_data(django_user_model, starter_model, settings):
    """The rows the walk shows: predictions from a PNG and a 16-bit DICOM, three PACS studies of one
    patient (priors), 55 more received instances (a second worklist page), a finished batch job, an
    evaluation with real validation outputs, a training run, and a version the gate refuses."""
    import uuid

    import numpy as np
    import pydicom
    from sklearn.metrics import roc_auc_score

    from analysis import services
    from jobs.services import job_create
    from learning.models import TrainingRun
    from pacs.models import ReceivedInstance
    from pacs.services import instance_receive
    from registry.models import Evaluation
    from registry.services import model_version_register
    from tests.conftest import _user
    from tests.registry.conftest import variant_weights_bytes

    settings.LUNGSITE_DICOMWEB_URL = ""
    settings.CELERY_TASK_ALWAYS_EAGER = True
    users = {
        "clinician": _user(django_user_model, "alice", "clinician"),
        "auditor": _user(django_user_model, "carol", "auditor"),
        "model-admin": _user(django_user_model, "dave", "model-admin", is_staff=True),
        "integrator": _user(django_user_model, "ivan", "clinician"),
    }
    alice = users["clinician"]
    made = {}
    for key, parts in (("png", NIH_PNG), ("cr16", CR_16BIT)):
        data = shared_data_path(*parts).read_bytes()
        made[key] = services.analyse(
            upload=data, file_name=parts[-1], user=alice, source=Prediction.SOURCE_WEB
        )

    # One patient, three studies, as a PACS sends them (the ID is kept only as a keyed hash).
    received = []
    for parts, accession in ((CR_SMALL, "ACC1001"), (CR_SMALL, "ACC1002"), (CR_16BIT, "ACC1003")):
        ds = pydicom.dcmread(shared_data_path(*parts), force=True)
        ds.PatientID = "WALK-PATIENT-7"
        ds.AccessionNumber = accession
        ds.StudyInstanceUID = pydicom.uid.generate_uid()
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        received.append(
            instance_receive(dataset_bytes=buffer.getvalue(), source=ReceivedInstance.SOURCE_STOW)
        )
    assert all(r.state == ReceivedInstance.DONE for r in received), [r.reason for r in received]
    made["pacs"] = received[-1].prediction
    ReceivedInstance.objects.bulk_create(
        ReceivedInstance(
            source=ReceivedInstance.SOURCE_CSTORE,
            state=ReceivedInstance.SKIPPED,
            reason="modality OT: only frontal chest radiographs are analysed",
            modality="OT",
            sop_instance_uid=f"2.25.{uuid.uuid4().int}",
            study_instance_uid=f"2.25.{uuid.uuid4().int}",
        )
        for _ in range(55)
    )

    files = [(p.name, p.read_bytes()) for p in sorted(shared_data_path(*NIH_PNG[:2]).glob("*.png"))[:2]]
    files.append(("notes.txt", b"not an image"))
    made["job"] = job_create(user=alice, source="web", files=files)
    made["job"].refresh_from_db()

    # An evaluation from real validation outputs (docs/training_val_outputs.csv), for the ROC picture.
    table = list(csv.DictReader((ROOT / "docs" / "training_val_outputs.csv").open()))
    names = [column[len("label_") :] for column in table[0] if column.startswith("label_")]
    labels = np.array([[float(row[f"label_{n}"]) for n in names] for row in table])
    scores = np.array([[float(row[f"score_{n}"]) for n in names] for row in table])
    per_class = {}
    for k, name in enumerate(names):
        both = labels[:, k].min() == 0 and labels[:, k].max() == 1
        per_class[name] = {
            "auroc": float(roc_auc_score(labels[:, k], scores[:, k])) if both else None,
            "positives": int(labels[:, k].sum()),
            "negatives": int((1 - labels[:, k]).sum()),
        }
    aurocs = [v["auroc"] for v in per_class.values() if v["auroc"] is not None]
    Evaluation.objects.create(
        version=starter_model,
        evaluation_set="NIH validation split (50 images)",
        set_sha256="e" * 64,
        n_images=len(table),
        per_class=per_class,
        mean_auroc=float(np.mean(aurocs)),
        outputs={"class_names": names, "labels": labels.tolist(), "scores": scores.tolist()},
    )
    TrainingRun.objects.create(
        base_version=starter_model,
        status=TrainingRun.DONE,
        message="finished",
        created_by=users["model-admin"],
    )
    # A second version, never evaluated: the gate refuses it before the confirmation.
    made["unevaluated"] = model_version_register(
        data=variant_weights_bytes(5),
        version_name="candidate-unevaluated",
        class_names=starter_model.class_names,
        untrained=True,
    )
    settings.LUNGSITE_ACTIVATION_GATE = True
    return users, made


@pytest.fixture
def eager_tasks():
    """Celery tasks (PACS analyses, batch jobs) run at once in this process."""
    from lungsite.celery import app

    previous = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = previous


def test_it_walks_every_page_at_desktop_and_phone_sizes_with_no_axe_violation(
    browser, site, starter_model, django_user_model, settings, shots, eager_tasks
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    users, made = _walk_data(django_user_model, starter_model, settings)
    walk = Walk(browser, site, shots)
    png, cr16, pacs, job = made["png"], made["cr16"], made["pacs"], made["job"]

    # Anonymous: the login page, and the lockout page after too many wrong passwords.
    browser.delete_all_cookies()
    walk.visit("anonymous", "login", "/login/")
    for _ in range(settings.AXES_FAILURE_LIMIT):
        browser.get(site.url + "/login/")
        browser.find_element(By.ID, "id_username").send_keys("mallory")
        browser.find_element(By.ID, "id_password").send_keys("wrong-password")
        button = browser.find_element(By.CSS_SELECTOR, "form button[type=submit]")
        button.click()
        walk.wait.until(ec.staleness_of(button))  # the answer came: the next get cannot cancel it
    lockout = walk.wait.until(lambda d: d.find_element(By.ID, "lockout"))
    assert "15 minutes" in lockout.text and "Back to the login page" in lockout.text
    for size, (width, height) in (("desktop", DESKTOP), ("phone", PHONE)):
        _viewport(browser, width, height)
        walk.problems += [f"lockout page at {width}x{height}: {v}" for v in _axe(browser)]
        if _overflow(browser) > 0:
            walk.problems.append(f"lockout page at {width}x{height}: sideways scrolling")
        walk.saved.append(_screenshot(browser, shots / f"anonymous-lockout-{size}.png"))

    # A clinician: upload, results (8-bit PNG, 16-bit CR), history, jobs, a 404.
    _log_in(browser, site, walk.wait, "alice", "pw-alice")
    walk.visit("clinician", "upload", "/")
    walk.visit("clinician", "result-png", f"/predictions/{png.pk}/", ready=RESULT_READY)
    walk.visit("clinician", "result-cr16", f"/predictions/{cr16.pk}/", ready=RESULT_READY)
    walk.visit("clinician", "history", "/history/")
    walk.visit("clinician", "jobs", "/jobs/")
    walk.visit("clinician", "job", f"/jobs/{job.pk}/")
    links = browser.find_elements(By.CSS_SELECTOR, ".job-images a[href^='/predictions/']")
    assert len(links) == job.done == 2 and browser.find_element(By.ID, "job-results").is_displayed()
    walk.visit("clinician", "not-found", "/predictions/999999/", status=404)

    # An auditor: the audit log (and a bad filter), the worklist (two pages), a PACS result with
    # the same patient's earlier studies.
    _log_in(browser, site, walk.wait, "carol", "pw-carol", landing=None)
    walk.visit("auditor", "audit", "/audit/")
    walk.visit("auditor", "audit-bad-date", "/audit/?date_from=2026-13-45", status=400)
    walk.visit("auditor", "worklist", "/worklist/")
    browser.find_element(By.CSS_SELECTOR, ".pagination a[rel=next]").click()
    walk.wait.until(lambda d: "page=2" in d.current_url)
    assert browser.find_element(By.CSS_SELECTOR, ".page-numbers [aria-current=page]").text == "2"
    walk.visit("auditor", "worklist-page-2", "/worklist/?order=newest&page=2")
    walk.visit("auditor", "result-pacs", f"/predictions/{pacs.pk}/", ready=RESULT_READY)
    priors = browser.find_elements(By.CSS_SELECTOR, ".priors thead a.prior-head")
    assert len(priors) == 2, "the same patient's two earlier studies should be side by side"

    # A model-admin: the admin's pages for versions, evaluations, training runs and activations.
    version = starter_model
    _log_in(browser, site, walk.wait, "dave", "pw-dave", landing=None)
    walk.visit("model-admin", "admin-index", "/admin/")
    walk.visit("model-admin", "versions", "/admin/registry/modelversion/")
    walk.visit("model-admin", "version", f"/admin/registry/modelversion/{version.pk}/change/")
    walk.visit(
        "model-admin", "gate-refusal", f"/admin/registry/modelversion/{made['unevaluated'].pk}/activate/"
    )
    assert "evaluation gate refuses" in browser.find_element(By.ID, "gate-refusal").text
    assert not browser.find_elements(By.ID, "confirm-activate")
    walk.visit("model-admin", "evaluations", "/admin/registry/evaluation/")
    walk.visit("model-admin", "training-runs", "/admin/learning/trainingrun/")
    walk.visit("model-admin", "activations", "/admin/registry/activationevent/")
    walk.visit("model-admin", "drift", "/models/drift/")

    # An integrator: the API docs (Swagger UI's own page: screenshots only, no axe).
    _log_in(browser, site, walk.wait, "ivan", "pw-ivan")
    walk.visit(
        "integrator", "api-docs", "/api/v1/docs/", ready="document.querySelector('.swagger-ui')", axe=False
    )

    print("image and findings heading, px from the top:", walk.positions)
    assert not walk.problems, "\n".join(walk.problems)
    assert all(path.stat().st_size > 5_000 for path in walk.saved)
