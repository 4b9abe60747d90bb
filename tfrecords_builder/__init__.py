"""Turns Amazon product metadata and images into a TFDS dataset of TFRecord shards."""
