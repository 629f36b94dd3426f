"""report.json -> report.html: one self-contained page (inline CSS, plots as base64 PNG data URIs).

Rendered from the report alone, so a report can be re-rendered later or elsewhere
(`python -m secateurs.engine.report.html report.json`). Plots use matplotlib's Agg
canvas directly (no pyplot, no global backend switch). Every section is optional: a
report without a search or a recovery simply has no such plot.
"""

from __future__ import annotations

import base64
import html
import io
import json
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

BEFORE, AFTER, ACCENT = "#7f8c8d", "#1f77b4", "#d62728"

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;max-width:1100px;margin:24px auto;
padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#666;margin:0 0 16px}.verdict{display:inline-block;padding:2px 10px;border-radius:10px;font-weight:600}
.met{background:#e3f5e1;color:#1b5e20}.missed{background:#fdecea;color:#b71c1c}.none{background:#eee;color:#444}
table{border-collapse:collapse;margin:6px 0 12px}th,td{padding:4px 10px;border-bottom:1px solid #eee;text-align:right}
th:first-child,td:first-child{text-align:left}thead th{background:#f6f6f6}
figure{margin:10px 0 22px}figure img{max-width:100%;border:1px solid #eee}figcaption{color:#555;font-size:13px}
.note{color:#8a6d3b;background:#fcf8e3;padding:6px 10px;border-radius:4px}
code{font-size:12px;background:#f4f4f4;padding:1px 4px;border-radius:3px}
"""


def render_report_html(report: Mapping[str, Any]) -> str:
    """The whole page as a string."""
    sections = [_header(report), _summary(report)]
    for title, caption, plot in _plots(report):
        png = _png(plot)
        sections.append(f"<h2>{_e(title)}</h2><figure><img alt=\"{_e(title)}\" src=\"data:image/png;base64,"
                        f"{png}\"><figcaption>{_e(caption)}</figcaption></figure>")
    sections.append(_details(report))
    body = "\n".join(s for s in sections if s)
    title = f"secateurs report: {_dig(report, 'model', 'arch') or 'model'}"
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(title)}</title>"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>{CSS}</style></head>"
            f"<body>\n{body}\n</body></html>\n")


def write_report_html(report: Mapping[str, Any], path: Path) -> Path:
    """Render and write `path` (usually report.html beside report.json)."""
    path = Path(path)
    path.write_text(render_report_html(report), encoding="utf-8")
    return path


# -- text ------------------------------------------------------------------------------------

def _header(r: Mapping[str, Any]) -> str:
    model, target = r.get("model") or {}, r.get("target") or {}
    shape = "x".join(str(d) for d in model.get("input_shape") or [])
    if r.get("budget"):
        met = r.get("budget_met")
        verdict = (f"<span class=\"verdict {'met' if met else 'missed'}\">budget {'met' if met else 'NOT met'}"
                   f"</span>")
    else:
        verdict = "<span class=\"verdict none\">no budget: pruned at the requested ratios</span>"
    job = r.get("job") or {}
    when = job.get("finished_at") or ""
    job_line = f"job <code>{_e(job['id'])}</code> · " if job.get("id") else ""
    return (f"<h1>{_e(model.get('arch', ''))} <small>{_e(shape)}</small></h1>"
            f"<p class=\"sub\">{job_line}{_e(when)} · {_e(target.get('runtime', ''))}, "
            f"{_e(target.get('threads', ''))} threads, batch {_e(target.get('batch', ''))} · "
            f"{_e(_dig(r, 'device', 'cpu') or '')}</p><p>{verdict}{_budget_text(r)}</p>")


def _budget_text(r: Mapping[str, Any]) -> str:
    budget = r.get("budget")
    if not budget:
        return ""
    names = {"latency_ms": "latency ≤ {} ms", "speedup": "speedup ≥ {}×", "size_bytes": "ONNX ≤ {:,} bytes",
             "params": "params ≤ {:,}", "macs": "MACs ≤ {:,}", "max_accuracy_drop": "accuracy drop ≤ {}"}
    limits = [names[k].format(v) for k, v in budget.items() if k in names]
    text = f" {', '.join(limits)} at p{_num(budget.get('percentile', 50))}"
    shortfall = r.get("budget_shortfall")
    if shortfall:  # the relative excess over the tightest missed limit
        text += f"; short by {shortfall:.0%}" if shortfall < 1 else f"; {shortfall + 1:.1f}× off"
    reason = _dig(r, "search", "reason")
    if reason:
        text += f" — {reason}"
    return _e(text)


def _summary(r: Mapping[str, Any]) -> str:
    lat, size = r.get("latency") or {}, r.get("size") or {}
    q = _num(_dig(r, "target", "percentile") or 50)
    base, comp = lat.get("baseline") or {}, lat.get("compressed") or {}
    sb, sc = size.get("baseline") or {}, size.get("compressed") or {}
    qb, qa = _dig(r, "quality", "before") or {}, _dig(r, "quality", "after") or {}
    rows: list[tuple[str, str, str, str]] = []
    for key, label in ((f"p{q}_ms", f"p{q} latency (ms)"), ("mean_ms", "mean latency (ms)"),
                       ("p99_ms", "p99 latency (ms)"), ("throughput_per_s", "throughput (/s)")):
        if key in base and key in comp:
            ratio = base[key] / comp[key] if comp[key] else float("nan")
            if key == "throughput_per_s":
                ratio = 1 / ratio if ratio else float("nan")
            rows.append((label, f"{base[key]:.4g}", f"{comp[key]:.4g}", f"{ratio:.2f}×"))
    for key, label in (("params", "parameters"), ("macs", "MACs"), ("onnx_bytes", "ONNX bytes")):
        if key in sb and key in sc:
            rows.append((label, f"{sb[key]:,}", f"{sc[key]:,}", f"{sb[key] / max(sc[key], 1):.2f}× smaller"))
    if qb.get("accuracy") is not None and qa.get("accuracy") is not None:
        rows.append(("accuracy", f"{qb['accuracy']:.2%}", f"{qa['accuracy']:.2%}",
                     f"{(qa['accuracy'] - qb['accuracy']) * 100:+.2f} points"))
    if qb.get("miou") is not None and qa.get("miou") is not None:
        rows.append((f"mean IoU ({qa.get('miou_classes', 0)} classes)", f"{qb['miou']:.2%}", f"{qa['miou']:.2%}",
                     f"{(qa['miou'] - qb['miou']) * 100:+.2f} points"))
    if qb.get("map") is not None and qa.get("map") is not None:
        for key, label in (("map", "box mAP, IoU .50:.95"), ("map50", "box AP, IoU .50")):
            rows.append((f"{label} ({qa.get('map_boxes', 0):,} boxes)", f"{qb[key]:.2%}", f"{qa[key]:.2%}",
                         f"{(qa[key] - qb[key]) * 100:+.2f} points"))
    if "agreement" in qa:
        rows.append(("top-1 agreement with the original", "100%", f"{qa['agreement']:.2%}", ""))
    if "kl" in qa:
        rows.append(("KL divergence to the original", "0", f"{qa['kl']:.4g}", ""))
    if qa.get("box_agreement") is not None:
        rows.append(("box IoU with the original (score-weighted)", "100%", f"{qa['box_agreement']:.2%}", ""))
    table = _table(("", "before", "after", "change"), rows)
    notes = []
    stable = base.get("stable", True) and comp.get("stable", True)
    if not stable:
        notes.append("latency measurement not stable: the protocol's time cap was reached")
    if _dig(r, "data", "note"):
        notes.append(r["data"]["note"])
    if _dig(r, "recovery", "note"):
        notes.append(f"recovery: {r['recovery']['note']}")
    floor = r.get("accuracy_floor")
    if floor:
        notes.append(f"accuracy floor (max drop {floor['max_drop']:.2%}, measured as {floor['measured_as']}): "
                     + ("met" if floor["met"] else f"missed by {floor['missed_by']:.2%}"))
    return "<h2>Summary</h2>" + table + "".join(f"<p class=\"note\">{_e(n)}</p>" for n in notes)


def _details(r: Mapping[str, Any]) -> str:
    parts = ["<h2>How it was measured</h2>"]
    protocol = r.get("protocol") or {}
    if protocol:
        parts.append("<p>Latency protocol: " + _e(", ".join(f"{k}={v}" for k, v in protocol.items()))
                     + ". Baseline and compressed model measured interleaved in one process.</p>")
    lat = r.get("latency") or {}
    stats_rows = []
    for key in ("n", "mean_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "min_ms", "max_ms", "std_ms", "cov",
                "stable", "duration_s"):
        b, c = _dig(lat, "baseline", key), _dig(lat, "compressed", key)
        if b is not None and c is not None:
            stats_rows.append((key, _fmt(b), _fmt(c)))
    if stats_rows:
        parts.append(_table(("latency statistic", "baseline", "compressed"), stats_rows))
    parity = r.get("parity") or {}
    if parity:
        own = (f" (PyTorch's own float32: {_fmt(parity['pytorch_diff'])})"
               if parity.get("pytorch_diff") is not None else "")
        parts.append(f"<p>Parity (ONNX Runtime vs the model in {_e(parity.get('reference', 'float32'))}, mode "
                     f"{_e(parity.get('mode', ''))}): relative max difference {_fmt(parity.get('relative_diff'))}"
                     f"{own}, top-1 agreement {_fmt(parity.get('top1_agreement'))}, "
                     f"{'passed' if parity.get('passed') else 'FAILED'}.</p>")
    device = r.get("device") or {}
    if device:
        parts.append(_table(("device", ""), [(k, _fmt(v)) for k, v in device.items()]))
    pruning = r.get("pruning") or {}
    groups = pruning.get("groups") or []
    if groups:
        parts.append(_table(("group", "unit", "before", "after", "removed"),
                            [(g.get("name", ""), g.get("unit", ""), _fmt(g.get("before")), _fmt(g.get("after")),
                              f"{_removed(g):.0%}") for g in groups]))
    blocks = _dig(r, "search", "blocks") or []
    if blocks:
        parts.append(f"<p>Depth pruning: {sum(1 for b in blocks if b.get('dropped'))} of {len(blocks)} removable "
                     "blocks dropped. Latency share: the block's layers measured alone, scaled by the end-to-end "
                     "measurement of dropping its whole stage of alike blocks.</p>")
        parts.append(_table(("block", "kind", "params", "latency share", "loss when dropped alone", "dropped"),
                            [(b.get("name", ""), b.get("kind", ""), _fmt(b.get("params")),
                              "" if b.get("latency_share") is None else f"{b['latency_share']:.1%}",
                              _fmt(b.get("loss")), "dropped" if b.get("dropped") else "") for b in blocks]))
    if r.get("stage_seconds"):
        parts.append(_table(("stage", "seconds"), [(k, f"{v:.2f}") for k, v in r["stage_seconds"].items()]))
    versions = r.get("versions") or {}
    extra = [("seed", _fmt(r.get("seed"))), ("schema_version", _fmt(r.get("schema_version")))]
    if _dig(r, "model", "weights_sha256"):
        extra.append(("weights sha256", r["model"]["weights_sha256"]))
    parts.append(_table(("versions", ""), [(k, _fmt(v)) for k, v in versions.items()] + extra))
    return "".join(parts)


def _table(head: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


# -- plots -----------------------------------------------------------------------------------

Plot = Callable[[Any], None]  # draws on a matplotlib Figure


def _plots(r: Mapping[str, Any]) -> list[tuple[str, str, Plot]]:
    """(title, caption, draw) for each plot the report has data for."""
    plots: list[tuple[str, str, Plot]] = []
    groups = [g for g in _dig(r, "pruning", "groups") or [] if g.get("before")]
    if groups:
        plots.append(("Per-group pruning", "Fraction of each group's channels (or heads) removed; the label is "
                      "the width kept out of the original.", lambda fig: _plot_groups(fig, groups)))
    lat = r.get("latency") or {}
    if lat.get("baseline") and lat.get("compressed"):
        plots.append(("Latency distribution", "Every measured run of the baseline and the compressed model, "
                      "interleaved in one process; dashed lines mark the medians.",
                      lambda fig: _plot_latency(fig, lat)))
    trace = _dig(r, "search", "trace") or []
    if trace:
        plots.append(("Search trace", "Each plan the search measured end to end: what the search predicted for "
                      "the budgeted quantity against the measurement (dotted: exact), and quality lost against the "
                      "measured speedup.",
                      lambda fig: _plot_search(fig, r["search"])))
    history = _dig(r, "recovery", "history") or []
    if history:
        plots.append(("Recovery", "Per epoch of fine-tuning/distillation: training loss, validation quality and "
                      "learning rate.", lambda fig: _plot_recovery(fig, history)))
    if r.get("stage_seconds"):
        plots.append(("Where the time went", "Wall time of each pipeline stage.",
                      lambda fig: _plot_stages(fig, r["stage_seconds"])))
    return plots


def _png(draw: Plot) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    draw(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _plot_groups(fig: Any, groups: list[Mapping[str, Any]]) -> None:
    fig.set_figheight(max(2.4, 0.28 * len(groups) + 1.0))
    ax = fig.add_subplot()
    names = [g.get("name", "?") for g in groups]
    removed = [_removed(g) for g in groups]
    bars = ax.barh(range(len(groups)), removed, color=[ACCENT if g.get("unit") == "heads" else AFTER
                                                        for g in groups])
    for bar, g in zip(bars, groups):
        ax.text(bar.get_width() + 0.01, bar.get_y() + bar.get_height() / 2, f"{g.get('after')}/{g.get('before')}",
                va="center", fontsize=8)
    ax.set_yticks(range(len(groups)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.12)
    ax.set_xlabel("fraction removed")


def _plot_latency(fig: Any, lat: Mapping[str, Any]) -> None:
    ax = fig.add_subplot()
    drawn = False
    for key, label, color in (("baseline", "baseline", BEFORE), ("compressed", "compressed", AFTER)):
        stats = lat[key]
        hist = stats.get("histogram") or {}
        edges, counts = hist.get("edges_ms") or [], hist.get("counts") or []
        if len(edges) == len(counts) + 1 and counts:
            ax.stairs(counts, edges, label=f"{label} (n={stats.get('n')})", color=color, fill=True, alpha=0.45)
            ax.axvline(stats["p50_ms"], color=color, linestyle="--", linewidth=1)
            drawn = True
    if drawn:
        ax.set_xscale("log")
        ax.set_ylabel("runs")
    else:  # a report without samples: the percentiles it has
        qs = ("min_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms")
        for key, color in (("baseline", BEFORE), ("compressed", AFTER)):
            ax.plot(range(len(qs)), [lat[key].get(q) for q in qs], marker="o", color=color, label=key)
        ax.set_xticks(range(len(qs)), [q[:-3] for q in qs])
    ax.set_xlabel("latency (ms)" if drawn else "statistic")
    ax.legend(loc="upper right", fontsize=8)


def _plot_search(fig: Any, search: Mapping[str, Any]) -> None:
    trace = search.get("trace") or []
    chosen = search.get("chosen")  # the trace id of the plan delivered
    left, right = fig.subplots(1, 2)
    metric = next((m for m in ("latency_ms", "size_bytes", "params", "macs")
                   if any(m in (c.get("predicted") or {}) and m in (c.get("measured") or {}) for c in trace)), None)
    if metric is not None:
        points = [(c["predicted"][metric], c["measured"][metric], c) for c in trace
                  if metric in (c.get("predicted") or {}) and metric in (c.get("measured") or {})]
        for p, m, c in points:
            left.scatter(p, m, color=_stage_color(c), marker="*" if c.get("id") == chosen else "o", s=60)
            left.annotate(str(c.get("id")), (p, m), fontsize=7, xytext=(3, 3), textcoords="offset points")
        lo = min(min(p, m) for p, m, _ in points)
        hi = max(max(p, m) for p, m, _ in points)
        left.plot([lo, hi], [lo, hi], color="#999", linewidth=1, linestyle=":")
        left.set_xlabel(f"predicted {metric}")
        left.set_ylabel(f"measured {metric}")
        left.set_title(f"{metric}: predicted vs measured", fontsize=10)
    else:
        left.text(0.5, 0.5, "no predictions recorded", ha="center", va="center", transform=left.transAxes)
    for c in trace:
        speedup, loss = (c.get("measured") or {}).get("speedup"), (c.get("quality") or {}).get("loss")
        if speedup is None or loss is None:
            continue
        right.scatter(speedup, loss, color=_stage_color(c), marker="*" if c.get("id") == chosen else "o", s=60,
                      label=c.get("stage"))
        right.annotate(str(c.get("id")), (speedup, loss), fontsize=7, xytext=(3, 3), textcoords="offset points")
    right.set_xlabel("measured speedup (×)")
    right.set_ylabel("quality loss (lower is better)")
    right.set_title("quality vs speed (★ chosen)", fontsize=10)
    handles, labels = right.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    if unique:
        right.legend(unique.values(), unique.keys(), fontsize=8)


def _stage_color(candidate: Mapping[str, Any]) -> str:
    return {"search": AFTER, "uniform": BEFORE}.get(candidate.get("stage", ""), ACCENT)


def _plot_recovery(fig: Any, history: list[Mapping[str, Any]]) -> None:
    loss_ax, quality_ax, lr_ax = fig.subplots(1, 3)
    x = list(range(1, len(history) + 1))  # epochs over all progressive steps
    for key, color in (("loss", AFTER), ("ce", BEFORE), ("kd", ACCENT)):
        ys = [row.get(key) for row in history]
        if any(y for y in ys if y is not None):
            loss_ax.plot(x, ys, marker="o", color=color, label=key)
    loss_ax.set_title("training loss", fontsize=10)
    if loss_ax.get_lines():
        loss_ax.legend(fontsize=8)
    for key, color in (("val_accuracy", AFTER), ("val_agreement", BEFORE), ("train_accuracy", ACCENT)):
        ys = [row.get(key) for row in history]
        if any(y is not None for y in ys):
            quality_ax.plot(x, ys, marker="o", color=color, label=key)
    quality_ax.set_ylim(0, 1.02)
    quality_ax.set_title("quality", fontsize=10)
    if quality_ax.get_lines():
        quality_ax.legend(fontsize=8)
    lr_ax.plot(x, [row.get("lr") for row in history], marker="o", color=AFTER)
    lr_ax.set_title("learning rate (end of epoch)", fontsize=10)
    for ax in (loss_ax, quality_ax, lr_ax):
        ax.set_xlabel("epoch")


def _plot_stages(fig: Any, stages: Mapping[str, float]) -> None:
    fig.set_figheight(max(2.0, 0.3 * len(stages) + 0.9))
    ax = fig.add_subplot()
    names = list(stages)
    ax.barh(range(len(names)), [stages[n] for n in names], color=AFTER)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel("seconds")


# -- small helpers ---------------------------------------------------------------------------

def _removed(group: Mapping[str, Any]) -> float:
    before, after = group.get("before") or 0, group.get("after") or 0
    return 1 - after / before if before else 0.0


def _e(value: Any) -> str:
    return html.escape(str(value))


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower() if isinstance(value, bool) else "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _dig(mapping: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(mapping, Mapping):
            return None
        mapping = mapping.get(key)
    return mapping


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m secateurs.engine.report.html report.json [report.html]`"""
    args = list(sys.argv[1:] if argv is None else argv)
    if not 1 <= len(args) <= 2:
        print("usage: python -m secateurs.engine.report.html report.json [report.html]", file=sys.stderr)
        return 2
    source = Path(args[0])
    target = Path(args[1]) if len(args) == 2 else source.with_suffix(".html")
    print(write_report_html(json.loads(source.read_text()), target))
    return 0


if __name__ == "__main__":
    sys.exit(main())
