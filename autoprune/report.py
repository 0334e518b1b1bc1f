"""The run report: one self-contained ``report.html`` (figures embedded) plus the figures as PNGs.

It shows what a user decides on: dense vs pruned costs, *measured* latency (torch and onnxruntime,
batch 1, on this machine) and accuracy before and after fine-tuning; how many channels each group
kept (the AMC figure); how the search progressed; and every evaluation's accuracy against its
FLOPs, with the Pareto front and the budget line.
"""

from __future__ import annotations

import base64
import html
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autoprune.latency import make_runner, time_against_dense
from autoprune.result import Result
from autoprune.run import RunContents, open_run
from autoprune.run_directory import holding
from autoprune.search_spaces import Policy

__all__ = ["build_report", "measure_run_latency", "pareto_front"]

FIGURES = ("channels.png", "progress.png", "pareto.png")


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points (cost, accuracy) that no other point beats on both, by increasing cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def measure_run_latency(run: RunContents, *, repeats: int = 15, rounds: int = 5) -> dict[str, Any]:
    """Measured latency (ms, batch 1, one thread) of the dense and pruned models, cached in ``latency.json``.

    Latency depends only on the architecture, so fine-tuning does not change it and it is
    measured once per run; both models are timed interleaved so that machine noise hits both, and the
    medians of ``rounds`` rounds count (one round can read several points off on a loaded machine).
    """
    cached = run.read("latency.json")
    if cached is not None:
        return cached
    x = run.splits.tensor_inputs(1)
    pruned = run.pruned()
    out: dict[str, Any] = {"batch": 1, "threads": 1, "rounds": rounds}
    for runtime in ("torch", "onnxruntime"):
        timing = time_against_dense(make_runner(run.dense, x, runtime), make_runner(pruned, x, runtime), rounds,
                                    repeats=repeats)
        out[runtime] = {"dense": timing.ms("dense"), "pruned": timing.ms("pruned")}
    (run.run_dir / "latency.json").write_text(json.dumps(out, indent=2))
    return out


# --------------------------------------------------------------------------------------------- figures
def _plot_channels(run: RunContents, policy: dict[str, float], path: Path) -> None:
    import matplotlib.pyplot as plt

    groups = run.space.groups
    keep = run.space.keep_units(policy) * np.array([g.unit_size for g in groups])
    dense = np.array([g.channels for g in groups])
    x = np.arange(len(groups))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(groups) + 2), 4.2))
    ax.bar(x, dense, color="#d0d7e1", label="dense")
    ax.bar(x, keep, color="#2f6db5", label="kept")
    for xi, k, d in zip(x, keep, dense, strict=True):
        ax.text(float(xi), float(k), f"{k / d:.0%}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, [g.name for g in groups], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("channels (heads x head size)")
    ax.set_title("Channels kept per coupled group, in forward order")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _running_best(values: list[float | None]) -> list[float]:
    best, out = -math.inf, []
    for v in values:
        if v is not None and v > best:
            best = v
        out.append(best if best > -math.inf else math.nan)
    return out


def _plot_progress(results: list[Result], path: Path) -> None:
    import matplotlib.pyplot as plt

    n = np.arange(1, len(results) + 1)
    fig, (ax_r, ax_a) = plt.subplots(2, 1, figsize=(7.5, 5.2), sharex=True)
    for ax, attr, label in ((ax_r, "reward", "reward"), (ax_a, "accuracy", "validation accuracy")):
        values = [getattr(r, attr) if r.ok else None for r in results]
        ok = [i for i, v in enumerate(values) if v is not None]
        ok_values = [float(v) for v in values if v is not None]
        ax.scatter(n[ok], ok_values, s=9, alpha=0.55, color="#2f6db5", label="evaluation")
        ax.plot(n, _running_best(values), color="#d1495b", lw=1.8, label="best so far")
        failed = [i for i, r in enumerate(results) if not r.ok]
        if failed:
            low = min(ok_values, default=0.0)
            ax.scatter(n[failed], [low] * len(failed), marker="x", color="#888", s=14,
                       label="failed or over budget")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax_r.legend(fontsize=8, loc="lower right")
    ax_a.set_xlabel("evaluation")
    ax_r.set_title("Search progress")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_pareto(results: list[Result], best: Result | None, dense_accuracy: float, budget: dict[str, Any],
                 scored_by: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    done = [r for r in results if r.failed is None and r.accuracy is not None]
    flops = np.array([r.flops_ratio for r in done])
    acc = np.array([r.accuracy for r in done], dtype=float)
    within = np.array([r.feasible for r in done], dtype=bool)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    if (~within).any():
        ax.scatter(flops[~within], acc[~within], s=10, color="#bbb", label="over budget")
    ax.scatter(flops[within], acc[within], s=12, alpha=0.7, color="#2f6db5", label="within budget")
    front = pareto_front(list(zip(flops.tolist(), acc.tolist(), strict=True)))
    if front:
        ax.step(flops[front], acc[front], where="post", color="#d1495b", lw=1.6, label="Pareto front")
    ax.scatter([1.0], [dense_accuracy], marker="*", s=160, color="#333", label="dense", zorder=5)
    if best is not None and best.accuracy is not None:
        ax.scatter([best.flops_ratio], [best.accuracy], s=140, facecolors="none", edgecolors="#e8a33d", lw=2.2,
                   label="chosen", zorder=6)
    if budget.get("flops") is not None and budget["flops"] <= 1:
        ax.axvline(budget["flops"], color="#d1495b", ls="--", lw=1.2, label=f"FLOPs budget {budget['flops']:.0%}")
    ax.set_xlabel("FLOPs, fraction of dense")
    ax.set_ylabel(f"validation accuracy ({scored_by})")
    ax.set_title("Every evaluation: accuracy vs FLOPs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------- HTML
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2rem auto;max-width:1000px;
color:#222;padding:0 1rem}h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;
border-bottom:1px solid #ddd;padding-bottom:.2rem}.sub{color:#666;margin-top:0}table{border-collapse:collapse;
margin:.5rem 0}td,th{border:1px solid #ddd;padding:.3rem .7rem;text-align:right}th{background:#f4f6f9}
td:first-child,th:first-child{text-align:left}.ok{color:#1b7a3a;font-weight:600}.bad{color:#b3261e;
font-weight:600}img{max-width:100%;border:1px solid #eee;margin:.4rem 0}pre{background:#f6f8fa;padding:.8rem;
overflow:auto;font-size:.85rem}.note{color:#666;font-size:.9rem}
"""


def _fmt(value: float | None, spec: str, missing: str = "—") -> str:
    return missing if value is None else format(value, spec)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


# how the search scored candidates (evaluation.kind), as the report's labels say it
SCORED_BY = {"adaptive_bn": "adaptive BN", "refit": "refitted by least squares", "pruningnet": "PruningNet weights"}
CHOICE_LABELS = {"generated": "weights generated by the PruningNet", "pruned": "trained model pruned by the policy"}


def _summary_rows(run: RunContents, latency: dict[str, Any], finetune: dict[str, Any] | None) -> list[list[str]]:
    s = run.summary
    d, p = s["dense"], s["pruned"]

    def ratio(a: float | None, b: float | None) -> str:
        return f"{a / b:.1%}" if a is not None and b else ""

    rows = [["FLOPs (MACs)", f"{d['flops'] / 1e6:.2f} M", f"{p['flops'] / 1e6:.2f} M", ratio(p["flops"], d["flops"])],
            ["parameters", f"{d['params'] / 1e3:.1f} k", f"{p['params'] / 1e3:.1f} k", ratio(p["params"], d["params"])]]
    for runtime, label in (("torch", "latency, torch (batch 1, 1 thread)"),
                           ("onnxruntime", "latency, onnxruntime (batch 1, 1 thread)")):
        t = latency[runtime]
        speed = t["dense"] / t["pruned"]  # next to the FLOPs ratio: what the FLOPs saved buy in time
        rows.append([label, f"{t['dense']:.3f} ms", f"{t['pruned']:.3f} ms",
                     ratio(t["pruned"], t["dense"]) + f" ({speed:.2f}× {'faster' if speed >= 1 else 'as fast'})"])
    rows.append([f"validation accuracy ({SCORED_BY[run.config.evaluation.kind]}, as searched)",
                 f"{d['val_accuracy']:.2%}", f"{p['val_accuracy']:.2%}", ""])
    choice = s.get("release_choice") or {}  # the evaluator had several models to ship: each one's score
    for name, val in ((k, v) for k, v in choice.items() if k != "shipped"):
        mark = " &mdash; shipped" if choice.get("shipped") == name else ""
        rows.append([f"validation accuracy, {CHOICE_LABELS.get(name, html.escape(name))}{mark}", "", f"{val:.2%}", ""])
    # "reconstructed": the shipped model's layers were refitted by least squares (no gradient step)
    label = "test accuracy, no fine-tune" + (" (least-squares reconstruction)" if s.get("reconstructed") else "")
    rows.append([label, f"{d['test_accuracy']:.2%}", f"{p['test_accuracy']:.2%}", ""])
    if finetune:
        shipped = finetune.get("shipped", "finetuned.pt")
        for r in finetune.get("runs", [finetune]):
            how = f"{r['epochs']:g} epoch(s){', distilled' if r['distill'] else ''}, lr {r['lr']:g}"
            mark = " &mdash; shipped (best on validation)" if r.get("file", "finetuned.pt") == shipped else ""
            rows.append([f"test accuracy after fine-tune {html.escape(r.get('file', ''))} ({how}){mark}",
                         f"{d['test_accuracy']:.2%}", f"{r['test_accuracy']:.2%}", ""])
    else:
        rows.append(["test accuracy after fine-tune", "", "not run yet: <code>autoprune finetune RUN_DIR</code>", ""])
    return rows


def _search_budget_note(s: dict[str, Any]) -> str:
    """How the search's budget differs from the user's: a latency margin, or a limit calibrated by measurement."""
    search_budget = s.get("search_budget", s["budget"])  # runs from before latency.margin have none
    calibration = s.get("latency_calibration")
    if calibration:
        first = calibration["rounds"][0]
        return (f" The latency table's {first['limit']:.1%} of dense measured {first['median']:.1%} on whole models, "
                f"so the search worked under a predicted <b>{calibration['limit']:.1%}</b>, where whole models "
                f"measured nearest the aim of {calibration['aim']:.1%} (latency.calibrate, latency.margin).")
    if search_budget != s["budget"]:
        return f" The search aimed under <b>{html.escape(search_budget)}</b> (latency.margin)."
    return ""


def _slower_warning(latency: dict[str, Any]) -> str:
    slower = [rt for rt in ("torch", "onnxruntime") if latency[rt]["pruned"] > latency[rt]["dense"]]
    if not slower:
        return ""
    return (f'<p class="bad">The pruned model runs slower than the dense one on {" and ".join(slower)}: fewer FLOPs '
            "do not make it faster when channel counts are not multiples of 8 (vectorised kernels pad or fall "
            "back). Search with <code>pruner.round_to: 8</code> or a latency budget.</p>")


@holding("autoprune report")
def build_report(run_dir: str | Path, *, latency_repeats: int = 15) -> Path:
    """Write ``report.html`` and its PNG figures into ``run_dir``; returns the HTML's path."""
    import matplotlib

    matplotlib.use("Agg")
    run = open_run(run_dir)
    results = run.evaluations()
    s = run.summary
    best = Result.from_dict(s["best"]) if s.get("best") else None
    # the file may have been edited: a policy the space does not know is an error, not a misleading report
    policy = run.space.validate(Policy.from_json((run.run_dir / "best_policy.json").read_text())).to_dict()
    budget = run.config.budget.model_dump()
    latency = measure_run_latency(run, repeats=latency_repeats)
    finetune, export = run.read("finetune.json"), run.read("export.json")

    figures = {name: run.run_dir / name for name in FIGURES}
    _plot_channels(run, policy, figures["channels.png"])
    _plot_progress(results, figures["progress.png"])
    _plot_pareto(results, best, s["dense"]["val_accuracy"], budget, SCORED_BY[run.config.evaluation.kind],
                 figures["pareto.png"])

    met = s["meets_budget"]
    verdict = f'<span class="{"ok" if met else "bad"}">{"met" if met else "NOT met"}</span>'
    failed = sum(r.failed is not None for r in results)
    groups = run.space.groups
    keep = run.space.keep_units(policy)
    policy_rows = [[html.escape(g.name), str(g.channels), str(int(k) * g.unit_size), f"{policy.get(g.name, 0.0):.3f}"]
                   for g, k in zip(groups, keep, strict=True)]
    top = sorted((r for r in results if r.ok), key=lambda r: -(r.reward or -math.inf))[:10]
    top_rows = [[str(results.index(r) + 1), f"{r.reward:.4f}", f"{r.accuracy:.2%}", f"{r.flops_ratio:.1%}",
                 f"{r.params_ratio:.1%}", _fmt(r.latency and r.latency * 1e3, ".3f")] for r in top]
    export_html = ""
    if export:
        export_rows = [[html.escape(fmt), html.escape(e["path"]), html.escape(e.get("source", "?")),
                        f"{e['max_abs_error']:.1e}", f"{e['latency_ms']:.3f} ms ({html.escape(e['runtime'])})"]
                       for fmt, e in export.items()]
        export_html = "<h2>Exported models</h2>" + _table(["format", "file", "exported from",
                                                            "max |difference| vs torch", "measured latency"],
                                                           export_rows)
    margin_note = _search_budget_note(s)
    config_yaml = (run.run_dir / "config.yaml").read_text()
    title = html.escape(run.run_dir.name)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>autoprune report: {title}</title>
<style>{_CSS}</style></head><body>
<h1>autoprune report</h1>
<p class="sub">{html.escape(str(run.run_dir))} · model <b>{html.escape(run.config.model.name)}</b> on
<b>{html.escape(run.config.data.name)}</b> · backend <b>{html.escape(s['backend'])}</b> ·
{s['evaluations']} evaluations ({failed} failed) in {s['search_seconds']:.0f} s · generated
{time.strftime('%Y-%m-%d %H:%M')}</p>
<p>Budget <b>{html.escape(s['budget'])}</b>: {verdict} by the physically pruned model's counted costs.{margin_note}</p>
<h2>Dense vs pruned</h2>
{_table(["", "dense", "pruned", "pruned / dense"], _summary_rows(run, latency, finetune))}
{_slower_warning(latency)}
<p class="note">Latency measured on this machine when the report was first built, dense and pruned interleaved
(medians of {latency.get("rounds", 1)} rounds); accuracies on the validation split (carved from TRAIN, used by
the search) and the TEST split (never seen by the search).</p>
<h2>Channels kept per group</h2>{_image(figures['channels.png'], 'channels kept per group')}
<h2>Search progress</h2>{_image(figures['progress.png'], 'reward and accuracy per evaluation')}
<h2>Accuracy vs FLOPs</h2>{_image(figures['pareto.png'], 'accuracy vs FLOPs with Pareto front')}
<h2>Best policy</h2>{_table(["group", "dense channels", "kept", "prune ratio"], policy_rows)}
<h2>Top evaluations</h2>{_table(["#", "reward", "val accuracy", "FLOPs", "params", "predicted latency (ms)"], top_rows)}
{export_html}
<h2>Configuration</h2><pre>{html.escape(config_yaml)}</pre>
</body></html>"""
    out = run.run_dir / "report.html"
    out.write_text(page)
    return out
