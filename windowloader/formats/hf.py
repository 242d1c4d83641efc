"""Hugging Face `datasets.Dataset` and `IterableDataset` objects as sources: one document per row,
from the `text_field` column, read as arrow batches.

A `Dataset` is identified in the cache key by its fingerprint, which `datasets` derives from its
data and every transform applied to it. An `IterableDataset` has none, so its identity is a hash
of its text column, read once before tokenizing (a cache hit still costs that read): pass a
`Dataset` where one fits in local storage.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator

from windowloader import corpus
from windowloader.formats import arrow, require

# Rows per arrow batch: a few MB of text for web documents of a few KB each.
_BATCH_ROWS = 1024


@dataclasses.dataclass(frozen=True)
class DatasetSource(corpus.Source):
    """A dataset object; `path` names it in messages, `identity` in the cache key."""

    identity: str = ""
    dataset: object = dataclasses.field(default=None, compare=False, repr=False)

    def fingerprint(self) -> dict:
        return {"dataset": self.identity, "bytes": self.size}


def resolve(dataset, text_field: str) -> list[corpus.Source]:
    datasets = require("datasets", "hf", "reading a Hugging Face dataset")
    name = type(dataset).__name__
    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        raise TypeError(
            f"sources holds a {name} of splits {list(dataset)}: pass one split, e.g. dataset['train']"
        )
    if isinstance(dataset, datasets.Dataset):
        if text_field not in dataset.column_names:
            raise ValueError(
                f"the dataset has no column {text_field!r}: pass text_field= naming one of {dataset.column_names}"
            )
        where = f"dataset {dataset._fingerprint}"
        # Also checks every row before any tokenizing; string sizes come from arrow's offsets alone.
        size = sum(size for _, size in arrow.texts(_batches(dataset, text_field), text_field, where))
        return [
            DatasetSource(
                "hf", path=where, size=size, identity=f"Dataset {dataset._fingerprint}", dataset=dataset
            )
        ]
    if isinstance(dataset, datasets.IterableDataset):
        digest, size = hashlib.blake2b(digest_size=16), 0
        for texts, batch_size in arrow.texts(_batches(dataset, text_field), text_field, "iterable dataset"):
            size += batch_size
            for text in texts:
                data = text.encode("utf-8", "surrogatepass")
                digest.update(len(data).to_bytes(8, "little") + data)
        where = f"iterable dataset {digest.hexdigest()[:16]}"
        return [
            DatasetSource(
                "hf", path=where, size=size, identity=f"IterableDataset {digest.hexdigest()}", dataset=dataset
            )
        ]
    raise TypeError(f"sources holds a datasets.{name}: pass a Dataset or an IterableDataset")


def pieces(source: DatasetSource, text_field: str, stats: corpus.ReadStats) -> Iterator[tuple[str, bool]]:
    for texts, size in arrow.texts(_batches(source.dataset, text_field), text_field, source.path):
        for text in texts:
            yield from corpus._document(iter([text]), stats)
        stats.bytes_read += size


def _batches(dataset, text_field: str):
    """The text column in arrow batches, in the dataset's row order (its indices and shuffles)."""
    try:
        yield from dataset.select_columns([text_field]).with_format("arrow").iter(batch_size=_BATCH_ROWS)
    except (KeyError, ValueError) as error:
        if text_field in str(error):
            raise ValueError(
                f"the dataset has no column {text_field!r} ({error}): pass text_field= naming its text column"
            ) from None
        raise
