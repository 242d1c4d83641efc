"""Sources beyond plain text: parquet, compressed .jsonl/.txt, Hugging Face datasets, each against
a reference built here from the documents themselves (bytes joined by 256, or gpt2 in plain Python)."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

import windowloader as wl
from windowloader import corpus

DOCUMENTS = ["first document", "", "zweites Dokument: ünïcödé", "a third\nwith two lines", "漢字 fourth"]


def byte_reference(documents: list[str]) -> tuple[list[int], list[int]]:
    """UTF-8 bytes of each document joined by 256 (the byte tokenizer's <|endoftext|>), and offsets."""
    tokens: list[int] = []
    offsets: list[int] = []
    for i, document in enumerate(documents):
        if i:
            tokens.append(256)
        offsets.append(len(tokens))
        tokens.extend(document.encode("utf-8"))
    return tokens, offsets


def check(result, documents: list[str]) -> None:
    tokens, offsets = byte_reference(documents)
    assert result.tokens.tolist() == tokens
    assert result.doc_offsets.tolist() == offsets


def write_parquet(path: Path, columns: dict, row_group_size: int = 2) -> Path:
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


def jsonl_bytes(documents: list[str], field: str = "text") -> bytes:
    return "".join(json.dumps({field: text, "id": i}) + "\n" for i, text in enumerate(documents)).encode()


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def test_parquet_rows_are_documents_across_row_groups(tmp_path, cache):
    path = write_parquet(tmp_path / "a.parquet", {"id": list(range(5)), "text": DOCUMENTS})
    assert pq.ParquetFile(path).num_row_groups == 3
    result = wl.tokenize_corpus(path, "bytes", cache_dir=cache)
    check(result, DOCUMENTS)
    assert result.meta["bytes"] == path.stat().st_size  # progress reaches the stored size exactly


def test_parquet_matches_gpt2_on_each_document(tmp_path, cache, gpt2):
    path = write_parquet(tmp_path / "a.parquet", {"body": DOCUMENTS})
    result = wl.tokenize_corpus(path, gpt2, cache_dir=cache, text_field="body")
    expected = []
    for i, document in enumerate(DOCUMENTS):
        expected += ([50256] if i else []) + gpt2.encode_ordinary(document)
    assert result.tokens.tolist() == expected


def test_parquet_large_string_column(tmp_path, cache):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": pa.array(DOCUMENTS, type=pa.large_string())}), path)
    check(wl.tokenize_corpus(path, "bytes", cache_dir=cache), DOCUMENTS)


def test_parquet_null_is_refused_with_file_and_row(tmp_path, cache):
    texts = ["a", "b", "c", None, "e"]  # row 3 sits in the second row group
    path = write_parquet(tmp_path / "a.parquet", {"text": texts})
    with pytest.raises(ValueError, match=rf"{path}:3 has a null 'text'"):
        wl.tokenize_corpus(path, "bytes", cache_dir=cache)


def test_parquet_non_string_column_and_missing_column_are_refused(tmp_path, cache):
    path = write_parquet(tmp_path / "a.parquet", {"text": [1, 2], "body": ["x", "y"]})
    with pytest.raises(ValueError, match=rf"{path}:0 holds int64 in column 'text', not strings"):
        wl.tokenize_corpus(path, "bytes", cache_dir=cache)
    with pytest.raises(ValueError, match=r"has no column 'content'.*'text', 'body'"):
        wl.tokenize_corpus(path, "bytes", cache_dir=cache, text_field="content")


def test_a_file_that_is_not_parquet_is_refused_naming_it(tmp_path, cache):
    path = tmp_path / "a.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match=rf"{path} is not a readable parquet file"):
        wl.tokenize_corpus(path, "bytes", cache_dir=cache)


def test_parquet_is_read_a_batch_at_a_time(tmp_path):
    """Arrow's memory while the first document is read holds a row group, not the file (~16 MB)."""
    rows = 64
    texts = [str(i) * 250_000 for i in range(rows)]  # 250 KB each, one row group of 4 rows
    path = write_parquet(tmp_path / "big.parquet", {"text": texts}, row_group_size=4)
    stream = corpus.pieces(corpus.resolve(path), separator="", text_field="text", stats=corpus.ReadStats())
    before = pa.total_allocated_bytes()
    first, starts = next(stream)
    held = pa.total_allocated_bytes() - before
    assert first == texts[0] and starts
    assert held < rows * 250_000 / 4, held  # a row group's text (1 MB) and buffers, not the file
    assert sum(len(text) for text, _ in stream) == sum(map(len, texts)) - len(first)


COMPRESSORS = {
    "gz": gzip.compress,
    "zst": lambda data: zstandard.ZstdCompressor().compress(data),
}


@pytest.mark.parametrize("method", sorted(COMPRESSORS))
def test_compressed_jsonl_gives_the_documents_of_the_plain_file(tmp_path, cache, method):
    path = tmp_path / f"a.jsonl.{method}"
    path.write_bytes(COMPRESSORS[method](jsonl_bytes(DOCUMENTS)))
    result = wl.tokenize_corpus(path, "bytes", cache_dir=cache)
    check(result, DOCUMENTS)
    assert result.meta["bytes"] == path.stat().st_size


@pytest.mark.parametrize("method", sorted(COMPRESSORS))
def test_compressed_text_is_one_document(tmp_path, cache, method):
    text = "line one\nline two ünï\n" * 1000
    path = tmp_path / f"a.txt.{method}"
    path.write_bytes(COMPRESSORS[method](text.encode()))
    check(wl.tokenize_corpus(path, "bytes", cache_dir=cache), [text])


def test_a_zst_of_several_kinds_of_frames_is_read_whole(tmp_path, cache):
    """A frame with its size and a checksum, a skippable frame, a streamed frame of many blocks."""
    first = zstandard.ZstdCompressor(write_checksum=True).compress(jsonl_bytes(DOCUMENTS[:2]))
    skippable = bytes.fromhex("5a2a4d18") + (3).to_bytes(4, "little") + b"abc"
    streamed = io.BytesIO()
    with zstandard.ZstdCompressor(level=1).stream_writer(streamed, closefd=False) as writer:
        for text in DOCUMENTS[2:]:
            writer.write(jsonl_bytes([text]))
            writer.flush()  # one block each
    path = tmp_path / "a.jsonl.zst"
    path.write_bytes(first + skippable + streamed.getvalue())
    check(wl.tokenize_corpus(path, "bytes", cache_dir=cache), DOCUMENTS)


@pytest.mark.parametrize("method", sorted(COMPRESSORS))
def test_a_truncated_compressed_file_is_refused_naming_it(tmp_path, cache, method):
    data = COMPRESSORS[method](jsonl_bytes([f"document {i} " * 50 for i in range(200)]))
    path = tmp_path / f"a.jsonl.{method}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"{path} is not a valid (gzip|zstd) file"):
        wl.tokenize_corpus(path, "bytes", cache_dir=cache)


def test_a_directory_contributes_parquet_and_compressed_files_in_sorted_order(tmp_path, cache):
    root = tmp_path / "corpus"
    root.mkdir()
    write_parquet(root / "b.parquet", {"text": ["bee", "bee2"]})
    (root / "a.jsonl.zst").write_bytes(COMPRESSORS["zst"](jsonl_bytes(["ay"])))
    (root / "c.txt.gz").write_bytes(gzip.compress(b"sea"))
    (root / "d.bin.gz").write_bytes(gzip.compress(b"skipped: not a text suffix"))
    check(wl.tokenize_corpus(root, "bytes", cache_dir=cache), ["ay", "bee", "bee2", "sea"])


@pytest.mark.parametrize("name", ["a.txt.zst", "a.jsonl.gz"])
def test_compressed_files_stream_in_bounded_memory(tmp_path, name):
    """40 MB of text compressed to a few KB: reading it holds pieces, not the file."""
    line = json.dumps({"text": "word " * 20_000}) + "\n"  # 100 KB per line
    data = (line * 400).encode()
    path = tmp_path / name
    path.write_bytes(COMPRESSORS[name.rsplit(".", 1)[1]](data))
    tracemalloc.start()
    try:
        chars = sum(
            len(text)
            for text, _ in corpus.pieces(
                corpus.resolve(path), separator="", text_field="text", stats=corpus.ReadStats()
            )
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert chars in (len(data), 400 * 100_000)
    assert peak < 12 * 2**20, f"peak {peak / 2**20:.1f} MB while reading {len(data) / 2**20:.0f} MB"


def test_hf_dataset_rows_are_documents_and_its_fingerprint_keys_the_cache(cache):
    import datasets

    dataset = datasets.Dataset.from_dict({"text": DOCUMENTS, "id": list(range(5))})
    first = wl.tokenize_corpus(dataset, "bytes", cache_dir=cache)
    check(first, DOCUMENTS)
    assert not first.cached
    assert wl.tokenize_corpus(dataset, "bytes", cache_dir=cache).cached
    changed = dataset.map(lambda row: {"text": row["text"].upper()})
    second = wl.tokenize_corpus(changed, "bytes", cache_dir=cache)
    assert not second.cached and second.path != first.path
    check(second, [text.upper() for text in DOCUMENTS])
    check(wl.tokenize_corpus(dataset.select([4, 0]), "bytes", cache_dir=cache), [DOCUMENTS[4], DOCUMENTS[0]])


def test_hf_iterable_dataset_is_identified_by_its_text(cache):
    import datasets

    def rows(texts):
        return datasets.IterableDataset.from_generator(lambda: ({"text": text} for text in texts))

    first = wl.tokenize_corpus(rows(DOCUMENTS), "bytes", cache_dir=cache)
    check(first, DOCUMENTS)
    assert wl.tokenize_corpus(rows(DOCUMENTS), "bytes", cache_dir=cache).cached
    changed = wl.tokenize_corpus(rows([*DOCUMENTS[:-1], "changed"]), "bytes", cache_dir=cache)
    assert not changed.cached
    check(changed, [*DOCUMENTS[:-1], "changed"])


def test_hf_bad_datasets_are_refused_before_tokenizing(cache):
    import datasets

    with pytest.raises(ValueError, match=r"dataset \w+:2 has a null 'text'"):
        wl.tokenize_corpus(datasets.Dataset.from_dict({"text": ["a", "b", None]}), "bytes", cache_dir=cache)
    with pytest.raises(ValueError, match="no column 'text'.*'body'"):
        wl.tokenize_corpus(datasets.Dataset.from_dict({"body": ["a"]}), "bytes", cache_dir=cache)
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a"]})})
    with pytest.raises(TypeError, match=r"pass one split, e.g. dataset\['train'\]"):
        wl.tokenize_corpus(splits, "bytes", cache_dir=cache)


@pytest.mark.parametrize(
    ("module", "extra", "name"),
    [
        ("pyarrow", "parquet", "a.parquet"),
        ("zstandard", "zstd", "a.txt.zst"),
        ("fsspec", "cloud", "s3://b/a.txt"),
    ],
)
def test_a_missing_optional_dependency_is_one_line_naming_the_extra(
    tmp_path, cache, monkeypatch, module, extra, name
):
    source: object = name
    if "://" not in name:
        source = tmp_path / name
        source.write_bytes(b"x")
    monkeypatch.setitem(sys.modules, module, None)  # importing it now raises ImportError
    with pytest.raises(ImportError, match=rf"needs {module}: pip install 'windowloader\[{extra}\]'$"):
        wl.tokenize_corpus(source, "bytes", cache_dir=cache)


def test_the_command_says_which_extra_is_missing_in_one_line(tmp_path):
    path = write_parquet(tmp_path / "a.parquet", {"text": ["x"]})
    code = (
        "import sys; sys.modules['pyarrow'] = None; from windowloader import cli;"
        f"sys.exit(cli.main(['prepare', {str(path)!r}, '--tokenizer', 'bytes', '--cache-dir', {str(tmp_path)!r}]))"
    )
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    assert result.returncode == 2
    assert (
        result.stderr
        == f"windowloader: error: reading {path} needs pyarrow: pip install 'windowloader[parquet]'\n"
    )


def test_the_command_prepares_parquet_with_a_text_field(tmp_path, capsys):
    from windowloader import cli

    path = write_parquet(tmp_path / "a.parquet", {"body": DOCUMENTS})
    argv = [
        "prepare",
        str(path),
        "--tokenizer",
        "bytes",
        "--cache-dir",
        str(tmp_path / "c"),
        "--text-field",
        "body",
    ]
    assert cli.main(argv) == 0
    opened = wl.TokenizedCorpus.open(capsys.readouterr().out.strip())
    check(opened, DOCUMENTS)


def test_importing_windowloader_imports_no_reader_library():
    code = (
        "import sys, windowloader, windowloader.formats;"
        "print(sorted(m for m in ('pyarrow', 'zstandard', 'fsspec', 'datasets', 'ray') if m in sys.modules))"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"
