"""Class names and the class of a product.

A class name matches a category path element equal to it (case-insensitive, after
HTML unescaping and whitespace folding). A product gets the class matched at the
deepest level over all its category paths, so classes of mixed levels work:
"Clothing" (level 2, under "Clothing, Shoes & Jewelry") wins over "Clothing, Shoes &
Jewelry" if both are classes; ties at the same depth go to the class listed first.
"""

import html
import os
import re
from collections import Counter

from amazon_visual.errors import UserError

PRESETS = {
    "seed20": [
        "Pet Supplies",
        "Grocery & Gourmet Food",
        "Patio, Lawn & Garden",
        "Cell Phones & Accessories",
        "Beauty",
        "Health & Personal Care",
        "Clothing",
        "Arts, Crafts & Sewing",
        "Baby",
        "Musical Instruments",
        "Automotive",
        "Jewelry",
        "Home Improvement",
        "Kitchen & Dining",
        "Watches",
        "Shoes",
        "Home & Kitchen",
        "Camera & Photo",
        "Electronics",
        "Computers & Accessories",
    ],
}

_WS = re.compile(r"\s+")


def norm(name):
    """Normalised form used to compare class names and category names."""
    return _WS.sub(" ", html.unescape(str(name))).strip().casefold()


def read_categories_file(path):
    """One class name per line (names may hold commas); blank lines and ``#`` comments skipped."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            names = [ln.strip() for ln in f]
    except OSError as e:
        raise UserError(
            f"categories file {path}: {e.strerror}: pass a text file with one class name per line"
        ) from None
    names = [n for n in names if n and not n.startswith("#")]
    if not names:
        raise UserError(f"categories file {path} names no class: write one class name per line")
    return names


def unique_names(names, what="--category"):
    seen, out = set(), []
    for n in names:
        n = _WS.sub(" ", html.unescape(str(n))).strip()
        if not n:
            raise UserError(f"{what}: an empty class name: give non-empty names")
        if norm(n) in seen:
            raise UserError(f"{what}: class {n!r} is given twice: give each class once")
        seen.add(norm(n))
        out.append(n)
    return out


class CategoryCounts:
    """Products per category name at each level of the category paths (level 1 = the top).

    Only the category tree counts, not the store a product is sold in (2018 ``main_cat``,
    2023 ``main_category``, kept in ``Product.store``): a store is no level of the tree.
    A product counts once per name and level.
    """

    def __init__(self):
        self.levels = []  # level - 1 -> Counter(normalised name -> products)
        self.names = {}  # normalised name -> its first spelling
        self._keys = {}  # spelling -> normalised name (names repeat: norm once)

    def _key(self, name):
        key = self._keys.get(name)
        if key is None:
            key = self._keys[name] = norm(name)
            self.names.setdefault(key, name)
        return key

    def add(self, product):
        store = norm(product.store) if product.store else None
        seen = set()
        for path in product.paths:
            if store is not None and len(path) == 1 and self._key(path[0]) == store:
                continue
            seen.update((depth, self._key(name)) for depth, name in enumerate(path))
        for depth, key in seen:
            while len(self.levels) <= depth:
                self.levels.append(Counter())
            self.levels[depth][key] += 1

    def ranked(self, level):
        """``[(name, products)]`` at ``level`` (1 = top), most frequent first, ties by name."""
        if not 1 <= level <= len(self.levels):
            return []
        items = sorted(self.levels[level - 1].items(), key=lambda kv: (-kv[1], kv[0]))
        return [(self.names[k], c) for k, c in items]

    def level_for(self, n):
        """The first level where at least ``n`` names each hold 1/(10 n) of its products, or None.

        The share (a tenth of an even split) keeps a few stray products filed under another
        department from making the top level of a one-department file look like ``n`` classes.
        """
        for level in range(1, len(self.levels) + 1):
            ranked = self.ranked(level)
            total = sum(c for _, c in ranked)
            if sum(c * 10 * n >= total for _, c in ranked) >= n:
                return level
        return None

    def top(self, n):
        """``(names, level)``: the ``n`` most frequent names at :meth:`level_for`; ``([], None)`` if none."""
        level = self.level_for(n)
        return ([name for name, _ in self.ranked(level)[:n]], level) if level else ([], None)

    def describe(self, k=6):
        """The levels down to the first where 2 categories hold a real share (``level_for(2)``), as
        ``level 1: A (9); level 2: B (5), C (4)``."""
        last = self.level_for(2) or min(len(self.levels), 3)
        parts = []
        for level in range(1, last + 1):
            ranked = self.ranked(level)
            more = f", ... ({len(ranked) - k} more)" if len(ranked) > k else ""
            parts.append(f"level {level}: " + ", ".join(f"{name} ({c})" for name, c in ranked[:k]) + more)
        return "; ".join(parts) or "no category paths"


def top_categories(products, n):
    """``(names, level, counts)``: the ``n`` most frequent categories at the first level of the
    category paths where ``n`` of them occur (see :meth:`CategoryCounts.level_for`)."""
    counts = CategoryCounts()
    for p in products:
        counts.add(p)
    names, level = counts.top(n)
    return names, level, counts


class Labeler:
    """Assigns a class index to a product from its category paths."""

    def __init__(self, names):
        self.names = list(names)
        self._index = {norm(n): i for i, n in enumerate(self.names)}

    def match(self, paths):
        """``(class index, category path string)`` or ``(None, "")`` when no class matches."""
        best = None  # (depth, -order, index, path)
        for path in paths:
            for depth, element in enumerate(path):
                i = self._index.get(norm(element))
                if i is None:
                    continue
                cand = (depth, -i)
                if best is None or cand > best[0]:
                    best = (cand, i, path)
        if best is None:
            return None, ""
        return best[1], " > ".join(best[2])
