"""Corpus loading, batch determinism, config validation and the FLOPs budget."""

import math

import pytest
import torch

from nanochat.config import ConfigError, ModelConfig, SynapticConfig, TrainConfig, check_same_structure
from nanochat.data import BatchStream, load_corpus
from nanochat.synaptic import estimate_flops
from nanochat.trainer import plan_budget


def test_default_corpus_is_deterministic_and_hashed():
    a, b = load_corpus(), load_corpus()
    assert a.sha256 == b.sha256 and torch.equal(a.train, b.train)
    assert a.train.numel() > 1_000_000 and a.val.numel() > 0
    assert a.kind == "stdlib"


def test_text_file_and_txt_dir(tmp_path):
    (tmp_path / "a.txt").write_text("hello world " * 50)
    (tmp_path / "b.txt").write_text("second doc " * 50)
    single = load_corpus(tmp_path / "a.txt")
    folder = load_corpus(tmp_path)
    assert single.kind == "text" and folder.kind == "txt-dir" and folder.n_documents == 2
    assert single.sha256 != folder.sha256
    assert bytes(single.train[:5].tolist()) == b"hello"


def test_parquet_dir(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["alpha " * 40, "beta " * 40], "id": [1, 2]}), tmp_path / "s0.parquet")
    pq.write_table(pa.table({"text": ["gamma " * 40]}), tmp_path / "s1.parquet")
    c = load_corpus(tmp_path)
    assert c.kind == "parquet-dir" and c.n_documents == 3
    (tmp_path / "bad").mkdir()
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "bad" / "s.parquet")
    with pytest.raises(ConfigError, match="text column"):
        load_corpus(tmp_path / "bad")


def test_corpus_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_corpus(tmp_path / "missing")
    with pytest.raises(ConfigError, match="no .parquet or .txt"):
        load_corpus(tmp_path)
    (tmp_path / "e.txt").write_text("")
    with pytest.raises(ConfigError, match="empty"):
        load_corpus(tmp_path / "e.txt")


def test_batches_depend_only_on_data_seed(corpus):
    s1 = BatchStream(corpus, 4, 32, data_seed=0, device=torch.device("cpu"))
    s2 = BatchStream(corpus, 4, 32, data_seed=0, device=torch.device("cpu"))
    x1, y1 = s1.next()
    x2, y2 = s2.next()
    assert torch.equal(x1, x2) and torch.equal(y1[:, :-1], x1[:, 1:])
    assert x1.shape == (4, 32)
    s3 = BatchStream(corpus, 4, 32, data_seed=1, device=torch.device("cpu"))
    assert not torch.equal(s3.next()[0], x1)


def test_synaptic_config_validation():
    assert SynapticConfig().post_slow_lr == 5e-4
    with pytest.raises(ConfigError, match="tau_c"):
        SynapticConfig(tau_c=0.0)
    with pytest.raises(ConfigError, match="post_trace_decay"):
        SynapticConfig(post_trace_decay=1.5)
    with pytest.raises(ConfigError, match="rec_rate"):
        SynapticConfig(rec_rate=-1e-3)
    with pytest.raises(ConfigError, match="finite"):
        SynapticConfig(alpha_c=math.nan)
    with pytest.raises(ConfigError, match="unknown"):
        SynapticConfig.from_overrides({"nope": 1})
    with pytest.raises(ConfigError, match="presyn_chunk"):
        check_same_structure([SynapticConfig(), SynapticConfig(presyn_chunk=16)])
    check_same_structure([SynapticConfig(), SynapticConfig(alpha_c=0.2)])


def test_model_and_train_config_validation():
    with pytest.raises(ConfigError, match="divisible by n_head"):
        ModelConfig(n_embd=130, n_head=4)
    with pytest.raises(ConfigError, match="n_kv_head"):
        ModelConfig(n_head=4, n_kv_head=3)
    with pytest.raises(ConfigError, match="vocab_size"):
        ModelConfig(vocab_size=100)
    with pytest.raises(ConfigError, match="target_flops"):
        TrainConfig(target_flops=0)
    with pytest.raises(ConfigError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ConfigError, match="precision must be one of fp32, bf16"):
        TrainConfig(precision="fp16")


def test_estimate_flops_counts_matmul_weights_and_attention():
    m = ModelConfig()  # 4 layers, width 128, 4 heads, seq 256, vocab 256
    C, R = 128, 8
    per_layer = 4 * C * C + 8 * C * C + 2 * (4 * C * R) + 2 * (C * R)
    expected = 6 * (4 * per_layer + C * 256) + 12 * 4 * C * 256
    assert estimate_flops(m, R) == expected
    gqa = ModelConfig(n_head=4, n_kv_head=2)
    assert estimate_flops(gqa, R) == expected - 6 * 4 * 2 * C * (C // 2)


def test_budget_steps():
    m = ModelConfig()
    one = plan_budget(m, TrainConfig(target_flops=1e10))
    assert one.max_steps == 1  # the pilot document's 1e10 is about one step with an honest count
    default = plan_budget(m, TrainConfig())
    assert 120 <= default.max_steps <= 180
    assert default.max_steps == math.ceil(2e12 / (default.flops_per_token_est * 8 * 256))
    assert plan_budget(m, TrainConfig(max_steps=7)).max_steps == 7
