"""Gradient accuracy on the user's model: per-sample gradients of conv stages, the sampled
reference against exact enumeration, the reference-noise correction on a case with a known
answer, and ``sbnkit gradeval RUN_OR_CONFIG`` end to end and on bad input."""

import json
import math

import pytest
import torch
from sbn_testing import TableNoise, fake_fmnist

from sbnkit import estimators, models
from sbnkit.data.toy import make_toy
from sbnkit.gradeval import cli_main, netfile, stats, study
from sbnkit.gradeval.reference import exact_gradient
from sbnkit.gradeval.sampling import MethodSpec, draw
from sbnkit.noise import Logistic
from sbnkit.persample import PerSampleCapture, flat_grads, sample_gradients
from sbnkit.train import build_model, checkpoint, load_config


def _conv_net():
    torch.manual_seed(0)
    model = models.convnet((1, 6, 6), 3, channels=(2, 3), norm=None).double()
    x = torch.randn(4, 1, 6, 6, dtype=torch.float64)
    return model, x, torch.tensor([0, 1, 2, 1])


@pytest.mark.parametrize("name", ["st", "psa"])
def test_conv_per_sample_gradients_equal_separate_passes(name):
    opts = {"kernel": "reference"} if name == "psa" else {}
    model, x, y = _conv_net()
    samples, n = 3, x.shape[0]
    units = [s.unit for s in model.stages]
    shapes = [(n, 2, 6, 6), (n, 3, 3, 3)]
    tables = [Logistic(1.0).sample(torch.empty(samples, *s, dtype=x.dtype)) for s in shapes]
    est = estimators.get(name, **opts)
    for u in units:
        u.noise = TableNoise()
    for u, z in zip(units, tables, strict=True):
        u.noise.current = z.reshape(samples * n, *z.shape[2:])
    with PerSampleCapture(model, samples, n) as cap:
        est.loss(model, x.repeat(samples, 1, 1, 1), cap.targets(y), cap.loss_fn).backward()
    batched = cap.per_sample()
    for s in range(samples):
        for u, z in zip(units, tables, strict=True):
            u.noise.current = z[s]
        model.zero_grad(set_to_none=True)
        est.loss(model, x, y).backward()
        for k, g in enumerate(flat_grads(model)):
            torch.testing.assert_close(batched[k][s], g, rtol=1e-9, atol=1e-12, msg=f"{s} {k}")


def _tiny():
    gen = torch.Generator().manual_seed(3)
    model = models.mlp((2,), 1, hidden=(3, 3)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(1.5 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
    x, y = make_toy(n_per_class=10, seed=2)
    return model, x, y


@pytest.mark.parametrize("spec", [("arm", {}), ("reinforce", {"baseline": True})])
def test_sampled_reference_mean_agrees_with_exact_within_its_standard_error(spec):
    model, x, y = _tiny()
    _, exact = exact_gradient(model, x, y, loss_fn=netfile.toy_loss)
    m_ref = 4000
    ((_, drawn),) = draw(
        model,
        x,
        y,
        [MethodSpec("reference", *spec)],
        n_samples=m_ref,
        seed=5,
        loss_fn=netfile.toy_loss,
    )
    for k, (samples, g) in enumerate(zip(drawn.grads, exact, strict=True)):
        se = samples.std(0) / math.sqrt(m_ref)  # per coordinate
        z = (samples.mean(0) - g) / se
        assert float(z.abs().max()) < 4.5, (spec, k, z)
        # the squared error of the mean is what reference_noise predicts, within chi-square spread
        ratio = float((samples.mean(0) - g).pow(2).sum()) / stats.reference_noise(samples)
        assert 0.1 < ratio < 3.5, (spec, k, ratio)


def test_reference_noise_correction_recovers_a_known_rmse():
    gen = torch.Generator().manual_seed(0)
    p, n, m_ref, sigma, tau = 20, 4000, 200, 0.3, 1.0
    g = torch.linspace(-1, 1, p, dtype=torch.float64) + 0.2
    bias = torch.full((p,), 0.1, dtype=torch.float64)
    est = g + bias + sigma * torch.randn(n, p, generator=gen, dtype=torch.float64)
    ref = g + tau * torch.randn(m_ref, p, generator=gen, dtype=torch.float64)
    g_ref, noise = ref.mean(0), stats.reference_noise(ref)
    assert noise == pytest.approx(p * tau**2 / m_ref, rel=0.15)
    g2 = float(g.dot(g))
    ms = [1, 10, 100]
    fixed = stats.gradient_metrics(est, g_ref, ms, ref_noise=noise)
    raw = stats.gradient_metrics(est, g_ref, ms)
    for i, m in enumerate(ms):  # E||ĝ_M - ḡ_ref||² = bias² + V_est/M + V_ref/M_ref
        truth = float(bias.dot(bias)) + p * sigma**2 / m
        assert fixed.rmse[i] == pytest.approx(math.sqrt(truth / g2), rel=0.1), m
        assert raw.rmse[i] ** 2 * float(g_ref.dot(g_ref)) == pytest.approx(
            truth + p * tau**2 / m_ref, rel=0.15
        )
    assert raw.rmse[-1] > 1.15 * fixed.rmse[-1]
    bv = stats.bias_variance(est, g_ref, ref_noise=noise)
    g2_est = float(g_ref.dot(g_ref)) - noise  # the norm the split is relative to
    assert g2_est == pytest.approx(g2, rel=0.1)
    assert bv.bias2 * g2_est == pytest.approx(float(bias.dot(bias)), rel=0.25)
    assert bv.variance * g2_est == pytest.approx(p * sigma**2, rel=0.05)
    with pytest.raises(Exception, match="reference gradient of a layer is zero"):
        stats.gradient_metrics(est, g_ref, ms, ref_noise=2 * float(g_ref.dot(g_ref)))


def test_study_with_sampled_reference_matches_the_exact_one():
    model, x, y = _tiny()
    base = dict(methods=("st", "mean"), samples=400, seed=1, param="pm1", workers=1)
    quiet = {"loss_fn": netfile.toy_loss, "log": lambda _: None}
    exact = study.study_network(model, x, y, study.StudyConfig(**base), **quiet)
    cfg = study.StudyConfig(**base, reference="arm", reference_samples=8000)
    sampled = study.study_network(model, x, y, cfg, **quiet)
    assert exact.reference.kind == "exact" and sampled.reference.kind == "arm"
    assert sampled.exact_expected_loss is None and "subtracted" in sampled.reference.note
    for name in ("st", "mean"):
        for nm, lay in exact.methods[name].layers.items():
            got = sampled.methods[name].layers[nm].rmse[0]
            assert got == pytest.approx(lay.rmse[0], rel=0.15), (name, nm)
    assert set(exact.best_at_m1) == {"layer0", "layer1", "layer2"}
    assert exact.equal_time is not None and set(exact.equal_time.M) == {"st", "mean"}


def _config(tmp_path, data, **model):
    lines = ["[model]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in model.items()]
    lines += ["[data]", f'root = "{data}"', "[train]", "batch_size = 20"]
    path = tmp_path / "m.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_cli_on_a_config_writes_results_and_skips_what_does_not_apply(tmp_path, capsys):
    data = fake_fmnist(tmp_path / "data")
    cfg = _config(
        tmp_path, data, name="mlp", hidden=[3, 3], norm="none", binary_weights=False, noise="normal"
    )
    out = tmp_path / "out"
    argv = [str(cfg), "--out", str(out), "--samples", "8", "--workers", "1"]
    assert cli_main([*argv, "--methods", "st", "arm", "psa", "mean"]) == 0
    res = json.loads((out / "gradeval.json").read_text())
    net = res["networks"]["m"]
    assert net["reference"]["kind"] == "exact"
    assert set(net["methods"]) == {"st", "mean"}
    assert "logistic" in net["skipped"]["arm"] and "logistic" in net["skipped"]["psa"]
    assert net["methods"]["st"]["layers"]["layer0"]["M"] == [1, 2, 4, 8]
    assert net["methods"]["st"]["time_per_sample_s"] > 0
    summary = (out / "summary.md").read_text()
    assert "at equal time" in summary and "`arm`:" in summary
    assert (out / "rmse_m.png").stat().st_size > 0 and (out / "cosine_m.png").stat().st_size > 0
    assert "skipped" in capsys.readouterr().out


def test_cli_on_a_conv_config_uses_a_sampled_reference(tmp_path):
    data = fake_fmnist(tmp_path / "data")
    cfg = _config(
        tmp_path, data, name="convnet", channels=[2, 2], norm="none", binary_weights=False
    )
    out = tmp_path / "out"
    argv = [str(cfg), "--out", str(out), "--samples", "4", "--workers", "1", "--examples", "3"]
    assert cli_main([*argv, "--methods", "st", "--reference-samples", "16"]) == 0
    net = json.loads((out / "gradeval.json").read_text())["networks"]["m"]
    ref = net["reference"]
    assert ref["kind"] == "arm" and ref["samples"] == 16 and "2^" in ref["note"]
    assert set(ref["relative_se"]) == {"layer0", "layer1", "layer2"}
    assert "reference's own noise" in (out / "summary.md").read_text()


@pytest.mark.parametrize(
    "extra",
    [
        ["--methods", "st,magic"],
        ["--samples", "0"],
        ["--examples", "0"],
        ["--examples", "100000"],
        ["--reference-samples", "0"],
        ["--reference", "bogus"],
        ["--reference", "exact", "--max-states", "4"],
        ["--param", "01"],
        ["--max-states", "0"],
    ],
)
def test_cli_bad_input_on_a_config(extra, tmp_path, capsys):
    data = fake_fmnist(tmp_path / "data")
    cfg = _config(tmp_path, data, name="mlp", hidden=[3], norm="none", binary_weights=False)
    out = tmp_path / "out"
    assert cli_main([str(cfg), "--out", str(out), "--workers", "1", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sbnkit: error: "), err
    assert not out.exists()


def test_cli_bad_sources(tmp_path, capsys):
    out = tmp_path / "out"
    empty = tmp_path / "empty"
    empty.mkdir()
    no_data = _config(tmp_path, tmp_path / "nowhere", name="mlp", hidden=[3])
    (tmp_path / "nowhere").mkdir()
    for source in (tmp_path / "missing.toml", empty, no_data, tmp_path / "x.pt"):
        assert cli_main([str(source), "--out", str(out), "--workers", "1"]) == 2, source
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("sbnkit: error: "), (source, err)
        assert not out.exists()


def test_sample_gradients_refuses_an_estimator_that_bypasses_the_ops():
    model, x, y = _tiny()
    with pytest.raises(Exception, match="do not add up"):
        sample_gradients(model, estimators.get("adf"), x, y, 2, loss_fn=netfile.toy_loss)


def _run_folder(tmp_path, data, **model):
    """A run folder holding ``model.pt`` of the config's model (weights perturbed, untrained)."""
    cfg = load_config(_config(tmp_path, data, **model))
    net = build_model(cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1)
    run = tmp_path / "run"
    run.mkdir()
    checkpoint.save(run / "model.pt", net, cfg.to_dict())
    return run


def test_cli_on_a_run_folder_with_batchnorm_and_fixed_binary_weights(tmp_path):
    data = fake_fmnist(tmp_path / "data")
    run = _run_folder(tmp_path, data, name="mlp", hidden=[3, 3], norm="batch", weight_mode="mode")
    out = tmp_path / "out"
    argv = [str(run), "--out", str(out), "--samples", "4", "--workers", "1", "--methods", "st"]
    assert cli_main(argv) == 0
    res = json.loads((out / "gradeval.json").read_text())
    assert res["networks"]["run"]["reference"]["kind"] == "exact"
    assert any("fixed weights" in n for n in res["config"]["notes"])
    assert (run / "model.pt").as_posix() in (out / "run.json").read_text()


def test_sampled_binary_weights_are_refused(tmp_path, capsys):
    data = fake_fmnist(tmp_path / "data")
    run = _run_folder(tmp_path, data, name="mlp", hidden=[3], norm="none", weight_mode="sample")
    assert cli_main([str(run), "--out", str(tmp_path / "out"), "--workers", "1"]) == 2
    assert "weight_mode" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
