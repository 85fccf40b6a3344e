"""``sbnkit plot``: PNGs from run folders, written atomically into a run folder of its own;
anything that is not a training run folder is refused before anything is written."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from sbnkit import UserError, cli
from sbnkit.plots import plot_runs, read_run
from sbnkit.runfolder import RunFolder, read_record

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_run(folder: Path, epochs: int = 3, curve: bool = True, val: bool = False) -> Path:
    """A finished ``sbnkit train`` run folder with a log of ``epochs`` and metrics."""
    with RunFolder(folder, "train", report=lambda _: None) as rf:
        for n in range(1, epochs + 1):
            entry = {
                "epoch": n,
                "train_loss": 1.0 / n,
                "test_acc_mode": 0.5 + 0.1 * n,
                "test_nll_mode": 1.0 / n,
                "lr_latent": 0.01 / n,
                "lr_real": 0.001 / n,
            }
            if val:
                entry["val_acc_mode"] = 0.45 + 0.1 * n
            rf.append_line("log.jsonl", json.dumps(entry), progress=f"{n} epochs")
        metrics = {"test_acc_mode": 0.8, "test_nll_mode": 0.5}
        if curve:
            metrics["test_ensemble_curve"] = {
                str(k): {"acc": 0.7 + 0.01 * i, "nll": 0.6 - 0.01 * i}
                for i, k in enumerate((1, 2, 4, 8, 16, 32, 64))
            }
        rf.write_text("metrics.json", json.dumps(metrics))
    return folder


def png_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` from the IHDR chunk, after checking the PNG signature."""
    blob = path.read_bytes()
    assert blob[:8] == PNG_MAGIC and blob[12:16] == b"IHDR"
    return struct.unpack(">II", blob[16:24])


def test_one_run_goes_to_its_plots_folder(tmp_path):
    run = fake_run(tmp_path / "run", val=True)
    paths = plot_runs([run])
    assert paths == [run / "plots" / "learning_curves.png", run / "plots" / "ensemble_curve.png"]
    # figures of 3 and 2 panels, 4.4 × 3.6 inches each, at 110 dpi
    assert png_size(paths[0]) == (round(3 * 4.4 * 110), round(3.6 * 110))
    assert png_size(paths[1]) == (round(2 * 4.4 * 110), round(3.6 * 110))
    record = read_record(run / "plots")
    assert record["command"] == "plot" and record["state"] == "complete"
    assert record["files"] == ["ensemble_curve.png", "learning_curves.png"]
    read = sorted(Path(f["path"]).name for f in record["provenance"]["data_files"])
    assert read == ["log.jsonl", "metrics.json"]
    assert sorted(p.name for p in (run / "plots").iterdir()) == [
        ".lock",
        "ensemble_curve.png",
        "learning_curves.png",
        "run.json",
    ]
    with pytest.raises(UserError, match="--overwrite"):
        plot_runs([run])
    assert plot_runs([run], overwrite=True) == paths


def test_several_runs_overlaid_and_runs_without_a_curve(tmp_path):
    a, b = fake_run(tmp_path / "a"), fake_run(tmp_path / "b", curve=False)
    out = tmp_path / "plots"
    assert [p.name for p in plot_runs([a, b], out)] == ["learning_curves.png", "ensemble_curve.png"]
    only = plot_runs([b], tmp_path / "only_b")  # no run has the curve: no ensemble plot
    assert [p.name for p in only] == ["learning_curves.png"]
    assert read_run(a).curve[64] == {"acc": 0.76, "nll": 0.54}
    assert list(read_run(a).curve) == [1, 2, 4, 8, 16, 32, 64]


def test_an_interrupted_run_plots_its_finished_epochs(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(RuntimeError), RunFolder(run, "train", report=lambda _: None) as rf:
        rf.append_line("log.jsonl", json.dumps({"epoch": 1, "train_loss": 0.3}), progress="1")
        raise RuntimeError("stopped")
    assert read_record(run)["state"] == "interrupted"
    assert [p.name for p in plot_runs([run])] == ["learning_curves.png"]


def _foreign(tmp_path: Path) -> Path:
    folder = tmp_path / "foreign"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    return folder


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda t: [t / "missing"], "does not exist"),
        (lambda t: [_foreign(t)], "is not a run folder of `sbnkit train`"),
        (lambda t: [fake_run(t / "a"), fake_run(t / "b")], "several runs need --out"),
        (lambda t: [fake_run(t / "a", epochs=0, curve=False)], "no finished epochs"),
    ],
    ids=["missing", "foreign", "several", "empty"],
)
def test_bad_input_writes_nothing(tmp_path, make, message):
    folders = make(tmp_path)
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(UserError, match=message):
        plot_runs(folders)
    assert sorted(p for p in tmp_path.rglob("*")) == before


def test_damaged_files_and_foreign_output_folders(tmp_path):
    run = fake_run(tmp_path / "run")
    (run / "metrics.json").write_text(json.dumps({"test_ensemble_curve": {"1": {"acc": "x"}}}))
    with pytest.raises(UserError, match="test_ensemble_curve is not"):
        plot_runs([run])
    (run / "metrics.json").write_text("{")
    with pytest.raises(UserError, match=r"metrics.json is not valid JSON"):
        plot_runs([run])
    (run / "metrics.json").unlink()
    (run / "log.jsonl").write_text('{"epoch": 1}\n[1]\n')
    with pytest.raises(UserError, match=r"log.jsonl line 2 is not a JSON object"):
        plot_runs([run])
    assert not (run / "plots").exists()
    (run / "log.jsonl").write_text('{"epoch": 1, "train_loss": 0.5}\n')
    foreign = _foreign(tmp_path)
    with pytest.raises(UserError, match="sbnkit did not create"):
        plot_runs([run], foreign)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    with pytest.raises(UserError, match="not a `plot` run"):
        plot_runs([run], run)  # a training run is never written into


def test_command_line(tmp_path, capsys):
    run = fake_run(tmp_path / "run")
    assert cli.main(["plot", str(run), "--out", str(tmp_path / "p")]) == 0
    out = capsys.readouterr().out.split()
    assert out == [
        str(tmp_path / "p" / "learning_curves.png"),
        str(tmp_path / "p" / "ensemble_curve.png"),
    ]
    assert cli.main(["plot", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sbnkit: error: ") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "nowhere").exists()


def test_import_sbnkit_does_not_import_matplotlib():
    code = "import sys, sbnkit, sbnkit.cli, sbnkit.plots; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr
