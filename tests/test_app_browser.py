"""The app end to end in a real browser: `affectvlm app` (the README's one command: the shipped demo model) serves
it (streamlit run) on 127.0.0.1 and headless Chromium (Debian's `chromium` package) drives it through Playwright,
as a user would.

Set AFFECTVLM_APP_SCREENSHOT=docs/app.png to refresh the README's screenshot; otherwise it goes to a
temporary folder.
"""

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from streamlit_server import CHECKOUT_ENV, ROOT, StreamlitServer, launch_chromium, needs_chromium

WAIT_MS = 120_000

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app as `affectvlm app` starts it, and the seconds until its first page was served."""
    started = time.monotonic()
    with StreamlitServer.app(tmp_path_factory.mktemp("app-server") / "server.log") as app:
        app.wait_until_healthy()
        yield app.url, started


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    url, started = server
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        page.set_default_timeout(WAIT_MS)
        page.goto(url)
        page.get_by_text("Upload a face mesh").wait_for()
        print(f"\nfirst page {time.monotonic() - started:.1f} s after `affectvlm app` started")
        yield page
        browser.close()


@pytest.fixture(scope="module")
def face_file(tmp_path_factory):
    from affectvlm.app_inputs import synthetic_face
    from affectvlm.geometry.io import save_mesh

    path = tmp_path_factory.mktemp("browser-faces") / "smile.ply"
    save_mesh(path, synthetic_face("happiness", 4, identity_seed=11))
    return path


def cli_prediction(path) -> dict:
    """`affectvlm predict FILE --json`: the demo model's prediction, as the app gives it."""
    command = [sys.executable, "-m", "affectvlm", "predict", str(path), "--json", "--top-prompts", "5"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300,
                            env=CHECKOUT_ENV)
    assert result.returncode == 0, result.stderr
    predictions = json.loads(result.stdout)
    assert len(predictions) == 1
    return predictions[0]


def upload(page, path):
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(path))


def shown_probabilities(page) -> dict[str, float]:
    table = page.locator('[data-testid="stTable"]').filter(has_text="probability").first
    table.wait_for()
    rows = table.locator("tbody tr")
    cells = [rows.nth(i).locator("td, th").all_inner_texts() for i in range(rows.count())]
    return {name.strip(): float(value) for name, value in cells}


def wait_for_prediction_of(page, name):
    """The page has finished the run for upload `name`: its file chip is shown and the script is idle."""
    page.locator('[data-testid="stFileChipName"]', has_text=name).wait_for()
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')")


def test_a_mesh_in_the_browser_gets_predicts_prediction_and_its_json(page, face_file, tmp_path):
    started = time.monotonic()
    upload(page, face_file)
    wait_for_prediction_of(page, face_file.name)
    shown = shown_probabilities(page)
    print(f"upload to shown prediction in the browser: {time.monotonic() - started:.2f} s")

    expected = cli_prediction(face_file)
    assert list(shown) == list(expected["probabilities"])
    assert sum(shown.values()) == pytest.approx(1, abs=len(shown) * 5e-5)  # four decimals each
    for name, probability in expected["probabilities"].items():
        assert shown[name] == pytest.approx(probability, abs=5e-5)
    heading = page.locator("h3").filter(has_text="%").first.inner_text()
    assert heading.startswith(expected["predicted"])

    with page.expect_download() as download:
        page.get_by_text("Download the prediction (JSON)").click()
    saved = tmp_path / "prediction.json"
    download.value.save_as(saved)
    downloaded = json.loads(saved.read_text())
    assert isinstance(downloaded, list) and len(downloaded) == 1  # a list of predictions, like predict --json
    downloaded = downloaded[0]
    assert downloaded.keys() == expected.keys() and downloaded["input"] == face_file.name
    assert downloaded["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-6)
    assert downloaded["predicted"] == expected["predicted"]
    assert [text for text, _ in downloaded["prompts"]] == [text for text, _ in expected["prompts"]]
    assert [cosine for _, cosine in downloaded["prompts"]] == pytest.approx(
        [cosine for _, cosine in expected["prompts"]], abs=1e-6)


def test_the_views_shown_are_the_models_input_pixel_for_pixel(page, face_file):
    from PIL import Image

    from affectvlm.app_inputs import read_upload
    from affectvlm.predict import DEMO_CHECKPOINT, inspect_meshes, load_predictor

    upload(page, face_file)
    wait_for_prediction_of(page, face_file.name)
    predictor = load_predictor(DEMO_CHECKPOINT)
    meshes, _ = read_upload(face_file.name, face_file.read_bytes())
    views = inspect_meshes(predictor, face_file.name, meshes).views[0]
    expected = np.round(255 * views.clamp(0, 1).permute(0, 2, 3, 1).numpy()).astype(np.uint8)
    images = page.locator('[data-testid="stImage"] img')
    assert images.count() == len(predictor.views)
    for index in range(images.count()):
        response = page.request.get(images.nth(index).get_attribute("src"))
        shown = np.asarray(Image.open(io.BytesIO(response.body())).convert("RGB"))
        factor = shown.shape[0] // predictor.image_size
        assert shown.shape == (predictor.image_size * factor, predictor.image_size * factor, 3)
        np.testing.assert_array_equal(shown[::factor, ::factor], expected[index])
        np.testing.assert_array_equal(shown, expected[index].repeat(factor, axis=0).repeat(factor, axis=1))


def test_a_corrupt_upload_shows_one_line_and_the_next_mesh_is_predicted(page, face_file, tmp_path):
    broken = tmp_path / "broken.obj"
    broken.write_text("v 0 0 0\nv 1 0 0\nf 1 2 9\n")
    upload(page, broken)
    alert = page.locator('[data-testid="stAlert"]').filter(has_text="broken.obj")
    alert.wait_for()
    assert alert.inner_text().strip().startswith("broken.obj: unreadable OBJ file")
    assert page.locator('[data-testid="stTable"]').count() == 0

    expected = cli_prediction(face_file)  # first, so the page's time per stage (in the screenshot) is not shared
    upload(page, face_file)
    wait_for_prediction_of(page, face_file.name)
    assert shown_probabilities(page) == pytest.approx(expected["probabilities"], abs=5e-5)
    assert page.locator('[data-testid="stAlert"]').count() == 0
    page.locator('[data-testid="stPlotlyChart"]').first.wait_for()
    page.set_viewport_size({"width": 1400, "height": 1420})  # the whole page: Streamlit scrolls inside its view
    page.wait_for_timeout(2000)  # let the 3D view draw again before the picture is taken
    screenshot = Path(os.environ.get("AFFECTVLM_APP_SCREENSHOT") or tmp_path / "app.png")
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000
