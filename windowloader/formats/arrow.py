"""One text column of arrow record batches as documents: what parquet files and Hugging Face
datasets have in common. Each row is one document; a null or a non-string is refused by row."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from windowloader.formats import require


def check_column(schema, text_field: str, where: str) -> None:
    """Raises before any reading when `schema` has no string column `text_field`."""
    pa = require("pyarrow", "parquet", f"reading {where}")
    if text_field not in schema.names:
        raise ValueError(
            f"{where} has no column {text_field!r}: pass text_field= (--text-field) naming one of "
            f"{', '.join(map(repr, schema.names))}"
        )
    column_type = schema.field(text_field).type
    if not _is_string(pa, column_type):
        raise ValueError(
            f"{where}:0 holds {column_type} in column {text_field!r}, not strings: pass text_field= "
            "(--text-field) naming the column that holds the text"
        )


def texts(batches: Iterable, text_field: str, where: str) -> Iterator[tuple[list[str], int]]:
    """Each batch's texts and their UTF-8 size; a null is refused as `where:row` (rows from 0)."""
    pa = require("pyarrow", "parquet", f"reading {where}")
    import pyarrow.compute as pc

    row = 0
    for batch in batches:
        column = batch.column(text_field)
        if not _is_string(pa, column.type):  # a dataset's schema can differ from its batches'
            raise ValueError(f"{where}:{row} holds {column.type} in column {text_field!r}, not strings")
        if column.null_count:
            first = pc.index(column.is_null(), True).as_py()
            raise ValueError(
                f"{where}:{row + first} has a null {text_field!r} (row {row + first}, counting from 0): "
                "drop or fill the rows without text"
            )
        size = pc.sum(pc.binary_length(column)).as_py() or 0
        yield column.to_pylist(), size
        row += len(column)


def _is_string(pa, column_type) -> bool:
    checks = [pa.types.is_string, pa.types.is_large_string]
    if hasattr(pa.types, "is_string_view"):
        checks.append(pa.types.is_string_view)
    return any(check(column_type) for check in checks)
