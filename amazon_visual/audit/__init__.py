"""Catalog hygiene (``amazon-visual audit``): duplicate listings, misfiled products, split leaks.

One module per idea: :mod:`.inputs` (what the audit reads, and its checks), :mod:`.photos`
(the photos and the second look at a candidate pair: pHash, colour, aligned correlation),
:mod:`.duplicates` (candidate pairs from the ANN, decisions, groups), :mod:`.misfiled`
(out-of-fold probabilities into cleanlab, ranked, cut), :mod:`.leaks` (groups across splits, the
test accuracy without them), :mod:`.page` (audit.html), :mod:`.run` (the command: writes AUDIT_DIR).
"""
