"""The app's latency with the shipped demo model and with an affect-tiny checkpoint (112 px, 3 views; trained one
step, which does not change the cost), on the built-in generator's 21,178-triangle face, each against a peer in
the same run:

- server work per upload: what the app computes for one uploaded PLY file (read, normalise, render, encode,
  match, then the explanation and the 3D figure's JSON), beside `affectvlm.predict.predict` on the same file (the
  `affectvlm predict` path); the per-stage split is printed;
- upload to shown prediction in a real browser (headless Chromium through Playwright, `affectvlm app` as the
  server): from choosing the file to its probabilities in the page, beside a bare Streamlit page that only
  shows the uploaded file's size (Streamlit's own floor for an upload round trip);
- time to a first page after `affectvlm app` starts, beside `streamlit run` of that bare page.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from affectvlm.predict import DEMO_CHECKPOINT
from tests.streamlit_server import CHECKOUT_ENV, ROOT, StreamlitServer, launch_chromium, needs_chromium

BARE_PAGE = '''
import streamlit as st
upload = st.file_uploader("file")
st.write("Upload a face mesh")
if upload is not None:
    st.table({"name": [upload.name], "bytes": [str(len(upload.getvalue()))]}, hide_index=True)
'''


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """An affect-tiny checkpoint, two 20k-triangle faces as PLY, and the bare Streamlit page."""
    from affectvlm.app_inputs import synthetic_face
    from affectvlm.data.synthetic import generate_dataset
    from affectvlm.geometry.io import save_mesh

    root = tmp_path_factory.mktemp("app-bench")
    generate_dataset(root / "faces", 2, seed=0, file_format="ply")
    subprocess.run([sys.executable, "-m", "affectvlm.train", str(root / "faces"), "--model", "affect-tiny",
                    "--out", str(root / "run"), "--max-steps", "1", "--epochs", "1", "--batch-size", "8",
                    "--folds", "2", "--device", "cpu", "--no-progress"], check=True, cwd=ROOT, env=CHECKOUT_ENV,
                   capture_output=True)
    faces = []
    for emotion in ("happiness", "surprise"):
        faces.append(root / f"{emotion}.ply")
        save_mesh(faces[-1], synthetic_face(emotion, 4, identity_seed=1))
    (root / "bare.py").write_text(BARE_PAGE)
    return root / "run" / "best.safetensors", faces, root / "bare.py"


MODELS = ["demo", "affect-tiny"]


def checkpoint_of(model: str, files) -> Path:
    return DEMO_CHECKPOINT if model == "demo" else files[0]


# Server work per upload --------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", MODELS)
def test_server_work_per_upload(benchmark, files, model):
    from affectvlm.app import mesh_figure, served_predictor
    from affectvlm.app_inputs import read_upload
    from affectvlm.explain import explain
    from affectvlm.predict import STAGES, inspect_meshes, predict

    face = files[1][0]
    predictor = served_predictor(str(checkpoint_of(model, files)))  # as the app holds it
    data = face.read_bytes()
    stages = {stage: [] for stage in [*STAGES, "explain", "figure"]}

    def app_work():
        started = time.perf_counter()
        meshes, frame_files = read_upload(face.name, data)
        inspection = inspect_meshes(predictor, face.name, meshes, frame_files, 5,
                                    read_seconds=time.perf_counter() - started)
        mark = time.perf_counter()
        explanation = explain(predictor, inspection.meshes[0],
                              predictor.classes.index(inspection.prediction.predicted))
        explained = time.perf_counter()
        mesh_figure(inspection.meshes[0], explanation).to_json()
        for stage in STAGES:
            stages[stage].append(inspection.seconds[stage])
        stages["explain"].append(explained - mark)
        stages["figure"].append(time.perf_counter() - explained)

    predict(predictor, [face])  # warm: the class embeddings are computed once per model
    app_work()
    cli_seconds = sorted(_timed(lambda: predict(predictor, [face])) for _ in range(10))[5]
    for values in stages.values():
        values.clear()
    benchmark.pedantic(app_work, rounds=10, iterations=1)
    print(f"\nper stage (median of 10, ms): " + ", ".join(
        f"{stage} {1000 * sorted(values)[len(values) // 2]:.1f}" for stage, values in stages.items()))
    print(f"peer: predict() on the same file, median {1000 * cli_seconds:.1f} ms")
    benchmark.extra_info["stages_ms"] = {stage: 1000 * sorted(v)[len(v) // 2] for stage, v in stages.items()}
    benchmark.extra_info["predict_ms"] = 1000 * cli_seconds


def _timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


# In the browser ----------------------------------------------------------------------------------------------

def start_server(which: str, files) -> StreamlitServer:
    """`affectvlm app` with a model, or `streamlit run` of the bare page."""
    log = files[2].with_name(f"{which}.log")  # beside the bare page
    if which in MODELS:
        return StreamlitServer.app(log, checkpoint_of(which, files))
    return StreamlitServer.page(files[2], log)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        yield browser
        browser.close()


def first_page(browser, which, files) -> float:
    page = browser.new_page()
    started = time.perf_counter()
    server = start_server(which, files)
    try:
        server.wait_until_healthy()
        page.goto(server.url)
        page.get_by_text("Upload a face mesh").first.wait_for(timeout=120_000)
        return time.perf_counter() - started
    finally:
        page.close()
        server.stop()


@needs_chromium
@pytest.mark.parametrize("which", [*MODELS, "bare streamlit page"])
def test_time_to_first_page(benchmark, browser, files, which):
    seconds = benchmark.pedantic(first_page, args=(browser, which, files), rounds=2, iterations=1)
    print(f"\n{which}: first page {seconds:.1f} s after the server started")


# The text of the page's first table (the app's probabilities), cells joined by '|'.
TABLE_TEXT = """() => Array.from(document.querySelector('[data-testid="stTable"]')?.querySelectorAll('tbody tr > *') ?? [])
                       .map(cell => cell.textContent.trim()).join('|')"""


# The script has ended: no "Running..." indicator, and no element left over from the previous run (Streamlit
# marks those stale until the script either sends them again or ends).
SCRIPT_ENDED = """() => !document.querySelector('[data-testid="stStatusWidget"]')
                       && !document.querySelector('[data-stale="true"]')"""
SETTLE_MS = 1000  # after the script ends, the browser still draws the 3D view and the charts, then idles
IDLE = "() => new Promise(idle => requestIdleCallback(() => idle(), {timeout: 10000}))"

STAGE_TEXT = """() => Array.from(Array.from(document.querySelectorAll('[data-testid="stTable"]')).pop()
                       .querySelectorAll('tbody tr > *')).map(cell => cell.textContent.trim()).join(' ')"""


@needs_chromium
@pytest.mark.parametrize("which", [*MODELS, "bare streamlit page"])
def test_upload_to_shown_prediction(benchmark, browser, files, which):
    from affectvlm.predict import load_predictor, predict

    faces = files[1]
    if which in MODELS:
        predictor = load_predictor(checkpoint_of(which, files))
        shown = ["|".join(f"{name}|{p:.4f}" for name, p in result.probabilities.items())
                 for result in predict(predictor, faces)]
    else:
        shown = [f"{face.name}|{face.stat().st_size}" for face in faces]
    server = start_server(which, files)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        server.wait_until_healthy()
        page.goto(server.url)
        page.get_by_text("Upload a face mesh").first.wait_for(timeout=120_000)
        uploads = iter(range(1_000_000))

        def settled_page():
            """Untimed: the previous page fully drawn, as a user sees it before the next upload."""
            page.wait_for_function(SCRIPT_ENDED, polling=10, timeout=60_000)
            page.wait_for_timeout(SETTLE_MS)
            for _ in range(3):
                page.evaluate(IDLE)
            return (next(uploads) % 2,), {}  # alternate, so each upload changes what is shown

        def upload_and_wait(index):
            page.locator('input[type="file"]').set_input_files(str(faces[index]))
            page.wait_for_function(f"expected => ({TABLE_TEXT})() === expected", arg=shown[index],
                                   timeout=60_000, polling=10)

        for _ in faces:  # warm: the browser loads its chart libraries on first use
            upload_and_wait(*settled_page()[0])
        benchmark.pedantic(upload_and_wait, setup=settled_page, rounds=8, iterations=1)
        if which in MODELS:  # the server's own split of the last upload, as the page shows it
            page.get_by_text("Time per stage").wait_for()
            print("\nthe page's time per stage (ms):", page.evaluate(STAGE_TEXT))
    finally:
        page.close()
        server.stop()
