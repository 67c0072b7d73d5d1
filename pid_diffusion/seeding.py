"""The seed of every random generator, derived from --seed and an index (a sample, a step, a process).

`derived_seed(purpose, seed, index)` hashes (purpose, seed) into 64 bits and XORs the index into them.
Two facts shape it:
  * torch's CPU generator (mt19937) keeps only the low 32 bits of its seed: `manual_seed(7·2³² + 3)`
    draws what `manual_seed(3)` draws. The old `seed·2³² + index` therefore ignored the seed on the CPU.
    Here the hash of the seed reaches the low 32 bits too, so every seed gives other numbers there.
  * Within one seed, the index is XORed into the low bits without hashing, which is one-to-one: sample
    (or step) i and j ≠ i never share a generator, on the CPU either (a hash of the index would let
    two of 50,000 samples collide in 32 bits with a probability of about 25%).
CUDA's generator (Philox) uses all 64 bits. `purpose` keeps the streams of samples, training steps
and processes apart.
"""

import hashlib

import torch

SAMPLE, STEP, PROCESS = "sample", "step", "process"
INDEX_LIMIT = 2 ** 32
"""Indices below this get distinct generators on every device (the CPU generator's seed width)."""


def derived_seed(purpose, seed, index):
    """A 63-bit generator seed for (purpose, seed, index); `seed` may be any integer, negative too."""
    index = int(index)
    if not 0 <= index < INDEX_LIMIT:
        raise ValueError(f"a {purpose} index must lie in [0, 2^32), got {index}")
    digest = hashlib.blake2b(f"{purpose}:{int(seed)}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "little") ^ index) & (2 ** 63 - 1)


def seeded_generator(purpose, seed, index, device="cpu"):
    """A torch.Generator on `device` seeded by derived_seed(purpose, seed, index)."""
    return torch.Generator(device=device).manual_seed(derived_seed(purpose, seed, index))
