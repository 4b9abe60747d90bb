"""The build plan on disk: every selected product, its image source and its split.

build-data's memory must not grow with the catalog, so nothing per product stays in
Python objects between the steps of a build: the ASINs seen (for de-duplication), the
image folder's listing, the selected products, the download results and the products of
each split live in one SQLite file inside the build's temporary folder (SQLite is in
Python's standard library; its page cache is bounded by ``CACHE_KIB``). Every step
streams rows in and out in metadata order; Beam reads a split from JSON-lines files
(:meth:`PlanStore.export_split`) instead of a list pickled into the pipeline.
"""

import json
import os
import sqlite3
from collections import Counter

#: SQLite page cache of a plan (KiB): the bound on the plan's memory, whatever the catalog's size
CACHE_KIB = 32 * 1024
#: rows fetched from a cursor at a time
FETCH = 2048

_SCHEMA = """
CREATE TABLE seen (asin TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE files (asin TEXT PRIMARY KEY, path TEXT NOT NULL, rank INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE known_urls (asin TEXT PRIMARY KEY, url TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE products (
    seq INTEGER PRIMARY KEY,       -- metadata order
    asin TEXT NOT NULL UNIQUE,
    title TEXT, category TEXT, label INTEGER NOT NULL,
    source TEXT,                    -- the image file (images folder or download cache); NULL until found
    image_url TEXT, urls TEXT,      -- the URL recorded in the dataset; every URL of the product (JSON)
    split TEXT NOT NULL, cap_hash REAL NOT NULL,
    brand TEXT, price REAL, average_rating REAL, rating_number REAL);  -- the attributes; NULL = missing
CREATE INDEX products_label ON products (label, cap_hash, seq);
CREATE INDEX products_split ON products (split, seq);
CREATE TABLE fetched (asin TEXT PRIMARY KEY, source TEXT, url TEXT, reason TEXT) WITHOUT ROWID;
CREATE TABLE failed (asin TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE excluded (asin TEXT PRIMARY KEY, seen INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
CREATE TABLE relabel (asin TEXT PRIMARY KEY, label INTEGER NOT NULL, seen INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
"""

ATTRIBUTES = ("brand", "price", "average_rating", "rating_number")
COLUMNS = ("asin", "title", "category", "label", "source", "image_url", *ATTRIBUTES)


def _pages(db, columns, where="", args=()):
    """Rows of ``products`` in metadata order, a page at a time (keyset paging on ``seq``: no cursor
    stays open between pages, so the plan can be written while it is read)."""
    last = -1
    cond = f"seq > ?{' AND ' + where if where else ''}"
    while True:
        rows = db.execute(
            f"SELECT seq, {columns} FROM products WHERE {cond} ORDER BY seq LIMIT {FETCH}", (last, *args)
        ).fetchall()
        if not rows:
            return
        last = rows[-1][0]
        for row in rows:
            yield row[1:]


class PlanStore:
    """One build's plan in ``path`` (a new SQLite file; the build's temporary folder removes it)."""

    def __init__(self, path):
        self.path = os.fspath(path)
        if os.path.exists(self.path):
            os.remove(self.path)  # a killed build's: the plan is always made anew
        self._db = sqlite3.connect(self.path)
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "temp_store=FILE", f"cache_size=-{CACHE_KIB}"):
            self._db.execute(f"PRAGMA {pragma}")
        self._db.executescript(_SCHEMA)
        self.remap = None  # old label -> new label, once classes were dropped
        self._pending = 0

    def close(self):
        self._db.close()

    def commit(self):
        self._db.commit()

    # ---- selection -----------------------------------------------------------------
    def first_sight(self, asin):
        """True the first time ``asin`` is given, False for a duplicate."""
        return self._db.execute("INSERT OR IGNORE INTO seen VALUES (?)", (asin,)).rowcount == 1

    def add_image_files(self, files):
        """``(asin, path, rank)`` of an images folder; per ASIN the lowest rank (preferred extension) wins."""
        self._db.executemany(
            "INSERT INTO files VALUES (?, ?, ?) ON CONFLICT (asin) DO UPDATE "
            "SET path = excluded.path, rank = excluded.rank WHERE excluded.rank < files.rank",
            files,
        )
        self._db.commit()

    def image_file(self, asin):
        row = self._db.execute("SELECT path FROM files WHERE asin = ?", (asin,)).fetchone()
        return row[0] if row else None

    def add(self, asin, title, category, label, source, image_url, urls, split, cap_hash, attributes=None):
        """One selected product; ``attributes``: {name: value or None} of :data:`ATTRIBUTES`."""
        attributes = attributes or {}
        self._db.execute(
            "INSERT INTO products (asin, title, category, label, source, image_url, urls, split, "
            "cap_hash, brand, price, average_rating, rating_number) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                asin,
                title,
                category,
                int(label),
                source,
                image_url,
                json.dumps(list(urls or [])),
                split,
                cap_hash,
                *(attributes.get(name) for name in ATTRIBUTES),
            ),
        )

    # ---- review decisions (build-data --exclude-file / --relabel-file) ----------------
    def add_decisions(self, excluded=(), relabel=()):
        """ASINs to leave out, and ``(asin, label)`` pairs whose class is set by a review."""
        self._db.executemany("INSERT OR IGNORE INTO excluded (asin) VALUES (?)", ((a,) for a in excluded))
        self._db.executemany(
            "INSERT OR REPLACE INTO relabel (asin, label) VALUES (?, ?)", ((a, int(x)) for a, x in relabel)
        )
        self._db.commit()

    def is_excluded(self, asin):
        """True (and the ASIN marked as found) when a review excluded ``asin``."""
        return self._db.execute("UPDATE excluded SET seen = 1 WHERE asin = ?", (asin,)).rowcount == 1

    def relabelled(self, asin):
        """The label a review gave ``asin`` (marked as found), or None."""
        row = self._db.execute("SELECT label FROM relabel WHERE asin = ?", (asin,)).fetchone()
        if row is None:
            return None
        self._db.execute("UPDATE relabel SET seen = 1 WHERE asin = ?", (asin,))
        return row[0]

    def decisions_unknown(self):
        """``(excluded ASINs never found in the metadata, relabelled ones never found)``."""
        return tuple(
            self._db.execute(f"SELECT COUNT(*) FROM {t} WHERE seen = 0").fetchone()[0] for t in ("excluded", "relabel")
        )

    def per_label(self):
        """Products per label (the labels as stored, before :attr:`remap`)."""
        return Counter(dict(self._db.execute("SELECT label, COUNT(*) FROM products GROUP BY label")))

    def drop_labels(self, labels):
        self._db.executemany("DELETE FROM products WHERE label = ?", [(int(x),) for x in labels])
        self._db.commit()

    def cap_label(self, label, n):
        """Keep the ``n`` products of ``label`` first by their cap hash (ties: metadata order); returns how many
        went."""
        cur = self._db.execute(
            "DELETE FROM products WHERE label = ? AND seq NOT IN (SELECT seq FROM products "
            "WHERE label = ? ORDER BY cap_hash, seq LIMIT ?)",
            (int(label), int(label), int(n)),
        )
        self._db.commit()
        return cur.rowcount

    def count(self, split=None):
        if split is None:
            return self._db.execute("SELECT COUNT(*) FROM products").fetchone()[0]
        return self._db.execute("SELECT COUNT(*) FROM products WHERE split = ?", (split,)).fetchone()[0]

    # ---- downloads -----------------------------------------------------------------
    def load_known_urls(self, records):
        """``(asin, url)`` records of the download cache's URL log (the last record of an ASIN wins)."""
        self._db.executemany("INSERT OR REPLACE INTO known_urls VALUES (?, ?)", records)
        self._db.commit()

    def known_url(self, asin):
        row = self._db.execute("SELECT url FROM known_urls WHERE asin = ?", (asin,)).fetchone()
        return row[0] if row else None

    def download_tasks(self):
        """``(asin, urls)`` of every product, in metadata order."""
        for asin, urls in _pages(self._db, "asin, urls"):
            yield asin, json.loads(urls)

    def fetched(self, asin, source, url, reason=None):
        """Record one download result (``source`` None: failed, ``reason`` why)."""
        self._db.execute("INSERT OR REPLACE INTO fetched VALUES (?, ?, ?, ?)", (asin, source, url, reason))
        self._pending += 1
        if self._pending >= FETCH:
            self._db.commit()
            self._pending = 0

    def download_failures(self):
        """``(asin, url, reason)`` of the failed downloads, in metadata order (before :meth:`apply_downloads`)."""
        self._db.commit()
        return self._db.execute(
            "SELECT p.asin, f.url, f.reason FROM products p JOIN fetched f ON f.asin = p.asin "
            "WHERE f.source IS NULL ORDER BY p.seq"
        )

    def apply_downloads(self):
        """Products take their downloaded file and URL; those without one leave the plan."""
        self._db.commit()
        self._db.execute(
            "UPDATE products SET source = (SELECT f.source FROM fetched f WHERE f.asin = products.asin), "
            "image_url = COALESCE((SELECT f.url FROM fetched f WHERE f.asin = products.asin "
            "AND f.source IS NOT NULL), image_url)"
        )
        self._db.execute("DELETE FROM products WHERE source IS NULL")
        self._db.execute("DELETE FROM fetched")
        self._db.commit()

    def image_failed(self, asin):
        """Record a product whose image could not be used (see :meth:`drop_failed`)."""
        self._db.execute("INSERT OR IGNORE INTO failed VALUES (?)", (asin,))

    def attribute_counts(self):
        """Products with each attribute (:data:`ATTRIBUTES`), over the plan less its failed images."""
        counts = ", ".join(f"COUNT({a})" for a in ATTRIBUTES)
        row = self._db.execute(f"SELECT {counts} FROM products WHERE asin NOT IN (SELECT asin FROM failed)").fetchone()
        return dict(zip(ATTRIBUTES, row))

    def drop_failed(self):
        """Products whose image failed leave the plan (a rebuild without them)."""
        self._db.execute("DELETE FROM products WHERE asin IN (SELECT asin FROM failed)")
        self._db.commit()

    # ---- reading the plan back -----------------------------------------------------
    def items(self, split=None):
        """Item dicts (:data:`COLUMNS`, labels after :attr:`remap`) of one split or all, in metadata order."""
        rows = (
            _pages(self._db, ", ".join(COLUMNS))
            if split is None
            else _pages(self._db, ", ".join(COLUMNS), "split = ?", (split,))
        )
        for row in rows:
            item = dict(zip(COLUMNS, row))
            if self.remap is not None:
                item["label"] = self.remap[item["label"]]
            yield item

    def export_split(self, split, path):
        """Write one split's items as JSON lines to ``path`` (for Beam's ReadFromText); returns the count."""
        n = 0
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            for item in self.items(split):
                f.write(json.dumps(item) + "\n")  # ASCII escapes: one line per item, whatever the title holds
                n += 1
        os.replace(tmp, path)
        return n
