"""The AffectVLM app: the expression of a 3D face or a 4D sequence, in the browser.

Run it with `affectvlm app [--checkpoint PATH] [--port N]`, or from a checkout with
`python -m streamlit run affectvlm/app.py [-- --checkpoint PATH]` (without a checkpoint: the shipped demo model).

The page takes an uploaded mesh, a zip of a sequence's frames, or a synthetic face made live, and shows the
views exactly as the model saw them, the mesh in 3D (with the explanation as a heat map), the probabilities,
the best-matching prompts and the time of each stage. The prediction itself is `affectvlm.predict`'s, the
same as `affectvlm predict --json` gives for the same file; the JSON download has that schema.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import streamlit as st

from affectvlm.app_inputs import (INTENSITIES, SYNTHETIC_EMOTIONS, UPLOAD_SUFFIXES, UploadError, UploadLimits,
                                  read_upload, synthetic_face, turned)
from affectvlm.explain import DEFAULT_METHOD, METHODS, Explanation, explain, heat_map
from affectvlm.geometry.mesh import Mesh
from affectvlm.predict import (DEMO_CHECKPOINT, STAGES, Inspection, Predictor, describe_normalising, inspect_meshes,
                               load_predictor)

TOP_PROMPTS = 5
EXPLANATION_LABELS = {"occlusion": "Occlusion: what the prediction needs",
                      "gradient": "Gradient: where the score is most sensitive"}
EXPLANATION_CAPTIONS = {
    "occlusion": "brighter regions are those whose hiding lowers its probability most",
    "gradient": "brighter regions are those where a change in the image moves its score most",
}
VIEW_DISPLAY_PIXELS = 224  # small model views are enlarged by whole pixels to about this size, never smoothed


@dataclass(frozen=True)
class AppSettings:
    checkpoint: str | None = None  # None: the shipped demo model
    limits: UploadLimits = field(default_factory=UploadLimits)


def settings_from_command_line(argv: list[str]) -> AppSettings:
    parser = argparse.ArgumentParser(prog="affectvlm app", description="The AffectVLM app (Streamlit)")
    parser.add_argument("--checkpoint", help="a checkpoint written by affectvlm train (default: the demo model)")
    return AppSettings(parser.parse_args(argv).checkpoint)


@st.cache_resource(show_spinner="Loading the model")
def cached_predictor(checkpoint: str) -> Predictor:
    return served_predictor(checkpoint)


def served_predictor(checkpoint: str) -> Predictor:
    """The checkpoint's predictor, ready to serve uploads."""
    predictor = load_predictor(checkpoint)
    # One prediction and explanation now, so that the first upload does not pay for the class embeddings and the
    # first passes through the model.
    warm_up = inspect_meshes(predictor, "warm-up", [synthetic_face("neutral", 1, 0)])
    for method in METHODS:
        explain(predictor, warm_up.meshes[0], 0, method)
    # torch, open_clip and the model are about half a million objects that live as long as the server. Each
    # full garbage collection walked them all (about 0.3 s on 2 cores, twice per upload); frozen, it skips them.
    gc.collect()  # what is garbage now is not frozen with them
    gc.freeze()
    return predictor


@dataclass(frozen=True)
class Controls:
    source: str  # "upload" or "synthetic"
    upload: object | None  # Streamlit's UploadedFile
    emotion: str
    intensity: int
    identity: int
    yaw: int
    pitch: int
    explanation: str | None  # one of affectvlm.explain.METHODS, None: off

    @property
    def input_key(self) -> tuple:
        """What determines the prediction: the input and the view controls."""
        if self.source == "upload":
            what = None if self.upload is None else (self.upload.file_id, self.upload.name, self.upload.size)
        else:
            what = (self.emotion, self.intensity, self.identity)
        return self.source, what, self.yaw, self.pitch


def main(settings: AppSettings) -> None:
    st.set_page_config(page_title="AffectVLM", page_icon=":performing_arts:", layout="wide")
    st.title("AffectVLM: the expression of a 3D face")
    try:
        checkpoint = settings.checkpoint or str(DEMO_CHECKPOINT)
        predictor = cached_predictor(checkpoint)
    except (OSError, ValueError) as error:  # CheckpointError is a ValueError
        st.error(_one_line(error))
        st.stop()
    st.caption(f"Checkpoint `{Path(checkpoint).name}`: {len(predictor.classes)} classes, views "
               f"{', '.join(predictor.views)} at {predictor.image_size} px, image recipe `{predictor.recipe}`, "
               f"pose normalisation `{predictor.pose}`.")
    controls = sidebar()
    try:
        inspection = analysed(predictor, controls, settings.limits)
    except UploadError as error:
        st.error(str(error))
        return
    if inspection is None:
        st.info(f"Upload a face mesh ({', '.join(UPLOAD_SUFFIXES[:-1])}) or a zip of a 4D sequence's frames, "
                "or choose a synthetic face in the sidebar.")
        return
    show(predictor, inspection, controls)


def sidebar() -> Controls:
    with st.sidebar:
        st.header("Input")
        source = st.radio("Face", ["upload", "synthetic"], key="source", horizontal=True,
                          format_func={"upload": "Upload a file", "synthetic": "Synthetic face"}.get)
        upload, emotion, intensity, identity = None, "happiness", 4, 0
        if source == "upload":
            upload = st.file_uploader("A mesh, or a zip of a 4D sequence's frames", key="upload",
                                      help=f"Accepted: {', '.join(UPLOAD_SUFFIXES)}")
        else:
            emotion = st.selectbox("Emotion", SYNTHETIC_EMOTIONS, index=SYNTHETIC_EMOTIONS.index("happiness"),
                                   key="emotion")
            intensity = st.select_slider("Intensity", INTENSITIES, value=INTENSITIES[-1], key="intensity",
                                         disabled=emotion == "neutral")
            identity = int(st.number_input("Identity (seed)", 0, 999_999, 0, key="identity"))
        st.header("View")
        yaw = st.slider("Turn the head left or right (degrees)", -45, 45, 0, key="yaw")
        pitch = st.slider("Tilt the head up or down (degrees)", -30, 30, 0, key="pitch")
        explain_on = st.toggle("Explain on the face", value=True, key="explain",
                               help="Heat map of how much each part of the face drove the predicted class")
        method = st.radio("Explanation", METHODS, index=METHODS.index(DEFAULT_METHOD), key="explanation",
                          format_func=EXPLANATION_LABELS.get, disabled=not explain_on)
    return Controls(source, upload, emotion, intensity, identity, yaw, pitch, method if explain_on else None)


def analysed(predictor: Predictor, controls: Controls, limits: UploadLimits) -> Inspection | None:
    """The inspection of the current input, computed once per input and view setting (reruns for other
    widgets reuse it); None while there is no input; UploadError for a refused upload."""
    key = controls.input_key
    memo = st.session_state.get("analysis")
    if memo is None or memo[0] != key:
        try:
            memo = (key, _inspect(predictor, controls, limits), None)
        except UploadError as error:
            memo = (key, None, error)
        st.session_state["analysis"] = memo
    if memo[2] is not None:
        raise memo[2]
    return memo[1]


def _inspect(predictor: Predictor, controls: Controls, limits: UploadLimits) -> Inspection | None:
    started = time.perf_counter()
    if controls.source == "upload":
        if controls.upload is None:
            return None
        name = controls.upload.name
        meshes, frame_files = read_upload(name, controls.upload.getvalue(), limits)
    else:
        intensity = f", intensity {controls.intensity}" if controls.emotion != "neutral" else ""
        name = f"synthetic {controls.emotion}{intensity}, identity {controls.identity}"
        meshes, frame_files = [synthetic_face(controls.emotion, controls.intensity, controls.identity)], None
    meshes = [turned(mesh, controls.yaw, controls.pitch) for mesh in meshes]
    return inspect_meshes(predictor, name, meshes, frame_files, TOP_PROMPTS,
                          read_seconds=time.perf_counter() - started)


def explained(predictor: Predictor, controls: Controls, mesh: Mesh, frame: int, class_name: str) -> Explanation:
    key = (controls.input_key, frame, class_name, controls.explanation)
    memo = st.session_state.get("explanation_memo")
    if memo is None or memo[0] != key:
        memo = (key, explain(predictor, mesh, predictor.classes.index(class_name), controls.explanation))
        st.session_state["explanation_memo"] = memo
    return memo[1]


# Showing a prediction ----------------------------------------------------------------------------------------

def show(predictor: Predictor, inspection: Inspection, controls: Controls) -> None:
    prediction = inspection.prediction
    st.subheader(f"{prediction.predicted} ({prediction.probabilities[prediction.predicted]:.1%})")
    st.caption(f"Before rendering: {describe_normalising(prediction.normalised)}.")
    frame, shown = 0, prediction.probabilities
    if prediction.frames is not None:
        st.caption(f"4D sequence of {len(prediction.frames)} frames; the probabilities below are the sequence's.")
        frame = st.slider("Frame", 0, len(prediction.frames) - 1, 0, key="frame")
        shown = prediction.frames[frame]
        st.line_chart(pd.DataFrame(prediction.frames).rename_axis("frame"), height=220)
        st.caption(f"Frame {frame} ({prediction.frame_files[frame]}): {max(shown, key=shown.get)} "
                   f"({max(shown.values()):.1%})")
    class_name = max(shown, key=shown.get)
    mesh = inspection.meshes[frame]

    left, right = st.columns([3, 2])
    with right:  # first, so the probabilities are on the page before the explanation is computed
        table = pd.DataFrame({"emotion": list(prediction.probabilities),
                              "probability": list(prediction.probabilities.values())})
        st.bar_chart(table, x="emotion", y="probability", height=260)
        st.table(table.assign(probability=table.probability.map("{:.4f}".format)), hide_index=True)
    with left:
        explanation = explained(predictor, controls, mesh, frame, class_name) if controls.explanation else None
        if explanation is not None:
            st.caption(f"Explanation of '{explanation.class_name}' by {controls.explanation}: "
                       f"{EXPLANATION_CAPTIONS[controls.explanation]}; {explanation.on_face:.0%} of the weight "
                       "lies on the face. Drag to turn the face.")
        else:
            st.caption("Drag to turn the face.")
        st.plotly_chart(mesh_figure(mesh, explanation), key="mesh3d")

    st.markdown("**The views as the model saw them**")
    views = inspection.views[frame]  # (K, 3, H, W)
    st.image([enlarged(view) for view in views.numpy()], output_format="PNG",  # lossless: the pixels as they were
             caption=[f"{name}, {views.shape[-1]} px" for name in predictor.views])
    left, right = st.columns(2)
    with left:
        st.markdown("**Best-matching prompts**")
        st.table(pd.DataFrame(prediction.prompts, columns=["prompt", "cosine similarity"])
                 .assign(**{"cosine similarity": lambda t: t["cosine similarity"].map("{:+.3f}".format)}),
                 hide_index=True)
    with right:
        st.markdown("**Time per stage**")
        seconds = [inspection.seconds[stage] for stage in STAGES]
        st.table(pd.DataFrame({"stage": [*STAGES, "total"],
                               "ms": [f"{1000 * s:.1f}" for s in [*seconds, sum(seconds)]]}), hide_index=True)
    st.download_button("Download the prediction (JSON)", prediction_json(inspection),
                       file_name=f"{PurePosixPath(prediction.input).stem or 'face'}.prediction.json",
                       mime="application/json", key="download", on_click="ignore")


def prediction_json(inspection: Inspection) -> str:
    """The same JSON as `affectvlm predict --json` prints for this one input."""
    return json.dumps([inspection.prediction.as_dict()], indent=2)


def enlarged(view: np.ndarray) -> np.ndarray:
    """A (3, H, W) view in [0, 1] as an (H', W', 3) uint8 image, each pixel repeated a whole number of times."""
    factor = max(1, VIEW_DISPLAY_PIXELS // view.shape[-1])
    image = np.clip(view.transpose(1, 2, 0), 0, 1)
    return np.round(255 * image.repeat(factor, axis=0).repeat(factor, axis=1)).astype(np.uint8)


def mesh_figure(mesh: Mesh, explanation: Explanation | None):
    import plotly.graph_objects as go

    x, y, z = mesh.vertices.T
    i, j, k = mesh.faces.T
    surface = go.Mesh3d(x=x, y=y, z=z, i=i, j=j, k=k, hoverinfo="skip", flatshading=False,
                        lighting=dict(ambient=0.35, diffuse=0.8, specular=0.1, roughness=0.7),
                        lightposition=dict(x=500, y=800, z=2000))
    if explanation is None:
        surface.update(color="#d8c8b4")
    else:
        surface.update(intensity=heat_map(explanation, mesh), colorscale="Inferno", cmin=0, cmax=1,
                       colorbar=dict(title="weight", thickness=12))
    figure = go.Figure(surface)
    hidden = dict(visible=False)
    figure.update_layout(height=460, margin=dict(l=0, r=0, t=0, b=0),
                         scene=dict(aspectmode="data", xaxis=hidden, yaxis=hidden, zaxis=hidden,
                                    camera=dict(eye=dict(x=0, y=0, z=2.1), up=dict(x=0, y=1, z=0))))
    return figure


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__


if __name__ == "__main__":
    import sys

    main(settings_from_command_line(sys.argv[1:]))
