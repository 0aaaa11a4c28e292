"""`python -m nanochat.train`: artifacts on success, one-line errors and no artifacts on bad input."""

import json
import subprocess
import sys

import pytest

from tiny import TRAINER_FLAGS as TINY_CLI_FLAGS
from nanochat.train import main


def run_train(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "nanochat.train", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_cli_writes_summary_in_artifacts_layout(tmp_path):
    r = run_train(*TINY_CLI_FLAGS, "--max-steps", "6", "--seed", "5", "--artifacts-dir", str(tmp_path),
                  "--artifacts-kind", "kind", "--artifacts-topic", "topic", "--run-id", "r1", "--log-interval", "2")
    assert r.returncode == 0, r.stderr
    run_dir = tmp_path / "kind" / "topic" / "r1"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (run_dir / "run.md").read_text().startswith("# nanochat synaptic run")
    res, budget = summary["results"], summary["budget"]
    assert budget["max_steps"] == 6 and len(res["losses"]) == 6
    assert all(isinstance(x, float) for x in res["losses"])
    assert res["status"] == "ok" and res["failure_step"] is None and res["train_ce_final"] == res["losses"][-1]
    for key in ("target_flops", "flops_per_token_est", "tokens_per_step_global", "flops_per_step_est",
                "planned_total_flops_est"):
        assert budget[key] > 0
    assert summary["hparams"]["synaptic_config"]["tau_c"] == 0.85
    assert summary["config"]["matmul_precision"] == "highest"
    assert len(summary["dataset"]["sha256"]) == 64
    assert summary["schema_version"] == 1 and len(res["step_times_s"]) == 6
    assert "step     2  loss" in r.stdout


def test_target_flops_1e10_is_one_step_at_baseline(tmp_path):
    r = run_train("--target-flops", "1e10", "--seed", "123", "--out-dir", str(tmp_path / "o"), "--quiet")
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["budget"]["max_steps"] == 1 and len(summary["results"]["losses"]) == 1


@pytest.mark.slow
def test_default_budget_learns(tmp_path):
    """The default budget at the pilot document's baseline size: the last loss is >= 30% below the first."""
    r = run_train("--seed", "123", "--out-dir", str(tmp_path / "o"), "--quiet", timeout=900)
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "o" / "summary.json").read_text())
    losses = res["results"]["losses"]
    assert len(losses) == res["budget"]["max_steps"] >= 100
    assert all(x is not None for x in losses)
    assert losses[-1] <= 0.7 * losses[0]


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


BAD_INPUTS = [
    (lambda t: ["--synaptic-config", write(t, "a.json", '{"tau_cc": 0.8}')], "unknown SynapticConfig key"),
    (lambda t: ["--synaptic-config", write(t, "b.json", "{not json")], "not valid JSON"),
    (lambda t: ["--synaptic-config", write(t, "c.json", "[1, 2]")], "must hold a JSON object"),
    (lambda t: ["--synaptic-config", write(t, "d.json", '{"tau_c": "high"}')], "must be a number"),
    (lambda t: ["--synaptic-config", write(t, "e.json", '{"attn_topk": 2.5}')], "must be an integer"),
    (lambda t: ["--synaptic-config", write(t, "f.json", '{"prime_rate": -0.1}')], "prime_rate must be in"),
    (lambda t: ["--synaptic-config", write(t, "g.json", '{"tau_c": 1.0}')], "tau_c must be in (0, 1)"),
    (lambda t: ["--synaptic-config", write(t, "h.json", '{"init_rrp": 0}')], "init_rrp must be in"),
    (lambda t: ["--synaptic-config", str(t / "missing.json")], "--synaptic-config file not found"),
    (lambda t: ["--n-embd", "100", "--n-head", "3"], "divisible by n_head"),
    (lambda t: ["--n-head", "4", "--n-kv-head", "3"], "divisible by n_kv_head"),
    (lambda t: ["--target-flops", "0"], "--target-flops must be a positive"),
    (lambda t: ["--target-flops", "-5"], "--target-flops must be a positive"),
    (lambda t: ["--max-steps", "0"], "--max-steps must be a positive"),
    (lambda t: ["--data", str(t / "nope")], "does not exist"),
    (lambda t: ["--data", write(t, "empty.txt", "  \n")], "is empty"),
    (lambda t: ["--data", write(t, "short.txt", "x" * 40), "--sequence-len", "64"], "longer than the training corpus"),
    (lambda t: ["--device", "tpu"], "--device 'tpu' is not supported; use cpu, cuda or auto"),
    (lambda t: ["--batch-size", "zero"], "invalid int value"),
    (lambda t: ["--precision", "fp16"], "invalid choice: 'fp16'"),
    (lambda t: ["--matmul-precision", "medium"], "invalid choice: 'medium'"),
    (lambda t: ["--warmdown-frac", "2"], "--warmdown-frac must be in [0, 1]"),
]


def main_in_process(argv):
    """Run the CLI's main() in this process (cheaper than a subprocess per case); returns the exit status."""
    try:
        return main(argv)
    except SystemExit as exc:  # argparse errors exit directly
        return exc.code


@pytest.mark.parametrize("make_args,message", BAD_INPUTS, ids=[m for _, m in BAD_INPUTS])
def test_bad_input_is_one_line_error_and_writes_nothing(tmp_path, capsys, make_args, message):
    out = tmp_path / "out"
    status = main_in_process(["--max-steps", "2", *make_args(tmp_path), "--out-dir", str(out), "--quiet"])
    assert status != 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("nanochat.train: error:") and message in lines[0]
    assert not out.exists()


def test_bad_input_from_a_real_subprocess(tmp_path):
    r = run_train("--synaptic-config", write(tmp_path, "a.json", '{"tau_c": -1}'), "--out-dir", str(tmp_path / "o"))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["nanochat.train: error: SynapticConfig.tau_c must be in (0, 1), got -1.0"]
    assert not (tmp_path / "o").exists()


def test_existing_summary_is_not_overwritten(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    r = run_train(*TINY_CLI_FLAGS, "--max-steps", "1", "--out-dir", str(out), "--quiet")
    assert r.returncode != 0 and "already exists" in r.stderr
    assert (out / "summary.json").read_text() == "{}"
