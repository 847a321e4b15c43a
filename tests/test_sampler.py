"""The infinite seeded sampler: permutations per epoch, exact continuation, deterministic aug seeds."""

from __future__ import annotations

import itertools

import pytest

from bench.sampler import InfiniteSampler, aug_seed, epoch_permutation


def take(sampler, n_batches):
    return list(itertools.islice(iter(sampler), n_batches))


def test_epochs_are_distinct_permutations():
    s = InfiniteSampler(10, 4, seed=0, name="source")
    flat = [i for b in take(s, 10) for i, _ in b]  # 40 items = 4 epochs, batches cross epoch ends
    epochs = [flat[k : k + 10] for k in range(0, 40, 10)]
    assert all(sorted(e) == list(range(10)) for e in epochs)
    assert len({tuple(e) for e in epochs}) == 4
    assert flat[:10] == epoch_permutation(10, 0, "source", 0).tolist()


def test_resumed_sampler_continues_exactly():
    a = InfiniteSampler(7, 3, seed=5, name="target")
    reference = take(a, 8)
    for _ in range(5):  # the trainer consumed 5 batches (the DataLoader may have prefetched more)
        a.advance()
    assert (a.epoch, a.position) == (2, 1)  # 15 items = 2 epochs of 7 + 1
    b = InfiniteSampler(7, 3, seed=5, name="target")
    b.load_state_dict(a.state_dict())
    assert take(b, 3) == reference[5:8]


def test_aug_seeds_are_deterministic_and_vary():
    one = take(InfiniteSampler(10, 4, seed=0, name="source"), 5)
    two = take(InfiniteSampler(10, 4, seed=0, name="source"), 5)
    assert one == two
    seeds = [s for b in one for _, s in b]
    assert len(set(seeds)) == len(seeds) and all(0 <= s < 2**32 for s in seeds)
    assert seeds[0] == aug_seed(0, "source", 0, 0)
    other_name = take(InfiniteSampler(10, 4, seed=0, name="target"), 5)
    other_seed = take(InfiniteSampler(10, 4, seed=1, name="source"), 5)
    assert one != other_name and one != other_seed


def test_bad_sampler_input():
    with pytest.raises(ValueError, match="empty"):
        InfiniteSampler(0, 2, 0, "source")
    s = InfiniteSampler(10, 4, 0, "source")
    with pytest.raises(ValueError, match="batch_size"):
        InfiniteSampler(10, 2, 0, "source").load_state_dict(s.state_dict())
