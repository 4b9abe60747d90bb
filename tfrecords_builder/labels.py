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
        "Pet Supplies", "Grocery & Gourmet Food", "Patio, Lawn & Garden", "Cell Phones & Accessories",
        "Beauty", "Health & Personal Care", "Clothing", "Arts, Crafts & Sewing", "Baby",
        "Musical Instruments", "Automotive", "Jewelry", "Home Improvement", "Kitchen & Dining",
        "Watches", "Shoes", "Home & Kitchen", "Camera & Photo", "Electronics", "Computers & Accessories",
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
        raise UserError(f"categories file {path}: {e.strerror}: pass a text file with one class name per line") from None
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


def top_categories(products, n):
    """The ``n`` most frequent top-level categories (first path elements) over ``products``.

    A product counts once per distinct top-level category. Ties break by name.
    """
    counts = Counter()
    for p in products:
        tops = {}
        for path in p.paths:
            if path:
                tops.setdefault(norm(path[0]), path[0])
        for key, name in tops.items():
            counts[(key, name)] += 1
    by_key = Counter()
    display = {}
    for (key, name), c in counts.items():
        by_key[key] += c
        display.setdefault(key, name)
    ranked = sorted(by_key.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    return [display[k] for k, _ in ranked]


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
