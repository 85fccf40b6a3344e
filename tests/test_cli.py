"""The ``sbnkit`` command line: an end-to-end run, evaluate, and one-line errors with exit 2."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import pickle
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from sbn_testing import fake_fmnist
from torch import nn

import sbnkit
from sbnkit import UserError, cli
from sbnkit.data.idx import write_idx
from sbnkit.runfolder import RunFolder
from sbnkit.train import checkpoint

TINY = """
[model]
hidden = [16]
[train]
epochs = 1
batch_size = 20
threads = 1
[eval]
samples = 2
batch_size = 50
"""


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "sbnkit", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=300,
    )


def test_train_and_evaluate_end_to_end(tmp_path, monkeypatch, capsys):
    data = fake_fmnist(tmp_path / "data")
    (tmp_path / "tiny.toml").write_text(TINY)
    env = {"SBNKIT_DATA": str(data)}
    result = run_cli("train", "tiny.toml", "model.norm=affine", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "runs" / "tiny"
    assert sorted(p.name for p in out.iterdir()) == [
        ".lock",
        "config.toml",
        "log.csv",
        "log.jsonl",
        "metrics.json",
        "model.pt",
        "run.json",
        "tensorboard",
    ]
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["tiny"]
    lines = [json.loads(s) for s in (out / "log.jsonl").read_text().splitlines()]
    assert len(lines) == 1
    assert {"epoch", "train_loss", "test_acc_mode", "test_nll_mode", "seconds"} <= set(lines[0])
    assert {"lr_latent", "lr_real"} <= set(lines[0])
    with open(out / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [list(r) for r in rows] == [list(lines[0])]  # same columns, header once
    assert {k: float(v) for k, v in rows[0].items()} == lines[0]
    metrics = json.loads((out / "metrics.json").read_text())
    assert {
        f"test_{what}_{net}" for what in ("acc", "nll") for net in ("mode", "sample", "ensemble")
    } | {"ensemble_samples", "epochs", "seconds"} <= set(metrics)
    assert not {"test_acc", "test_nll"} & set(metrics)  # one meaning per name
    assert lines[0]["test_nll_mode"] == metrics["test_nll_mode"]
    assert metrics["ensemble_samples"] == 2 and metrics["epochs"] == 1
    assert f"{metrics['test_acc_mode']:.4f}" in result.stdout
    assert "test accuracy (ensemble K=2)" in result.stdout
    assert "model.norm" not in (out / "config.toml").read_text()
    assert 'norm = "affine"' in (out / "config.toml").read_text()
    state = torch.load(out / "model.pt", weights_only=True)
    assert state["format"] == "sbnkit-checkpoint"

    result = run_cli("evaluate", str(out / "model.pt"), env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        f"test accuracy (mode network): {metrics['test_acc_mode']:.4f}  "
        f"NLL {metrics['test_nll_mode']:.4f}"
    )
    monkeypatch.setenv("SBNKIT_DATA", str(data))
    assert (
        cli.main(["evaluate", str(out / "model.pt"), "--mode", "ensemble", "--samples", "3"]) == 0
    )
    assert "ensemble K=3" in capsys.readouterr().out

    # A finished run is replaced only with --overwrite.
    again = ["train", str(tmp_path / "tiny.toml"), "train.epochs=2", "--out", str(out)]
    before = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert cli.main(again) == 2
    err = capsys.readouterr().err
    assert "holds a `train` run that is complete" in err and "--overwrite" in err
    assert {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()} == (
        before
    )
    names = sorted(p.name for p in out.iterdir())
    assert cli.main([*again, "--overwrite"]) == 0
    assert len((out / "log.jsonl").read_text().splitlines()) == 2
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["tiny"]
    assert sorted(p.name for p in out.iterdir()) == names
    assert len(list((out / "tensorboard").iterdir())) == 1  # the replaced run's events are gone


def test_the_run_records_its_provenance(tmp_path):
    data = fake_fmnist(tmp_path / "data")
    (tmp_path / "tiny.toml").write_text(TINY)
    result = run_cli(
        "train", "tiny.toml", "--out", "r", env={"SBNKIT_DATA": str(data)}, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "r" / "run.json").read_text())
    assert record["command"] == "train" and record["state"] == "complete"
    assert record["files"] == [
        "config.toml",
        "log.csv",
        "log.jsonl",
        "metrics.json",
        "model.pt",
        "tensorboard",
    ]
    prov = record["provenance"]
    assert prov["command_line"] == ["sbnkit", "train", "tiny.toml", "--out", "r"]
    assert prov["sbnkit"] == sbnkit.__version__ and prov["torch"] == torch.__version__
    assert prov["python"] == platform.python_version() and prov["date"].startswith("20")
    assert "git_commit" in prov
    read = {Path(f["path"]).name: f for f in prov["data_files"]}
    assert sorted(read) == sorted(p.name for p in data.iterdir())
    for name, f in read.items():
        blob = (data / name).read_bytes()
        assert f["bytes"] == len(blob) and f["sha256"] == hashlib.sha256(blob).hexdigest()


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"sbnkit {sbnkit.__version__}"


def _train_until(tmp_path: Path, epochs_logged: int, epochs: int) -> subprocess.Popen:
    """Start a training of ``epochs`` epochs of 100 steps in a subprocess; return it once
    ``epochs_logged`` epochs are in its log and its training state is saved (never waiting on
    wall time alone: a loaded machine only makes it slower)."""
    data = fake_fmnist(tmp_path / "data", n_train=2000)
    (tmp_path / "long.toml").write_text(TINY.replace("epochs = 1", f"epochs = {epochs}"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "sbnkit", "train", "long.toml", "--out", "run"],
        cwd=tmp_path,
        env={**os.environ, "SBNKIT_DATA": str(data)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    log, saved = tmp_path / "run" / "log.jsonl", tmp_path / "run" / "checkpoint.pt"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if saved.exists() and log.exists() and len(log.read_text().splitlines()) >= epochs_logged:
            return proc
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"training did not log {epochs_logged} epochs: {proc.communicate()}")


def _assert_same_as_uninterrupted(tmp_path: Path, run: Path, capsys) -> None:
    """Every tensor of the resumed run's model, and every test metric, equals those of the same
    training run without interruption."""
    assert cli.main(["train", str(tmp_path / "long.toml"), "--out", str(tmp_path / "whole")]) == 0
    capsys.readouterr()
    got, want = torch.load(run / "model.pt"), torch.load(tmp_path / "whole" / "model.pt")
    assert got["state_dict"].keys() == want["state_dict"].keys()
    for name, tensor in want["state_dict"].items():
        assert torch.equal(got["state_dict"][name], tensor), name
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (run, tmp_path / "whole")]
    for key in metrics[1]:
        if key.startswith("test_"):
            assert metrics[0][key] == metrics[1][key], key
    logs = [(d / "log.jsonl").read_text().splitlines() for d in (run, tmp_path / "whole")]
    keep = ("epoch", "train_loss", "test_acc_mode", "test_nll_mode", "lr_latent", "lr_real")
    assert [{k: json.loads(x)[k] for k in keep} for x in logs[0]] == [
        {k: json.loads(x)[k] for k in keep} for x in logs[1]
    ]


def test_sigterm_saves_the_state_and_resume_continues_bit_for_bit(tmp_path, monkeypatch, capsys):
    proc = _train_until(tmp_path, 2, epochs=20)
    proc.terminate()
    stdout, stderr = proc.communicate(timeout=600)
    err = stderr.decode()
    assert proc.returncode == 143 and stdout == b"", err
    run = tmp_path / "run"
    logged = len((run / "log.jsonl").read_text().splitlines())
    assert 2 <= logged < 20
    assert len((run / "log.csv").read_text().splitlines()) == 1 + logged
    kept = "kept checkpoint.pt, config.toml, log.csv, log.jsonl, tensorboard"
    assert f"{kept} in {run} ({logged} finished epochs" in err
    assert f"continue with `sbnkit train --resume {run}`" in err
    assert err.strip().splitlines()[-1] == "sbnkit: stopped by SIGTERM"
    assert "Traceback" not in err
    assert sorted(p.name for p in run.iterdir()) == [
        ".lock",
        "checkpoint.pt",
        "config.toml",
        "log.csv",
        "log.jsonl",
        "run.json",
        "tensorboard",
    ]
    record = json.loads((run / "run.json").read_text())
    assert record["state"] == "interrupted"
    assert record["files"] == [
        "checkpoint.pt",
        "config.toml",
        "log.csv",
        "log.jsonl",
        "tensorboard",
    ]

    monkeypatch.setenv("SBNKIT_DATA", str(tmp_path / "data"))
    again = ["train", str(tmp_path / "long.toml"), "--out", str(run)]
    assert cli.main(again) == 2
    assert f"pass --resume {run} to continue it, --overwrite" in capsys.readouterr().err
    assert cli.main(["train", "--resume", str(run)]) == 0
    assert sorted(p.name for p in run.iterdir()) == [
        ".lock",
        "config.toml",
        "log.csv",
        "log.jsonl",
        "metrics.json",
        "model.pt",
        "run.json",
        "tensorboard",
    ]
    record = json.loads((run / "run.json").read_text())
    assert record["state"] == "complete" and len(record["provenance"]["resumed"]) == 1
    _assert_same_as_uninterrupted(tmp_path, run, capsys)
    assert cli.main(["train", "--resume", str(run)]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path, monkeypatch, capsys):
    proc = _train_until(tmp_path, 1, epochs=12)
    proc.kill()
    proc.communicate(timeout=600)
    run = tmp_path / "run"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no hidden leftovers
    monkeypatch.setenv("SBNKIT_DATA", str(tmp_path / "data"))
    argv = ["train", str(tmp_path / "long.toml"), "--out", str(run)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "interrupted (its process was killed)" in err and "--resume" in err
    assert cli.main(["train", "--resume", str(run)]) == 0
    _assert_same_as_uninterrupted(tmp_path, run, capsys)
    assert cli.main([*argv, "--overwrite"]) == 0  # and a finished run can be replaced


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train"], "pass the TOML config to train, or --resume DIR"),
        (["train", "x.toml", "--resume", "r"], "pass no config, overrides, --out or --overwrite"),
        (["train", "--resume", "r", "--overwrite"], "pass no config"),
        (["train", "--resume", "nowhere"], "holds no sbnkit run to resume"),
    ],
)
def test_resume_bad_input(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r").mkdir()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.splitlines()) == 1


def test_a_run_in_progress_locks_its_folder(tmp_path, monkeypatch, capsys):
    """Two runs into one folder: the second is refused while the first holds the lock."""
    data = fake_fmnist(tmp_path / "data")
    monkeypatch.setenv("SBNKIT_DATA", str(data))
    (tmp_path / "tiny.toml").write_text(TINY)
    out = tmp_path / "run"
    argv = ["train", str(tmp_path / "tiny.toml"), "--out", str(out)]
    with RunFolder(out, "train"):
        for extra in ([], ["--overwrite"]):
            assert cli.main([*argv, *extra]) == 2
            assert "in use by another sbnkit process" in capsys.readouterr().err
    assert cli.main([*argv, "--overwrite"]) == 0


class Evil:
    """Unpickling this would run code; a weights-only loader must refuse it."""

    def __reduce__(self):
        return (print, ("executed",))


def _bad_cases(tmp: Path) -> list[tuple[str, list[str], dict[str, str]]]:
    """(id, argv, env) of bad command lines; every one must fail cleanly."""
    data = fake_fmnist(tmp / "data")
    corrupt = tmp / "corrupt"
    corrupt.mkdir()
    for f in data.iterdir():
        (corrupt / f.name).write_bytes(f.read_bytes())
    blob = (corrupt / "train-images-idx3-ubyte.gz").read_bytes()
    (corrupt / "train-images-idx3-ubyte.gz").write_bytes(blob[: len(blob) // 2])
    labels = fake_fmnist(tmp / "labels")
    write_idx(labels / "t10k-labels-idx1-ubyte.gz", np.full(30, 12, np.uint8))
    (tmp / "empty").mkdir()
    (tmp / "tiny.toml").write_text(TINY)
    (tmp / "broken.toml").write_text("[model\nname = 'mlp'\n")
    (tmp / "notes.txt").write_text("not a checkpoint")
    (tmp / "evil.pt").write_bytes(pickle.dumps(Evil(), protocol=4))
    (tmp / "afile").write_text("")
    (tmp / "hello.pt").write_text("hello\n")
    (tmp / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp / "empty.toml").write_text("# nothing set\n")
    nan_model = nn.Linear(2, 2)
    with torch.no_grad():
        nan_model.weight[0, 0] = float("nan")
    checkpoint.save(tmp / "nan.pt", nan_model, {}, {})
    cfg = str(tmp / "tiny.toml")
    ok = {"SBNKIT_DATA": str(data)}
    return [
        ("unknown-estimator", ["train", cfg, "estimator.name=magic"], ok),
        ("unknown-noise", ["train", cfg, "model.noise=cauchy"], ok),
        ("unknown-weight-mode", ["train", cfg, "model.weight_mode=median"], ok),
        ("unknown-model", ["train", cfg, "model.name=resnet"], ok),
        ("malformed-toml", ["train", str(tmp / "broken.toml")], ok),
        ("unknown-key", ["train", cfg, "train.epoch=3"], ok),
        ("wrong-type", ["train", cfg, "train.epochs='3'"], ok),
        ("bad-override", ["train", cfg, "train.epochs"], ok),
        ("bad-override-value", ["train", cfg, "model.hidden=[3,"], ok),
        ("missing-config", ["train", str(tmp / "nope.toml")], ok),
        ("missing-data", ["train", cfg, f"data.root='{tmp / 'empty'}'"], ok),
        ("corrupt-data", ["train", cfg], {"SBNKIT_DATA": str(corrupt)}),
        ("labels-out-of-range", ["train", cfg], {"SBNKIT_DATA": str(labels)}),
        ("out-is-a-file", ["train", cfg, "--out", str(tmp / "afile")], ok),
        ("out-is-not-a-run", ["train", cfg, "--out", str(tmp)], ok),
        ("out-is-empty", ["train", cfg, "--out", ""], ok),
        ("empty-config", ["train", str(tmp / "empty.toml")], ok),
        ("data-env-missing", ["train", cfg], {"SBNKIT_DATA": str(tmp / "nowhere")}),
        ("batch-of-one-with-batchnorm", ["train", cfg, "train.batch_size=1"], ok),
        ("unknown-option", ["train", cfg, "--epochs", "3"], ok),
        ("no-command", [], ok),
        ("unknown-command", ["fly"], ok),
        ("evaluate-missing", ["evaluate", str(tmp / "none.pt")], ok),
        ("evaluate-not-checkpoint", ["evaluate", str(tmp / "notes.txt")], ok),
        ("evaluate-pickled-object", ["evaluate", str(tmp / "evil.pt")], ok),
        ("evaluate-text-file", ["evaluate", str(tmp / "hello.pt")], ok),
        ("evaluate-random-bytes", ["evaluate", str(tmp / "random.pt")], ok),
        ("evaluate-nan-weights", ["evaluate", str(tmp / "nan.pt")], ok),
        ("evaluate-a-folder", ["evaluate", str(tmp / "empty")], ok),
        ("evaluate-bad-mode", ["evaluate", str(tmp / "notes.txt"), "--mode", "best"], ok),
        ("evaluate-bad-samples", ["evaluate", str(tmp / "notes.txt"), "--samples", "0"], ok),
    ]


@pytest.fixture
def bad_cases(tmp_path):
    cases = {case_id: (argv, env) for case_id, argv, env in _bad_cases(tmp_path)}
    assert sorted(cases) == sorted(CASE_IDS)
    return cases


CASE_IDS = [
    "unknown-estimator",
    "unknown-noise",
    "unknown-weight-mode",
    "unknown-model",
    "malformed-toml",
    "unknown-key",
    "wrong-type",
    "bad-override",
    "bad-override-value",
    "missing-config",
    "missing-data",
    "corrupt-data",
    "labels-out-of-range",
    "out-is-a-file",
    "out-is-not-a-run",
    "out-is-empty",
    "empty-config",
    "data-env-missing",
    "batch-of-one-with-batchnorm",
    "unknown-option",
    "no-command",
    "unknown-command",
    "evaluate-missing",
    "evaluate-not-checkpoint",
    "evaluate-pickled-object",
    "evaluate-text-file",
    "evaluate-random-bytes",
    "evaluate-nan-weights",
    "evaluate-a-folder",
    "evaluate-bad-mode",
    "evaluate-bad-samples",
]


def _assert_clean_failure(code: int, stderr: str, out: Path) -> None:
    lines = stderr.splitlines()
    assert code == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("sbnkit: error: "), stderr
    assert "Traceback" not in stderr
    assert not out.exists()
    if out.parent.exists():
        assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_bad_input_in_process(case_id, bad_cases, tmp_path, monkeypatch, capsys):
    argv, env = bad_cases[case_id]
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "runs" / "out"
    if argv and argv[0] == "train" and "--out" not in argv:
        argv = [*argv, "--out", str(out)]
    monkeypatch.chdir(tmp_path)
    code = cli.main(argv)
    captured = capsys.readouterr()
    assert captured.out == ""
    _assert_clean_failure(code, captured.err, out)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("case_id", ["corrupt-data", "evaluate-pickled-object"])
def test_bad_input_subprocess(case_id, bad_cases, tmp_path):
    argv, env = bad_cases[case_id]
    result = run_cli(*argv, env=env, cwd=tmp_path)
    _assert_clean_failure(result.returncode, result.stderr, tmp_path / "runs" / "tiny")
    assert result.stdout == ""


def test_gradeval_is_forwarded(monkeypatch, capsys):
    calls = []
    module = type(sys)("sbnkit.gradeval")
    module.cli_main = lambda argv: calls.append(argv) or 0
    monkeypatch.setitem(sys.modules, "sbnkit.gradeval", module)
    assert cli.main(["gradeval", "--methods", "st", "--help"]) == 0
    assert calls == [["--methods", "st", "--help"]]


def test_gradeval_missing(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sbnkit.gradeval", None)
    assert cli.main(["gradeval"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sbnkit: error: the gradeval command is not available")


def test_real_bugs_still_raise(monkeypatch):
    def broken(cfg):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli, "prepare", broken)
    with pytest.raises(ZeroDivisionError):
        cli.main(
            [
                "train",
                str(Path(__file__).parent.parent / "configs" / "fmnist_default.toml"),
                "--out",
                "/nonexistent/never",
            ]
        )


def test_any_damaged_checkpoint_is_bad_input(tmp_path):
    """Truncations and random byte flips of a real checkpoint, and random files: every failure
    to read one is a one-line UserError, never another exception."""
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    good = tmp_path / "good.pt"
    checkpoint.save(good, model, {"a": 1}, {})
    blob = good.read_bytes()
    rng = np.random.default_rng(0)
    variants = [blob[:n] for n in rng.integers(0, len(blob), 40)]
    for _ in range(60):
        damaged = bytearray(blob)
        for i in rng.integers(0, len(blob), 8):
            damaged[i] = int(rng.integers(0, 256))
        variants.append(bytes(damaged))
    variants += [rng.bytes(int(n)) for n in rng.integers(1, 3000, 40)]
    bad = tmp_path / "bad.pt"
    for blob_k in variants:
        bad.write_bytes(blob_k)
        try:
            checkpoint.load(bad)
        except UserError as exc:
            assert "\n" not in str(exc)
