"""The web page in headless Chromium: upload an image, see the predicted label and bars; a bad file shows an error.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them). Without them the test
skips, unless ``AUTOTIMM_REQUIRE_BROWSER=1`` (set by ``.ci/run``), when it fails.
Set ``AUTOTIMM_SCREENSHOT_DIR`` to keep screenshots of the page.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from test_service import build_model, expected, png

CHROMEDRIVER = Path("/usr/bin/chromedriver")
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def _browser() -> str | None:
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


def _require_browser() -> str:
    problems = []
    try:
        import selenium  # noqa: F401
    except ImportError:
        problems.append("selenium is not installed (pip install -e '.[dev]')")
    browser = _browser()
    if browser is None:
        problems.append("no Chromium on PATH (apt-get install chromium)")
    if not CHROMEDRIVER.is_file():
        problems.append(f"no {CHROMEDRIVER} (apt-get install chromium-driver)")
    if problems:
        message = "Browser test needs: " + "; ".join(problems)
        if os.environ.get("AUTOTIMM_REQUIRE_BROWSER") == "1":
            pytest.fail(message + " (AUTOTIMM_REQUIRE_BROWSER=1)")
        pytest.skip(message)
    assert browser is not None
    return browser


def _screenshot(driver, tmp_path: Path, name: str) -> None:
    folder = Path(os.environ.get("AUTOTIMM_SCREENSHOT_DIR", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(folder / name))


def test_page_predicts_an_uploaded_image(tmp_path):
    browser = _require_browser()
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from autotimm.serving.app import create_app, serve_in_thread

    model = build_model()
    checkpoint = model.save(tmp_path / "pets.ckpt")
    image = tmp_path / "my photo.png"
    image.write_bytes(png(42, size=(120, 90)))
    prediction = expected(model, image.read_bytes(), 3)
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("not a picture")

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,760"):
        options.add_argument(argument)
    # An explicit driver path: Selenium Manager (which would download a driver) is never run.
    service = webdriver.ChromeService(executable_path=str(CHROMEDRIVER))
    with serve_in_thread(create_app(checkpoint, top_k=3)) as url:
        driver = webdriver.Chrome(options=options, service=service)
        try:
            wait = WebDriverWait(driver, 30)
            driver.get(url + "/")
            wait.until(ec.text_to_be_present_in_element((By.ID, "model-meta"), "3 classes"))
            # The model's file name and its classes, not a class name such as "OnnxPredictor".
            assert driver.find_element(By.ID, "model-name").text == "pets.ckpt"
            assert "3 classes: tabby cat, golden retriever, red fox" in driver.find_element(By.ID, "model-meta").text
            assert driver.title == "pets.ckpt · 3 classes: tabby cat, golden retriever, red fox · autotimm"
            driver.find_element(By.ID, "file-input").send_keys(str(image))
            wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#predictions li")))
            _screenshot(driver, tmp_path, "service_page.png")
            assert driver.find_element(By.CSS_SELECTOR, "#headline strong").text == prediction.label
            rows = driver.find_elements(By.CSS_SELECTOR, "#predictions li")
            assert [row.get_attribute("data-label") for row in rows] == prediction.labels
            assert f"{prediction.probability * 100:.1f}%" in rows[0].text
            assert driver.find_element(By.ID, "error").is_displayed() is False
            assert "my photo.png" in driver.find_element(By.ID, "filename").text

            driver.find_element(By.ID, "file-input").send_keys(str(not_an_image))
            wait.until(ec.visibility_of_element_located((By.ID, "error")))
            _screenshot(driver, tmp_path, "service_page_error.png")
            message = driver.find_element(By.ID, "error").text
            assert "415" in message and "'notes.txt' is not an image" in message
            errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and "415" not in e["message"]]
            assert not errors, errors
        finally:
            driver.quit()
