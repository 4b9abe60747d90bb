"""Review decisions fed back into build-data: ``--exclude-file`` and ``--relabel-file``.

Both are CSV files with a header row (UTF-8, a BOM allowed; column names compared
case-insensitively; other columns are ignored), as ``amazon-visual audit`` writes them and a
reviewer edits them:

- exclude file, one of two forms:
  * the audit's ``duplicates.csv`` (``group,asin,split,similarity,representative,kind``): it has
    a ``representative`` column; the rows whose ``representative`` is false (``false``, ``0``,
    ``no``, ``n``, ``f``) are excluded, the representatives (``true``, ``1``, ``yes``, ``y``,
    ``t``) are kept. A reviewer keeps a group whole by deleting its rows;
  * any other CSV with an ``asin`` column and no ``representative`` column: every ASIN listed
    is excluded;
- relabel file: the audit's ``misfiled.csv`` (``asin,filed,suggested,confidence``): the
  product's class becomes ``suggested``, which must be one of the build's classes. An ASIN
  listed twice with two different classes is an error.

A file is read whole and checked before the build starts: a missing file, a missing column,
an empty ASIN, an unknown ``representative`` value or an unknown class is a :class:`UserError`
naming the file, the line and what to do. ASINs that the metadata does not hold are not an
error: the build report counts them.
"""

import csv
import os

from amazon_visual.errors import UserError
from tfrecords_builder.labels import norm

TRUE = frozenset({"true", "1", "yes", "y", "t"})
FALSE = frozenset({"false", "0", "no", "n", "f"})


def _rows(path, option, required):
    """``(line number, {column: value})`` of a CSV file with a header that has ``required`` columns."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"{option} {path} does not exist: pass the CSV file written by amazon-visual audit")
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise UserError(
                    f"{option} {path} is empty: it needs a header row with the columns {', '.join(required)}"
                )
            header = [h.strip().casefold() for h in header]
            missing = [c for c in required if c not in header]
            if missing:
                raise UserError(
                    f"{option} {path} has no column {', '.join(missing)} (its header: "
                    f"{', '.join(header) or 'empty'}): give a CSV with a header row naming "
                    f"{', '.join(required)}"
                )
            rows = []
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue  # a blank line
                rows.append(
                    (reader.line_num, {h: (row[i].strip() if i < len(row) else "") for i, h in enumerate(header)})
                )
            return header, rows
    except UnicodeDecodeError:
        raise UserError(f"{option} {path} is not UTF-8 text: save it as a UTF-8 CSV file") from None
    except csv.Error as e:
        raise UserError(f"{option} {path}: not a readable CSV file ({e}): save it as a CSV file") from None


def _asin(path, option, line, row):
    asin = row.get("asin", "")
    if not asin:
        raise UserError(f"{option} {path} line {line}: the asin is empty: fill it in or delete the row")
    return asin


def read_exclude_file(path):
    """``(ASINs to exclude, info)``; ``info``: ``{"file", "form", "listed", "representatives_kept"}``."""
    option = "--exclude-file"
    header, rows = _rows(path, option, ["asin"])
    duplicates = "representative" in header
    excluded, kept = [], set()
    for line, row in rows:
        asin = _asin(path, option, line, row)
        if not duplicates:
            excluded.append(asin)
            continue
        value = row.get("representative", "").casefold()
        if value in TRUE:
            kept.add(asin)
        elif value in FALSE:
            excluded.append(asin)
        else:
            raise UserError(
                f"{option} {path} line {line}: representative is {row.get('representative')!r}: "
                "write true or false (1/0, yes/no)"
            )
    excluded = list(dict.fromkeys(excluded))
    info = {
        "file": os.path.abspath(path),
        "form": "duplicates" if duplicates else "asin list",
        "listed": len(excluded),
        "representatives_kept": len(kept - set(excluded)),
    }
    return excluded, info


def read_relabel_file(path):
    """``([(line, asin, suggested class)], info)`` of a relabel file (classes checked by :func:`relabel_labels`)."""
    option = "--relabel-file"
    _, rows = _rows(path, option, ["asin", "suggested"])
    out, seen = [], {}
    for line, row in rows:
        asin = _asin(path, option, line, row)
        suggested = row.get("suggested", "")
        if not suggested:
            raise UserError(
                f"{option} {path} line {line}: suggested is empty for {asin}: name its class or delete the row"
            )
        before = seen.get(asin)
        if before is not None and norm(before[1]) != norm(suggested):
            raise UserError(
                f"{option} {path} line {line}: {asin} is relabelled {suggested!r} here and "
                f"{before[1]!r} on line {before[0]}: keep one of the rows"
            )
        if before is None:
            seen[asin] = (line, suggested)
            out.append((line, asin, suggested))
    return out, {"file": os.path.abspath(path), "listed": len(out)}


def relabel_labels(path, rows, class_names):
    """``[(asin, class index)]`` of :func:`read_relabel_file` rows; a class the build does not have is
    a :class:`UserError` naming the first such row and the build's classes."""
    index = {norm(name): i for i, name in enumerate(class_names)}
    out, unknown = [], []
    for line, asin, suggested in rows:
        i = index.get(norm(suggested))
        if i is None:
            unknown.append((line, suggested))
        else:
            out.append((asin, i))
    if unknown:
        line, name = unknown[0]
        more = f" (and {len(unknown) - 1} more rows)" if len(unknown) > 1 else ""
        shown = ", ".join(class_names[:20]) + (", ..." if len(class_names) > 20 else "")
        raise UserError(
            f"--relabel-file {path} line {line}: suggested class {name!r} is not one of this build's "
            f"classes{more} ({shown}): fix the rows or build with those classes"
        )
    return out
