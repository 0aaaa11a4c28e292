"""Issue 10 rows 6, 7, 10: corpus problems are one-line ConfigErrors, checkable before anything is written."""

import pytest

from nanochat.config import ConfigError, load_synaptic_config
from nanochat.data import BatchStream, check_corpus_fits, load_corpus


def one_line(exc_info):
    message = str(exc_info.value)
    assert "\n" not in message
    return message


def test_check_corpus_fits_train_split(tmp_path):
    (tmp_path / "c.txt").write_bytes(b"0123456789")  # 10 bytes: 9 train, 1 val
    corpus = load_corpus(tmp_path / "c.txt")
    with pytest.raises(ConfigError) as e:
        check_corpus_fits(corpus, 64)
    message = one_line(e)
    assert e.value.field == "sequence_len"
    assert "training corpus (9 tokens)" in message and "needs 65 tokens" in message


def test_check_corpus_fits_validation_split(tmp_path):
    (tmp_path / "c.txt").write_bytes(bytes(range(32, 127)) * 4)  # 380 bytes: 342 train, 38 val
    corpus = load_corpus(tmp_path / "c.txt")
    check_corpus_fits(corpus, 37)
    with pytest.raises(ConfigError) as e:
        check_corpus_fits(corpus, 64)
    message = one_line(e)
    assert e.value.field == "sequence_len" and "validation split (38 tokens)" in message and "needs 65" in message
    with pytest.raises(ConfigError, match="validation split"):  # BatchStream applies the same rule
        BatchStream(corpus, 2, 64, 0, device="cpu")


def test_parquet_with_non_string_text_is_a_config_error(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    shard = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"text": [1, 2, 3]}), shard)
    with pytest.raises(ConfigError) as e:
        load_corpus(tmp_path)
    message = one_line(e)
    assert e.value.field == "data" and str(shard) in message and "must hold strings" in message


def test_binary_synaptic_config_is_a_config_error(tmp_path):
    path = tmp_path / "bin.json"
    path.write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(ConfigError) as e:
        load_synaptic_config(path)
    assert "not UTF-8" in one_line(e) and str(path) in str(e.value)


def test_synaptic_config_edge_cases_are_config_errors(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_synaptic_config(deep)
    huge = tmp_path / "huge.json"
    huge.write_text('{"tau_c": 1' + "0" * 400 + "}")
    with pytest.raises(ConfigError, match="tau_c must be finite"):
        load_synaptic_config(huge)
    with pytest.raises(ConfigError):
        load_synaptic_config(tmp_path)  # a directory


def test_unreadable_user_paths_are_config_errors(tmp_path):
    (tmp_path / "d.txt").mkdir()  # a directory that the *.txt glob picks up
    with pytest.raises(ConfigError) as e:
        load_corpus(tmp_path)
    assert e.value.field == "data" and "cannot be read" in one_line(e)
    with pytest.raises(ConfigError) as e:
        load_corpus(str(tmp_path / "a\0b"))
    assert e.value.field == "data"
    with pytest.raises(ConfigError) as e:
        load_corpus(tmp_path / ("x" * 5000))
    assert e.value.field == "data"
