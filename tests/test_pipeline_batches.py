"""ViewPipeline's batches: shapes and normalisation, DDP sharding, exact resume, DALI and torch streams."""

import numpy as np
import pytest
import torch

from affectvlm.data.augment import AugmentSettings
from affectvlm.data.emotions import EMOTIONS
from affectvlm.data.pipeline import OPENAI_MEAN, OPENAI_STD, CachedViews, OnlineViews, ViewPipeline

MEAN, STD = torch.tensor(OPENAI_MEAN).view(3, 1, 1), torch.tensor(OPENAI_STD).view(3, 1, 1)


def pipeline(source, batch_size=8, **options):
    return ViewPipeline(source, batch_size, **{"backend": "torch", "device": "cpu", **options})


def test_the_clip_normalisation_is_open_clips():
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    assert (OPENAI_MEAN, OPENAI_STD) == (tuple(OPENAI_DATASET_MEAN), tuple(OPENAI_DATASET_STD))


def test_evaluation_batches_are_the_normalised_views_in_order_with_their_labels(view_cache):
    source = CachedViews(view_cache)
    evaluation = pipeline(source, 8, training=False, seed=3)
    batches = list(evaluation.epoch(0))
    assert evaluation.steps_per_epoch == len(batches) == 7  # 50 samples
    for batch in batches:
        assert batch.images.shape == (8, 3, 3, 32, 32) and batch.images.dtype == torch.float32
        for name in ("labels", "intensity", "subjects", "sample_ids", "sequences", "frames"):
            assert getattr(batch, name).shape == (8,) and getattr(batch, name).dtype == torch.int64, name
        assert batch.valid.dtype == torch.bool
        views = source.views(batch.sample_ids.numpy()).float()
        torch.testing.assert_close(batch.images, (views - MEAN) / STD, rtol=0, atol=1e-6)
        for row, i in enumerate(batch.sample_ids.tolist()):
            sample = evaluation.samples[i]
            assert EMOTIONS[batch.labels[row]] == sample.emotion
            assert batch.intensity[row] == sample.intensity
            assert evaluation.subjects[batch.subjects[row]] == sample.subject
    assert torch.cat([b.sample_ids[b.valid] for b in batches]).tolist() == list(range(50))
    again = list(pipeline(source, 8, training=False, seed=99).epoch(4))  # no randomness at all
    assert all(torch.equal(a.images, b.images) for a, b in zip(batches, again))


def test_training_batches_are_augmented_and_stay_finite(view_cache):
    source = CachedViews(view_cache)
    batch = next(pipeline(source, 8, seed=1).epoch(0))
    plain = (source.views(batch.sample_ids.numpy()).float() - MEAN) / STD
    assert torch.isfinite(batch.images).all()
    differing = (batch.images - plain).abs().flatten(2).amax(-1) > 1e-3
    assert differing.float().mean() > 0.9  # every view has its own transform


@pytest.mark.parametrize("num_shards", [1, 2, 3])
def test_ranks_together_show_every_sample_of_the_subset_once_per_epoch(view_cache, num_shards):
    subset = np.random.default_rng(num_shards).choice(50, size=37, replace=False)  # 37: not a multiple of anything
    ranks = [pipeline(CachedViews(view_cache), 5, num_shards=num_shards, shard_id=rank, seed=2, subset=subset,
                      augment=AugmentSettings.off()) for rank in range(num_shards)]
    assert len({rank.steps_per_epoch for rank in ranks}) == 1
    for epoch in (0, 1):
        shown = []
        for rank in ranks:
            for batch in rank.epoch(epoch):
                assert batch.images.shape[0] == 5
                shown += batch.sample_ids[batch.valid].tolist()
        assert sorted(shown) == sorted(subset.tolist())
    orders = [torch.cat([b.sample_ids for b in ranks[0].epoch(e)]) for e in (0, 1)]
    assert not torch.equal(*orders)


def test_starting_at_a_step_gives_exactly_the_rest_of_the_stream(mesh_cache):
    source = OnlineViews(mesh_cache, size=24, device="cpu")
    whole = [batch for epoch in (0, 1) for batch in pipeline(source, 16, seed=4).epoch(epoch)]
    resumed = list(pipeline(source, 16, seed=4).epoch(1, start_step=2))  # a new pipeline, as after a restart
    assert len(resumed) == 2 and (resumed[0].epoch, resumed[0].step) == (1, 2)
    for expected, got in zip(whole[-2:], resumed):
        assert (expected.epoch, expected.step) == (got.epoch, got.step)
        assert torch.equal(expected.sample_ids, got.sample_ids) and torch.equal(expected.valid, got.valid)
        assert torch.equal(expected.images, got.images)  # the same camera jitter and augmentation


def test_dali_and_torch_give_the_same_label_and_sample_streams(view_cache):
    pytest.importorskip("nvidia.dali")
    source = CachedViews(view_cache)
    streams = {backend: list(pipeline(source, 8, seed=6, backend=backend, num_shards=2, shard_id=1).epoch(2))
               for backend in ("dali", "torch")}
    assert type(pipeline(source, 8, backend="dali").augmenter).__name__ == "DaliAugmenter"
    tolerance = 2 * 32 * np.finfo(np.float32).eps * 32 / min(OPENAI_STD)  # DALI's warp rounding, see test_augment
    for dali, torch_batch in zip(*streams.values(), strict=True):
        for name in ("sample_ids", "labels", "intensity", "subjects", "valid"):
            assert torch.equal(getattr(dali, name), getattr(torch_batch, name)), name
        torch.testing.assert_close(dali.images, torch_batch.images, rtol=0, atol=tolerance)


def test_settings_describe_the_pipeline_as_json(mesh_cache):
    import json

    settings = json.loads(json.dumps(pipeline(OnlineViews(mesh_cache, size=24, device="cpu"), 4, seed=8).settings()))
    assert settings["source"]["kind"] == "OnlineViews" and settings["source"]["jitter"]["yaw"] == 10.0
    assert settings["seed"] == 8 and settings["backend"] == "TorchAugmenter" and settings["device"] == "cpu"


def test_bad_subsets_and_start_steps_are_refused(view_cache):
    source = CachedViews(view_cache)
    with pytest.raises(ValueError, match="outside the source's 50 samples"):
        pipeline(source, subset=[0, 50])
    with pytest.raises(ValueError, match="lists a sample twice"):
        pipeline(source, subset=[1, 1])
    with pytest.raises(ValueError, match="start_step 9 is outside"):
        next(pipeline(source).epoch(0, start_step=9))
