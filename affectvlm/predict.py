"""Predicting the expression of mesh files and 4D sequence folders with a trained checkpoint.

The meshes are rendered exactly as the checkpoint's training data was: the same canonical frame, views, image
size, projection and image recipe (read from the checkpoint), through the same render function as the data
pipeline (`affectvlm.data.views.render_model_views`) and the same evaluation-time normalisation (the
augmenter with augmentation off). `load_predictor` and `predict` serve the command line and the app.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from affectvlm.data.augment import AugmentSettings, TorchAugmenter, plan_augmentation
from affectvlm.data.views import render_model_views
from affectvlm.geometry.cameras import view_cameras
from affectvlm.geometry.io import READABLE_FORMATS, load_mesh
from affectvlm.geometry.mesh import DEFAULT_MAX_FACES, Mesh, MeshError
from affectvlm.geometry.normalise import UNRECORDED_POSE, normalise

FRAMES_PER_BATCH = 16
# The demo model that ships with the package: the main job's checkpoint exported (README, "The demo model").
DEMO_CHECKPOINT = Path(__file__).parent / "models" / "demo.safetensors"
STAGES = ("read", "normalise", "render", "encode", "match")  # what Inspection.seconds times


@dataclass
class Prediction:
    input: str
    probabilities: dict[str, float] = field(default_factory=dict)  # emotion -> probability
    predicted: str | None = None
    prompts: list[tuple[str, float]] = field(default_factory=list)  # best-matching prompts, cosine similarity
    frames: list[dict[str, float]] | None = None  # 4D sequences: per-frame probabilities, in frame order
    frame_files: list[str] | None = None
    # What normalising did to the input: "holes_closed" (the most in any frame) and, for a model of registered
    # faces, "registered" (false when a frame's fit failed and it was only centred and scaled).
    normalised: dict | None = None
    error: str | None = None  # set when the input could not be read; nothing else is then

    def as_dict(self) -> dict:
        return {key: value for key, value in self.__dict__.items() if value is not None}


@dataclass
class Predictor:
    model: torch.nn.Module
    bank: object  # affectvlm.model.PromptBank
    classes: tuple[str, ...]
    views: tuple[str, ...]
    image_size: int
    recipe: str
    projection: str
    pose: str  # pose normalisation, affectvlm.geometry.normalise.POSES
    augmenter: TorchAugmenter
    device: torch.device
    prompt_texts: list[str]
    prompt_embeddings: torch.Tensor  # (P, D) normalised


def load_predictor(checkpoint: str | Path, device: str | torch.device = "cpu") -> Predictor:
    """The model, prompt bank and render settings of a checkpoint; CheckpointError for a bad file."""
    from affectvlm.train.checkpoint import load_checkpoint

    return predictor_of(load_checkpoint(checkpoint), device)


def predictor_of(stored, device: str | torch.device = "cpu") -> Predictor:
    """load_predictor of a checkpoint already read (affectvlm.train.checkpoint.Checkpoint)."""
    from affectvlm.model.affect_model import build_model
    from affectvlm.model.prompts import PromptBank
    from affectvlm.train.checkpoint import load_module_state

    info = stored.info
    model = build_model(info["model"])
    load_module_state(model, stored, "module.model.")
    data, source = info["data"], info["data"]["source"]
    return assemble_predictor(model, PromptBank.from_dict(info["prompts"]), info["classes"], source["views"],
                              int(source["size"]), source["recipe"], source["projection"],
                              source.get("pose", UNRECORDED_POSE),
                              (data["mean"], data["std"]), device)


def assemble_predictor(model: torch.nn.Module, bank, classes, views, image_size: int, recipe: str, projection: str,
                       pose: str, normalisation: tuple, device: str | torch.device) -> Predictor:
    """A Predictor of `model` (put in eval mode on `device`), with the embeddings of every class prompt."""
    device = torch.device(device)
    model.to(device).eval()
    texts = [prompt for name in classes for prompt in bank.class_prompts(name)]
    with torch.no_grad():
        embeddings = torch.nn.functional.normalize(model.encode_text(texts).float(), dim=1)
    return Predictor(model, bank, tuple(classes), tuple(views), image_size, recipe, projection, pose,
                     TorchAugmenter(*normalisation), device, texts, embeddings)


def predict(predictor: Predictor, inputs: list[str | Path], top_prompts: int = 3) -> list[Prediction]:
    """One Prediction per input (a mesh file, or a folder of a 4D sequence's frames); an input that cannot be
    read gives a Prediction with `error` set, and the others go on."""
    results = []
    for path in map(Path, inputs):
        try:
            results.append(_predict_one(predictor, path, top_prompts))
        except (MeshError, OSError, ValueError) as error:
            results.append(Prediction(str(path), error=_one_line(error, path)))
    return results


def _predict_one(predictor: Predictor, path: Path, top_prompts: int) -> Prediction:
    meshes, frame_files = read_input(path)
    return inspect_meshes(predictor, str(path), meshes, frame_files, top_prompts).prediction


@dataclass
class Inspection:
    """A prediction with what led to it, for the app: the meshes in the canonical frame, the views exactly as
    the model saw them, and the time each stage took."""

    prediction: Prediction
    meshes: list[Mesh]  # one per frame, normalised
    views: torch.Tensor  # (N, K, 3, H, W) in [0, 1], before the CLIP normalisation; N frames
    seconds: dict[str, float]  # per stage, in the order of STAGES


def read_input(path: str | Path, max_faces: int = DEFAULT_MAX_FACES) -> tuple[list[Mesh], list[str] | None]:
    """The meshes of one input: a mesh file, or a folder of a sequence's frames in file name order (then also
    the frames' file names). MeshError, OSError or ValueError name what cannot be read."""
    path = Path(path)
    if not path.is_dir():
        if not path.is_file():
            raise OSError(f"{path}: no such file")
        return [load_mesh(path, max_faces)], None
    frames = sorted(p for p in path.iterdir() if p.suffix.lower() in READABLE_FORMATS)
    if not frames:
        raise ValueError(f"{path}: a folder with no mesh files ({', '.join(READABLE_FORMATS)})")
    return [load_mesh(frame, max_faces) for frame in frames], [frame.name for frame in frames]


@torch.no_grad()
def inspect_meshes(predictor: Predictor, name: str, meshes: list[Mesh], frame_files: list[str] | None = None,
                   top_prompts: int = 3, read_seconds: float = 0.0) -> Inspection:
    """Predict one input from its meshes as read (several meshes with `frame_files`: a sequence's frames),
    timing each stage."""
    seconds = {stage: 0.0 for stage in STAGES} | {"read": read_seconds}
    with _timed(seconds, "normalise"):
        meshes = [normalise(mesh, predictor.pose) for mesh in meshes]
    views, embeddings = [], []
    for start in range(0, len(meshes), FRAMES_PER_BATCH):
        chunk = meshes[start:start + FRAMES_PER_BATCH]
        with _timed(seconds, "render"):
            views.append(model_views(predictor, [torch.from_numpy(m.vertices) for m in chunk],
                                     [torch.from_numpy(m.faces) for m in chunk]))
        with _timed(seconds, "encode"):
            embeddings.append(encode_model_views(predictor, views[-1]))
    embeddings = torch.cat(embeddings)
    if frame_files is None:
        with _timed(seconds, "match"):
            result = _describe(predictor, name, embeddings, top_prompts)
    else:
        with _timed(seconds, "encode"):
            sequence = predictor.model.fuse_frames(embeddings[None], torch.ones(1, len(meshes), dtype=torch.bool,
                                                                                device=embeddings.device))
        with _timed(seconds, "match"):
            result = _describe(predictor, name, sequence, top_prompts)
            result.frames = [_probabilities(predictor, row) for row in _classify(predictor, embeddings)]
            result.frame_files = list(frame_files)
    result.normalised = _what_normalising_did(meshes)
    return Inspection(result, meshes, torch.cat(views).cpu(), seconds)


def _what_normalising_did(meshes: list[Mesh]) -> dict:
    done = {"holes_closed": max(mesh.metadata["normalise_holes_closed"] for mesh in meshes)}
    if "normalise_registered" in meshes[0].metadata:
        done["registered"] = all(mesh.metadata["normalise_registered"] for mesh in meshes)
    return done


@contextmanager
def _timed(seconds: dict[str, float], stage: str):
    """Add the wall time of the block to seconds[stage]."""
    start = time.perf_counter()
    yield
    seconds[stage] += time.perf_counter() - start


@torch.no_grad()
def embed_meshes(predictor: Predictor, paths: list[Path]) -> torch.Tensor:
    """Fused view embeddings (N, D) of mesh files, rendered as in training."""
    meshes = []
    for path in paths:
        if not path.is_file():
            raise OSError(f"{path}: no such file")
        meshes.append(normalise(load_mesh(path), predictor.pose))
    return embed_vertices(predictor, [torch.from_numpy(m.vertices) for m in meshes],
                          [torch.from_numpy(m.faces) for m in meshes])


@torch.no_grad()
def embed_vertices(predictor: Predictor, vertices: list[torch.Tensor], faces: list[torch.Tensor]) -> torch.Tensor:
    """Fused view embeddings (N, D) of meshes already in the canonical frame."""
    return encode_model_views(predictor, model_views(predictor, vertices, faces))


def model_views(predictor: Predictor, vertices: list[torch.Tensor], faces: list[torch.Tensor]) -> torch.Tensor:
    """The views (N, K, 3, H, W) in [0, 1] of meshes in the canonical frame, rendered as in training."""
    device = predictor.device
    cameras = view_cameras(predictor.views, projection=predictor.projection)
    return torch.cat([render_model_views(v[None].to(device), f.to(device), cameras, predictor.image_size,
                                         predictor.recipe) for v, f in zip(vertices, faces)])


def encode_model_views(predictor: Predictor, images: torch.Tensor) -> torch.Tensor:
    """Fused view embeddings (N, D) of views (N, K, 3, H, W) in [0, 1]: normalised as in evaluation, then
    encoded. Differentiable (the explanation takes gradients through it); callers choose no_grad."""
    count = images.shape[0]
    ids = torch.arange(count).numpy()
    plan = plan_augmentation(AugmentSettings.off(), 0, 0, ids, -torch.ones(count, dtype=torch.int64).numpy(),
                             -torch.ones(count, dtype=torch.int64).numpy(), torch.ones(count, dtype=torch.bool).numpy(),
                             predictor.views)
    model_input = predictor.augmenter(images, plan)
    return predictor.model.fuse_views(predictor.model.encode_views(model_input)).float()


def class_logits(predictor: Predictor, embeddings: torch.Tensor) -> torch.Tensor:
    """(N, C) calibrated class logits of fused embeddings; their softmax is the predicted probabilities."""
    return predictor.model.logits(embeddings, predictor.bank)


def _classify(predictor: Predictor, embeddings: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return class_logits(predictor, embeddings).softmax(dim=-1).cpu()


def _probabilities(predictor: Predictor, row: torch.Tensor) -> dict[str, float]:
    return {name: float(p) for name, p in zip(predictor.classes, row)}


def _describe(predictor: Predictor, name: str, embedding: torch.Tensor, top_prompts: int) -> Prediction:
    probabilities = _classify(predictor, embedding)[0]
    similarity = torch.nn.functional.normalize(embedding, dim=1)[0] @ predictor.prompt_embeddings.T
    best = similarity.topk(min(top_prompts, len(predictor.prompt_texts)))
    return Prediction(name, _probabilities(predictor, probabilities), predictor.classes[int(probabilities.argmax())],
                      [(predictor.prompt_texts[i], float(s)) for s, i in zip(best.values.tolist(),
                                                                             best.indices.tolist())])


def format_prediction(result: Prediction) -> str:
    """A few lines of text: the predicted emotion, every probability, the best-matching prompts, and for a
    sequence the predicted emotion of each frame."""
    ranked = sorted(result.probabilities.items(), key=lambda item: -item[1])
    lines = [f"{result.input}: {result.predicted} ({result.probabilities[result.predicted]:.0%})",
             "  " + "  ".join(f"{name} {p:.1%}" for name, p in ranked)]
    lines += [f"  prompt {similarity:+.3f}  {text}" for text, similarity in result.prompts]
    if result.frames is not None:
        per_frame = [max(frame, key=frame.get) for frame in result.frames]
        lines.append(f"  frames ({len(per_frame)}): " + " ".join(per_frame))
    return "\n".join(lines + [f"  {describe_normalising(result.normalised)}"])


def describe_normalising(normalised: dict) -> str:
    """One line on what normalising did to an input, for people."""
    holes = normalised["holes_closed"]
    parts = [f"{holes} hole{'s' if holes != 1 else ''} closed"]
    if "registered" in normalised:
        parts.append("registered to the template face" if normalised["registered"] else
                     "registration to the template failed: only centred and scaled, expect a less reliable result")
    return "; ".join(parts)


def _one_line(error: Exception, path: Path) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if str(path) in text else f"{path}: {text}"
