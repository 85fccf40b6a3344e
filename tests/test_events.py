"""TensorBoard events: the scalars of log.jsonl per epoch, written only when wanted, and kept
right across --overwrite, failures and --resume."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from sbn_testing import fake_fmnist

from sbnkit import UserError, cli
from sbnkit.train import events, loop, parse_config

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing import (  # noqa: E402
    event_accumulator,
    event_file_loader,
)

CONFIG = """
[model]
hidden = [16]
[train]
epochs = 4
batch_size = 20
threads = 1
checkpoint_every = 2
[eval]
samples = 2
batch_size = 50
"""


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("SBNKIT_DATA", str(fake_fmnist(tmp_path / "data", n_train=60)))
    (tmp_path / "c.toml").write_text(CONFIG)
    return tmp_path


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    acc = event_accumulator.EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _assert_events_match_the_log(run: Path) -> None:
    """One scalar per numeric field and epoch, equal to log.jsonl's value in float32."""
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    got = _scalars(run / "tensorboard")
    fields = {k for record in log for k in record if k != "epoch"}
    assert fields and set(got) == fields
    for key in fields:
        want = [(r["epoch"], float(np.float32(r[key]))) for r in log if key in r]
        assert got[key] == want, key


def _interrupt_at_evaluation(monkeypatch, n: int) -> None:
    """Ctrl-C at the ``n``-th per-epoch evaluation (epoch ``n``'s end, before it is logged)."""
    calls = []

    def evaluate(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    real = loop.evaluate
    monkeypatch.setattr(loop, "evaluate", evaluate)


def test_each_epoch_is_written_as_scalars_equal_to_the_log(setup, capsys):
    assert cli.main(["train", str(setup / "c.toml"), "--out", str(setup / "run")]) == 0
    assert len(list((setup / "run" / "tensorboard").iterdir())) == 1
    _assert_events_match_the_log(setup / "run")


def test_resume_adds_a_file_that_hides_the_epochs_run_again(setup, monkeypatch, capsys):
    """Epochs 1-3 are logged, the state saved at epoch 2; the resumed run trains epochs 3-4
    again. TensorBoard shows each epoch once, with the values of the final log."""
    run = setup / "run"
    _interrupt_at_evaluation(monkeypatch, 4)
    assert cli.main(["train", str(setup / "c.toml"), "--out", str(run)]) == 130
    assert [s for s, _ in _scalars(run / "tensorboard")["train_loss"]] == [1, 2, 3]
    monkeypatch.undo()
    monkeypatch.setenv("SBNKIT_DATA", str(setup / "data"))
    # Event files are named by creation second, host, pid and a per-process counter, and read in
    # name order. A real resume starts in a later second (another process); in one test process
    # within one second a counter passing 9 → 10 would sort the files wrongly, so wait a second.
    time.sleep(1.0)
    assert cli.main(["train", "--resume", str(run)]) == 0
    first, second = sorted((run / "tensorboard").iterdir())
    starts = [
        e.step
        for e in event_file_loader.EventFileLoader(str(second)).Load()
        if e.session_log.status == e.session_log.START
    ]
    assert starts == [3]  # tells TensorBoard to drop the first file's epoch 3
    _assert_events_match_the_log(run)


def test_a_failed_overwrite_brings_the_earlier_events_back(setup, monkeypatch, capsys):
    run = setup / "run"
    assert cli.main(["train", str(setup / "c.toml"), "train.epochs=1", "--out", str(run)]) == 0
    before = {p.name: p.read_bytes() for p in (run / "tensorboard").iterdir()}
    _interrupt_at_evaluation(monkeypatch, 1)
    assert cli.main(["train", str(setup / "c.toml"), "--out", str(run), "--overwrite"]) == 130
    assert {p.name: p.read_bytes() for p in (run / "tensorboard").iterdir()} == before
    assert "the earlier run" in capsys.readouterr().err
    _interrupt_at_evaluation(monkeypatch, 1)
    assert cli.main(["train", str(setup / "c.toml"), "--out", str(setup / "new")]) == 130
    assert not (setup / "new").exists()  # nothing finished: the events went with the rest


def test_without_the_package_auto_writes_none_and_true_is_an_error(setup, monkeypatch, capsys):
    monkeypatch.setattr(events, "installed", lambda: False)
    argv = ["train", str(setup / "c.toml"), "train.epochs=1", "--out", str(setup / "a")]
    assert cli.main(argv) == 0
    assert (setup / "a" / "model.pt").exists() and not (setup / "a" / "tensorboard").exists()
    assert "tensorboard" not in json.loads((setup / "a" / "run.json").read_text())["files"]
    capsys.readouterr()
    argv = ["train", str(setup / "c.toml"), "train.tensorboard=true", "--out", str(setup / "b")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "sbnkit: error: train.tensorboard = true but the tensorboard package is not installed; "
        "pip install 'sbnkit[tensorboard]' or set train.tensorboard = \"auto\""
    ]
    assert not (setup / "b").exists()
    assert events.wanted(False) is False
    with pytest.raises(UserError, match="not installed"):
        events.wanted(True)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1", "must be a boolean or a string, got 1"),
        ("'yes'", 'must be true, false or "auto"'),
    ],
)
def test_the_tensorboard_key_is_checked(value, message):
    with pytest.raises(UserError, match=message):
        parse_config(CONFIG, [f"train.tensorboard={value}"])
    assert parse_config(CONFIG, ["train.tensorboard=false"]).train.tensorboard is False
    assert parse_config(CONFIG).train.tensorboard == "auto"
