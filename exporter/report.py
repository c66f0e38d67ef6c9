"""The evaluation report: `report.json` (its figures, which the evaluate stage writes and the
hybrid stage adds a section to, through `save_report`/`load_report`) and its human forms,
`report.md` (tables, rendered from report.json in one place: `render`) and
`certified_accuracy.png`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from accsmooth.bundle import Calibration
from accsmooth.smoothing import ShiftRule, clopper_pearson_lower
from exporter.scoring import certified_accuracy

CONFIGS = Path(__file__).parent / "configs"
REPORT_JSON = "report.json"

# Cohen et al. (2019), released ResNet-110 CIFAR-10 certificates: 500 test images,
# n = 100,000, alpha = 0.001, trained and certified on GPUs; printed beside a bundle of the
# same sigma as a reference point, not as a like-for-like comparison
REFERENCE = {
    0.5: {0.0: 0.652, 0.25: 0.546, 0.5: 0.414, 0.75: 0.320, 1.0: 0.234, 1.5: 0.094},
    1.0: {0.0: 0.472, 0.25: 0.392, 0.5: 0.340, 0.75: 0.278, 1.0: 0.216, 1.5: 0.140},
}
REFERENCE_NAME = "Cohen et al., ResNet-110, n = 100,000 (GPU; reference)"

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


def _accuracy_rows(section: dict, radii: list[str]) -> list[str]:
    rows = []
    for name, row in section["certified_accuracy"].items():
        err = section["certified_accuracy_stderr"][name]
        cells = " | ".join(f"{100 * row[x]:.1f}% ± {100 * err[x]:.1f}" for x in radii)
        rows.append(f"| {NAMES.get(name, name)} | {cells} |")
    return rows


def _reference_row(sigma: float, radii: list[str]) -> list[str]:
    """Cohen et al.'s figures at this sigma, where they report the radius; else nothing."""
    ref = REFERENCE.get(float(sigma))
    if not ref:
        return []
    cells = " | ".join(f"{100 * ref[float(x)]:.1f}%" if float(x) in ref else "-" for x in radii)
    return [f"| {REFERENCE_NAME} | {cells} |"]


def preset_for(bundle_name: str) -> str:
    """The committed preset that builds `bundle_name`: the one whose header names its own
    command with `--out models/<bundle_name>` (experiment presets share bundle names)."""
    for path in sorted(CONFIGS.glob("*.toml")):
        if f"--config exporter/configs/{path.name} --out models/{bundle_name}\n" in (
            path.read_text()
        ):
            return f"exporter/configs/{path.name}"
    return "<preset>"


def rate_interval(rate: float, images: int, level: float = 0.95) -> tuple[int, float, float]:
    """(count, low, high): the images behind a rate measured on `images` and its two-sided
    Clopper-Pearson interval, so a reader can tell an over-claim rate above epsilon from the
    binomial spread of a finite test set."""
    k = int(round(rate * images))
    tail = (1.0 - level) / 2.0
    return (
        k,
        clopper_pearson_lower(k, images, tail),
        1.0 - clopper_pearson_lower(images - k, images, tail),
    )


def _agreement_rows(section: dict) -> list[str]:
    rows = [
        "| rule | over-estimation (images; 95% interval) | under-estimation "
        "| mean abs radius error | abstention agreement |",
        "|---|---|---|---|---|",
    ]
    n = section["images"]
    for name, v in section["versus_monte_carlo"].items():
        k, low, high = rate_interval(v["overestimation_rate"], n)
        rows.append(
            f"| {NAMES[name]} | {100 * v['overestimation_rate']:.1f}% "
            f"({k} of {n:,}; {100 * low:.1f}-{100 * high:.1f}%) | "
            f"{100 * v['underestimation_rate']:.1f}% | {v['mean_abs_radius_error']:.4f} | "
            f"{100 * v['abstention_agreement']:.1f}% |"
        )
    return rows


def ablation_table(result: dict) -> str:
    """The ablation as report.md shows it: served certified accuracy per variant and rule."""
    lines = [
        "| surrogate | calibration | bins | eval r = 0 / 0.25 / 0.5 / 0.75 | over-est. "
        "| hold-out r = 0 / 0.25 / 0.5 / 0.75 | over-est. | top-1 agr. |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in result["variants"]:
        for row in v["rows"]:
            cells = []
            for set_name in ("evaluation", "holdout"):
                t = row.get(set_name)
                if t is None:
                    cells += ["", ""]
                    continue
                acc = t["certified_accuracy"]["surrogate_calibrated"]
                cells.append(" / ".join(f"{100 * a:.1f}" for a in acc.values()))
                cells.append(f"{100 * t['overestimation_rate']:.1f}%")
            agree = row["evaluation"]["top1_agreement"]
            lines.append(
                f"| {v['name']} | {row['rule']} | {row['bins']} | "
                + " | ".join(cells)
                + f" | {100 * agree:.1f}% |"
            )
    return "\n".join(lines)


def _spread(r: dict) -> str:
    """The evaluation Monte-Carlo time's spread, or where it came from when its counts were
    reused from another bundle (whose evidence keeps only each set's total time)."""
    drawn_by = r.get("monte_carlo_samplers", {}).get("evaluation", {})
    reused = sorted({name.split(" via ", 1)[1] for name in drawn_by if " via " in name})
    if reused:
        return f"mean that {', '.join(reused)} recorded: its counts are reused"
    return f"± {r['seconds_per_image']['monte_carlo_std']:.3f}"


def _time_lines(r: dict) -> list[str]:
    lines = []
    if r.get("monte_carlo_seconds"):
        lines.append(
            "Monte-Carlo compute (CERTIFY, sum of per-image times): "
            + ", ".join(f"{k} {v / 60:.1f} min" for k, v in r["monte_carlo_seconds"].items())
            + "."
        )
    if r.get("monte_carlo_samplers"):
        lines.append(
            "Monte-Carlo chunks by sampler (numpy: onnxruntime on CPU cores; torch: PyTorch on a "
            "GPU, float32, the same graph's checkpoint): "
            + "; ".join(
                f"{k} " + ", ".join(f"{s} {n}" for s, n in v.items())
                for k, v in r["monte_carlo_samplers"].items()
            )
            + "."
        )
    if r.get("stage_seconds"):
        lines.append(
            "Stage times last recorded in the work folder (a resumed stage records only what it "
            "had left): " + ", ".join(f"{k} {v:.0f} s" for k, v in r["stage_seconds"].items()) + "."
        )
    return [*lines, ""] if lines else []


def _first_four(section: dict) -> str:
    mc = list(section["certified_accuracy"]["monte_carlo"].values())[:4]
    return " / ".join(f"{100 * v:.1f}" for v in mc)


def _calibration(r: dict) -> Calibration | None:
    """report.json's calibration section, read as the manifest's is (None: uncalibrated)."""
    return Calibration.model_validate(r["calibration"]) if r.get("calibration") else None


def describe_calibration(cal: Calibration | None) -> str:
    if cal is None:
        return "uncalibrated (the raw rule is served)"
    rule = cal.rule
    if isinstance(rule, ShiftRule):
        bins = [f"z < {rule.edges[0]:.2f}: {rule.shifts[0]:.3f}"]
        bins += [f"z >= {e:.2f}: {q:.3f}" for e, q in zip(rule.edges, rule.shifts[1:], strict=True)]
        return (
            f"Mondrian split-conformal, epsilon = {cal.epsilon}, fitted on "
            f"{cal.set_size:,} calibration images; shift per bin of z = Phi^-1(raw pABar): "
            + "; ".join(bins)
        )
    return (
        f"split-conformal, epsilon = {cal.epsilon}, one shift q = {rule:.4f} "
        f"fitted on {cal.set_size:,} calibration images"
    )


def _hybrid_lines(h: dict, report: dict) -> list[str]:
    """The hybrid section (exporter.hybrid's figures) of report.md."""
    radii = list(h["certified_accuracy"])
    shown = ("monte_carlo", "surrogate_calibrated")  # the rows the hybrid stands between
    rows = [
        f"| {NAMES[k]} | " + " | ".join(f"{100 * v[r]:.1f}%" for r in radii) + " |"
        for k, v in report.get("certified_accuracy", {}).items()
        if k in shown
    ]
    a, lat, fb = h["answered_by"], h["latency_ms"], h["fallback_protocol"]
    err = h["certified_accuracy_stderr"]
    hybrid_row = " | ".join(
        f"{100 * h['certified_accuracy'][r]:.1f}% ± {100 * err[r]:.1f}" for r in radii
    )

    def fmt(d):
        return "n/a" if d["mean"] is None else f"{d['mean']:.2f} / {d['p50']:.2f} / {d['p95']:.2f}"

    over = h.get("overestimation_rate_vs_monte_carlo")
    alt = h.get("surrogate_class_fallback")
    lines = [
        "",
        "## Hybrid certification (mode=hybrid)",
        "",
        f"The surrogate answers when its calibrated bound is >= 1/2 + {h['margin']} or its p_A "
        f"<= 1/2 - {h['margin']}; otherwise CERTIFY on the base model answers with n0 = "
        f"{fb['n0']}, n = {fb['n']:,} (alpha = {fb['alpha']}), the size that fits a "
        f"{h['budget_ms']:g} ms budget at the {h['base_samples_per_second']:,.0f} noisy "
        "samples/s measured on one onnxruntime thread.",
        "",
        f"Answered by the surrogate: {100 * a['surrogate']:.1f}% of {h['images']} images "
        f"({100 * a['surrogate_clear_certify']:.1f}% clear certificates, "
        f"{100 * a['surrogate_clear_abstain']:.1f}% clear abstentions); by Monte-Carlo: "
        f"{100 * a['monte_carlo']:.1f}%."
        + (
            f" Over-estimations against the full-protocol CERTIFY: {100 * over:.1f}%."
            if over is not None
            else ""
        ),
        "",
        "| method | " + " | ".join(f"r = {r}" for r in radii) + " |",
        "|---|" + "---|" * len(radii),
        *rows,
        f"| Hybrid | {hybrid_row} |",
        *(
            [
                "| Hybrid, fallback on the surrogate's class (n = "
                f"{alt['n']:,}, no selection round) | "
                + " | ".join(f"{100 * alt['certified_accuracy'][r]:.1f}%" for r in radii)
                + " |"
            ]
            if alt
            else []
        ),
        "",
        "Latency per image, in process, batch 1 (mean / p50 / p95 ms): "
        f"all {fmt(lat['all'])}; surrogate-answered {fmt(lat['surrogate'])}; "
        f"Monte-Carlo-answered {fmt(lat['monte_carlo'])}.",
        "",
        f"Reproduce: `python -m exporter.hybrid models/{report.get('bundle', '<bundle>')} "
        f"--work work/{report.get('bundle', '<bundle>')} "
        f"--config {preset_for(report.get('bundle', ''))} --budget-ms {h['budget_ms']:g}` "
        "(numbers move with the machine's load: the budget is sized from throughput measured "
        "at the start).",
        "",
    ]
    return lines


def load_report(bundle: Path) -> dict:
    """A bundle's report.json."""
    path = bundle / REPORT_JSON
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; run the evaluate stage first")
    return json.loads(path.read_text())


def report_radii(report: dict) -> list[float]:
    """The radii a report's tables are at, as numbers."""
    return [float(r) for r in report["certified_accuracy"]["monte_carlo"]]


def save_report(bundle: Path, report: dict) -> Path:
    path = bundle / REPORT_JSON
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def calibration_choice(bundle: Path) -> int:
    """How many rules the calibrate stage chose among on the very images it fitted the shifts on
    (its config's bin counts, each also with every top bin it lists, chosen by 2-fold
    cross-fitting when `selection_fraction` is 0); 1 when the rule was fixed in advance or chosen
    on a separate selection part."""
    config = json.loads((bundle / "manifest.json").read_text()).get("exporter") or {}
    calibrate = config.get("config", {}).get("calibrate", {})
    candidates = len(calibrate.get("bins", [1])) * (1 + len(calibrate.get("top_bins", [])))
    return candidates if candidates > 1 and not calibrate.get("selection_fraction") else 1


def render(bundle: Path) -> Path:
    """report.md of a bundle, from its report.json and (when there is one) ablation.json."""
    report = load_report(bundle)
    ablation = bundle / "ablation.json"
    out = bundle / "report.md"
    write_markdown(
        out,
        report,
        json.loads(ablation.read_text()) if ablation.exists() else None,
        chosen_among=calibration_choice(bundle),
    )
    return out


def guarantee(calibration, chosen_among: int) -> str:
    """The report's sentence on what the served rule's over-claim rate is guaranteed to be."""
    binned = calibration is not None and isinstance(calibration.rule, ShiftRule)
    text = (
        "Guarantee (finite-sample, split-conformal): for a new image exchangeable with the "
        "calibration images, P(served certificate over-claims the Monte-Carlo one) <= epsilon"
        + (" in every bin, and so overall, for bins fixed in advance" if binned else "")
    )
    if chosen_among > 1:
        what = "the bins were" if binned else "one shift was"
        text += (
            f"; {what} chosen among {chosen_among} candidate rules by 2-fold "
            "cross-fitting on these same calibration images, which makes the guarantee "
            "approximate"
        )
    return text + "."


def write_markdown(path: Path, r: dict, ablation: dict | None = None, chosen_among: int = 1):
    """report.md from report.json's dict (and ablation.json's, when there is one): the one
    place the report's tables are rendered."""
    radii = list(r["certified_accuracy"]["monte_carlo"].keys())
    calibration = _calibration(r)
    header = ["| method | " + " | ".join(f"r = {x}" for x in radii) + " |"]
    header.append("|---|" + "---|" * len(radii))
    lines = [
        f"# Evaluation report: {r['bundle']}",
        "",
        f"{r['images']} test images (every {r['eval_every']}th), sigma = {r['sigma']}, "
        f"CERTIFY with n0 = {r['protocol']['n0']}, n = {r['protocol']['n']:,}, "
        f"alpha = {r['protocol']['alpha']}.",
        f"Calibration: {describe_calibration(calibration)}. {guarantee(calibration, chosen_among)}"
        " Checked below by the over-estimation rates on evaluation and hold-out images.",
        f"Largest radius certifiable at this n: {r['max_certifiable_radius']:.3f} = sigma * "
        f"Phi^-1(alpha^(1/n)); the paper's n = 100,000 allows {r['max_radius_at_100k']:.3f}.",
        "",
        "## Certified accuracy (± binomial standard error)",
        "",
        *header,
        *_accuracy_rows(r, radii),
        *_reference_row(r["sigma"], radii),
        "",
        "## Surrogate versus Monte-Carlo",
        "",
        f"Top-1 agreement (surrogate argmax = Monte-Carlo top class): "
        f"{100 * r['top1_agreement']:.1f}%",
        "",
        *_agreement_rows(r),
    ]
    h = r.get("holdout")
    if h:
        lines += [
            "",
            f"## Hold-out: {h['images']:,} test images no stage used",
            "",
            *header,
            *_accuracy_rows(h, radii),
            "",
            f"Top-1 agreement: {100 * h['top1_agreement']:.1f}%",
            "",
            *_agreement_rows(h),
        ]
    if ablation:
        reference = [f"evaluation {_first_four(r)}"] + ([f"hold-out {_first_four(h)}"] if h else [])
        lines += [
            "",
            "## Ablation: served (calibrated) certified accuracy by lever",
            "",
            "Same Monte-Carlo evidence for every row (python -m exporter.ablation); each "
            "surrogate calibrated on the same calibration images with one shift, with two "
            "Mondrian bins, and with the bin count chosen by cross-fitting on those images "
            "(epsilon = 1% leaves few images per bin). Served certified accuracy (%) and "
            "over-estimation rate; Monte-Carlo at r = 0 / 0.25 / 0.5 / 0.75: "
            f"{'; '.join(reference)}.",
            "",
            ablation_table(ablation),
        ]
    if r.get("hybrid"):
        lines += _hybrid_lines(r["hybrid"], r)
    s = r["seconds_per_image"]
    env = r["environment"]
    lines += [
        "",
        "## Speed",
        "",
        f"Monte-Carlo: {s['monte_carlo']:.3f} s/image ({_spread(r)}); "
        f"surrogate: {1000 * s['surrogate']:.3f} ms/image (median, batch 1, in process); "
        f"speed-up {r['speedup']:,.0f}x.",
        "",
        *_time_lines(r),
        f"Hardware: {env['cpu']}, {env['cores']} cores; Python {env['python']}; "
        + ", ".join(f"{k} {v}" for k, v in env["versions"].items())
        + ".",
        "",
        "## Reproduce",
        "",
        f"- every table above, from `evidence.npz` (per-image Monte-Carlo counts and surrogate "
        f"outputs) without sampling: `python -m exporter.tables models/{r['bundle']}` "
        "(`--check` compares with report.json and refits the calibration);",
        f"- the bundle: `python -m exporter run --config {preset_for(r['bundle'])} "
        f"--out models/{r['bundle']}` (stages: data, train-base, export-base, targets, "
        "train-surrogate, export-surrogate, calibrate, bundle, evaluate, hybrid);",
        f"- the ablation: `python -m exporter.ablation models/{r['bundle']} --work <work> "
        "--config <preset> --variant NAME=surrogate.onnx ...` (see docs/results.md);",
        f"- the hybrid section: `python -m exporter.hybrid models/{r['bundle']} --work <work> "
        f"--config {preset_for(r['bundle'])}`.",
        "",
    ]
    path.write_text("\n".join(lines))
