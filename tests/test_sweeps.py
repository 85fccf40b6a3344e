"""lr-search (golden-section over log10 lr) and compare (configs × seeds, mean ± std)."""

import json
import math
from pathlib import Path

import pytest

from sbnkit import UserError, cli, lrsearch
from sbnkit.compare import RunSpec, plan, summarise
from sbnkit.lrsearch import golden_section, with_lr
from sbnkit.train import load_config, parse_config

TOY = """
[model]
hidden = [8]
[train]
epochs = 1
batch_size = 50
threads = 1
[data]
name = "toy2d"
[eval]
samples = 2
"""


def test_golden_section_brackets_the_minimum():
    """After n evaluations the bracket has shrunk by 0.618^(n-1): the best point found lies
    within that distance of the true minimiser."""
    calls = []
    seen = golden_section(lambda x: calls.append(x) or (x - 0.3) ** 2, -1.0, 1.0, 12)
    assert len(seen) == len(calls) == 12 and all(-1.0 <= x <= 1.0 for x in calls)
    best = min(seen, key=lambda t: t[1])[0]
    assert abs(best - 0.3) <= 2.0 * ((math.sqrt(5) - 1) / 2) ** 11
    for bad in ((1.0, 1.0, 5), (0.0, 1.0, 1), (0.0, math.inf, 3)):
        with pytest.raises(UserError):
            golden_section(abs, *bad)


def test_with_lr_moves_the_keys_together():
    cfg = parse_config(TOY + "[optim.latent]\nlr = 0.02\n[optim.real]\nlr = 0.004\n")
    out = with_lr(cfg, ["optim.latent.lr", "optim.real.lr"], -1.0)
    assert out.optim.latent.lr == pytest.approx(0.1) and out.optim.real.lr == pytest.approx(0.02)
    assert out.train.lr_schedule == "constant" and cfg.optim.latent.lr == 0.02
    with pytest.raises(UserError, match="not a learning-rate key"):
        with_lr(cfg, ["optim.latent.momentumm"], 0.0)


def test_a_diverging_trial_scores_infinity(monkeypatch):
    real_fit = lrsearch.fit

    def fit(run, on_epoch=None, **kw):
        if run.config.optim.real.lr > 0.05:
            raise UserError("training diverged (loss nan in epoch 1)")
        return real_fit(run, on_epoch=on_epoch, **kw)

    monkeypatch.setattr(lrsearch, "fit", fit)
    trials = lrsearch.lr_search(parse_config(TOY), low=-4, high=0, trials=4, epochs=1, log=print)
    assert len(trials) == 4
    assert all(math.isinf(t.loss) == (10**t.log10_lr * 0.1 > 0.05) for t in trials)
    assert math.isfinite(min(t.loss for t in trials))


def test_lr_search_command(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("t.toml").write_text(TOY)
    assert cli.main(["lr-search", "t.toml", "--trials", "3", "--epochs", "1", "--out", "o"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(Path("o/lr_search.json").read_text())
    assert len(summary["trials"]) == 3
    best = min(summary["trials"], key=lambda t: t["loss"])
    assert summary["best_log10_lr"] == best["log10_lr"]
    chosen = load_config("o/best.toml")
    assert chosen.optim.real.lr == pytest.approx(summary["chosen"]["optim.real.lr"])
    assert chosen.train.lr_schedule == "cosine"  # the config's own schedule is kept
    assert Path("o/lr_search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "chosen: optim.latent.lr" in out
    for argv in (
        ["--trials", "1"],
        ["--low", "0", "--high", "-1"],
        ["--keys", "optim.real.lrr"],
        ["--epochs", "0"],
    ):
        assert cli.main(["lr-search", "t.toml", *argv, "--out", "bad"]) == 2
        assert capsys.readouterr().err.startswith("sbnkit: error: ")
    assert not Path("bad").exists()


def test_compare_plan_and_table(tmp_path):
    (tmp_path / "a.toml").write_text(TOY)
    runs = plan([tmp_path / "a.toml"], 2)
    assert [r.name for r in runs] == ["a-s1", "a-s2"] and [r.seed for r in runs] == [1, 2]
    for configs, seeds, message in (
        ([tmp_path / "nope.toml"], 1, "does not exist"),
        ([tmp_path / "a.toml", tmp_path / "a.toml"], 1, "names repeat"),
        ([tmp_path / "a.toml"], 0, "positive integer"),
    ):
        with pytest.raises(UserError, match=message):
            plan(configs, seeds)
    metrics = {
        "a-s1": {"test_acc_mode": 0.80, "test_acc_sample": 0.7, "test_acc_ensemble": 0.9,
                 "test_nll_ensemble": 0.5, "train_seconds": 10.0, "epochs": 2},
        "a-s2": {"test_acc_mode": 0.90, "test_acc_sample": 0.7, "test_acc_ensemble": 0.9,
                 "test_nll_ensemble": 0.3, "train_seconds": 6.0, "epochs": 2},
    }  # fmt: skip
    table, by_config = summarise([RunSpec(Path("a.toml"), s, f"a-s{s}") for s in (1, 2)], metrics)
    row = table.splitlines()[2]
    assert row == "| a | 2 | 85.00 ± 7.07 | 70.00 ± 0.00 | 90.00 ± 0.00 | 0.40 ± 0.14 | 4.0 |"
    assert by_config["a"]["test_acc_mode"] == [0.80, 0.90]


def test_compare_command(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("a.toml").write_text(TOY)
    argv = ["compare", "a.toml", "--seeds", "2", "--jobs", "2", "--set", "train.epochs=1"]
    assert cli.main([*argv, "--out", "c"]) == 0
    out = capsys.readouterr().out
    assert "| a | 2 |" in out and "2 runs in" in out
    assert sorted(p.name for p in Path("c").iterdir() if not p.name.startswith(".")) == [
        "a-s1",
        "a-s2",
        "compare.png",
        "run.json",
        "runs.json",
        "summary.json",
        "summary.md",
    ]
    seeds = [json.loads(Path(f"c/a-s{s}/run.json").read_text()) for s in (1, 2)]
    assert all(r["state"] == "complete" for r in seeds)
    assert cli.main([*argv, "--set", "train.epochz=1", "--out", "d"]) == 2
    assert not Path("d").exists()
