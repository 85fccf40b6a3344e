"""Checkpoints: round trip, and atomicity when a write fails halfway."""

import pytest
import torch

from sbnkit import models
from sbnkit.train import checkpoint


def _model(seed):
    torch.manual_seed(seed)
    return models.mlp((3,), 2, hidden=(4,))


def test_round_trip(tmp_path):
    model = _model(0)
    checkpoint.save(tmp_path / "model.pt", model, {"lr": 0.1}, {"acc": 0.5})
    back = checkpoint.load(tmp_path / "model.pt")
    assert back["config"] == {"lr": 0.1} and back["metrics"] == {"acc": 0.5}
    for k, v in model.state_dict().items():
        assert torch.equal(back["state_dict"][k], v)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_a_write_that_fails_halfway_leaves_the_old_checkpoint_and_no_temporary_file(
    tmp_path, monkeypatch
):
    path = tmp_path / "model.pt"
    old = _model(0)
    checkpoint.save(path, old, {"run": "old"})
    old_bytes = path.read_bytes()
    real_save = torch.save

    def save_half_then_fail(obj, f):
        real_save(obj, f)
        f.truncate(f.tell() // 2)  # half of a complete file reached the disk, then the error
        f.flush()
        assert f.tell() > 100
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", save_half_then_fail)
    with pytest.raises(OSError, match="No space"):
        checkpoint.save(path, _model(1), {"run": "new"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    assert path.read_bytes() == old_bytes
    monkeypatch.undo()
    back = checkpoint.load(path)
    assert back["config"] == {"run": "old"}
    for k, v in old.state_dict().items():
        assert torch.equal(back["state_dict"][k], v)


def test_an_interrupt_during_the_write_also_cleans_up(tmp_path, monkeypatch):
    def interrupted(obj, f):
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(tmp_path / "model.pt", _model(0), {})
    assert list(tmp_path.iterdir()) == []
