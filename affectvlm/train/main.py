"""Wiring: process group, data, model, loss, optimizer, checkpoints, then the loop. No training logic here."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from affectvlm.train.config import TrainConfig, add_arguments, validate

LAST, BEST = "last.safetensors", "best.safetensors"
DIE_AT_STEP = "AFFECTVLM_TEST_DIE_AT_STEP"  # fault injection for the restart tests: "STEP" or "STEP:RANK"


def main(argv: list[str] | None = None, prog: str = "python -m affectvlm.train") -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Train AffectVLM on a dataset folder, a render or "
                                     "mesh cache, or (with no data) on generated synthetic faces.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        config = TrainConfig.from_args(args)
        validate(config)
    except ValueError as error:
        parser.error(str(error))
    return run(config)


def run(config: TrainConfig) -> int:
    from affectvlm.data.datasets import DatasetError
    from affectvlm.model.factory import ModelConfigError
    from affectvlm.train.checkpoint import CheckpointError

    runtime = start_runtime(config)
    try:
        accuracy = train_and_evaluate(config, runtime)
    except (CheckpointError, DatasetError, ModelConfigError, ValueError, OSError) as error:
        print(f"affectvlm train: error: {error}", file=sys.stderr)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0 if accuracy is not None else 1


@dataclass(frozen=True)
class Runtime:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def start_runtime(config: TrainConfig) -> Runtime:
    """Join the process group that torchrun describes in the environment (gloo on CPUs, NCCL on GPUs)."""
    wanted = config.device if config.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if "RANK" not in os.environ:
        return Runtime(0, 1, torch.device(wanted))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if wanted.startswith("cuda") else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    # torchrun's agent keeps its store across restarts of the worker group: a prefix per attempt keeps the
    # restarted workers from reading the addresses that the dead group's processes left there.
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size,
                          is_master=rank == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True",
                          timeout=timedelta(minutes=10))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=dist.PrefixStore(
        f"affectvlm/attempt-{attempt}", store), rank=rank, world_size=world_size)
    return Runtime(rank, world_size, device)


def barrier(runtime: Runtime) -> None:
    if runtime.world_size > 1:
        dist.barrier()


def train_and_evaluate(config: TrainConfig, runtime: Runtime) -> float | None:
    from tqdm import tqdm

    from affectvlm.data.emotions import EMOTIONS
    from affectvlm.ops.contrastive import AffectLoss
    from affectvlm.train import checkpoint as ckpt
    from affectvlm.train.loop import MetricsLog, Schedule, TrainModule, TrainState, parameter_groups, train

    torch.manual_seed(config.seed)
    out = Path(config.out)
    if runtime.is_main:
        out.mkdir(parents=True, exist_ok=True)
    resume = resume_path(config)
    stored = ckpt.load_checkpoint(resume) if resume else None

    data = dataset_folder(config, runtime)
    classes = tuple(name for name in EMOTIONS if any(sample.emotion == name for sample in list_samples(data)))
    model, bank = build_model_and_prompts(config, stored, classes)
    source = open_source(config, runtime, data, model.image_size)
    train_ids, test_ids, subjects = split_subjects(config, source.samples)
    train_pipeline, eval_pipeline = make_pipelines(config, runtime, source, train_ids, test_ids,
                                                   model.normalisation)
    amp = torch.bfloat16 if config.amp and runtime.device.type == "cuda" else None
    train_module = TrainModule(model, AffectLoss(len(EMOTIONS), weights=config.loss_weights), amp)
    train_module.to(runtime.device)
    optimizer = torch.optim.AdamW(parameter_groups(train_module, config.weight_decay), lr=config.lr)
    names = {parameter: name for name, parameter in train_module.named_parameters()}

    steps_per_epoch = -(-train_pipeline.steps_per_epoch // config.accumulate)
    total_steps = min(config.max_steps or sys.maxsize, config.epochs * steps_per_epoch)
    schedule = Schedule(config.epochs, total_steps, config.lr, config.warmup, config.accumulate, config.clip_grad,
                        config.seed, config.checkpoint_every, config.log_every)
    static_info = {"model": model.config_dict(), "classes": list(classes), "prompts": bank.as_dict(),
                   "data": data_settings(train_pipeline, subjects),
                   "world_size": runtime.world_size, "config": config.as_dict(),
                   "command": config.command_line()}

    state = TrainState()
    if stored is not None:
        require_resumable(stored, static_info, config)
        ckpt.load_module_state(train_module, stored, "module.")
        ckpt.load_optimizer_state(optimizer, names, stored)
        state = TrainState(**stored.info["training"])
        own_rng = stored.with_prefix(f"rng.{runtime.rank}.")
        if own_rng:
            ckpt.set_rng_state(own_rng)
        if runtime.is_main:
            print(f"resumed from {resume} at epoch {state.epoch}, step {state.step} "
                  f"({state.global_step} optimizer steps done)")

    def save(state: TrainState, is_best: bool) -> None:
        rng = ckpt.all_rng_states()  # collective: every rank takes part
        if not runtime.is_main:
            return
        tensors = {f"module.{name}": tensor for name, tensor in train_module.state_dict().items()}
        optimizer_tensors, optimizer_info = ckpt.optimizer_state(optimizer, names)
        tensors.update(optimizer_tensors)
        tensors.update({f"rng.{name}": tensor for name, tensor in rng.items()})
        paths = [out / LAST] + ([out / BEST] if is_best else [])
        ckpt.save_checkpoint(paths, tensors, {**static_info, "training": state.as_dict(), "optimizer": optimizer_info})

    module = train_module
    if runtime.world_size > 1:
        module = torch.nn.parallel.DistributedDataParallel(
            train_module, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None)
    if config.compile:
        module = torch.compile(module)

    log = MetricsLog(out / "metrics.jsonl" if runtime.is_main else None)
    progress = tqdm(total=total_steps, initial=state.global_step, unit="step", desc="train",
                    disable=not (config.progress and runtime.is_main))
    trace = out / f"samples-rank{runtime.rank}.jsonl" if config.trace_samples else None
    state = train(module, train_module, optimizer, train_pipeline, eval_pipeline, bank, schedule, state, save=save,
                  log=log, progress=progress, sample_trace=trace, after_step=fault_injection(runtime))
    progress.close()
    final = next((r for r in reversed(log.records) if r["kind"] == "eval"), None)
    if runtime.is_main and final is not None:
        log.plot(out / "curves.png")
        print(f"held-out accuracy: {final['accuracy']:.1%} on {final['samples']} samples of "
              f"{len(subjects['test'])} held-out subjects (fold {config.fold} of {config.folds}; chance "
              f"{1 / len(classes):.1%}); checkpoints in {out}")
        print(intensity_report(final["by_intensity"]))
    return final["accuracy"] if final is not None else state.best_metric


def intensity_report(by_intensity: dict) -> str:
    """Held-out accuracy per intensity level, and over levels 3-4 (the samples of the BU-3DFE protocol)."""
    from affectvlm.train.loop import accuracy_over_levels

    levels = " · ".join(f"{level}: {accuracy:.1%} ({samples})" for level, (accuracy, samples) in
                        sorted(by_intensity.items()))
    strong = accuracy_over_levels(by_intensity, (3, 4))
    if strong is None:
        return f"by intensity: {levels}"
    return f"by intensity: {levels}\nexpressions at intensities 3-4: {strong[0]:.1%} on {strong[1]} samples"


def resume_path(config: TrainConfig) -> Path | None:
    """The checkpoint to continue from: --resume, or OUT/last.safetensors with --resume auto or when torchrun
    restarts a failed worker group (TORCHELASTIC_RESTART_COUNT > 0)."""
    last = Path(config.out) / LAST
    restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
    if config.resume in (None, "auto"):
        return last if (config.resume == "auto" or restarted) and last.is_file() else None
    return Path(config.resume)


def require_resumable(stored, static_info: dict, config: TrainConfig) -> None:
    from affectvlm.train.checkpoint import CheckpointError, require_match

    if "export" in stored.info:
        raise CheckpointError(f"{stored.path}: an exported model (weights only); training resumes only from a "
                              "checkpoint written by affectvlm train")
    require_match(stored, "the model config", static_info["model"], stored.info["model"])
    require_match(stored, "the label set", static_info["classes"], stored.info["classes"])
    require_match(stored, "the data settings", static_info["data"], stored.info["data"])
    for key in ("seed", "batch_size", "accumulate"):
        require_match(stored, f"--{key.replace('_', '-')}", getattr(config, key), stored.info["config"][key])
    require_match(stored, "the number of processes", static_info["world_size"], stored.info["world_size"])


def build_model_and_prompts(config: TrainConfig, stored, classes: tuple[str, ...]):
    from affectvlm.model.affect_model import build_model
    from affectvlm.model.prompts import PromptBank

    if stored is not None:
        bank = PromptBank.from_dict(stored.info["prompts"])
    else:
        bank = PromptBank.default()
        if config.prompt_bank:
            bank = bank.replaced(config.prompt_bank)
        if config.prompts:
            bank = bank.extended(config.prompts)
    model = build_model(model_spec(config), config.pretrained, classes=classes, view_fusion=config.view_fusion)
    return model, bank


def model_spec(config: TrainConfig):
    """The --model name or file, with the vision tower's image size replaced when --image-size is given."""
    if config.image_size is None:
        return config.model
    from affectvlm.model.factory import create_clip

    spec = json.loads(json.dumps(create_clip(config.model).config))
    spec["model_cfg"]["vision_cfg"]["image_size"] = config.image_size
    return spec


def dataset_folder(config: TrainConfig, runtime: Runtime) -> Path:
    """The data argument, or the built-in synthetic faces, generated once into the cache folder (into a
    temporary folder first, so that an interrupted generation is never taken for a finished one)."""
    from affectvlm.data.datasets import LABELS_FILE
    from affectvlm.data.synthetic import generate_dataset

    if config.data is not None:
        return Path(config.data)
    folder = cache_folder(config) / f"synthetic-{config.synthetic_subjects}-seed{config.seed}"
    if runtime.is_main and not (folder / LABELS_FILE).is_file():
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        print(f"generating {config.synthetic_subjects} synthetic subjects into {folder}")
        generate_dataset(partial, config.synthetic_subjects, seed=config.seed, file_format="ply")
        os.replace(partial, folder)
    barrier(runtime)
    return folder


def cache_folder(config: TrainConfig) -> Path:
    return Path(config.cache_dir) if config.cache_dir else Path(config.out) / "cache"


def is_views_cache(folder: Path) -> bool:
    """A render cache or a mesh cache (both hold an index.json), as opposed to a dataset folder."""
    from affectvlm.data.cache import INDEX_FILE

    return (folder / INDEX_FILE).is_file()


def is_mesh_cache(folder: Path) -> bool:
    from affectvlm.data.cache import load_index
    from affectvlm.data.mesh_cache import FORMAT

    return load_index(folder).get("format") == FORMAT


def list_samples(data: Path) -> list:
    from affectvlm.data.datasets import index_dataset
    from affectvlm.data.mesh_cache import MeshCache
    from affectvlm.data.pipeline import CachedViews

    if not is_views_cache(data):
        return index_dataset(data)
    return MeshCache(data).samples if is_mesh_cache(data) else CachedViews(data).samples


def open_source(config: TrainConfig, runtime: Runtime, data: Path, image_size: int):
    """The views source: the given render or mesh cache, or one built for the dataset folder under the cache
    folder (rank 0 builds it while the others wait): a render cache by default, a mesh cache for online views."""
    from affectvlm.data.cache import RenderSettings, render_dataset
    from affectvlm.data.pipeline import CachedViews, OnlineViews
    from affectvlm.data.views import DEFAULT_RECIPE, CameraJitter

    recipe = config.recipe or DEFAULT_RECIPE
    if is_views_cache(data) and not is_mesh_cache(data):
        return CachedViews(data, views=config.views, size=image_size, recipe=recipe, pose=config.pose)
    mesh_cache = data
    if not is_views_cache(data) and config.source == "online":
        from affectvlm.data.mesh_cache import build_mesh_cache

        mesh_cache = cache_folder(config) / f"mesh-{_digest(data.resolve(), config.pose)}"
        if runtime.is_main:
            print(f"caching the meshes of {data} in {mesh_cache}")
            build_mesh_cache(data, mesh_cache, pose=config.pose)
        barrier(runtime)
    if is_views_cache(mesh_cache):
        return OnlineViews(mesh_cache, config.views, image_size, recipe, CameraJitter(**config.jitter), runtime.device,
                           pose=config.pose, eye_holes=config.eye_holes)
    settings = RenderSettings(views=config.views, size=image_size, recipe=recipe, pose=config.pose)
    render_cache = cache_folder(config) / f"render-{_digest(data.resolve(), settings.as_dict())}"
    if runtime.is_main:
        print(f"rendering {data} into {render_cache}")
        render_dataset(data, render_cache, settings)
    barrier(runtime)
    return CachedViews(render_cache)


def data_settings(pipeline, subjects: dict) -> dict:
    """What a checkpoint keeps of the data: how views were rendered (which predict repeats), how they were
    augmented and normalised, and the subjects on each side of the split."""
    settings = pipeline.settings()
    source = {"projection": "perspective", **settings["source"]}
    return {"source": source, **{key: settings[key] for key in ("augment", "mean", "std", "num_samples")},
            "train_subjects": subjects["train"], "test_subjects": subjects["test"]}


def split_subjects(config: TrainConfig, samples: list):
    """Subject-independent split: fold `config.fold` of `config.folds` held out. (train ids, held-out ids,
    subjects of each side)."""
    from affectvlm.data.splits import subject_kfold

    fold = subject_kfold(samples, config.folds, seed=config.seed)[config.fold]
    subjects = {"train": sorted({samples[i].subject for i in fold.train}), "test": list(fold.test_subjects)}
    return list(fold.train), list(fold.test), subjects


def make_pipelines(config: TrainConfig, runtime: Runtime, source, train_ids, test_ids, normalisation):
    from affectvlm.data.augment import AugmentSettings
    from affectvlm.data.pipeline import ViewPipeline

    augment = AugmentSettings.off() if config.augment is None else AugmentSettings(**config.augment)
    common = dict(seed=config.seed, num_shards=runtime.world_size, shard_id=runtime.rank, backend=config.backend,
                  device=runtime.device, mean=normalisation.mean, std=normalisation.std)
    train = ViewPipeline(source, config.batch_size, augment=augment, training=True, subset=train_ids, **common)
    held_out = ViewPipeline(source, config.batch_size, augment=AugmentSettings.off(), training=False,
                            subset=test_ids, **common)
    return train, held_out


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps([str(p) if isinstance(p, Path) else p for p in parts],
                                     sort_keys=True).encode()).hexdigest()[:12]


def fault_injection(runtime: Runtime):
    """With AFFECTVLM_TEST_DIE_AT_STEP=STEP[:RANK], that rank (default 1) exits abruptly after optimizer step
    STEP in the first attempt of a torchrun worker group: a real worker death for the restart tests."""
    spec = os.environ.get(DIE_AT_STEP)
    if not spec or int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
        return lambda step: None
    step_text, _, rank_text = spec.partition(":")
    die_step, die_rank = int(step_text), int(rank_text or 1)

    def maybe_die(step: int) -> None:
        if step == die_step and runtime.rank == die_rank:
            os._exit(17)

    return maybe_die
