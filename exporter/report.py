"""The evaluation report's human forms: `report.md` (tables) and `certified_accuracy.png`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from exporter.scoring import certified_accuracy

NAMES = {
    "monte_carlo": "Monte-Carlo (CERTIFY)",
    "surrogate_raw": "Surrogate, raw",
    "surrogate_calibrated": "Surrogate, calibrated",
}


def write_plot(path: Path, curves: dict, labels, bundle) -> None:
    """Certified accuracy vs L2 radius, one curve per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    radii = np.linspace(0, max(1.0, max(float(r.max()) for _, r in curves.values())) * 1.02, 300)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name, (pred, rad) in curves.items():
        acc = [certified_accuracy(pred, rad, labels, r) for r in radii]
        ax.plot(
            radii,
            acc,
            label=NAMES.get(name, name),
            linestyle="-" if name == "monte_carlo" else "--",
        )
    ax.set_xlabel("L2 radius (pixels in [0,1])")
    ax.set_ylabel("certified accuracy")
    ax.set_title(f"{bundle.name}: sigma={bundle.sigma}, n={bundle.n:,}, alpha={bundle.alpha}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_markdown(path: Path, r: dict) -> None:
    radii = list(next(iter(r["certified_accuracy"].values())).keys())
    lines = [
        f"# Evaluation report: {r['bundle']}",
        "",
        f"{r['images']} test images (every {r['eval_every']}th), sigma = {r['sigma']}, "
        f"CERTIFY with n0 = {r['protocol']['n0']}, n = {r['protocol']['n']:,}, "
        f"alpha = {r['protocol']['alpha']}; calibration shift q = {r['calibration_shift']:.5f}.",
        f"Largest radius certifiable at this n: {r['max_certifiable_radius']:.3f} = sigma * "
        f"Phi^-1(alpha^(1/n)); the paper's n = 100,000 allows {r['max_radius_at_100k']:.3f}.",
        "",
        "## Certified accuracy (± binomial standard error)",
        "",
        "| method | " + " | ".join(f"r = {x}" for x in radii) + " |",
        "|---|" + "---|" * len(radii),
    ]
    for name, row in r["certified_accuracy"].items():
        err = r["certified_accuracy_stderr"][name]
        cells = " | ".join(f"{100 * row[x]:.1f}% ± {100 * err[x]:.1f}" for x in radii)
        lines.append(f"| {NAMES.get(name, name)} | {cells} |")
    lines += [
        "",
        "## Surrogate versus Monte-Carlo",
        "",
        f"Top-1 agreement (surrogate argmax = Monte-Carlo top class): "
        f"{100 * r['top1_agreement']:.1f}%",
        "",
        "| rule | over-estimation | under-estimation | mean abs radius error "
        "| abstention agreement |",
        "|---|---|---|---|---|",
    ]
    for name, v in r["versus_monte_carlo"].items():
        lines.append(
            f"| {NAMES[name]} | {100 * v['overestimation_rate']:.1f}% | "
            f"{100 * v['underestimation_rate']:.1f}% | {v['mean_abs_radius_error']:.4f} | "
            f"{100 * v['abstention_agreement']:.1f}% |"
        )
    s = r["seconds_per_image"]
    env = r["environment"]
    lines += [
        "",
        "## Speed",
        "",
        f"Monte-Carlo: {s['monte_carlo']:.3f} s/image (± {s['monte_carlo_std']:.3f}); "
        f"surrogate: {1000 * s['surrogate']:.3f} ms/image (batch 1, in process); "
        f"speed-up {r['speedup']:,.0f}x.",
        "",
        f"Hardware: {env['cpu']}, {env['cores']} cores; Python {env['python']}; "
        + ", ".join(f"{k} {v}" for k, v in env["versions"].items())
        + ".",
        "",
    ]
    path.write_text("\n".join(lines))
