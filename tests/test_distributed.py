"""Two processes under torchrun (gloo on the CPU) train like one process with the same global
batch, and only rank 0 writes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sbn_testing import fake_fmnist

from sbnkit.distributed import Cluster
from sbnkit.train import build_model, parse_config
from sbnkit.train.loop import seed_everything

CONFIG = """
[model]
hidden = [16]
norm = "affine"
weight_mode = "mean"
[estimator]
name = "mean"
[optim.latent]
name = "sgd"
lr = 0.05
momentum = 0.0
[optim.real]
name = "sgd"
lr = 0.05
momentum = 0.0
[train]
epochs = 2
batch_size = 20
threads = 1
lr_schedule = "constant"
[eval]
samples = 2
batch_size = 100
"""


def _train(tmp_path: Path, out: str, processes: int, *overrides: str):
    launcher = [sys.executable, "-m", "sbnkit"]
    if processes > 1:
        launcher = [
            str(Path(sys.executable).with_name("torchrun")),
            "--standalone",
            f"--nproc_per_node={processes}",
            "-m",
            "sbnkit",
        ]
    env = {**os.environ, "SBNKIT_DATA": str(tmp_path / "data"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [*launcher, "train", "c.toml", *overrides, "--out", out],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    fake_fmnist(tmp / "data", n_train=200, n_test=40)
    (tmp / "c.toml").write_text(CONFIG)
    one = _train(tmp, "one", 1)
    two = _train(tmp, "two", 2)
    return tmp, one, two


def test_two_processes_match_one_with_the_same_global_batch(runs):
    """Tolerance: the runs differ only in float32 rounding (a mean over 20 examples against the
    mean of two means over 10), at most ~20 eps = 2.4e-6 of the gradient per step. Plain SGD is
    linear in the gradient, so after 20 steps at lr 0.05 the weights differ by at most
    20 · 0.05 · 2.4e-6 · max|g| = 2.4e-6 · max|g|; with gradient entries below 40 that is
    1e-4 (measured: 1.2e-7). The weights move from their initial values by over 100 times that."""
    tmp, _, _ = runs
    one = torch.load(tmp / "one" / "model.pt")["state_dict"]
    two = torch.load(tmp / "two" / "model.pt")["state_dict"]
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=0, atol=1e-4, msg=name)
    seed_everything(1)
    initial = build_model(parse_config(CONFIG)).state_dict()
    assert max(float((one[k] - initial[k]).abs().max()) for k in one) > 1e-2
    metrics = [json.loads((tmp / d / "metrics.json").read_text()) for d in ("one", "two")]
    assert metrics[0]["world_size"] == 1 and metrics[1]["world_size"] == 2
    assert abs(metrics[0]["test_acc_mode"] - metrics[1]["test_acc_mode"]) <= 1 / 40


def test_only_rank_zero_writes_and_prints(runs):
    tmp, one, two = runs
    assert sorted(p.name for p in (tmp / "two").iterdir()) == sorted(
        p.name for p in (tmp / "one").iterdir()
    )
    assert two.stdout.count("test accuracy (mode network)") == 1
    assert [p.name for p in tmp.iterdir() if p.name.startswith(".")] == []


def test_path_estimators_and_sampled_weights_run_in_two_processes(runs):
    tmp, _, _ = runs
    _train(tmp, "psa", 2, "estimator.name=psa", "model.weight_mode=sample", "train.epochs=1")
    assert json.loads((tmp / "psa" / "metrics.json").read_text())["world_size"] == 2


def test_shards_are_equal_contiguous_slices():
    t = torch.arange(12)
    parts = [Cluster(r, 3, r).shard(t) for r in range(3)]
    assert torch.equal(torch.cat(parts), t) and all(len(p) == 4 for p in parts)
    assert Cluster().shard(t) is t
