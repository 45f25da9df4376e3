"""Predicting the expression of mesh files and 4D sequence folders with a trained checkpoint.

The meshes are rendered exactly as the checkpoint's training data was: the same canonical frame, views, image
size, projection and image recipe (read from the checkpoint), through the same render function as the data
pipeline (`affectvlm.data.views.render_model_views`) and the same evaluation-time normalisation (the
augmenter with augmentation off). `load_predictor` and `predict` serve the command line and the app.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from affectvlm.data.augment import AugmentSettings, TorchAugmenter, plan_augmentation
from affectvlm.data.views import render_model_views
from affectvlm.geometry.cameras import view_cameras
from affectvlm.geometry.io import READABLE_FORMATS, load_mesh
from affectvlm.geometry.mesh import MeshError
from affectvlm.geometry.normalise import normalise

FRAMES_PER_BATCH = 16


@dataclass
class Prediction:
    input: str
    probabilities: dict[str, float] = field(default_factory=dict)  # emotion -> probability
    predicted: str | None = None
    prompts: list[tuple[str, float]] = field(default_factory=list)  # best-matching prompts, cosine similarity
    frames: list[dict[str, float]] | None = None  # 4D sequences: per-frame probabilities, in frame order
    frame_files: list[str] | None = None
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
    augmenter: TorchAugmenter
    device: torch.device
    prompt_texts: list[str]
    prompt_embeddings: torch.Tensor  # (P, D) normalised


def load_predictor(checkpoint: str | Path, device: str | torch.device = "cpu") -> Predictor:
    """The model, prompt bank and render settings of a checkpoint; CheckpointError for a bad file."""
    from affectvlm.model.affect_model import build_model
    from affectvlm.model.prompts import PromptBank
    from affectvlm.train.checkpoint import load_checkpoint, load_module_state

    stored = load_checkpoint(checkpoint)
    info = stored.info
    model = build_model(info["model"])
    load_module_state(model, stored, "module.model.")
    device = torch.device(device)
    model.to(device).eval()
    bank = PromptBank.from_dict(info["prompts"])
    data, source = info["data"], info["data"]["source"]
    texts = [prompt for name in info["classes"] for prompt in bank.class_prompts(name)]
    with torch.no_grad():
        embeddings = torch.nn.functional.normalize(model.encode_text(texts).float(), dim=1)
    return Predictor(model, bank, tuple(info["classes"]), tuple(source["views"]), int(source["size"]),
                     source["recipe"], source["projection"],
                     TorchAugmenter(data["mean"], data["std"]), device, texts, embeddings)


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
    if path.is_dir():
        frames = sorted(p for p in path.iterdir() if p.suffix.lower().lstrip(".") in READABLE_FORMATS)
        if not frames:
            raise ValueError(f"{path}: a folder with no mesh files ({', '.join(READABLE_FORMATS)})")
        embeddings = torch.cat([embed_meshes(predictor, frames[i:i + FRAMES_PER_BATCH])
                                for i in range(0, len(frames), FRAMES_PER_BATCH)])
        with torch.no_grad():
            sequence = predictor.model.fuse_frames(embeddings[None], torch.ones(1, len(frames), dtype=torch.bool,
                                                                                device=embeddings.device))
        result = _describe(predictor, str(path), sequence, top_prompts)
        result.frames = [_probabilities(predictor, row) for row in _classify(predictor, embeddings)]
        result.frame_files = [frame.name for frame in frames]
        return result
    return _describe(predictor, str(path), embed_meshes(predictor, [path]), top_prompts)


@torch.no_grad()
def embed_meshes(predictor: Predictor, paths: list[Path]) -> torch.Tensor:
    """Fused view embeddings (N, D) of mesh files, rendered as in training."""
    meshes = []
    for path in paths:
        if not path.is_file():
            raise OSError(f"{path}: no such file")
        meshes.append(normalise(load_mesh(path)))
    return embed_vertices(predictor, [torch.from_numpy(m.vertices) for m in meshes],
                          [torch.from_numpy(m.faces) for m in meshes])


@torch.no_grad()
def embed_vertices(predictor: Predictor, vertices: list[torch.Tensor], faces: list[torch.Tensor]) -> torch.Tensor:
    """Fused view embeddings (N, D) of meshes already in the canonical frame."""
    device = predictor.device
    cameras = view_cameras(predictor.views, projection=predictor.projection)
    images = torch.cat([render_model_views(v[None].to(device), f.to(device), cameras, predictor.image_size,
                                           predictor.recipe) for v, f in zip(vertices, faces)])
    count, views = images.shape[:2]
    ids = torch.arange(count).numpy()
    plan = plan_augmentation(AugmentSettings.off(), 0, 0, ids, -torch.ones(count, dtype=torch.int64).numpy(),
                             -torch.ones(count, dtype=torch.int64).numpy(), torch.ones(count, dtype=torch.bool).numpy(),
                             predictor.views)
    model_input = predictor.augmenter(images, plan)
    return predictor.model.fuse_views(predictor.model.encode_views(model_input)).float()


def _classify(predictor: Predictor, embeddings: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return predictor.model.logits(embeddings, predictor.bank).softmax(dim=-1).cpu()


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
    return "\n".join(lines)


def _one_line(error: Exception, path: Path) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if str(path) in text else f"{path}: {text}"
