"""AffectVLM: an open_clip model that embeds the rendered views of a face, fuses them into one sample
embedding (and the frames of a 4D sequence into one sequence embedding), and classifies by cosine
similarity with the prompt-ensembled text embedding of each emotion. Both towers' embeddings are
standardised over the batch (`EmbeddingNorm`), which keeps towers trained from scratch from collapsing.

The model takes tensors: images already rendered and normalised with its `normalisation`; it knows
nothing of datasets, pipelines or training.
"""

from __future__ import annotations

import math
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from affectvlm.data.emotions import EMOTIONS
from affectvlm.model.embedding_norm import EmbeddingNorm
from affectvlm.model.factory import CreatedClip, Normalisation, create_clip
from affectvlm.model.fusion import MaskedPooling
from affectvlm.model.prompts import PromptBank

MAX_LOGIT_SCALE = 100.0  # CLIP's clamp of exp(logit_scale)
TEXT_BATCH = 256  # prompts per text-tower call when ensembling


class AffectVLM(nn.Module):
    """An open_clip model (`clip`, with its `tokenizer`) that classifies faces into `classes` (emotion names
    of a PromptBank). Views fuse by `view_fusion`, frames of a sequence by `frame_fusion` ("mean" or
    "attention"). `clip_config` (from `create_clip`) lets `config_dict()` describe the model for a checkpoint.
    """

    def __init__(self, clip: nn.Module, tokenizer, classes: tuple[str, ...] = EMOTIONS, view_fusion: str = "mean",
                 frame_fusion: str = "mean", *, clip_config: dict | None = None):
        super().__init__()
        if not classes or len(set(classes)) != len(classes):
            raise ValueError(f"classes must be distinct emotion names, got {classes}")
        self.clip = clip
        self.tokenizer = tokenizer
        self.classes = tuple(classes)
        self.clip_config = clip_config
        dim = self._embedding_dim()
        self.image_norm = EmbeddingNorm(dim)
        self.text_norm = EmbeddingNorm(dim)
        self.view_fusion = MaskedPooling(view_fusion, dim)
        self.frame_fusion = MaskedPooling(frame_fusion, dim)
        # Post-hoc calibration: logits are divided by it; evaluation fits it, checkpoints keep it.
        self.register_buffer("temperature", torch.ones(()))
        self._class_embedding_cache: tuple[tuple, torch.Tensor] | None = None

    @property
    def normalisation(self) -> Normalisation:
        """The mean and std the images must be normalised with."""
        preprocess = open_clip.get_model_preprocess_cfg(self.clip)
        return Normalisation(tuple(preprocess["mean"]), tuple(preprocess["std"]))

    @property
    def image_size(self) -> int:
        size = self.clip.visual.image_size
        return size[0] if isinstance(size, (tuple, list)) else size

    def encode_views(self, images: torch.Tensor) -> torch.Tensor:
        """(B, K, 3, H, W) -> (B, K, D) standardised view embeddings (not of unit length), all views in one
        image-tower call."""
        if images.ndim != 5:
            raise ValueError(f"expected images (B, K, 3, H, W), got shape {tuple(images.shape)}")
        batch, views = images.shape[:2]
        return self.image_norm(self.clip.encode_image(images.flatten(0, 1))).unflatten(0, (batch, views))

    def fuse_views(self, view_embeddings: torch.Tensor, valid_views: torch.Tensor | None = None) -> torch.Tensor:
        """(B, K, D) view embeddings and an optional (B, K) bool mask -> (B, D) sample embeddings."""
        return self.view_fusion(view_embeddings, valid_views)

    def fuse_frames(self, frame_embeddings: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(S, T, D) frame (sample) embeddings and an optional (S, T) bool mask -> (S, D) sequence embeddings."""
        return self.frame_fusion(frame_embeddings, mask)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """(M, D) standardised embeddings (not of unit length) of the texts."""
        tokens = self.tokenizer(list(texts)).to(self.temperature.device)
        return self.text_norm(self.clip.encode_text(tokens))

    @torch.no_grad()
    def class_embeddings(self, bank: PromptBank) -> torch.Tensor:
        """(C, D) normalised class embeddings, in the order of `classes`: for each class the mean of the
        normalised embeddings of all its prompts, renormalised (prompt ensembling). Computed once and reused
        until the bank or any weight changes (in place by an optimiser, by load_state_dict, or by moving the
        model); `clear_class_embeddings()` drops it explicitly. No gradients flow through them."""
        key = (bank.fingerprint, self._weights_version())
        if self._class_embedding_cache is None or self._class_embedding_cache[0] != key:
            self._class_embedding_cache = (key, self._ensembled_class_embeddings(bank))
        return self._class_embedding_cache[1]

    def clear_class_embeddings(self) -> None:
        self._class_embedding_cache = None

    def logits(self, sample_embeddings: torch.Tensor, bank: PromptBank) -> torch.Tensor:
        """(N, D) sample or sequence embeddings -> (N, C) calibrated logits:
        cosine similarity x logit scale / temperature."""
        cosine = F.normalize(sample_embeddings, dim=-1) @ self.class_embeddings(bank).T.to(sample_embeddings.dtype)
        return cosine * (self.logit_scale() / self.temperature)

    def classify(self, images: torch.Tensor, bank: PromptBank,
                 valid_views: torch.Tensor | None = None) -> torch.Tensor:
        """(B, K, 3, H, W) images -> (B, C) class probabilities (each row sums to 1)."""
        sample_embeddings = self.fuse_views(self.encode_views(images), valid_views)
        return self.logits(sample_embeddings, bank).softmax(dim=-1)

    def logit_scale(self) -> torch.Tensor:
        """CLIP's learned logit scale, exp(logit_scale) clamped at 100 as in CLIP."""
        return self.clip.logit_scale.detach().exp().clamp(max=MAX_LOGIT_SCALE).reshape(())

    def set_logit_scale(self, scale: float | torch.Tensor) -> None:
        """Make classification use this scale (for example the trained loss's): CLIP's logit_scale := log(scale)."""
        scale = float(scale)
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"logit scale must be a positive number, got {scale}")
        with torch.no_grad():
            self.clip.logit_scale.fill_(math.log(scale))

    def set_temperature(self, temperature: float) -> None:
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a positive number, got {temperature}")
        self.temperature.fill_(temperature)

    def config_dict(self) -> dict:
        """JSON-able settings; `build_model(config)` rebuilds this architecture (fresh weights; load the
        state dict after)."""
        if self.clip_config is None:
            raise ValueError("this AffectVLM was built without a clip_config; build it with build_model()")
        return {"clip": self.clip_config, "classes": list(self.classes), "view_fusion": self.view_fusion.mode,
                "frame_fusion": self.frame_fusion.mode}

    def _embedding_dim(self) -> int:
        with torch.no_grad():
            return self.clip.encode_text(self.tokenizer([""])).shape[-1]

    def _weights_version(self) -> tuple:
        """Changes whenever a parameter or buffer is replaced, moved or modified in place (torch counts in-place
        changes of a tensor in its `_version`, which optimisers and load_state_dict bump)."""
        return tuple((tensor.data_ptr(), tensor._version) for tensor in self.state_dict(keep_vars=True).values())

    def _ensembled_class_embeddings(self, bank: PromptBank) -> torch.Tensor:
        prompts = [bank.class_prompts(emotion) for emotion in self.classes]
        flat = [prompt for class_prompts in prompts for prompt in class_prompts]
        embeddings = torch.cat([F.normalize(self.encode_text(flat[start:start + TEXT_BATCH]).float(), dim=-1)
                                for start in range(0, len(flat), TEXT_BATCH)])
        means = torch.stack([part.mean(dim=0) for part in embeddings.split([len(p) for p in prompts])])
        return F.normalize(means, dim=-1)


def build_model(config_name_or_path: str | Path | dict, pretrained: str | Path | None = None, *,
                classes: tuple[str, ...] = EMOTIONS, view_fusion: str = "mean",
                frame_fusion: str = "mean") -> AffectVLM:
    """An AffectVLM on an open_clip model (see `create_clip` for names, configs and `pretrained`), or, given
    a `model.config_dict()`, the same architecture again (classes and fusion from the dict)."""
    if isinstance(config_name_or_path, dict) and "clip" in config_name_or_path:
        stored = config_name_or_path
        return _assembled(create_clip(stored["clip"], pretrained), tuple(stored["classes"]),
                          stored["view_fusion"], stored["frame_fusion"])
    return _assembled(create_clip(config_name_or_path, pretrained), tuple(classes), view_fusion, frame_fusion)


def _assembled(created: CreatedClip, classes, view_fusion, frame_fusion) -> AffectVLM:
    return AffectVLM(created.clip, created.tokenizer, classes, view_fusion, frame_fusion,
                     clip_config=created.config)
