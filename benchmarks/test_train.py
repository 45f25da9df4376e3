"""Training throughput (samples/s) of the same small model (affect-tiny, 112 px, 3 views) in one run:

- `affectvlm`: this package's trainer step as the main job runs it: ViewPipeline over a render cache (no
  augmentation, the trainer's default), TrainModule (fused multiview contrastive + triplet + image-text loss over
  gathered embeddings), AdamW;
- `affectvlm+augmentation`: the same with mixed view augmentation at its default strengths (`--augment`, torch
  backend): what the augmentation adds;
- `open_clip`: a plain open_clip loop: a torch DataLoader over the same cache, the three views through the
  same image tower and averaged, open_clip.loss.ClipLoss against one drawn prompt per sample, AdamW.

Each round is STEPS optimizer steps of BATCH samples; samples/s is BATCH x STEPS / the round's time.
"""

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from affectvlm.data.cache import RenderSettings, render_dataset
from affectvlm.data.emotions import EMOTIONS
from affectvlm.data.synthetic import generate_dataset

MODEL = "affect-tiny"
BATCH, STEPS, ROUNDS = 16, 4, 5


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    from affectvlm.model.affect_model import build_model

    size = build_model(MODEL).image_size
    root = tmp_path_factory.mktemp("train-bench")
    generate_dataset(root / "faces", 4, seed=0, file_format="ply")
    render_dataset(root / "faces", root / "render", RenderSettings(size=size))
    return root / "render"


def fresh_model():
    from affectvlm.model.affect_model import build_model

    torch.manual_seed(0)
    return build_model(MODEL, classes=EMOTIONS)


def affectvlm_trainer(cache: Path, augment: bool):
    from affectvlm.data.augment import AugmentSettings
    from affectvlm.data.pipeline import CachedViews, ViewPipeline
    from affectvlm.model.prompts import PromptBank
    from affectvlm.ops import AffectLoss
    from affectvlm.train.loop import TrainModule, draw_prompts, parameter_groups

    model, bank = fresh_model(), PromptBank.default()
    settings = AugmentSettings() if augment else AugmentSettings.off()
    pipeline = ViewPipeline(CachedViews(cache), BATCH, seed=0, backend="torch", mean=model.normalisation.mean,
                            std=model.normalisation.std, augment=settings)
    module = TrainModule(model, AffectLoss(len(EMOTIONS)))
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


def open_clip_trainer(cache: Path):
    from open_clip.loss import ClipLoss

    from affectvlm.model.prompts import PromptBank

    model, bank = fresh_model(), PromptBank.default()
    clip, tokenizer = model.clip, model.tokenizer
    mean = torch.tensor(model.normalisation.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.normalisation.std).view(1, 3, 1, 1)
    dataset = CacheDataset(cache)
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(0))
    batches = itertools.chain.from_iterable(loader for _ in itertools.count())
    loss_fn = ClipLoss()
    optimizer = torch.optim.AdamW(clip.parameters(), lr=1e-4, weight_decay=0.1)

    def steps():
        for step in range(STEPS):
            views, labels, ids = next(batches)
            batch, num_views = views.shape[:2]
            images = (views.flatten(0, 1) - mean) / std
            image_features = clip.encode_image(images).unflatten(0, (batch, num_views)).mean(1)
            prompts = [bank.draw(EMOTIONS[label], None, None, 0, step, sample_id)
                       for label, sample_id in zip(labels.tolist(), ids.tolist())]
            text_features = clip.encode_text(tokenizer(prompts))
            loss = loss_fn(torch.nn.functional.normalize(image_features, dim=-1),
                           torch.nn.functional.normalize(text_features, dim=-1), clip.logit_scale.exp())
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return steps


TRAINERS = {"affectvlm": lambda cache: affectvlm_trainer(cache, augment=False),
            "affectvlm+augmentation": lambda cache: affectvlm_trainer(cache, augment=True),
            "open_clip": open_clip_trainer}


@pytest.mark.parametrize("trainer", list(TRAINERS))
def test_training_throughput(benchmark, cache, trainer):
    benchmark.group = f"train-{MODEL}-batch{BATCH}-3views"
    steps = TRAINERS[trainer](cache)
    steps()  # warm-up: first-call allocations
    benchmark.pedantic(steps, rounds=ROUNDS, iterations=1)
    benchmark.extra_info["samples_per_s"] = BATCH * STEPS / benchmark.stats.stats.mean
