"""The `windowloader` command: its plan checked against numbers computed here, and its failures."""

from __future__ import annotations

import os
import random
import re
import shlex
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

from windowloader import cli, cli_shared

TEXT = "Every line of this small corpus is a line of plain ASCII text.\n" * 12  # 756 bytes


def run(argv, capsys) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def row(out: str, label: str) -> str:
    match = re.search(rf"^{label}\s{{2,}}(.*)$", out, re.MULTILINE)
    assert match, f"no {label!r} row in:\n{out}"
    return match.group(1)


def number(out: str, label: str) -> float:
    return float(row(out, label).split()[0].rstrip("%").replace(",", ""))


def plan(n_tokens: int, length: int, stride: int, batch: int, drop_last: bool) -> dict:
    """The plan's numbers by brute force over window starts, independent of the library."""
    starts = []
    start = 0
    while start + length + 1 <= n_tokens:  # a window reads length + 1 tokens
        starts.append(start)
        start += stride
    served = len(starts) - len(starts) % batch if drop_last else len(starts)
    targets = set()
    for s in starts:
        targets.update(range(s + 1, s + length + 1))
    return {
        "windows": len(starts),
        "batches": served // batch + (0 if served % batch == 0 else 1),
        "tail": n_tokens - 1 - max(targets),
        "never": n_tokens - len(targets),
        "targets per token": served * length / n_tokens,
        "overlap": 100 * max(0, length - stride) / length,
    }


@pytest.fixture
def small_file(tmp_path) -> Path:
    path = tmp_path / "small.txt"
    path.write_text(TEXT, encoding="ascii")
    return path


@pytest.fixture
def cache_args(tmp_path) -> list[str]:
    return ["--cache-dir", tmp_path / "cache"]


@pytest.mark.parametrize(
    "length, stride, batch, drop_last",
    [(16, 8, 4, True), (32, 48, 3, False), (10, 3, 7, True), (64, 64, 2, False)],
    ids=["half-overlap", "stride-over-length", "drop-many", "no-overlap-keep-last"],
)
def test_plan_numbers_match_an_independent_count(
    small_file, cache_args, capsys, length, stride, batch, drop_last
):
    argv = [
        small_file,
        "--tokenizer",
        "bytes",
        "--max-length",
        length,
        "--stride",
        stride,
        "--batch-size",
        batch,
        "--drop-last" if drop_last else "--keep-last",
        "--framework",
        "numpy",
        *cache_args,
    ]
    code, out, _ = run(argv, capsys)
    assert code == 0
    expected = plan(len(TEXT.encode()), length, stride, batch, drop_last)
    assert number(out, "tokens") == len(TEXT.encode())
    assert number(out, "documents") == 1
    assert number(out, "windows") == expected["windows"]
    assert number(out, "batches per epoch") == expected["batches"]
    assert number(out, "tail never a target") == expected["tail"]
    assert number(out, "overlap") == pytest.approx(expected["overlap"], abs=0.05)
    assert number(out, "targets per token") == pytest.approx(expected["targets per token"], abs=0.005)
    assert number(out, "bytes per batch") == 2 * batch * length * 8  # int64 inputs and targets
    assert f"iterated one epoch ({expected['batches']} batches)" in out


def test_stride_over_max_length_is_noted_with_the_skipped_tokens(small_file, cache_args, capsys):
    _, out, _ = run(
        [small_file, "--tokenizer", "bytes", "--max-length", 32, "--stride", 48, *cache_args], capsys
    )
    expected = plan(len(TEXT.encode()), 32, 48, 4, True)
    skipped = expected["never"] - expected["tail"] - 1  # never a target, minus the tail and token 0
    assert f"note: stride 48 > max_length 32: {skipped:,} tokens between windows" in out


def test_high_overlap_on_a_small_corpus_is_noted(small_file, cache_args, capsys):
    _, out, _ = run(
        [small_file, "--tokenizer", "bytes", "--max-length", 64, "--stride", 8, *cache_args], capsys
    )
    assert re.search(r"^note: 88% overlap on a small corpus .*overfitting", out, re.MULTILINE)


def test_documents_are_counted_across_files(tmp_path, cache_args, capsys):
    (tmp_path / "a.txt").write_text("first file " * 10)
    (tmp_path / "b.txt").write_text("second file " * 10)
    _, out, _ = run(
        [
            tmp_path / "a.txt",
            tmp_path / "b.txt",
            "--tokenizer",
            "bytes",
            "--max-length",
            8,
            "--stride",
            4,
            *cache_args,
        ],
        capsys,
    )
    assert number(out, "documents") == 2
    assert number(out, "tokens") == 110 + 1 + 120  # bytes, the separator id, bytes


def test_spec_defaults_on_the_embedded_corpus(cache_args, capsys, gpt2):
    code, out, err = run(["--max-length", 256, "--stride", 128, "--batch-size", 4, *cache_args], capsys)
    assert code == 0 and err == ""
    text = cli_shared.default_corpus()
    n = len(gpt2.encode(text, allowed_special={"<|endoftext|>"}))
    assert number(out, "tokens") == n
    assert number(out, "windows") == len(range(0, n - 256, 128))
    assert "inputs torch.Size([4, 256]), targets torch.Size([4, 256])" in out
    assert "window 0 = tokens[0:256]" in out
    assert "window 1 = tokens[128:384]  <- 128 tokens overlap (50%)" in out
    # The 128 shared tokens close window 0 and open window 1, in brackets and in full.
    ids = gpt2.encode(text, allowed_special={"<|endoftext|>"})
    shared_text = gpt2.decode(ids[128:256])
    assert "\t" not in shared_text and "\r" not in shared_text  # only line breaks to show as ⏎
    shared = "[" + shared_text.replace("\n", "⏎") + "]"
    window0, window1 = out.split("window 0 = ")[1].split("window 1 = ")
    assert window0.strip().endswith(shared)
    assert window1.splitlines()[1].strip().startswith(shared)
    # The demo names its corpus and tokenizer, counts in the singular, and times in useful units.
    assert row(out, "corpus") == "CPython's language reference topics, built into Python  (467,131 bytes)"
    assert row(out, "tokenizer") == "gpt2"
    assert "1 window dropped" in row(out, "batches per epoch")
    assert re.search(r"^iterated one epoch \(271 batches\) with torch in [\d.]+ (s|ms|µs): ", out, re.M)
    assert "0.000 s" not in out


@pytest.mark.parametrize(
    "preset, expected", [("small", (256, 64, 4)), ("medium", (512, 256, 16)), ("large", (1024, 1024, 32))]
)
def test_presets_follow_the_specification_table(tmp_path, cache_args, capsys, preset, expected):
    path = tmp_path / "long.txt"
    path.write_text("x" * 3000)
    _, out, _ = run(
        [path, "--tokenizer", "bytes", "--preset", preset, "--keep-last", "--max-batches", 1, *cache_args],
        capsys,
    )
    length, stride, batch = expected
    assert f"(max_length {length}, stride {stride}, preset {preset})" in row(out, "windows")
    assert f"(batch_size {batch}," in row(out, "batches per epoch")


def test_auto_picks_small_for_a_small_corpus_and_flags_win(small_file, cache_args, capsys):
    _, out, _ = run(
        [small_file, "--tokenizer", "bytes", "--preset", "auto", "--max-length", 100, *cache_args], capsys
    )
    assert "(max_length 100, stride 64, preset small (auto))" in row(out, "windows")


@pytest.mark.parametrize(
    "tokens, preset",
    [(999_999, "small"), (1_000_000, "medium"), (99_999_999, "medium"), (100_000_000, "large")],
)
def test_auto_thresholds(tokens, preset):
    args = cli.build_parser().parse_args(["--preset", "auto"])
    assert cli._config(args, tokens).preset == preset


def test_max_batches_and_the_iteration_report(small_file, cache_args, capsys):
    _, out, _ = run(
        [
            small_file,
            "--tokenizer",
            "bytes",
            "--max-length",
            8,
            "--stride",
            4,
            "--max-batches",
            3,
            *cache_args,
        ],
        capsys,
    )
    assert re.search(
        r"^iterated 3 batches with torch in [\d.]+ (s|ms|µs): [\d,]+ batches/s, [\d,]+ tokens/s$", out, re.MULTILINE
    )


@pytest.mark.parametrize("framework", ["numpy", "torch", "jax"])
def test_each_framework_serves_the_batches(small_file, cache_args, capsys, framework):
    code, out, _ = run(
        [
            small_file,
            "--tokenizer",
            "bytes",
            "--max-length",
            16,
            "--stride",
            8,
            "--framework",
            framework,
            "--max-batches",
            2,
            *cache_args,
        ],
        capsys,
    )
    assert code == 0
    assert f"iterated 2 batches with {framework}" in out
    assert row(out, "batch shape") in (
        "inputs (4, 16), targets (4, 16)",
        "inputs torch.Size([4, 16]), targets torch.Size([4, 16])",
    )
    # JAX serves int32 (its default without x64); numpy and torch serve int64.
    itemsize = 4 if framework == "jax" else 8
    assert row(out, "bytes per batch").endswith(f"int{8 * itemsize})")
    assert number(out, "bytes per batch") == 2 * 4 * 16 * itemsize


def test_prepare_prints_the_cache_path(small_file, cache_args, capsys):
    code, out, err = run(["prepare", small_file, "--tokenizer", "bytes", *cache_args], capsys)
    path = Path(out.strip())
    assert code == 0 and path.is_file() and path.stat().st_size == len(TEXT.encode()) * 2
    assert run(["prepare", small_file, "--tokenizer", "bytes", *cache_args], capsys)[1] == out


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("windowloader: error: ")
    return lines[0]


@pytest.mark.parametrize(
    "make_argv, expected",
    [
        (lambda tmp: [tmp / "missing.txt"], r"input '.*missing.txt' does not exist"),
        (lambda tmp: [_write(tmp / "empty.txt", "")], r"the corpus is empty"),
        (
            lambda tmp: [_write(tmp / "short.txt", "tiny"), "--max-length", "8"],
            r"4 tokens, shorter than one window .*--max-length",
        ),
        (
            lambda tmp: [_write(tmp / "a.txt", "text"), "--tokenizer", "nonesuch"],
            r"tokenizer 'nonesuch' is unknown",
        ),
        (
            lambda tmp: [_write(tmp / "a.txt", "text"), "--cache-dir", _write(tmp / "f", "") / "sub"],
            r"error: --cache-dir .* cannot be created",
        ),
        (
            lambda tmp: [_write(tmp / "a.txt", "text " * 20), "--max-length", "8", "--batch-size", "999"],
            r"--batch-size 999 is more than the \d+ windows? .*--keep-last or a --batch-size of at most",
        ),
    ],
    ids=[
        "missing-file",
        "empty-corpus",
        "shorter-than-a-window",
        "unknown-tokenizer",
        "unusable-cache-dir",
        "batch-too-big",
    ],
)
def test_each_failure_is_one_line_and_status_2(tmp_path, cache_args, capsys, make_argv, expected):
    argv = make_argv(tmp_path)
    argv = (
        argv
        + (["--tokenizer", "bytes"] if "--tokenizer" not in argv else [])
        + (cache_args if "--cache-dir" not in argv else [])
    )
    code, out, err = run(argv, capsys)
    assert code == 2 and out == ""
    assert re.search(expected, one_error_line(err))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_bad_flag_exits_2_with_one_line_naming_it(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--stride", "0"])
    assert exit_info.value.code == 2
    assert "--stride" in one_error_line(capsys.readouterr().err)


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No way to download (HTTPS goes to a closed local port) and an empty tiktoken cache."""
    cache = tmp_path / "empty-tiktoken-cache"
    cache.mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    for name in ("HTTPS_PROXY", "https_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    return cache


def test_the_default_tokenizer_offline_is_gpt2(small_file, cache_args, capsys, offline, gpt2):
    code, out, err = run([small_file, "--max-length", 16, "--stride", 16, *cache_args], capsys)
    assert (code, err) == (0, "")
    assert number(out, "tokens") == len(gpt2.encode_ordinary(TEXT))
    assert row(out, "tokenizer") == "gpt2"
    assert list(offline.iterdir()) == []


def test_another_tiktoken_encoding_offline_is_one_line(small_file, cache_args, capsys, offline, monkeypatch):
    import tiktoken.registry

    monkeypatch.delitem(tiktoken.registry.ENCODINGS, "o200k_base", raising=False)  # not loaded before
    code, out, err = run([small_file, "--tokenizer", "o200k_base", *cache_args], capsys)
    assert code == 2 and out == ""
    line = one_error_line(err)
    assert "'o200k_base' could not be loaded" in line and "TIKTOKEN_CACHE_DIR" in line


def test_a_missing_file_is_reported_before_the_tokenizer_is_loaded(tmp_path, cache_args, capsys, offline):
    code, out, err = run([tmp_path / "missing.txt", "--tokenizer", "o200k_base", *cache_args], capsys)
    assert code == 2 and out == ""
    assert "missing.txt' does not exist" in one_error_line(err)


def test_undecodable_input_is_reported_in_one_warning_line(tmp_path, cache_args, capsys):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"good text \xff\xfe and more good text here" + b" and so on" * 30)  # 2 in 340: text
    code, out, err = run(
        [path, "--tokenizer", "bytes", "--max-length", 8, "--stride", 4, *cache_args], capsys
    )
    assert code == 0
    assert err.strip() == "windowloader: warning: 2 undecodable characters were replaced by U+FFFD"
    assert number(out, "replaced chars") == 2


def test_the_console_script_runs(small_file, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "windowloader",
            str(small_file),
            "--tokenizer",
            "bytes",
            "--max-length",
            "16",
            "--cache-dir",
            str(tmp_path / "c"),
            "--framework",
            "numpy",
            "--quiet",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and result.stderr == ""
    assert "batches per epoch" in result.stdout


def one_warning_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("windowloader: warning: ")
    return lines[0]


PROSE = "Plain prose, the kind of text a corpus holds, line after line.\n" * 40  # 2,560 characters


def with_odd(share: float, odd: str) -> str:
    """PROSE with `odd` characters replacing every k-th character: `share` of them (computed here)."""
    step = round(1 / share)
    return "".join(odd if i % step == step - 1 else char for i, char in enumerate(PROSE))


@pytest.mark.parametrize(
    "content, reason",
    [
        (bytes(b or 1 for b in random.Random(0).randbytes(4096)), "undecodable or control characters"),
        (PROSE.encode()[:1000] + b"\0" + PROSE.encode()[1000:], "NUL bytes"),
        (with_odd(0.02, "\x1b").encode(), "2% of its first characters"),
        (with_odd(0.02, "\x80").encode("latin-1"), "2% of its first characters"),  # not UTF-8
    ],
    ids=["random-bytes-but-NUL", "one-NUL", "2%-escape-chars", "2%-undecodable"],
)
def test_a_named_binary_file_is_refused_in_one_line(tmp_path, cache_args, capsys, content, reason):
    path = tmp_path / "model.txt"
    path.write_bytes(content)
    code, out, err = run([path, "--tokenizer", "bytes", *cache_args], capsys)
    assert code == 2 and out == ""
    line = one_error_line(err)
    assert "model.txt' is not text" in line and reason in line
    assert not (tmp_path / "cache").exists()  # refused before any tokenizing


def test_text_with_under_one_percent_odd_characters_is_text(tmp_path, cache_args, capsys):
    path = tmp_path / "ok.txt"
    path.write_bytes(with_odd(0.005, "\x1b").encode())
    code, out, err = run([path, "--tokenizer", "bytes", "--max-length", 40, "--stride", 20, *cache_args], capsys)
    assert code == 0 and err == ""


def test_binary_files_in_a_folder_are_skipped_with_one_warning(tmp_path, cache_args, capsys):
    folder = tmp_path / "books"
    folder.mkdir()
    (folder / "a.txt").write_text(PROSE)
    (folder / "b.txt").write_bytes(random.Random(1).randbytes(3000))
    (folder / "c.txt").write_bytes(b"\0" * 100)
    (folder / "d.txt").write_text(PROSE)
    code, out, err = run([folder, "--tokenizer", "bytes", "--max-length", 40, "--stride", 20, *cache_args], capsys)
    assert code == 0
    warning = one_warning_line(err)
    assert "skipped 2 binary files" in warning and "b.txt" in warning and "c.txt" in warning
    assert number(out, "documents") == 2
    assert number(out, "tokens") == 2 * len(PROSE) + 1  # a.txt, the separator, d.txt


def test_decoded_windows_write_no_control_characters(tmp_path, cache_args, capsys):
    path = tmp_path / "colors.txt"
    path.write_text("red \x1b[31mRED\x1b[0m\r back\u202eup\tend" + PROSE)
    code, out, err = run([path, "--tokenizer", "bytes", "--max-length", 40, "--stride", 20, *cache_args], capsys)
    assert code == 0
    shown = out.split("window 0 = ")[1]
    assert "red \\x1b[31mRED\\x1b[0m\\r ba[ck\\u202eup\\tend" in shown  # [ opens the shared tokens
    assert not {char for char in out if unicodedata.category(char) == "Cc"} - {"\n"}
    assert "\u202e" not in out


@pytest.mark.parametrize(
    "seconds, shown",
    [(2.5, "2.50 s"), (0.0456, "0.046 s"), (0.0031, "3.1 ms"), (0.00085, "850 µs"), (0.0000042, "4.2 µs")],
)
def test_durations_under_10_ms_are_in_ms_or_us(seconds, shown):
    assert cli.duration(seconds) == shown


def test_counts_of_one_are_singular(tmp_path, cache_args, capsys):
    path = tmp_path / "41.txt"
    path.write_text("x" * 41)  # 41 byte tokens: windows of 8 every 7 start at 0, 7, ..., 28: 5 windows
    code, out, _ = run([path, "--tokenizer", "bytes", "--max-length", 8, "--stride", 7, *cache_args], capsys)
    assert code == 0
    assert number(out, "windows") == len(range(0, 41 - 8, 7)) == 5
    assert "1 window dropped" in row(out, "batches per epoch")
    assert "(1 token shared" in row(out, "overlap")
    assert "<- 1 token overlap" in out


def test_preset_large_on_a_small_corpus_names_the_flags(tmp_path, cache_args, capsys):
    path = tmp_path / "small.txt"
    path.write_text("x" * 5000)  # 4 windows of 1024 tokens
    code, out, err = run([path, "--tokenizer", "bytes", "--preset", "large", *cache_args], capsys)
    assert code == 2 and out == ""
    line = one_error_line(err)
    assert "--batch-size 32 (preset large) is more than the 4 windows" in line
    assert "--keep-last" in line and "a --batch-size of at most 4" in line
    assert "(global)" not in line and "batch_size=" not in line and "drop_last" not in line


def test_a_batch_larger_than_the_corpus_under_jax_names_the_padding(small_file, cache_args, capsys):
    code, out, err = run(
        [small_file, "--tokenizer", "bytes", "--framework", "jax", "--keep-last", "--batch-size", 999, *cache_args], capsys
    )
    assert code == 2 and out == ""
    line = one_error_line(err)
    assert "--batch-size 999 is more than the" in line and "--framework jax pads the last batch" in line


def test_preset_auto_explains_its_choice_and_never_warns_about_it(small_file, cache_args, capsys):
    code, out, _ = run([small_file, "--tokenizer", "bytes", "--preset", "auto", "--keep-last", *cache_args], capsys)
    assert code == 0
    notes = [line for line in out.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and notes[0].startswith("note: --preset auto chose small for 756 tokens (under 1,000,000)")
    assert "overfitting" not in out
    # A stride given explicitly is the user's choice: then the note warns.
    _, out, _ = run(
        [small_file, "--tokenizer", "bytes", "--preset", "auto", "--stride", 8, "--keep-last", *cache_args], capsys
    )
    assert re.search(r"^note: 97% overlap on a small corpus .*overfitting", out, re.MULTILINE)


def test_framework_jax_without_jax_fails_before_any_work(small_file, cache_args, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "jax", None)  # `import jax` raises ImportError, as without JAX
    monkeypatch.delitem(sys.modules, "windowloader.adapters.jax", raising=False)
    code, out, err = run([small_file, "--framework", "jax", *cache_args], capsys)
    assert code == 2 and out == ""
    assert "--framework jax: windowloader.adapters.jax needs JAX: pip install 'windowloader[jax]'" in one_error_line(err)
    assert not Path(cache_args[1]).exists()  # nothing tokenized


SPEC_COMMANDS = [
    "python main.py --max-length 256 --stride 64 --batch-size 2",
    "python main.py --max-length 256 --stride 256 --batch-size 8",
    "python main.py --max-length 256 --stride 128 --batch-size 4",
]


def test_the_specification_commands_run_verbatim_from_the_root(tmp_path):
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "HOME": str(tmp_path), "WINDOWLOADER_CACHE": str(tmp_path / "cache")}
    for command in SPEC_COMMANDS:
        argv = shlex.split(command)
        assert argv[0] == "python"
        result = subprocess.run([sys.executable, *argv[1:]], cwd=root, env=env, capture_output=True, text=True)
        assert result.returncode == 0, f"{command}: {result.stderr}"
        _, length, stride, batch = (argv[i] for i in (1, 3, 5, 7))
        assert f"(max_length {length}, stride {stride})" in row(result.stdout, "windows")
        assert f"(batch_size {batch}," in row(result.stdout, "batches per epoch")


def test_document_lengths_crossings_and_the_packing_are_shown(tmp_path, cache_args, capsys):
    texts = ["a" * 5, "b" * 30, "c" * 12, "d" * 3]  # bytes: one token per character
    for i, text in enumerate(texts):
        (tmp_path / f"{i}.txt").write_text(text)
    args = [*(tmp_path / f"{i}.txt" for i in range(4)), "--tokenizer", "bytes", "--max-length", 8, "--stride", 4]
    _, out, _ = run([*args, *cache_args, "--framework", "numpy"], capsys)
    # The reference, by hand: each document after the first opens with the separator's bytes.
    from windowloader import load_tokenizer

    separator = len(load_tokenizer("bytes").encode("<|endoftext|>", allowed_special="all"))
    lengths = [len(texts[0])] + [separator + len(text) for text in texts[1:]]
    starts = [sum(lengths[:i]) for i in range(4)]
    n = sum(lengths)
    windows = range(0, n - 8, 4)
    crossing = sum(any(w < s <= w + 8 for s in starts) for w in windows) / len(windows)
    documents = row(out, "documents")
    ordered = sorted(lengths)
    median = (ordered[1] + ordered[2]) / 2
    p99 = ordered[2] + 0.97 * (ordered[3] - ordered[2])  # 99% of the way from first to last: rank 2.97
    assert documents.startswith(f"4  (median {median:,.0f} tokens, p99 {p99:,.0f};")
    assert f"{100 * crossing:.1f}% of windows cross a document start" in documents
    code, out, _ = run([*args, *cache_args, "--framework", "numpy", "--dataset", "packed_docs"], capsys)
    assert code == 0 and number(out, "cropped") == 0
    assert 0 <= number(out, "padding") < 100 and number(out, "packed rows") > 0
    code, _, err = run([*args, *cache_args, "--dataset", "packed_docs", "--stride", 9], capsys)
    assert code == 2 and "stride must be at most max_length=8" in err and "Traceback" not in err
