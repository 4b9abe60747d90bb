"""Deterministic splits from a hash of (seed, ASIN).

Each product's split depends only on its ASIN and the seed: ``u = hash(seed, asin)``
mapped to [0, 1) and cut at the cumulative split fractions. Adding products never
moves an old one to another split, and every class is split in the given proportions
in expectation (a pure hash threshold, not an exact per-class cut: an exact cut would
move products near the boundaries whenever products are added).
"""

import hashlib

from amazon_visual.errors import UserError

SPLIT_NAMES = ("train", "validation", "test")


def parse_fractions(text):
    """``"0.8,0.1,0.1"`` -> (0.8, 0.1, 0.1): train, validation, test fractions summing to 1."""
    if isinstance(text, (list, tuple)):
        parts = list(text)
    else:
        parts = [p for p in str(text).split(",") if p.strip()]
    try:
        fr = [float(p) for p in parts]
    except ValueError:
        raise UserError(f"--splits {text!r}: give three numbers train,validation,test such as 0.8,0.1,0.1") from None
    if len(fr) != 3 or any(f < 0 for f in fr) or sum(fr) <= 0:
        raise UserError(f"--splits {text!r}: give three non-negative numbers train,validation,test such as 0.8,0.1,0.1")
    total = sum(fr)
    if abs(total - 1.0) > 1e-6:
        raise UserError(f"--splits {text!r}: the fractions sum to {total:g}, they must sum to 1")
    return tuple(fr)


def unit_hash(seed, asin, salt="split"):
    """A uniform number in [0, 1) from (salt, seed, asin)."""
    h = hashlib.sha256(f"{salt}\x00{seed}\x00{asin}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64


def split_of(asin, seed, fractions):
    """The split name of one product."""
    u = unit_hash(seed, asin)
    acc = 0.0
    for name, f in zip(SPLIT_NAMES, fractions):
        acc += f
        if u < acc:
            return name
    # u is within rounding of 1.0: the last split with a non-zero fraction
    for name, f in reversed(list(zip(SPLIT_NAMES, fractions))):
        if f > 0:
            return name
    return SPLIT_NAMES[0]
