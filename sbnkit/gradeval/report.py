"""Text reports of a study: the table the CLI prints for the toy study, and ``summary.md`` for a
user's model."""

from __future__ import annotations

from .paper import PAPER_PROVENANCE
from .results import NetworkResult, StudyResults

__all__ = ["NOISY_REFERENCE", "summary_markdown", "summary_table"]

NOISY_REFERENCE = 0.3


def summary_table(results: StudyResults) -> str:
    """A plain-text table: method × layer relative RMSE at ``M = 1`` per network (paper in
    [])."""
    lines = []
    for net, res in results.networks.items():
        paper = res.paper_rmse_m1 or {}
        meth = res.methods
        if not meth:
            lines.append(f"{net}: no method applies ({', '.join(res.skipped)} skipped)")
            continue
        names = list(next(iter(meth.values())).layers)
        loss = res.reference.expected_loss
        head = f"{net}: relative RMSE at M=1 ({res.reference.kind} loss {loss:.10g}"
        lines.append(head + (f"; paper values in [], {PAPER_PROVENANCE})" if paper else ")"))
        lines.append(f"  {'method':<18}" + "".join(f"{nm:>18}" for nm in names))
        for name, entry in meth.items():
            cells = []
            for k, nm in enumerate(names):
                cell = f"{entry.layers[nm].rmse[0]:.3g}"
                if name in paper and k < len(paper[name]):
                    cell += f" [{paper[name][k]:.3g}]"
                cells.append(f"{cell:>18}")
            lines.append(f"  {name:<18}" + "".join(cells))
        for name, why in res.skipped.items():
            lines.append(f"  {name:<18} skipped: {why}")
    return "\n".join(lines)


def _network_markdown(label: str, res: NetworkResult) -> list[str]:
    ref = res.reference
    lines = [f"## {label}", ""]
    if ref.kind == "exact":
        lines.append(
            f"Reference: the exact gradient by enumeration (expected loss {ref.expected_loss:.6g})."
        )
    else:
        se = ", ".join(f"{nm} {v:.2g}" for nm, v in ref.relative_se.items())
        lines += [
            f"Reference: the mean of {ref.samples} samples of `{ref.kind}` (unbiased), relative "
            f"standard error per layer: {se}.",
            "",
            "The RMSEs are corrected for the reference's own noise: "
            "E‖ĝ_M − ḡ_ref‖² = bias² + V_est/M + V_ref/M_ref, and V_ref/M_ref (from the reference "
            "samples' variance) is subtracted; ‖g‖² is estimated as ‖ḡ_ref‖² − V_ref/M_ref.",
        ]
        noisy = [nm for nm, v in ref.relative_se.items() if v > NOISY_REFERENCE]
        if noisy:
            lines += [
                "",
                f"**Warning:** the reference's relative standard error exceeds "
                f"{NOISY_REFERENCE:g} in {', '.join(noisy)}: the corrected errors there are "
                "noisy and errors below it are not resolved; raise --reference-samples "
                "(the standard error falls as 1/√M_ref).",
            ]
    lines.append("")
    meth = res.methods
    if not meth:
        lines.append("No method applies to this model.")
    else:
        names = list(next(iter(meth.values())).layers)
        lines += [
            "Relative RMSE at M = 1 (bias² / variance per sample, relative to ‖g‖²); time per "
            "sample (one plain loss + backward on the batch):",
            "",
            "| method | " + " | ".join(names) + " | time per sample |",
            "|---" * (len(names) + 2) + "|",
        ]
        for name, m in meth.items():
            lay = m.layers
            cells = [
                f"{lay[nm].rmse[0]:.3g} ({lay[nm].bias2:.2g} / {lay[nm].variance:.2g})"
                for nm in names
            ]
            t = "—" if m.time_per_sample_s is None else f"{1e3 * m.time_per_sample_s:.3g} ms"
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {t} |")
        lines += ["", "Most accurate method per layer:", ""]
        lines.append("| layer | at M = 1 | at equal time |")
        lines.append("|---|---|---|")
        eq = res.equal_time
        for nm in names:
            best1 = res.best_at_m1[nm]
            at1 = f"{best1} ({meth[best1].layers[nm].rmse[0]:.3g})"
            if eq is None:
                ateq = "not timed"
            else:
                b = eq.best[nm]
                ateq = f"{b} (M = {eq.M[b]}, {eq.rmse[b][nm]:.3g})"
            lines.append(f"| {nm} | {at1} | {ateq} |")
        if eq is not None:
            lines += [
                "",
                f"Equal time: each method averages as many samples as fit in "
                f"{1e3 * eq.budget_s:.3g} ms (the slowest method's time per sample), rounded "
                "down to the grid of M.",
            ]
    if res.skipped:
        lines += ["", "Skipped methods:", ""]
        lines += [f"- `{name}`: {why}" for name, why in res.skipped.items()]
    return lines


def summary_markdown(results: StudyResults) -> str:
    """``summary.md``: per network, the reference, the ``M = 1`` table with bias/variance and
    time per sample, and the most accurate method per layer at ``M = 1`` and at equal time."""
    cfg = results.config
    lines = [
        "# Gradient accuracy",
        "",
        f"{cfg.get('source', cfg.get('network'))}: {cfg.get('examples', '')} examples, "
        f"{cfg['samples']} samples per method, seed {cfg['seed']}.",
    ]
    for note in cfg.get("notes", []):
        lines.append(f"Note: {note}.")
    lines.append("")
    for label, res in results.networks.items():
        lines += _network_markdown(label, res)
        lines.append("")
    return "\n".join(lines)
