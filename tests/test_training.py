"""The training loop on the toy set, LR schedules, and checkpoint round trips."""

from __future__ import annotations

import pickle

import pytest
import torch
from sbn_testing import fake_fmnist

from sbnkit import UserError, models
from sbnkit.errors import Stopped
from sbnkit.inference import predict_proba
from sbnkit.train import build_model, checkpoint, fit, parse_config, prepare, state
from sbnkit.train.loop import _lr_factor
from sbnkit.train.metrics import log_summary
from sbnkit.weights import latent_parameters

TOY = """
[model]
hidden = [32, 32]
norm = "batch"
binary_first = false
[optim.latent]
lr = 0.05
[optim.real]
lr = 0.01
[train]
epochs = 15
batch_size = 20
threads = 1
[data]
name = "toy2d"
[eval]
samples = 8
"""


@pytest.fixture(autouse=True)
def _keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_fit_learns_the_toy_set():
    run = prepare(parse_config(TOY))
    assert set(run.optimizers) == {"latent", "real"}
    assert run.optimizers["latent"].param_groups[0]["params"] == latent_parameters(run.model)
    log = []
    metrics = fit(run, log.append, progress=False)
    assert [r["epoch"] for r in log] == list(range(1, 16))
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    assert log[0]["lr_latent"] == pytest.approx(0.05) and log[-1]["lr_latent"] < 0.005
    assert metrics["test_acc_ensemble"] > 0.65 and metrics["test_acc_mode"] > 0.6
    assert metrics["ensemble_samples"] == 8 and metrics["epochs"] == 15
    assert 0 < metrics["test_nll_ensemble"] < 0.65
    assert log[-1]["test_acc_mode"] == metrics["test_acc_mode"]  # one meaning per name
    assert log[-1]["test_nll_mode"] == metrics["test_nll_mode"]


def test_fit_is_reproducible():
    text = TOY.replace("epochs = 15", "epochs = 2")
    first = fit(prepare(parse_config(text)), progress=False)
    second = fit(prepare(parse_config(text)), progress=False)
    for key in ("test_acc_mode", "test_nll_mode", "test_acc_ensemble"):
        assert first[key] == second[key]


def test_options_val_split_clip_sgd_and_data_init():
    cfg = parse_config(
        TOY.replace("epochs = 15", "epochs = 2"),
        [
            "model.norm=none",
            "model.init=data",
            "model.latent_clip=1.0",
            "model.weight_mode=mode",
            "optim.latent.name=sgd",
            "optim.latent.nesterov=true",
            "optim.latent.weight_decay=0.01",
            "train.lr_schedule=step",
            "train.lr_step_epochs=1",
            "train.lr_gamma=0.5",
            "train.grad_clip=0.5",
            "data.val_fraction=0.25",
        ],
    )
    run = prepare(cfg)
    assert len(run.train[1]) == 150 and len(run.val[1]) == 50
    log = []
    metrics = fit(run, log.append, progress=False)
    assert "val_acc_mode" in metrics
    assert [r["lr_latent"] for r in log] == pytest.approx([0.05, 0.025])
    assert "val_acc_mode" in log[0]
    assert max(float(p.detach().abs().max()) for p in latent_parameters(run.model)) <= 1.0


def test_float_model_has_no_latent_optimizer():
    run = prepare(parse_config(TOY, ["model.binary_weights=false", "train.epochs=1"]))
    assert set(run.optimizers) == {"real"}


@pytest.mark.parametrize(
    "schedule, expected",
    [("constant", [1, 1, 1, 1]), ("cosine", [1, 0.5, 0, 0]), ("step", [1, 0.1, 0.01, 0.01])],
)
def test_lr_schedules(schedule, expected):
    cfg = parse_config(f'[train]\nepochs = 2\nlr_schedule = "{schedule}"\nlr_step_epochs = 1')
    factor = _lr_factor(cfg, steps_per_epoch=2)
    assert [factor(s) for s in (0, 2, 4, 5)] == pytest.approx(expected, abs=1e-12)


def test_convnet_builds_for_images():
    cfg = parse_config('[model]\nname = "convnet"\nchannels = [4, 8]')
    model = build_model(cfg)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_eval_curve_max_bounds_the_final_curve():
    run = prepare(parse_config(TOY.replace("epochs = 15", "epochs = 1"), ["eval.curve_max=4"]))
    metrics = fit(run, progress=False)
    assert list(metrics["test_ensemble_curve"]) == ["1", "2", "4"]
    assert metrics["ensemble_samples"] == 8  # the ensemble itself still has eval.samples draws
    with pytest.raises(UserError, match=r"eval\.curve_max must be positive"):
        parse_config("[eval]\ncurve_max = 0")


def test_convnet_strides_and_flatten_head_from_config():
    cfg = parse_config(
        '[model]\nname = "convnet"\nchannels = [4, 8, 3]\nstrides = [2, 1, 2]\nhead = "flatten"'
    )
    model = build_model(cfg)
    convs = [s.op for s in model.stages]
    assert [c.stride for c in convs] == [(2, 2), (1, 1), (2, 2)]
    assert model.head.pool == "flatten"
    assert model.head.linear.in_features == 3 * 7 * 7  # 28 -> 14 -> 14 -> 7
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    default = build_model(parse_config('[model]\nname = "convnet"\nchannels = [4, 8, 3]'))
    assert [s.op.stride for s in default.stages] == [(1, 1), (2, 2), (2, 2)]
    assert default.head.pool == "avg" and default.head.linear.in_features == 3
    dense = build_model(
        parse_config(
            '[model]\nname = "convnet"\nchannels = [4, 8]\nstrides = [2, 2]\n'
            'head = "flatten"\ndense = [16]'
        )
    )
    assert isinstance(dense.stages[2], torch.nn.Flatten)
    assert dense.stages[3].op.in_features == 8 * 7 * 7 and dense.stages[3].op.out_features == 16
    assert dense.head.linear.in_features == 16
    assert dense(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize(
    "model, message",
    [
        ('name = "convnet"\nchannels = [4, 8]\nstrides = [2]', r"model\.strides must be 2"),
        ('name = "convnet"\nchannels = [4]\nstrides = [0]', r"model\.strides must be 1"),
        ('name = "convnet"\nhead = "max"', r"model\.head must be one of flatten, avg"),
        ('name = "convnet"\ndense = [8]', r"model\.dense stages need head"),
    ],
)
def test_convnet_bad_strides_or_head(model, message):
    with pytest.raises(UserError, match=message):
        parse_config(f"[model]\n{model}")
    with pytest.raises(UserError, match="strides must be 1 positive"):
        models.convnet((1, 8, 8), 10, channels=(4,), strides=(1, 2))


def test_checkpoint_round_trip(tmp_path):
    cfg = parse_config(TOY)
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    model.eval()
    checkpoint.save(tmp_path / "model.pt", model, cfg.to_dict(), {"test_acc": 0.5})
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    saved = checkpoint.load(tmp_path / "model.pt")
    assert saved["config"] == cfg.to_dict() and saved["metrics"] == {"test_acc": 0.5}
    again = build_model(parse_config(TOY))
    again.load_state_dict(saved["state_dict"])
    again.eval()
    x = torch.randn(16, 2)
    assert torch.equal(predict_proba(model, x), predict_proba(again, x))
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


class Payload:
    """A class a weights-only loader must refuse to instantiate."""

    def __reduce__(self):
        return (print, ("executed",))


def test_checkpoint_refuses_pickled_objects(tmp_path, capsys):
    torch.save({"format": "sbnkit-checkpoint", "version": 1, "x": Payload()}, tmp_path / "a.pt")
    (tmp_path / "b.pt").write_bytes(pickle.dumps(Payload()))
    for name in ("a.pt", "b.pt"):
        with pytest.raises(UserError, match="refusing to load"):
            checkpoint.load(tmp_path / name)
    assert "executed" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "payload, message",
    [
        ({"format": "other"}, "not an sbnkit checkpoint"),
        ([1, 2], "not an sbnkit checkpoint"),
        ({"format": "sbnkit-checkpoint", "version": 99}, "has version 99"),
        ({"format": "sbnkit-checkpoint", "version": 1}, "incomplete or damaged"),
    ],
)
def test_checkpoint_rejects_foreign_payloads(tmp_path, payload, message):
    torch.save(payload, tmp_path / "x.pt")
    with pytest.raises(UserError, match=message):
        checkpoint.load(tmp_path / "x.pt")


def test_checkpoint_rejects_garbage(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(UserError, match="refusing to load|not a readable sbnkit checkpoint"):
        checkpoint.load(tmp_path / "x.pt")
    (tmp_path / "y.pt").write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    with pytest.raises(UserError, match="not a readable sbnkit checkpoint"):
        checkpoint.load(tmp_path / "y.pt")
    with pytest.raises(UserError, match="does not exist"):
        checkpoint.load(tmp_path / "missing.pt")


class _StopAfter:
    """A stop request that turns true at the ``n``-th poll (one poll after each training step)."""

    signum = 15

    def __init__(self, n: int) -> None:
        self.polls, self.n = 0, n

    def __bool__(self) -> bool:
        self.polls += 1
        return self.polls >= self.n


IMAGES = """
[model]
hidden = [16]
weight_mode = "sample"
init = "data"
norm = "batch"
[train]
epochs = 3
batch_size = 10
threads = 1
[data]
val_fraction = 0.2
augment = "flipcrop"
crop_padding = 2
[eval]
samples = 3
batch_size = 50
"""


# each binary-weight method with its schedules (AdaSTE's β per epoch, MD-tanh-S's every 2 steps)
# and BayesBiNN's Philox samples at a temperature where they are not ±1
METHODS = {
    "binaryconnect": "",
    "md_tanh_s": "beta_interval = 2\n",
    "bayesbinn": "lr = 1e-3\ntemperature = 1.0\ninit = 1.0\n",
    "adaste": "beta_rate = 2.0\n",
    "bop": "",
}
RESUMES = [("md", n) for n in (1, 4, 5, 9)] + [(m, 5) for m in METHODS]


@pytest.mark.parametrize("method,stop_after", RESUMES)  # 4 steps per epoch: inside and at ends
def test_resume_is_bit_identical_from_any_step(tmp_path, monkeypatch, method, stop_after):
    """Stopped after any step and resumed from the saved state, training ends with the same
    weights, optimizer moments and metrics, to the bit, as without the stop (sampled weights and
    units, augmentation, data init, validation split, cosine schedule; every binary-weight
    method)."""
    monkeypatch.setenv("SBNKIT_DATA", str(fake_fmnist(tmp_path / "data", n_train=50)))
    latent = f'[optim.latent]\nname = "{method}"\n{METHODS[method]}' if method in METHODS else ""
    cfg = parse_config(IMAGES + latent)
    whole = prepare(cfg)
    want = fit(whole, progress=False)
    saved = tmp_path / "state.pt"
    positions = []

    def save_state(at, write):
        positions.append((at.epoch, at.step))
        write(saved)

    first = prepare(cfg)
    with pytest.raises(Stopped):
        fit(first, progress=False, save_state=save_state, stop=_StopAfter(stop_after))
    assert positions[-1] == ((stop_after - 1) // 4 + 1, (stop_after - 1) % 4 + 1)
    second = prepare(cfg)
    got = fit(second, progress=False, resume=state.load(saved))
    for key in want:
        if key.startswith(("test_", "val_")):
            assert got[key] == want[key], key
    theirs = second.model.state_dict()
    for name, a in whole.model.state_dict().items():
        assert torch.equal(a, theirs[name]), name
    for k, o in whole.optimizers.items():
        for pa, pb in zip(o.state.values(), second.optimizers[k].state.values(), strict=True):
            for key, a in pa.items():
                b = pb[key]
                assert torch.equal(a, b) if torch.is_tensor(a) else a == b, (k, key)


def test_a_state_saved_before_a_generator_existed_restores_the_others():
    old = {name: torch.Generator().manual_seed(i) for i, name in enumerate(("shuffle", "augment"))}
    record = state.capture_rng(old)
    want = [torch.rand(3, generator=g) for g in old.values()]
    new = {name: torch.Generator().manual_seed(7) for name in ("shuffle", "augment", "samples")}
    state.restore_rng(record, new)
    for name, w in zip(old, want, strict=True):  # restored: they continue where they were saved
        assert torch.equal(torch.rand(3, generator=new[name]), w), name
    assert torch.equal(
        torch.rand(3, generator=new["samples"]),
        torch.rand(3, generator=torch.Generator().manual_seed(7)),
    )
    del record["shuffle"]  # only the generators added later may be missing
    with pytest.raises(UserError, match="lacks the random stream 'shuffle'"):
        state.restore_rng(record, new)


def test_training_state_files_are_checked(tmp_path):
    torch.save({"format": "sbnkit-training-state", "version": 1}, tmp_path / "s.pt")
    with pytest.raises(UserError, match="incomplete or damaged"):
        state.load(tmp_path / "s.pt")
    (tmp_path / "t.pt").write_bytes(b"garbage")
    with pytest.raises(UserError, match="refusing to load|not a readable sbnkit training state"):
        state.load(tmp_path / "t.pt")


def test_the_log_summary_selects_by_validation_and_lists_flips():
    records = [
        {"epoch": 1, "flip_ratio": 0.5, "val_acc_mode": 0.7, "test_acc_mode": 0.1,
         "test_nll_mode": 3.0},
        {"epoch": 2, "flip_ratio": 0.2, "val_acc_mode": 0.8, "test_acc_mode": 0.2,
         "test_nll_mode": 2.0},
        {"epoch": 3, "flip_ratio": 0.1, "val_acc_mode": 0.8, "test_acc_mode": 0.9,
         "test_nll_mode": 1.0},
    ]  # fmt: skip
    assert log_summary(records) == {
        "flip_ratio_per_epoch": [0.5, 0.2, 0.1],
        "best_val_epoch": 2,
        "val_acc_mode_at_best_val": 0.8,
        "test_acc_mode_at_best_val": 0.2,
        "test_nll_mode_at_best_val": 2.0,
    }
    assert log_summary([{"epoch": 1, "test_acc_mode": 0.5}]) == {}


def test_flip_ratio_counts_sign_changes_of_the_binary_weights():
    run = prepare(parse_config(TOY, ["train.epochs=2"]))
    latents = latent_parameters(run.model)
    before = [lat.detach() >= 0 for lat in latents]
    log = []
    fit(run, log.append, progress=False)
    total = sum(lat.numel() for lat in latents)
    assert all(0.0 <= r["flip_ratio"] <= 1.0 for r in log)
    after = sum(
        int(((lat.detach() >= 0) != b).sum()) for lat, b in zip(latents, before, strict=True)
    )
    # flips over two epochs: at most the sum of the per-epoch flips, at least their difference
    assert after / total <= log[0]["flip_ratio"] + log[1]["flip_ratio"] + 1e-12
    assert after / total >= abs(log[0]["flip_ratio"] - log[1]["flip_ratio"]) - 1e-12
    assert log[0]["flip_ratio"] > 0
