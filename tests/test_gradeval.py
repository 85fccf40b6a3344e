"""The gradient-accuracy study (Shekhovtsov, Yanush & Flach 2020): toy data, per-sample
gradients, metrics, the authors' network, the CLI."""

import json
import math

import pytest
import torch
from sbn_testing import TableNoise, authors_network_path, toy_net

from sbnkit import estimators
from sbnkit.gradeval import cli_main, coords, make_toy, methods, netfile, stats, study, training
from sbnkit.gradeval.paper import ExactLossMismatch, check_exact_loss, compare_with_paper, findings
from sbnkit.gradeval.reference import exact_gradient
from sbnkit.noise import Logistic
from sbnkit.persample import PerSampleCapture, flat_grads

AUTHORS_LOSS = 0.6838682289076939


def needs(*names):
    missing = [n for n in names if n not in estimators.names()]
    return pytest.mark.skipif(bool(missing), reason=f"estimators {missing} not registered yet")


@pytest.fixture(scope="module")
def authors():
    path = authors_network_path()
    model, X, y, data = netfile.load_network(path)
    return path, model, X, y, data


def test_toy_data_follows_the_protocol():
    X, y = make_toy()
    assert X.shape == (200, 2) and y.shape == (200,) and X.dtype == torch.float64
    assert (y[:100] == 1).all() and (y[100:] == -1).all()
    assert X[:, 0].abs().max() < math.pi / 2
    assert (X[:100, 1] >= 0).all() and (X[:100, 1] < 1).all()
    neg = X[100:]
    assert (neg[:, 1] >= -1).all() and (neg[:, 1] < torch.cos(neg[:, 0])).all()
    torch.testing.assert_close(make_toy(seed=1)[0], X, rtol=0, atol=0)
    assert not torch.equal(make_toy(seed=2)[0], X)


def test_ap2_init_standardises_propagated_moments():
    X, _ = make_toy()
    model = netfile.init_network(X, seed=3)
    m, s = X.mean(0), X.var(0, unbiased=False)
    for op in netfile.layers(model)[:-1]:
        mu = op.weight @ m + op.bias
        var = op.weight.pow(2) @ s
        torch.testing.assert_close(mu, torch.zeros_like(mu), rtol=0, atol=1e-12)
        torch.testing.assert_close(var, torch.ones_like(var), rtol=1e-8, atol=0)
        m, s = torch.zeros_like(mu), torch.ones_like(mu)


def test_network_json_round_trip():
    X, y = make_toy(n_per_class=5)
    model = netfile.init_network(X, seed=0)
    again, X2, y2 = netfile.network_from_json(
        json.loads(json.dumps(netfile.network_to_json(model, X, y))), "test"
    )
    for a, b in zip(model.parameters(), again.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(X2, X, rtol=0, atol=0)
    torch.testing.assert_close(y2, y, rtol=0, atol=0)


def test_reparam_grads_is_the_chain_rule_of_the_01_weights():
    model = toy_net()[0]
    ops = netfile.layers(model)
    torch.manual_seed(0)
    grads = [torch.randn(3, op.weight.numel() + op.out_features, dtype=torch.float64) for op in ops]
    g01 = coords.reparam_grads(grads, model, "01")
    for k, op in enumerate(ops):  # a step d01 of (W01, b01) moves (W, b) = (W01/2, b01 + W01·1/2)
        dw = torch.randn(op.weight.shape, dtype=torch.float64)
        db = torch.randn(op.out_features, dtype=torch.float64)
        d01 = torch.cat([dw.flatten(), db])
        dpm = torch.cat([(dw / 2).flatten(), db + dw.sum(1) / 2]) if k else d01
        torch.testing.assert_close(g01[k] @ d01, grads[k] @ dpm, rtol=1e-12, atol=1e-12)
    assert coords.reparam_grads(grads, model, "pm1") == grads


@pytest.mark.parametrize(
    "method",
    [
        "st",
        "concrete_tau_1",
        "mean",
        pytest.param("reinforce", marks=needs("reinforce")),
        pytest.param("psa", marks=needs("psa")),
    ],
)
def test_per_sample_gradients_equal_separate_backward_passes(method):
    model, X, y = toy_net()
    X, y = X[::10], y[::10]  # 20 points
    n, samples = X.shape[0], 4
    units = [stage.unit for stage in model.stages]
    saved = [u.noise for u in units]
    tables = [Logistic(1.0).sample(torch.empty(samples, n, 5, dtype=X.dtype)) for _ in units]
    reg, opts = methods.resolve_method(method)
    est = estimators.get(reg, **opts)
    try:
        for u in units:
            u.noise = TableNoise()
        for u, z in zip(units, tables, strict=True):
            u.noise.current = z.reshape(samples * n, -1)
        model.zero_grad(set_to_none=True)
        with PerSampleCapture(model, samples, n, loss_fn=netfile.toy_loss) as cap:
            est.loss(model, X.repeat(samples, 1), cap.targets(y), cap.loss_fn).backward()
        batched = cap.per_sample()
        for s in range(samples):
            for u, z in zip(units, tables, strict=True):
                u.noise.current = z[s]
            model.zero_grad(set_to_none=True)
            est.loss(model, X, y, netfile.toy_loss).backward()
            for k, g in enumerate(flat_grads(model)):
                torch.testing.assert_close(
                    batched[k][s], g, rtol=1e-9, atol=1e-13, msg=f"{method} sample {s} layer{k}"
                )
    finally:
        for u, nz in zip(units, saved, strict=True):
            u.noise = nz
        model.zero_grad(set_to_none=True)


def test_metrics_on_constructed_estimates():
    torch.manual_seed(0)
    p, n, sigma = 8, 20000, 0.3
    g = torch.linspace(-1, 1, p, dtype=torch.float64) + 0.1
    bias = torch.full((p,), 0.05, dtype=torch.float64)
    est = g + bias + sigma * torch.randn(n, p, dtype=torch.float64)
    ms = [1, 10, 100, 1000]
    met = stats.gradient_metrics(est, g, ms)
    g2 = float(g.dot(g))
    for m, rmse, se, t in zip(ms, met.rmse, met.rmse_se, met.trials, strict=True):
        assert t == n // m
        expect = math.sqrt((float(bias.dot(bias)) + p * sigma**2 / m) / g2)
        assert abs(math.log(rmse / expect)) < 4 * se + 1e-3
    assert stats.relative_bias(est, g) == pytest.approx(
        math.sqrt(float(bias.dot(bias)) / g2), rel=0.1
    )
    exact = stats.gradient_metrics(g.expand(10, p), g, [1, 5])
    assert exact.rmse == pytest.approx([0.0, 0.0], abs=1e-12)
    assert exact.cos_mean == pytest.approx([1.0, 1.0])
    assert exact.cos_q15[0] == pytest.approx(1.0)
    opposite = stats.gradient_metrics(-g.expand(10, p), g, [1])
    assert opposite.rmse[0] == pytest.approx(2.0)
    assert opposite.cos_mean[0] == pytest.approx(-1.0)


def test_loglog_slope_of_pure_variance_is_minus_half():
    torch.manual_seed(1)
    g = torch.ones(6, dtype=torch.float64)
    est = g + torch.randn(4000, 6, dtype=torch.float64)
    sl = stats.loglog_slope(stats.gradient_metrics(est, g, stats.m_grid(4000)))
    assert sl.M == 200
    assert abs(sl.slope + 0.5) < 3 * sl.se


def test_exact_loss_of_the_authors_network(authors):
    _, model, X, y, data = authors
    loss, grads = exact_gradient(model, X, y, loss_fn=netfile.toy_loss)
    assert data["exact_expected_loss"] == AUTHORS_LOSS
    assert abs(loss - AUTHORS_LOSS) <= 1e-9
    assert [g.numel() for g in grads] == [15, 30, 30, 6]
    with pytest.raises(ExactLossMismatch):
        check_exact_loss(loss, AUTHORS_LOSS + 1e-8, "test")


@needs("psa", "arm", "reinforce")
def test_study_on_the_authors_network_reproduces_the_paper(authors):
    _, model, X, y, data = authors
    config = study.StudyConfig(methods=("psa", "st", "arm", "reinforce"), samples=2000, seed=1)
    res = study.study_network(model, X, y, config, loss_fn=netfile.toy_loss, log=lambda _: None)
    paper = data["paper_relative_rmse_at_one_sample"]
    cmp = compare_with_paper(res, {k: paper[k] for k in ("psa", "st", "arm", "reinforce")})
    for name in ("psa", "st", "arm", "reinforce"):
        assert cmp[name].agrees, (name, cmp[name])  # within a factor 1.5 of the paper
    found = findings(res)
    assert found.psa_lowest_at_m1.holds, found.psa_lowest_at_m1
    sl = found.psa_last_hidden_sqrt
    assert sl.M == 100 and abs(sl.slope + 0.5) <= 3 * sl.se, sl
    assert found.st_floor.holds, found.st_floor
    assert found.unbiased_need_more.holds, found.unbiased_need_more
    for name in ("psa", "arm", "reinforce"):  # unbiased for the head
        assert res.methods[name].layers["layer3"].relative_bias < 0.05


def _error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sbnkit: error: "), err
    return err[0]


@pytest.mark.parametrize(
    "argv",
    [
        ["--samples", "0"],
        ["--samples", "many"],
        ["--network", "/nonexistent/net.json"],
        ["--methods", "st,magic"],
        ["--train-checkpoints", "x"],
        ["--train-checkpoints", "0"],
        ["--network", "a.json", "--train-checkpoints", "5"],
        ["--workers", "0"],
        ["--param", "x"],
        ["--unknown"],
    ],
)
def test_cli_bad_arguments_give_one_line_and_exit_2(argv, capsys, tmp_path):
    assert cli_main([*argv, "--out", str(tmp_path / "out")]) == 2
    _error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_cli_bad_network_files(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert cli_main(["--network", str(bad), "--out", str(tmp_path / "o")]) == 2
    _error_line(capsys)
    bad.write_text(
        json.dumps({"layers": [{"weight": [[1.0]], "bias": [[0.0]]}], "X": [[0.0]], "y": [1]})
    )
    assert cli_main(["--network", str(bad), "--out", str(tmp_path / "o")]) == 2
    _error_line(capsys)
    out_file = tmp_path / "file"
    out_file.write_text("")
    assert cli_main(["--train-checkpoints", "1", "--out", str(out_file)]) == 2
    _error_line(capsys)


def test_cli_on_the_authors_network_writes_results(authors, tmp_path, capsys):
    out = tmp_path / "ge"
    argv = [
        "--network",
        str(authors[0]),
        "--samples",
        "100",
        "--methods",
        "st",
        "mean",
        "--workers",
        "1",
        "--out",
        str(out),
    ]
    assert cli_main(argv) == 0
    table = capsys.readouterr().out
    assert "st" in table and "[0.22]" in table  # the paper's value beside ours
    res = json.loads((out / "gradeval.json").read_text())
    net = res["networks"]["psa_gradeval_5-5-5_chk100"]
    assert abs(net["exact_expected_loss"] - AUTHORS_LOSS) <= 1e-9
    assert set(net["methods"]) == {"st", "mean"}
    assert net["methods"]["st"]["layers"]["layer2"]["M"] == stats.m_grid(100)
    assert (out / "rmse_psa_gradeval_5-5-5_chk100.png").stat().st_size > 0
    assert (out / "cosine_psa_gradeval_5-5-5_chk100.png").stat().st_size > 0
    assert cli_main(argv) == 2  # a finished study is replaced only with --overwrite
    assert "--overwrite" in capsys.readouterr().err
    (out / "rmse_psa_gradeval_5-5-5_chk100.png").unlink()
    (out / "notes.txt").write_text("mine")
    assert cli_main([*argv, "--overwrite"]) == 0
    assert (out / "rmse_psa_gradeval_5-5-5_chk100.png").stat().st_size > 0
    assert (out / "notes.txt").read_text() == "mine"  # never removes what it did not write
    assert [p.name for p in tmp_path.iterdir()] == ["ge"]


@needs("reinforce")
def test_cli_trains_caches_and_checks_checkpoints(tmp_path, capsys):
    out = tmp_path / "tr"
    argv = ["--train-checkpoints", "2", "--samples", "20", "--methods", "st", "--workers", "1"]
    argv += ["--out", str(out)]
    assert cli_main(argv) == 0
    assert "training with REINFORCE for 2 epochs" in capsys.readouterr().err
    record = json.loads((out / "training.json").read_text())
    assert record["epochs"] == [1, 2]  # epoch 1 is always kept
    assert set(json.loads((out / "gradeval.json").read_text())["networks"]) == {"chk-2"}
    chk = json.loads((out / "chk-2.json").read_text())
    assert chk["epoch"] == 2 and "exact_expected_loss" in chk
    argv.append("--overwrite")
    assert cli_main(argv) == 0
    assert "reusing the REINFORCE checkpoints" in capsys.readouterr().err
    chk["exact_expected_loss"] += 1e-6
    (out / "chk-2.json").write_text(json.dumps(chk))
    assert cli_main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("sbnkit: error: ") and "differs from the recorded" in err[-1]
    assert "the earlier run" in err[-2] and "is back" in err[-2]  # failed: the old run stays
    assert json.loads((out / "chk-2.json").read_text()) == chk
    assert cli_main([*argv, "--param", "pm1"]) == 0
    assert "training with REINFORCE" in capsys.readouterr().err  # another recipe: retrained


def test_cli_never_touches_a_folder_it_did_not_create(tmp_path, monkeypatch, capsys):
    """The reported data-loss bug: --out naming the current project folder deleted it."""
    project = tmp_path / "v"
    (project / ".git").mkdir(parents=True)
    (project / "src").mkdir()
    (project / "src" / "thesis.tex").write_text("x")
    monkeypatch.chdir(project)
    argv = ["--samples", "10", "--train-checkpoints", "2", "--methods", "st", "--workers", "1"]
    started = []
    monkeypatch.setattr(training, "trained_networks", lambda *a, **k: started.append(1))
    for out in ("../v", ".", str(project)):
        assert cli_main([*argv, "--out", out]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("sbnkit: error: ") and "did not create" in err and "\n" not in err
    assert cli_main([*argv, "--out", ""]) == 2
    assert "--out is empty" in capsys.readouterr().err
    assert not started  # refused before any compute
    assert (project / "src" / "thesis.tex").read_text() == "x" and (project / ".git").is_dir()
    assert sorted(p.name for p in project.iterdir()) == [".git", "src"]
