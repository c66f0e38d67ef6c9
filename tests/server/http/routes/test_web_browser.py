"""The web page in a real headless Chromium (Debian's `chromium`, driven by Playwright) against
a real `python -m server`: load the page, upload an image, read the certificate, run the
Monte-Carlo audit, take a screenshot (tests/artifacts/web_page.png, or $ACCSMOOTH_SCREENSHOT).

    make test-integration PYTEST_ARGS=tests/server/http/routes/test_web_browser.py

Skipped without /usr/bin/chromium (apt-get install -y chromium) or the playwright package
(pip install playwright; never `playwright install`: the system Chromium is used).
ACCSMOOTH_WEB_MODELS_DIR serves another models folder (e.g. models/) instead of a tiny bundle.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from server.placeholder import CIFAR10, probe_weights, write_bundle
from tests.server.helpers import CALIBRATION

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ROOT = Path(__file__).resolve().parents[4]
SAMPLES = json.loads((ROOT / "server" / "static" / "samples" / "samples.json").read_text())
SAMPLE = ROOT / "server" / "static" / "samples" / SAMPLES[0]["file"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the server exited"
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError("the server did not become ready")


@pytest.fixture
def server_url(tmp_path):
    models = os.environ.get("ACCSMOOTH_WEB_MODELS_DIR")
    if not models:
        models = tmp_path / "models"
        write_bundle(
            models / "tiny-cifar",
            classes=CIFAR10,
            shape=(3, 32, 32),
            calibration=CALIBRATION,
            protocol={"n0": 50, "n": 2000, "alpha": 0.001},
            base=probe_weights((3, 32, 32), pixel=0, w=100.0, t=0.3, k=10),
        )
        write_bundle(  # a second noise level, for the bundle picker
            models / "tiny-cifar-wide",
            classes=CIFAR10,
            shape=(3, 32, 32),
            sigma=1.0,
            calibration=CALIBRATION,
            protocol={"n0": 50, "n": 2000, "alpha": 0.001},
        )
    port = free_port()
    env = os.environ | {"ACCSMOOTH_PROVIDERS": "CPUExecutionProvider"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "server",
            "--port",
            str(port),
            "--models-dir",
            str(models),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)


@pytest.fixture
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no {CHROMIUM}: apt-get install -y chromium")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def test_the_page_certifies_an_uploaded_image_and_audits_it(server_url, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 820})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server_url + "/")
    page.wait_for_function("document.getElementById('model-info').textContent.includes('sigma')")
    assert page.locator(".sample").count() == len(SAMPLES)
    assert page.locator(".sample-item figcaption").first.text_content().startswith("clear")

    page.set_input_files("#file-input", str(SAMPLE))
    page.wait_for_function("document.getElementById('result-radius').textContent !== '–'")
    label = page.text_content("#result-label")
    assert label and label != "–"
    assert "sigma" in page.text_content("#result-radius")
    assert "ms" in page.text_content("#result-latency")
    assert page.locator("#radius-plot circle").count() == 3

    page.click("#audit-button")
    page.wait_for_selector("#audit-result", state="visible", timeout=60_000)
    agreement = page.text_content("#audit-agreement")
    # the verdict the page shows is the server's, and agrees with the radii it shows (which
    # verdict depends on the image and the test bundle: either is a correct page)
    served = float(page.text_content("#result-radius").split()[0])
    monte_carlo = float(page.text_content("#audit-radius"))
    gap = float(agreement.split("radius gap ")[1].rstrip(")"))
    assert gap == pytest.approx(served - monte_carlo, abs=0.002)
    if agreement.startswith("same class") and abs(gap) >= 0.001:  # shown to 3 decimals
        assert ("surrogate OVER-ESTIMATES" in agreement) == (gap > 0)
        assert ("surrogate within Monte-Carlo" in agreement) == (gap <= 0)
    shot = Path(os.environ.get("ACCSMOOTH_SCREENSHOT", ROOT / "tests/artifacts/web_page.png"))
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert errors == []


def test_a_sample_button_certifies_that_sample(server_url, browser):
    page = browser.new_page()
    page.goto(server_url + "/")
    page.wait_for_function("document.getElementById('model-info').textContent.includes('sigma')")
    name = SAMPLES[-1]["file"].removesuffix(".png")
    page.click(f".sample[data-name='{name}']")
    page.wait_for_function("document.getElementById('result-radius').textContent !== '–'")
    assert page.locator(".sample.chosen").get_attribute("data-name") == name
    assert page.is_visible("#preview")


def test_the_bundle_picker_lists_each_noise_level_and_switches_bundle(server_url, browser):
    if os.environ.get("ACCSMOOTH_WEB_MODELS_DIR"):
        pytest.skip("checks the two test bundles")
    page = browser.new_page()
    page.goto(server_url + "/")
    page.wait_for_function("document.getElementById('model-info').textContent.includes('sigma')")
    options = page.locator("#model-select option").all_text_contents()
    assert len(options) == 2
    assert options[0].startswith("tiny-cifar · sigma 0.25 · radius up to 0.")
    assert options[1].startswith("tiny-cifar-wide · sigma 1 · radius up to 2.")
    page.select_option("#model-select", "tiny-cifar-wide")
    page.wait_for_function(
        "document.getElementById('model-info').textContent.includes('tiny-cifar-wide')"
    )
