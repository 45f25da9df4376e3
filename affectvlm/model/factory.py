"""Create an open_clip model from an open_clip architecture name, one of this package's small configs, a JSON
config file, or a stored config (`CreatedClip.config`), with optional pretrained weights (an open_clip tag,
downloaded by open_clip, or a local weights file loaded by open_clip's own code).

A model with fresh or local weights is built from its config by the classes open_clip's factory uses; a
pretrained tag goes through `open_clip.create_model`, which downloads it. The package's configs
(`configs/*.json`, open_clip's format) are registered with open_clip on import, so open_clip knows them too.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, NamedTuple

import open_clip
import torch
from open_clip.transform import PreprocessCfg

CONFIG_DIR = Path(__file__).with_name("configs")
PACKAGE_CONFIGS = tuple(sorted(path.stem for path in CONFIG_DIR.glob("*.json")))
MODEL_CONFIG_KEYS = ("embed_dim", "vision_cfg", "text_cfg")

open_clip.add_model_config(CONFIG_DIR)


class ModelConfigError(ValueError):
    """A model name, config or weights file that cannot be used; the message names it and the problem."""


class Normalisation(NamedTuple):
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


class CreatedClip(NamedTuple):
    clip: torch.nn.Module
    tokenizer: Callable[[list[str]], torch.Tensor]
    config: dict  # {"name", "model_cfg", "mean", "std"}: JSON-able; create_clip(config) rebuilds the model
    normalisation: Normalisation


def create_clip(name_or_config: str | Path | dict, pretrained: str | Path | None = None) -> CreatedClip:
    """An open_clip model (on the CPU, float32) with its tokenizer, its config and its image normalisation.

    `name_or_config`: an open_clip architecture ("ViT-B-16"), a package config ("affect-tiny"), a path to a
    JSON config in open_clip's format, an open_clip config dict, or the `config` of a CreatedClip (which
    rebuilds the same architecture and normalisation, with fresh weights). `pretrained`: an open_clip tag
    (named architectures only) or a local weights file (.safetensors, or a torch state dict).
    """
    name, model_cfg, stored = _resolve(name_or_config)
    source = _describe(name_or_config)
    if name is not None and pretrained is not None and not Path(pretrained).is_file():
        clip = _clip_for_tag(name, str(pretrained))
    else:
        clip = _clip_from_config(model_cfg, source)
        if stored is not None:
            _set_normalisation(clip, stored["mean"], stored["std"])
        if pretrained is not None:
            _load_weights_file(clip, pretrained, source)
    preprocess = open_clip.get_model_preprocess_cfg(clip)
    normalisation = Normalisation(tuple(preprocess["mean"]), tuple(preprocess["std"]))
    name = name or (stored or {}).get("name")
    config = {"name": name, "model_cfg": model_cfg, "mean": list(normalisation.mean),
              "std": list(normalisation.std)}
    return CreatedClip(clip, _tokenizer(name, model_cfg), config, normalisation)


def _resolve(name_or_config) -> tuple[str | None, dict, dict | None]:
    """(open_clip registry name or None, model config, stored CreatedClip config or None)."""
    if isinstance(name_or_config, dict):
        if "model_cfg" in name_or_config:  # a CreatedClip.config
            missing = [key for key in ("name", "mean", "std") if key not in name_or_config]
            if missing:
                raise ModelConfigError(f"stored model config: missing {', '.join(missing)}")
            return None, _checked(name_or_config["model_cfg"], "stored model config"), name_or_config
        return None, _checked(name_or_config, "model config"), None
    text = str(name_or_config)
    model_cfg = open_clip.get_model_config(text) if not text.endswith(".json") else None
    if model_cfg is not None:
        return text, model_cfg, None
    path = Path(text)
    if path.suffix == ".json" or path.is_file():
        return None, _checked(_read_json(path), str(path)), None
    raise ModelConfigError(f"unknown model '{text}': not an open_clip architecture (open_clip.list_models()), "
                           f"a package config ({', '.join(PACKAGE_CONFIGS)}) or a JSON config file")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ModelConfigError(f"{path}: cannot read ({error.strerror or error})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelConfigError(f"{path}: not valid JSON ({error})") from None


def _checked(model_cfg: Any, source: str) -> dict:
    if not isinstance(model_cfg, dict) or not all(key in model_cfg for key in MODEL_CONFIG_KEYS):
        raise ModelConfigError(f"{source}: not an open_clip model config (needs {', '.join(MODEL_CONFIG_KEYS)})")
    return copy.deepcopy(model_cfg)


def _describe(name_or_config) -> str:
    return "model config" if isinstance(name_or_config, dict) else str(name_or_config)


def _clip_for_tag(name: str, tag: str) -> torch.nn.Module:
    """open_clip's model with the weights of a pretrained tag (downloaded by open_clip), with the tag's
    image normalisation."""
    try:
        return open_clip.create_model(name, pretrained=tag)
    except RuntimeError as error:  # unknown tag, failed download
        raise ModelConfigError(f"{tag}: not a weights file, nor a pretrained tag of {name} that open_clip "
                               f"can load ({_one_line(error)})") from None


def _clip_from_config(model_cfg: dict, source: str) -> torch.nn.Module:
    """The model open_clip's factory would build for this config, with no base weights downloaded."""
    cfg = copy.deepcopy(model_cfg)
    hf_text = "hf_model_name" in cfg["text_cfg"]
    if "timm_model_name" in cfg["vision_cfg"]:
        cfg["vision_cfg"]["timm_model_pretrained"] = False
    if hf_text:
        cfg["text_cfg"]["hf_model_pretrained"] = False
    custom_text = cfg.pop("custom_text", False) or hf_text
    if not custom_text:
        model_class = open_clip.CLIP
    else:
        model_class = open_clip.CoCa if "multimodal_cfg" in cfg else open_clip.CustomTextCLIP
    try:
        clip = model_class(**cfg)
    except (TypeError, ValueError, KeyError, AssertionError) as error:
        raise ModelConfigError(f"{source}: not a usable open_clip model config ({_one_line(error)})") from None
    _set_normalisation(clip, PreprocessCfg.mean, PreprocessCfg.std)
    return clip


def _set_normalisation(clip: torch.nn.Module, mean, std) -> None:
    preprocess = asdict(PreprocessCfg(size=clip.visual.image_size, mean=tuple(mean), std=tuple(std)))
    open_clip.set_model_preprocess_cfg(clip, preprocess)


def _load_weights_file(clip: torch.nn.Module, path, source: str) -> None:
    if not Path(path).is_file():
        raise ModelConfigError(f"{path}: no such weights file (pretrained tags work with open_clip "
                               f"architecture names, not with {source})")
    try:
        open_clip.load_checkpoint(clip, str(path))
    except Exception as error:  # torch.load, safetensors and load_state_dict each raise their own kinds
        raise ModelConfigError(f"{path}: cannot load as weights of {source} ({_one_line(error)})") from None


def _tokenizer(name: str | None, model_cfg: dict) -> Callable:
    text_cfg = model_cfg["text_cfg"]
    context_length = text_cfg.get("context_length", open_clip.tokenizer.DEFAULT_CONTEXT_LENGTH)
    if name is not None and open_clip.get_model_config(name) is not None:
        return open_clip.get_tokenizer(name, context_length=context_length)
    if text_cfg.get("hf_tokenizer_name"):
        return open_clip.tokenizer.HFTokenizer(text_cfg["hf_tokenizer_name"], context_length=context_length,
                                               **text_cfg.get("tokenizer_kwargs", {}))
    return open_clip.SimpleTokenizer(context_length=context_length, **text_cfg.get("tokenizer_kwargs", {}))


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 300 else text[:297] + "..."
