"""The training configuration: one frozen dataclass, built once from the command line."""

from __future__ import annotations

import argparse
import shlex
from dataclasses import asdict, dataclass, field, fields

from affectvlm.geometry.normalise import DEFAULT_POSE, POSES, UNRECORDED_POSE


# What a config stored before an option existed had, for options whose default has changed since: pose
# normalisation came with "none", the default then. Other missing fields had their defaults.
UNRECORDED = {"pose": UNRECORDED_POSE}


@dataclass(frozen=True)
class TrainConfig:
    # data
    data: str | None = None  # a dataset folder, a render cache or a mesh cache; None: the built-in synthetic data
    cache_dir: str | None = None  # where generated data and caches go (default: <out>/cache)
    # More generated people, fewer passes over each, for the same steps: the main job overfits the people it
    # trains on (benchmarks/RESULTS.md, "How many generated people").
    synthetic_subjects: int = 200
    views: tuple[str, ...] = ("frontal", "left", "right")
    image_size: int | None = None  # None: the model's
    recipe: str | None = None  # None: affectvlm.data.views.DEFAULT_RECIPE
    pose: str = DEFAULT_POSE  # pose normalisation of every face, affectvlm.geometry.normalise.POSES
    source: str = "cached"  # "cached": a render cache; "online": views rendered per batch from a mesh cache
    jitter: dict = field(default_factory=dict)  # CameraJitter fields overriding its defaults (online views only)
    # None: no augmentation, the default: with it the main job ends at 20.7% held-out instead of 74.3%
    # (RESULTS.md, ablations).
    # A dict (maybe empty): mixed view augmentation, these AugmentSettings fields overriding its defaults.
    augment: dict | None = None
    # Probability that a training face loses both eyes, as scans do (online views of registered faces only):
    # registered models lean on the eyes as they render (RESULTS.md, "Holes at the eyes").
    eye_holes: float = 0.0
    folds: int = 5  # subjects split into this many folds; fold `fold` is held out for evaluation
    fold: int = 0
    # model
    model: str = "affect-tiny"  # a shipped config name, an open_clip model name or a JSON config file
    pretrained: str | None = None
    view_fusion: str = "mean"
    prompts: str | None = None  # a JSON file of prompts that extends the default bank
    prompt_bank: str | None = None  # a JSON file whose sections replace the default bank's (before --prompts)
    # optimisation
    batch_size: int = 32  # per process
    epochs: int = 4
    max_steps: int | None = None  # optimizer steps; stops early when reached
    lr: float = 1e-3  # 3e-3 learnt faster in some runs and failed in others (RESULTS.md, run-to-run variance)
    warmup: int = 20  # optimizer steps of linear warm-up before the cosine decay
    weight_decay: float = 0.1
    clip_grad: float = 0.0  # largest global gradient norm per optimizer step; 0: no clipping
    accumulate: int = 1  # batches per optimizer step
    loss_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)  # multiview contrastive, triplet, image-text
    seed: int = 0
    # running
    out: str = "runs/affectvlm"
    resume: str | None = None  # a checkpoint file, or "auto": <out>/last.safetensors when it exists
    checkpoint_every: int = 0  # optimizer steps between checkpoints; 0: at the end of each epoch only
    device: str = "auto"
    amp: bool = True  # bf16 autocast on GPUs
    compile: bool = False
    backend: str = "auto"  # augmentation backend: auto, dali, torch
    log_every: int = 1
    trace_samples: bool = False  # each rank logs the sample ids it trained on (samples-rank<r>.jsonl)
    progress: bool = True

    def as_dict(self) -> dict:
        return {**asdict(self), "views": list(self.views), "loss_weights": list(self.loss_weights)}

    def command_line(self) -> str:
        """The `affectvlm train` command that gives this config (options at their defaults left out)."""
        default = TrainConfig()
        words = ["affectvlm", "train"] + ([self.data] if self.data else [])
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "data" or value == getattr(default, item.name):
                continue
            option = "--" + item.name.replace("_", "-")
            if isinstance(value, bool):
                words.append(option if value else "--no-" + option[2:])
            elif item.name == "views":
                words += [option, ",".join(value)]
            elif isinstance(value, tuple):
                words += [option, *map(str, value)]
            elif isinstance(value, dict):
                words += [option] + ([_key_values_text(value)] if value else [])
            else:
                words += [option, str(value)]
        return shlex.join(words)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainConfig:
        values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
        values["views"] = tuple(args.views.split(","))
        values["loss_weights"] = tuple(args.loss_weights)
        values["jitter"] = _key_values(args.jitter, "--jitter")
        values["augment"] = (None if args.augment is None
                             else _key_values(args.augment, "--augment", words=("interpolation",)))
        return cls(**values)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """The config stored in a checkpoint; fields it predates as UNRECORDED says, or at their defaults."""
        return cls(**{**UNRECORDED, **data, "views": tuple(data["views"]),
                      "loss_weights": tuple(data["loss_weights"])})


def _key_values(text: str | None, option: str, words: tuple[str, ...] = ()) -> dict:
    """"crop_scale=0.9:1,rotation=5,interpolation=nearest" -> {"crop_scale": [0.9, 1.0], "rotation": 5.0,
    "interpolation": "nearest"}: a range is low:high; the names in `words` take a word."""
    result = {}
    for item in filter(None, (text or "").split(",")):
        key, equals, value = item.partition("=")
        if not equals:
            raise ValueError(f"{option}: expected name=number, got '{item}'")
        if key.strip() in words:
            result[key.strip()] = value.strip()
            continue
        try:
            numbers = [float(number) for number in value.split(":")]
        except ValueError:
            raise ValueError(f"{option}: expected name=number or name=low:high pairs separated by commas, got "
                             f"'{item}'") from None
        if len(numbers) > 2:
            raise ValueError(f"{option}: a range is low:high, got '{item}'")
        result[key.strip()] = numbers[0] if len(numbers) == 1 else numbers
    return result


def _key_values_text(values: dict) -> str:
    """The inverse of _key_values."""
    return ",".join(f"{key}={':'.join(map(str, number)) if isinstance(number, list) else number}"
                    for key, number in values.items())


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The training options, shared by `affectvlm train` and `python -m affectvlm.train`."""
    d = TrainConfig()
    data = parser.add_argument_group("data")
    data.add_argument("data", nargs="?", help="dataset folder, render cache or mesh cache (default: generate the "
                                              "built-in synthetic dataset)")
    data.add_argument("--cache-dir", help="where generated data and render/mesh caches go (default OUT/cache)")
    data.add_argument("--synthetic-subjects", type=_positive, default=d.synthetic_subjects,
                      help=f"subjects of generated data (default {d.synthetic_subjects})")
    data.add_argument("--views", default=",".join(d.views), help="comma-separated named views (default %(default)s)")
    data.add_argument("--image-size", type=_positive, help="image side in pixels (default: the model's)")
    data.add_argument("--recipe", help="image recipe, see affectvlm.data.views.IMAGE_RECIPES")
    data.add_argument("--pose", choices=POSES, default=d.pose,
                      help="pose normalisation: register every face to the template face, or only centre and "
                           "scale it (default %(default)s)")
    data.add_argument("--source", choices=["cached", "online"], default=d.source,
                      help="views from a render cache, or rendered per batch from a mesh cache (default cached)")
    data.add_argument("--jitter", help="camera jitter of online views, e.g. yaw=10,pitch=5,roll=3,distance=0.05")
    data.add_argument("--augment", nargs="?", const="", metavar="SETTINGS",
                      help="train with mixed view augmentation (off by default), optionally with settings overriding "
                           "its defaults, e.g. flip=0.5,rotation=10,interpolation=nearest")
    data.add_argument("--eye-holes", type=float, default=d.eye_holes, metavar="P",
                      help="cut holes at both eyes of a training face with probability P, as scans lose the eyes "
                           "(needs --source online and --pose template; default 0)")
    data.add_argument("--folds", type=_positive, default=d.folds,
                      help=f"subject folds; one is held out for evaluation (default {d.folds})")
    data.add_argument("--fold", type=int, default=d.fold, help="the held-out fold (default 0)")

    model = parser.add_argument_group("model")
    model.add_argument("--model", default=d.model, help="model config name or JSON file (default %(default)s)")
    model.add_argument("--pretrained", help="open_clip pretrained tag or local weights file")
    model.add_argument("--view-fusion", choices=["mean", "attention"], default=d.view_fusion)
    model.add_argument("--prompts", help="JSON file of prompts added to the default prompt bank")
    model.add_argument("--prompt-bank", help="JSON file whose sections (templates, emotions, ...) replace those of "
                                             "the default prompt bank")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--batch-size", type=_positive, default=d.batch_size, help="samples per process and batch")
    optim.add_argument("--epochs", type=_positive, default=d.epochs)
    optim.add_argument("--max-steps", type=_positive, help="stop after this many optimizer steps")
    optim.add_argument("--lr", type=float, default=d.lr)
    optim.add_argument("--warmup", type=int, default=d.warmup, help="warm-up optimizer steps")
    optim.add_argument("--weight-decay", type=_non_negative, default=d.weight_decay)
    optim.add_argument("--clip-grad", type=_non_negative, default=d.clip_grad,
                       help="clip the global gradient norm to this before each optimizer step (0: no clipping)")
    optim.add_argument("--accumulate", type=_positive, default=d.accumulate, help="batches per optimizer step")
    optim.add_argument("--loss-weights", type=_non_negative, nargs=3, default=list(d.loss_weights),
                       metavar=("CONTRASTIVE", "TRIPLET", "IMAGE_TEXT"), help="weights of the three loss terms")
    optim.add_argument("--seed", type=int, default=d.seed)

    run = parser.add_argument_group("running")
    run.add_argument("--out", default=d.out, help="output folder (default %(default)s)")
    run.add_argument("--resume", help="checkpoint to continue from, or 'auto' (OUT/last.safetensors if present)")
    run.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                     help="optimizer steps between checkpoints (default: each epoch's end)")
    run.add_argument("--device", default=d.device, help="auto, cpu or cuda (default auto)")
    run.add_argument("--no-amp", dest="amp", action="store_false", help="no bf16 autocast on GPUs")
    run.add_argument("--compile", action="store_true", help="torch.compile the model")
    run.add_argument("--backend", choices=["auto", "dali", "torch"], default=d.backend, help="augmentation backend")
    run.add_argument("--log-every", type=_positive, default=d.log_every, help="optimizer steps between log lines")
    run.add_argument("--trace-samples", action="store_true",
                     help="log each rank's sample ids per batch to OUT/samples-rank<r>.jsonl")
    run.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def validate(config: TrainConfig) -> None:
    """Raise ValueError (one line, naming the option) for settings that cannot work together."""
    if not 0 <= config.fold < config.folds:
        raise ValueError(f"--fold must lie in [0, {config.folds}), got {config.fold}")
    if config.folds < 2:
        raise ValueError("--folds must be at least 2 (one fold is held out)")
    if config.device not in ("auto", "cpu", "cuda") and not config.device.startswith("cuda:"):
        raise ValueError(f"--device must be auto, cpu or cuda, got '{config.device}'")
    if not 0.0 <= config.eye_holes <= 1.0:
        raise ValueError(f"--eye-holes must be a probability in [0, 1], got {config.eye_holes}")
    if config.eye_holes > 0 and (config.source != "online" or config.pose != "template"):
        raise ValueError("--eye-holes needs --source online and --pose template (the holes are cut in the meshes "
                         "at the template's eyes)")
    if config.warmup < 0 or config.checkpoint_every < 0:
        raise ValueError("--warmup and --checkpoint-every must be at least 0")
