"""EpochOrder: every sample exactly once per epoch across ranks, equal steps on every rank, exact resume."""

import numpy as np
import pytest

from affectvlm.data.sharding import EpochOrder


def epoch_of(order: EpochOrder, epoch: int):
    return [order.batch(epoch, step) for step in range(order.steps_per_epoch)]


@pytest.mark.parametrize("num_shards", [1, 2, 3])
@pytest.mark.parametrize("num_samples", [1, 7, 23, 48])
def test_one_epoch_over_all_ranks_shows_every_sample_exactly_once(num_shards, num_samples):
    batch_size = 4  # 23 and 7 are not multiples of shards x batch; 48 is, for 1, 2 and 3 shards
    orders = [EpochOrder(num_samples, batch_size, num_shards, rank, seed=11) for rank in range(num_shards)]
    assert len({order.steps_per_epoch for order in orders}) == 1
    shown = []
    for order in orders:
        for ids, valid in epoch_of(order, epoch=3):
            assert ids.shape == valid.shape == (batch_size,)
            assert ids.dtype == np.int64 and valid.dtype == np.bool_
            assert ((0 <= ids) & (ids < num_samples)).all()  # padding rows hold real ids too
            shown.extend(ids[valid].tolist())
    assert sorted(shown) == list(range(num_samples))
    padding = sum((~valid).sum() for order in orders for _, valid in epoch_of(order, 3))
    assert padding == num_shards * orders[0].steps_per_epoch * batch_size - num_samples


def test_steps_per_epoch_is_the_longest_rank_in_whole_batches():
    assert EpochOrder(23, 4, num_shards=3).steps_per_epoch == 2  # ranks of 8, 8 and 7 samples
    assert EpochOrder(24, 4, num_shards=3).steps_per_epoch == 2
    assert EpochOrder(25, 4, num_shards=3).steps_per_epoch == 3


def test_epochs_differ_and_the_order_is_a_function_of_seed_and_epoch():
    order = EpochOrder(50, 8, num_shards=2, shard_id=1, seed=4)
    first, second = (np.concatenate([ids for ids, _ in epoch_of(order, e)]) for e in (0, 1))
    assert not np.array_equal(first, second)
    again = EpochOrder(50, 8, num_shards=2, shard_id=1, seed=4)
    assert np.array_equal(np.concatenate([ids for ids, _ in epoch_of(again, 1)]), second)
    other_seed = EpochOrder(50, 8, num_shards=2, shard_id=1, seed=5)
    assert not np.array_equal(np.concatenate([ids for ids, _ in epoch_of(other_seed, 1)]), second)


def test_starting_at_a_step_gives_exactly_the_rest_of_the_stream():
    order = EpochOrder(37, 5, num_shards=2, shard_id=0, seed=9)
    stream = [(e, s, *order.batch(e, s)) for e in range(3) for s in range(order.steps_per_epoch)]
    resumed = EpochOrder(37, 5, num_shards=2, shard_id=0, seed=9)  # a fresh process, no state carried over
    start = 6  # epoch 1, step 2
    rest = [(e, s, *resumed.batch(e, s)) for e in range(1, 3) for s in range(2 if e == 1 else 0, 4)]
    assert resumed.steps_per_epoch == 4 and len(rest) == len(stream) - start
    for expected, got in zip(stream[start:], rest):
        assert expected[:2] == got[:2]
        assert np.array_equal(expected[2], got[2]) and np.array_equal(expected[3], got[3])


def test_without_shuffle_the_order_is_the_sample_order():
    order = EpochOrder(10, 4, shuffle=False)
    ids = np.concatenate([ids[valid] for ids, valid in epoch_of(order, 5)])
    assert ids.tolist() == list(range(10))


def test_bad_arguments_are_refused_with_their_name():
    with pytest.raises(ValueError, match="shard_id 2 is not in"):
        EpochOrder(10, 4, num_shards=2, shard_id=2)
    with pytest.raises(ValueError, match="batch_size"):
        EpochOrder(10, 0)
    with pytest.raises(IndexError, match="step 3 is outside"):
        EpochOrder(10, 4).batch(0, 3)
