"""The trained module, its loss over embeddings gathered from every rank, and the training loop.

Every rank computes the same global loss: the view embeddings, fused embeddings and prompt embeddings of all
ranks are gathered with `gather_with_grad`, then the rows of real samples (valid and labelled) are selected,
identically on every rank, so padding rows keep the shapes equal across ranks but never enter the loss.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import torch
import torch.distributed as dist
from torch import nn

from affectvlm.data.emotions import EMOTIONS
from affectvlm.distributed import gather_with_grad
from affectvlm.ops.contrastive import AffectLoss, contrastive_loss


MAX_INTENSITY = 9  # intensity levels counted apart in evaluation (the built-in data and BU-3DFE use 1..4)


class StepTerms(NamedTuple):
    total: torch.Tensor
    contrastive: torch.Tensor
    triplet: torch.Tensor
    image_text: torch.Tensor
    accuracy: torch.Tensor  # share of samples whose most similar drawn prompt has their emotion
    samples: torch.Tensor  # real samples in the global batch


class TrainModule(nn.Module):
    """The AffectVLM model and the AffectLoss (logit scale and margin) trained together, so that DDP keeps the
    loss's parameters identical on every rank too.

    The loss's log scale is the CLIP model's own `logit_scale` parameter (one tensor under both names): the
    scale the contrastive loss learns is the one the model classifies with, and no parameter goes unused."""

    def __init__(self, model: nn.Module, loss: AffectLoss, autocast_dtype: torch.dtype | None = None):
        super().__init__()
        self.model = model
        self.loss = loss
        self.loss.log_scale = model.clip.logit_scale
        self.autocast_dtype = autocast_dtype

    def forward(self, images: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, prompts: list[str]) -> StepTerms:
        with self._autocast(images.device):
            views = self.model.encode_views(images)  # (B, K, D)
            fused = self.model.fuse_views(views)
            texts = self.model.encode_text(prompts)
        views, fused, texts = views.float(), fused.float(), texts.float()
        targets = torch.where(valid & (labels >= 0), labels, -1)
        targets, views, fused, texts = (gather_with_grad(t) for t in (targets, views, fused, texts))
        keep = targets >= 0
        labels = targets[keep]
        views, fused, texts = views[keep], fused[keep], texts[keep]
        num_views = views.shape[1]
        multiview = self.loss(views.reshape(-1, views.shape[-1]), labels.repeat_interleave(num_views))
        image_text = contrastive_loss(fused, labels, texts, labels, scale=self.loss.scale, margin=self.loss.margin,
                                      num_classes=self.loss.num_classes, multiview_terms=False).image_text
        weights = self.loss.weights.to(image_text.dtype)
        total = weights[0] * multiview.contrastive + weights[1] * multiview.triplet + weights[2] * image_text
        with torch.no_grad():
            nearest = (nn.functional.normalize(fused, dim=1) @ nn.functional.normalize(texts, dim=1).T).argmax(1)
            accuracy = (labels[nearest] == labels).float().mean()
        return StepTerms(total, multiview.contrastive.detach(), multiview.triplet.detach(), image_text.detach(),
                         accuracy, torch.tensor(len(labels)))

    def _autocast(self, device: torch.device):
        if self.autocast_dtype is None or device.type != "cuda":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self.autocast_dtype)


def parameter_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only; biases, norms, the logit scale and the margin are not decayed."""
    decay = [p for p in module.parameters() if p.requires_grad and p.ndim >= 2]
    other = [p for p in module.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]


def learning_rate(base: float, step: int, warmup: int, total: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to 0 at `total` steps (step counts from 0)."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class TrainState:
    epoch: int = 0  # the epoch being trained
    step: int = 0  # the next batch of that epoch
    global_step: int = 0  # optimizer steps done
    best_metric: float | None = None  # best held-out accuracy so far

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Schedule:
    """What the loop needs of the training config."""

    epochs: int
    total_steps: int  # optimizer steps in the whole run
    lr: float
    warmup: int
    accumulate: int
    clip_grad: float  # largest global gradient norm; 0: no clipping
    seed: int
    checkpoint_every: int  # optimizer steps; 0: at each epoch's end only
    log_every: int


def clip_gradients(parameters, max_norm: float) -> float:
    """Scale the gradients down so that their global norm is at most `max_norm` (0: leave them as they are);
    returns their norm before."""
    return nn.utils.clip_grad_norm_(parameters, max_norm or math.inf).item()


def draw_prompts(bank, samples, sample_ids: torch.Tensor, seed: int, step: int) -> list[str]:
    """One prompt per sample, a pure function of (seed, step, sample); '' for unlabelled samples."""
    prompts = []
    for sample_id in sample_ids.tolist():
        sample = samples[sample_id]
        prompts.append("" if sample.emotion is None else
                       bank.draw(sample.emotion, sample.attributes, sample.intensity, seed, step, sample_id))
    return prompts


@torch.no_grad()
def evaluate(model: nn.Module, pipeline, bank) -> dict:
    """Held-out accuracy of prompt-ensemble classification over every rank's shard (collective), overall and
    per intensity level ("by_intensity": {level: [accuracy, samples]}, levels 0..MAX_INTENSITY)."""
    was_training = model.training
    model.eval()
    to_emotion = torch.tensor([EMOTIONS.index(name) for name in model.classes])
    counts = torch.zeros(MAX_INTENSITY + 2, 2, dtype=torch.float64)  # row 0 all, row 1 + level; correct, total
    for batch in pipeline.epoch(0):
        probabilities = model.classify(batch.images, bank).cpu()
        keep = (batch.valid & (batch.labels >= 0)).cpu()
        correct = (to_emotion[probabilities.argmax(1)] == batch.labels.cpu()) & keep
        level = batch.intensity.cpu()
        known = keep & (level >= 0) & (level <= MAX_INTENSITY)
        counts[0] += torch.tensor([correct.sum().item(), keep.sum().item()])
        counted = torch.stack([correct[known].double(), torch.ones(int(known.sum()), dtype=torch.float64)], dim=1)
        counts[1:].index_add_(0, level[known], counted)
    model.train(was_training)
    if dist.is_available() and dist.is_initialized():
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        counts = counts.to(device)
        dist.all_reduce(counts)
        counts = counts.cpu()
    (correct, total), *levels = counts.tolist()
    by_intensity = {level: [right / seen, int(seen)] for level, (right, seen) in enumerate(levels) if seen}
    return {"accuracy": correct / total if total else float("nan"), "samples": int(total),
            "by_intensity": by_intensity}


def accuracy_over_levels(by_intensity: dict, levels=(3, 4)) -> tuple[float, int] | None:
    """(accuracy, samples) over the given intensity levels of an evaluation's "by_intensity" (keys may be the
    levels or, read back from JSON, their text); None when none of the levels was evaluated."""
    counted = [value for key, value in by_intensity.items() if int(key) in levels]
    samples = sum(seen for _, seen in counted)
    if not samples:
        return None
    return sum(accuracy * seen for accuracy, seen in counted) / samples, samples


class MetricsLog:
    """Rank 0's JSON lines file of per-step and per-evaluation records, and the run's curve figure."""

    def __init__(self, path: Path | None):
        self.path = path
        self.records: list[dict] = []

    def write(self, record: dict) -> None:
        self.records.append(record)
        if self.path is not None:
            with open(self.path, "a") as file:
                file.write(json.dumps(record) + "\n")

    def plot(self, path: Path) -> None:
        from affectvlm.plotting import plt, save_figure

        steps = [r for r in self.records if r["kind"] == "step"]
        evals = [r for r in self.records if r["kind"] == "eval"]
        figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 4))
        for term in ("loss", "contrastive", "triplet", "image_text"):
            loss_axis.plot([r["step"] for r in steps], [r[term] for r in steps], label=term)
        loss_axis.set(xlabel="optimizer step", ylabel="loss", title="training loss")
        loss_axis.legend()
        accuracy_axis.plot([r["step"] for r in steps], [r["accuracy"] for r in steps], label="batch prompt match")
        accuracy_axis.plot([r["step"] for r in evals], [r["accuracy"] for r in evals], "o-", label="held-out")
        accuracy_axis.set(xlabel="optimizer step", ylabel="accuracy", ylim=(0, 1), title="accuracy")
        accuracy_axis.legend()
        figure.tight_layout()
        save_figure(figure, path)


def train(module: nn.Module, train_module: TrainModule, optimizer: torch.optim.Optimizer, pipeline, eval_pipeline,
          bank, schedule: Schedule, state: TrainState, *, save: Callable[[TrainState, bool], None],
          log: MetricsLog, progress=None, sample_trace: Path | None = None,
          after_step: Callable[[int], None] = lambda step: None) -> TrainState:
    """Train from `state` to the end of the schedule. `module` is what runs the forward (train_module itself or
    its DDP wrapper); `save(state, is_best)` writes a checkpoint (called on every rank)."""
    module.train()
    samples = pipeline.samples
    for epoch in range(state.epoch, schedule.epochs):
        batches = iter(pipeline.epoch(epoch, start_step=state.step))
        last_batch = pipeline.steps_per_epoch - 1
        step_started, waited, sums = time.perf_counter(), 0.0, _Sums()
        while True:
            wait_started = time.perf_counter()
            batch = next(batches, None)
            waited += time.perf_counter() - wait_started
            if batch is None:
                break
            if sample_trace is not None:
                _trace(sample_trace, batch)
            boundary = (batch.step + 1) % schedule.accumulate == 0 or batch.step == last_batch
            prompts = draw_prompts(bank, samples, batch.sample_ids, schedule.seed,
                                   epoch * pipeline.steps_per_epoch + batch.step)
            sync = contextlib.nullcontext() if boundary or not hasattr(module, "no_sync") else module.no_sync()
            with sync:
                terms = module(batch.images, batch.labels, batch.valid, prompts)
                (terms.total / schedule.accumulate).backward()
            sums.add(terms)
            if not boundary:
                continue
            lr = learning_rate(schedule.lr, state.global_step, schedule.warmup, schedule.total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            grad_norm = clip_gradients(train_module.parameters(), schedule.clip_grad)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state.global_step += 1
            state.epoch, state.step = (epoch + 1, 0) if batch.step == last_batch else (epoch, batch.step + 1)
            elapsed = time.perf_counter() - step_started
            if state.global_step % schedule.log_every == 0:
                record = {"kind": "step", "epoch": epoch, "step": state.global_step, **sums.means(), "lr": lr,
                          "grad_norm": grad_norm,
                          "logit_scale": train_module.loss.scale.item(), "margin": train_module.loss.margin.item(),
                          "samples_per_s": sums.samples / elapsed, "data_wait": waited / elapsed}
                log.write(record)
                if progress is not None:
                    progress.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{lr:.2e}",
                                         acc=f"{record['accuracy']:.2f}", sps=f"{record['samples_per_s']:.1f}",
                                         wait=f"{record['data_wait']:.0%}")
            if progress is not None:
                progress.update(1)
            finished = state.global_step >= schedule.total_steps
            if schedule.checkpoint_every and state.global_step % schedule.checkpoint_every == 0 and state.step \
                    and not finished:  # (at an epoch's end, or the run's, the checkpoint after evaluating follows)
                save(state, False)
            after_step(state.global_step)
            if finished:
                break
            step_started, waited, sums = time.perf_counter(), 0.0, _Sums()
        metrics = evaluate(train_module.model, eval_pipeline, bank)
        log.write({"kind": "eval", "epoch": epoch, "step": state.global_step, **metrics})
        is_best = state.best_metric is None or metrics["accuracy"] > state.best_metric
        if is_best:
            state.best_metric = metrics["accuracy"]
        save(state, is_best)
        if state.global_step >= schedule.total_steps:
            break
    return state


class _Sums:
    """Per-term sums over the batches of one optimizer step."""

    def __init__(self):
        self.batches, self.samples, self.totals = 0, 0, {}

    def add(self, terms: StepTerms) -> None:
        self.batches += 1
        self.samples += int(terms.samples)
        values = {"loss": terms.total.detach(), "contrastive": terms.contrastive, "triplet": terms.triplet,
                  "image_text": terms.image_text, "accuracy": terms.accuracy}
        for name, value in values.items():
            self.totals[name] = self.totals.get(name, 0.0) + float(value)

    def means(self) -> dict:
        return {name: total / self.batches for name, total in self.totals.items()}


def _trace(path: Path, batch) -> None:
    valid_ids = batch.sample_ids.cpu()[batch.valid.cpu()].tolist()
    with open(path, "a") as file:
        file.write(json.dumps({"epoch": batch.epoch, "step": batch.step, "sample_ids": valid_ids}) + "\n")
