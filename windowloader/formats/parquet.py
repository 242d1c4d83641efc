"""`.parquet` files, local or remote, read a record batch at a time with pyarrow, never across
row groups: memory holds at most one row group's text column, never the file. Each row is one
document."""

from __future__ import annotations

from collections.abc import Iterator

from windowloader import corpus, formats
from windowloader.formats import arrow

# Rows handed on at a time: a few MB of text for web documents of a few KB each.
_BATCH_ROWS = 1024


def pieces(source: corpus.Source, text_field: str, stats: corpus.ReadStats) -> Iterator[tuple[str, bool]]:
    pa = formats.require("pyarrow", "parquet", f"reading {source.path}")
    import pyarrow.parquet as pq

    with formats.open_binary(source) as (file, _):
        try:
            parquet = pq.ParquetFile(file)
            arrow.check_column(parquet.schema_arrow, text_field, source.path)
            batches = (  # one row group at a time: arrow would fill a batch from several
                batch
                for group in range(parquet.num_row_groups)
                for batch in parquet.iter_batches(_BATCH_ROWS, row_groups=[group], columns=[text_field])
            )
            rows, done, start = max(parquet.metadata.num_rows, 1), 0, stats.bytes_read
            for texts, _ in arrow.texts(batches, text_field, source.path):
                for text in texts:
                    yield from corpus._document(iter([text]), stats)
                done += len(texts)
                # The file's stored size spread over its rows: the progress bar counts stored bytes.
                stats.bytes_read = start + source.size * done // rows
            stats.bytes_read = start + source.size
        except pa.ArrowException as error:
            raise ValueError(
                f"{source.path} is not a readable parquet file ({error}): re-create or remove it"
            ) from None
