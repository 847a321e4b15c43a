"""Infinite, seeded, resumable batch sampler.

Each dataset is read as an endless stream of epochs; epoch ``e`` is a permutation drawn from a
``torch.Generator`` seeded by a hash of ``(seed, name, e)``. Batches run straight across epoch boundaries,
so every sample is used once per epoch. Every stream position also gets an augmentation seed derived from
``(seed, name, epoch, position)``; the sampler yields ``(index, aug_seed)`` pairs and datasets read
``ds[(index, aug_seed)]``, which keeps random augmentation identical whatever the number of DataLoader
workers and across a resume.

The sampler's state is what the *trainer consumed* (``advance()`` per batch), not what the DataLoader
prefetched: ``__iter__`` works on a copy of the state, so worker prefetching never moves it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch

AUG_SEED_BITS = 32  # < 2**32 so numpy's legacy RandomState accepts it as well as torch / random / default_rng


def derive_seed(*parts: object, bits: int = 63) -> int:
    """A stable non-negative integer hash of ``parts`` (Python's ``hash`` is salted per process)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << bits) - 1)


def epoch_permutation(length: int, seed: int, name: str, epoch: int) -> torch.Tensor:
    """The order of epoch ``epoch`` of dataset ``name``: a permutation of ``range(length)``."""
    g = torch.Generator().manual_seed(derive_seed("perm", seed, name, epoch))
    return torch.randperm(length, generator=g)


def aug_seed(seed: int, name: str, epoch: int, position: int) -> int:
    """The augmentation seed of stream position ``(epoch, position)`` of dataset ``name``."""
    return derive_seed("aug", seed, name, epoch, position, bits=AUG_SEED_BITS)


class InfiniteSampler:
    """Batch sampler yielding lists of ``(index, aug_seed)`` forever; use as a DataLoader ``batch_sampler``.

    ``epoch``/``position`` say where the next batch the trainer consumes begins; call :meth:`advance` once
    per consumed batch. :meth:`state_dict` / :meth:`load_state_dict` save and restore that position.
    """

    def __init__(self, length: int, batch_size: int, seed: int, name: str) -> None:
        if length <= 0:
            raise ValueError(f"dataset {name!r} is empty: nothing to sample")
        if batch_size <= 0:
            raise ValueError(f"dataset {name!r}: batch size must be positive, got {batch_size}")
        self.length, self.batch_size, self.seed, self.name = length, batch_size, seed, name
        self.epoch, self.position = 0, 0

    def _stream(self, epoch: int, position: int) -> Iterator[tuple[int, int]]:
        while True:
            order = epoch_permutation(self.length, self.seed, self.name, epoch).tolist()
            for pos in range(position, self.length):
                yield order[pos], aug_seed(self.seed, self.name, epoch, pos)
            epoch, position = epoch + 1, 0

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        stream = self._stream(self.epoch, self.position)
        while True:
            yield [next(stream) for _ in range(self.batch_size)]

    def advance(self) -> None:
        """Record that one batch was consumed."""
        self.epoch += (self.position + self.batch_size) // self.length
        self.position = (self.position + self.batch_size) % self.length

    def state_dict(self) -> dict[str, int]:
        """Position of the next batch, plus the identity fields a resume must agree on."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "length": self.length,
            "batch_size": self.batch_size,
            "seed": self.seed,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a saved position; refuse a state from a different dataset size, batch or seed."""
        for key in ("length", "batch_size", "seed"):
            if key in state and int(state[key]) != getattr(self, key):
                raise ValueError(
                    f"sampler {self.name!r}: checkpoint has {key}={int(state[key])}, this run has "
                    f"{getattr(self, key)}; resume needs the same dataset, batch size and seed"
                )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
