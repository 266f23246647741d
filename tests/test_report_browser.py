"""The report in a real headless browser (Debian's chromium and chromium-driver, driven
by Selenium): no console errors, every front member drawn, a click shows its policy."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").is_file() else None)
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("selenium") is None, reason="selenium is not installed: pip install -e '.[test]'"),
    pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                       reason="chromium and chromium-driver are not installed: apt-get install chromium chromium-driver"),
]


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
                 "--window-size=1280,2300"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)  # a local driver: nothing is downloaded
    yield driver
    driver.quit()


def test_report_draws_the_front_and_shows_a_policy_on_click(mlp_run, browser):
    from selenium.webdriver.common.by import By

    pareto = json.loads((mlp_run / "pareto.json").read_text())
    layers = json.loads((mlp_run / "run.json").read_text())["layers"]
    browser.get((mlp_run / "report.html").resolve().as_uri())

    points = browser.find_elements(By.CSS_SELECTOR, "#front-chart circle.front-point")
    assert sorted(int(p.get_attribute("data-trial")) for p in points) == sorted(m["trial"] for m in pareto["members"])
    assert len(browser.find_elements(By.CSS_SELECTOR, "#front-chart .original-point")) == 1
    assert len(browser.find_elements(By.CSS_SELECTOR, "#front-chart .budget-line")) == 1
    assert browser.find_elements(By.CSS_SELECTOR, "#progress-hv path.series")
    # Members are drawn over the original (later in the chart), so one at the original's spot can be clicked.
    order = browser.execute_script(
        "var c = Array.from(document.getElementById('front-chart').children);"
        "return [c.findIndex(function (e) { return e.classList.contains('original-point'); }),"
        " c.findIndex(function (e) { return e.classList.contains('front-point'); })];")
    assert 0 <= order[0] < order[1]

    target = max(points, key=lambda p: float(p.get_attribute("cy")))  # the lowest point on screen
    trial = int(target.get_attribute("data-trial"))
    target.click()
    assert browser.find_element(By.ID, "heatmap-title").text == f"(trial {trial})"
    cells = browser.find_elements(By.CSS_SELECTOR, "#heatmap rect.heat-cell")
    assert len(cells) == 3 * len(layers)
    member = next(m for m in pareto["members"] if m["trial"] == trial)
    bits = [c.get_attribute("data-layer") for c in cells if c.get_attribute("data-row") == "bits"]
    assert bits == [layer["name"] for layer in layers]
    assert browser.find_element(By.CSS_SELECTOR, "#member-detail h3").text == f"Trial {trial}"
    assert f"{member['metric']:.4f}" in browser.find_element(By.ID, "member-detail").text
    selected = browser.find_elements(By.CSS_SELECTOR, "tr.member-row.selected")
    assert [r.get_attribute("data-trial") for r in selected] == [str(trial)]
    links = [a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "#members a")]
    assert links and all(Path(h.removeprefix("file://")).is_file() for h in links)  # relative links that resolve

    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []
    ARTIFACTS.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "report.png"))
