"""runs/report.html in a real browser: Debian's headless Chromium, driven by selenium through Debian's
chromedriver, opens a report built from two toy experiments and a benchmark file, and every
experiment's section, each claim with its verdict, the plots, the interval pictures and the
performance section render with a non-zero size. `make install` installs chromium and chromium-driver
where it runs as root with apt-get; elsewhere this test is skipped with the reason."""
import json
import shutil
from dataclasses import replace

import pytest

from honed.core.experiment import VERDICTS
from honed.core.report import VERDICT_LABEL, write_report
from honed.core.runner import run_experiment
from tests.core.toy_experiment import ToyConfig, ToyExperiment

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1280,2000")

pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="Debian's chromium and chromium-driver are not installed (make install adds "
                                       "them as root: apt-get install chromium chromium-driver)")


class OtherToy(ToyExperiment):
    id = "98-other-toy"
    title = "Other toy"


@pytest.fixture
def report(tmp_path, monkeypatch):
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "bench_loop.json").write_text(json.dumps({"ratio": 1.01, "target": 1.03, "met": True}))
    monkeypatch.setenv("HONED_BENCHMARKS", str(bench))
    results = [run_experiment(ToyExperiment(), ToyConfig(), "small", tmp_path, "cpu", progress=False),
               run_experiment(OtherToy(), replace(ToyConfig(), offset=20.0), "small", tmp_path, "cpu", progress=False)]
    return write_report(tmp_path)[1], results


@pytest.fixture
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (dev extra)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


def size(element) -> tuple[float, float]:
    rect = element.rect
    return rect["width"], rect["height"]


def test_every_section_claim_verdict_and_plot_renders(report, browser):
    from selenium.webdriver.common.by import By

    page, results = report
    browser.get(page.resolve().as_uri())
    assert browser.title == "honed report"
    for result in results:
        heading = browser.find_element(By.ID, result.id)
        assert heading.is_displayed() and min(size(heading)) > 0 and result.title in heading.text
        plot = browser.find_element(By.CSS_SELECTOR, f"img[alt='{result.id}']")
        natural = browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight, "
                                         "arguments[0].complete]", plot)
        assert natural[0] > 0 and natural[1] > 0 and natural[2] and min(size(plot)) > 0
        claims = browser.execute_script(
            "const h = document.getElementById(arguments[0]); let t = h.nextElementSibling;"
            "while (t && !(t.tagName === 'TABLE' && t.rows[0].cells[0].textContent === 'claim')) t = t.nextElementSibling;"
            "return [...t.rows].slice(1).map(r => [r.cells[0].textContent, r.cells[5].textContent, r.cells[5].className,"
            " r.cells[7].querySelector('svg').getBoundingClientRect().width])", result.id)
        assert [c[:2] for c in claims] == [[c.name, VERDICT_LABEL[c.verdict]] for c in result.claims]
        assert all(cls in VERDICTS and width > 0 for _, _, cls, width in claims)
    assert len({c.verdict for r in results for c in r.claims}) >= 2  # more than one verdict colour on the page
    performance = browser.find_element(By.ID, "performance")
    assert performance.is_displayed() and min(size(performance)) > 0
    bench = browser.find_element(By.XPATH, "//h3[@class='benchmark' and text()='bench_loop']/following::table[1]")
    assert "ratio" in bench.text and "1.01" in bench.text and min(size(bench)) > 0
