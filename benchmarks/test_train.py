"""Training throughput (samples/s) of the same model in one run, on the CPU the small model (affect-tiny, 112 px,
3 views, batch 16) and on a GPU (`*_cuda`, skipped without one) a realistic one (ViT-B-16, 224 px, 3 views,
batch 64, bf16 autocast):

- `affectvlm`: this package's trainer step as the main job runs it: ViewPipeline over a render cache (no
  augmentation, the trainer's default), TrainModule (fused multiview contrastive + triplet + image-text loss over
  gathered embeddings), AdamW;
- `affectvlm+augmentation`: the same with mixed view augmentation at its default strengths (`--augment`, torch
  backend): what the augmentation adds;
- `open_clip`: a plain open_clip loop: a torch DataLoader over the same cache, the three views through the
  same image tower and averaged, open_clip.loss.ClipLoss against one drawn prompt per sample, AdamW.

Each round is STEPS optimizer steps of `batch` samples; samples/s is batch x STEPS / the round's time. On the GPU
both read their batches from the cache on the CPU and move them to the GPU (the peer's loader with 4 workers and
pinned memory); a round ends with a synchronisation.
"""

import contextlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from affectvlm.data.cache import RenderSettings, render_dataset
from affectvlm.data.emotions import EMOTIONS
from affectvlm.data.synthetic import generate_dataset

STEPS, ROUNDS = 4, 5


@dataclass(frozen=True)
class Setting:
    model: str
    image_size: int
    subjects: int  # of generated data in the cache: at least two batches
    batch: int
    device: str

    @property
    def amp(self):
        return torch.bfloat16 if self.device == "cuda" else None


CPU = Setting("affect-tiny", 112, 4, 16, "cpu")
GPU = Setting("ViT-B-16", 224, 10, 64, "cuda")




@pytest.fixture(scope="module", params=[pytest.param(CPU, id="cpu"),
                                        pytest.param(GPU, id="cuda", marks=[pytest.mark.cuda])])
def setting(request):
    return request.param


@pytest.fixture(scope="module")
def cache(tmp_path_factory, setting):
    root = tmp_path_factory.mktemp("train-bench")
    generate_dataset(root / "faces", setting.subjects, seed=0, file_format="ply")
    render_dataset(root / "faces", root / "render", RenderSettings(size=setting.image_size))
    return root / "render"


def fresh_model(setting: Setting):
    from affectvlm.model.affect_model import build_model

    torch.manual_seed(0)
    model = build_model(setting.model, classes=EMOTIONS)
    assert model.image_size == setting.image_size
    return model.to(setting.device)


def synchronised(steps, device: str):
    def run():
        steps()
        if device == "cuda":
            torch.cuda.synchronize()

    return run


def affectvlm_trainer(cache: Path, setting: Setting, augment: bool):
    from affectvlm.data.augment import AugmentSettings
    from affectvlm.data.pipeline import CachedViews, ViewPipeline
    from affectvlm.model.prompts import PromptBank
    from affectvlm.ops import AffectLoss
    from affectvlm.train.loop import TrainModule, draw_prompts, parameter_groups

    model, bank = fresh_model(setting), PromptBank.default()
    settings = AugmentSettings() if augment else AugmentSettings.off()
    pipeline = ViewPipeline(CachedViews(cache), setting.batch, seed=0, backend="torch", device=setting.device,
                            mean=model.normalisation.mean, std=model.normalisation.std, augment=settings)
    module = TrainModule(model, AffectLoss(len(EMOTIONS)), setting.amp).to(setting.device)
    optimizer = torch.optim.AdamW(parameter_groups(module, 0.1), lr=1e-4)
    batches = itertools.chain.from_iterable(pipeline.epoch(epoch) for epoch in itertools.count())

    def steps():
        for step in range(STEPS):
            batch = next(batches)
            prompts = draw_prompts(bank, pipeline.samples, batch.sample_ids, 0, step)
            module(batch.images, batch.labels, batch.valid, prompts).total.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return steps


class CacheDataset(torch.utils.data.Dataset):
    """(views float32 (K, 3, H, W) in [0, 1], label, sample id) read from a render cache's shards."""

    def __init__(self, cache: Path):
        self.index = json.loads((cache / "index.json").read_text())
        self.shards = [np.load(cache / shard["file"], mmap_mode="r") for shard in self.index["shards"]]

    def __len__(self):
        return len(self.index["samples"])

    def __getitem__(self, i):
        entry = self.index["samples"][i]
        views = torch.from_numpy(np.asarray(self.shards[entry["shard"]][entry["row"]], dtype=np.float32))
        return views, EMOTIONS.index(entry["emotion"]), i


def open_clip_trainer(cache: Path, setting: Setting):
    from open_clip.loss import ClipLoss

    from affectvlm.model.prompts import PromptBank

    model, bank = fresh_model(setting), PromptBank.default()
    clip, tokenizer, device = model.clip, model.tokenizer, setting.device
    mean = torch.tensor(model.normalisation.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(model.normalisation.std, device=device).view(1, 3, 1, 1)
    on_gpu = device == "cuda"
    loader = torch.utils.data.DataLoader(CacheDataset(cache), batch_size=setting.batch, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(0), num_workers=4 if on_gpu else 0,
                                         pin_memory=on_gpu, persistent_workers=on_gpu)
    autocast = torch.autocast("cuda", dtype=setting.amp) if on_gpu else contextlib.nullcontext()
    batches = itertools.chain.from_iterable(loader for _ in itertools.count())
    loss_fn = ClipLoss()
    optimizer = torch.optim.AdamW(clip.parameters(), lr=1e-4, weight_decay=0.1)

    def steps():
        for step in range(STEPS):
            views, labels, ids = next(batches)
            batch, num_views = views.shape[:2]
            images = (views.to(device, non_blocking=True).flatten(0, 1) - mean) / std
            prompts = [bank.draw(EMOTIONS[label], None, None, 0, step, sample_id)
                       for label, sample_id in zip(labels.tolist(), ids.tolist())]
            with autocast:
                image_features = clip.encode_image(images).unflatten(0, (batch, num_views)).float().mean(1)
                text_features = clip.encode_text(tokenizer(prompts).to(device)).float()
            loss = loss_fn(torch.nn.functional.normalize(image_features, dim=-1),
                           torch.nn.functional.normalize(text_features, dim=-1), clip.logit_scale.exp())
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return steps


TRAINERS = {"affectvlm": lambda cache, setting: affectvlm_trainer(cache, setting, augment=False),
            "affectvlm+augmentation": lambda cache, setting: affectvlm_trainer(cache, setting, augment=True),
            "open_clip": open_clip_trainer}


@pytest.mark.parametrize("trainer", list(TRAINERS))
def test_training_throughput(benchmark, cache, setting, trainer):
    benchmark.group = f"train-{setting.model}-{setting.image_size}px-batch{setting.batch}-3views-{setting.device}"
    steps = synchronised(TRAINERS[trainer](cache, setting), setting.device)
    steps()  # warm-up: first-call allocations
    benchmark.pedantic(steps, rounds=ROUNDS, iterations=1)
    benchmark.extra_info["samples_per_s"] = setting.batch * STEPS / benchmark.stats.stats.mean
