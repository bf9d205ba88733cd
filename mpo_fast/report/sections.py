"""The report's sections as HTML fragments. Every text from the run (responses, prompts,
rationales, analyses, rubric items) is escaped: it is untrusted model output."""
from __future__ import annotations

import math
import statistics
from html import escape
from typing import Any, Iterable

from ..evaluation.aggregate import ratings_from_results
from ..rubrics.diff import diff_rubrics
from .run_data import RunData
from .charts import bars, line_chart
from .chart_spec import Chart, Marker, Series, Span

STAGES = (("generate_s", "generate"), ("judge_s", "judge"), ("update_s", "update"), ("evolve_s", "meta (evolve)"))
MAX_BROWSER_STEPS = 200  # a 10,000-step run would otherwise write ~30,000 samples into one page


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _series(metrics: list[dict], key: str, name: str | None = None, **kw) -> Series:
    return Series(name or key, [(r["step"], _num(r.get(key))) for r in metrics], **kw)


def _pct(d: dict | None) -> str:
    if not d or d.get("value") is None:
        return "-"
    lo, hi = d.get("low"), d.get("high")
    ci = f" <span class=ci>[{100 * lo:.1f}, {100 * hi:.1f}]</span>" if lo is not None and hi is not None else ""
    return f"{100 * d['value']:.1f}%{ci}"


def _elo(d: dict) -> str:
    ci = f" <span class=ci>[{d['low']:.0f}, {d['high']:.0f}]</span>" if d.get("low") is not None else ""
    return f"{d['value']:.0f}{ci}"


def version_spans(metrics: list[dict]) -> list[Span]:
    spans: list[Span] = []
    for r in metrics:
        v, step = r.get("rubric_version"), r["step"]
        if spans and spans[-1].label == f"rubric v{v}":
            spans[-1].end = step + 0.5
        else:
            spans.append(Span(step - 0.5, step + 0.5, f"rubric v{v}"))
    return spans


def swap_markers(data: RunData) -> list[Marker]:
    markers = [Marker(r["step"], f"step {r['step']}: rubric v{r['rubric_evolved']} created", "#555")
               for r in data.metrics if r.get("rubric_evolved")]
    markers += [Marker(r["step"], f"step {r['step']}: " + "; ".join(r["signals"]), "#c0392b")
                for r in data.metrics if r.get("signals")]
    return markers


def training_section(data: RunData) -> str:
    m = data.metrics
    if not m:
        return "<p>No metrics logged yet.</p>"
    spans, markers = version_spans(m), swap_markers(data)
    failure = [Series("failed share of the step", [(r["step"], (_num(r.get("judge_failed")) or 0) / r["samples"]
                                                    if r.get("samples") else None) for r in m]),
               _series(m, "judge_failure_rate", "cumulative rate", dashed=True)]
    reward = [_series(m, "reward_mean", "mean reward")]
    for key, name in (("judge_reward_mean", "judge reward"), ("rule_reward_mean", "rule reward")):
        # Only where it differs from the reward (a task with a rule reward): else it hides the mean.
        # (1e-5: reward_mean comes from float32 tensors, judge_reward_mean from Python floats)
        if any(_num(r.get(key)) is not None and abs(_num(r.get(key)) - (_num(r.get("reward_mean")) or 0.0)) > 1e-5
               for r in m):
            reward.append(_series(m, key, name, dashed=True))
    charts = [
        Chart("Reward per step (shaded: rubric versions; grey marks: rubric swaps; red marks: hacking signals)",
              reward, "reward", spans=spans, markers=markers),
        Chart("Judge failure rate", failure, "share of judgements", markers=markers),
        Chart("KL to the reference", [_series(m, "kl", "kl"), _series(m, "approx_kl", "approx kl (old policy)", dashed=True)],
              "nats / token"),
        Chart("Response length", [_series(m, "response_length_mean", "mean"), _series(m, "response_length_max", "max", dashed=True)],
              "tokens", spans=spans),
        Chart("Time per stage", [_series(m, key, name) for key, name in STAGES], "seconds"),
        Chart("Throughput", [_series(m, "samples_per_s", "samples/s"), _series(m, "generated_tokens_per_s", "generated tokens/s / 100")],
              "per second"),
        Chart("Loss and gradient norm", [_series(m, "loss"), _series(m, "grad_norm", "grad norm", dashed=True)]),
    ]
    tokens = charts[5].series[1]
    tokens.points = [(x, None if y is None else y / 100) for x, y in tokens.points]  # same axis as samples/s
    entropy_keys = sorted({k for r in m for k in r if "entropy" in k})
    if entropy_keys:
        charts.insert(4, Chart("Entropy", [_series(m, k) for k in entropy_keys], "nats"))
    parts = [f'<div class="chart-box">{line_chart(c)}</div>' for c in charts]
    if not entropy_keys:
        parts.append('<p class="note">Entropy: not logged by this run (metrics.jsonl has no entropy column).</p>')
    totals = {name: sum(_num(r.get(key)) or 0.0 for r in m) for key, name in STAGES}
    all_s = sum(totals.values()) or 1.0
    parts.append("<table><tr><th>stage</th><th>total seconds</th><th>share</th></tr>" + "".join(
        f"<tr><td>{escape(n)}</td><td>{t:.1f}</td><td>{100 * t / all_s:.0f}%</td></tr>" for n, t in totals.items()) + "</table>")
    return "\n".join(parts)


def _item_scores(data: RunData, version: int, k: int) -> list[list[float]]:
    per = [[] for _ in range(k)]
    for s in data.samples:
        if s.get("rubric_version") != version:
            continue
        for j, v in enumerate(s.get("item_scores") or []):
            if j < k and _num(v) is not None:
                per[j].append(float(v))
    return per


def _histogram(values: list[float], max_points: float) -> tuple[list[str], list[float]]:
    top = int(math.ceil(max_points))
    if top <= 10:
        labels = [str(i) for i in range(top + 1)]
        counts = [0.0] * (top + 1)
        for v in values:
            counts[min(max(int(round(v)), 0), top)] += 1
        return labels, counts
    bins = 10
    counts = [0.0] * bins
    for v in values:
        counts[min(int(v / max_points * bins), bins - 1)] += 1
    return [f"{max_points * i / bins:.0f}" for i in range(bins)], counts


_DIFF_CLASSES = {"+": "added", "-": "removed", "~": "reworded"}


def _diff_html(diff: str) -> str:
    """diff_rubrics' lines, coloured: + added, - removed, ~ reworded / re-pointed / moved."""
    out = []
    for line in diff.splitlines():
        kind = _DIFF_CLASSES.get(line[:1]) if not line.startswith(("---", "+++")) else None
        out.append(f'<span class="{kind}">{escape(line)}</span>' if kind else escape(line))
    return "\n".join(out)


def rubric_section(data: RunData) -> str:
    if not data.versions:
        return "<p>No rubric store in this run.</p>"
    parts = []
    previous = None
    for v in data.versions:
        rubric = v.rubric
        parent = f", refined from {escape(v.parent)}" if v.parent else ""
        rows = []
        scores = _item_scores(data, v.version, len(rubric.items))
        for j, item in enumerate(rubric.items):
            values = scores[j]
            stats = (f"{statistics.fmean(values):.2f} (n={len(values)})" if values else "no scores")
            labels, counts = _histogram(values, item.max_points)
            histogram = bars(f"scores of item {j + 1}", labels, counts) if values else ""
            rows.append(f"<tr><td>{j + 1}</td><td><b>{escape(item.title)}</b><br><span class=desc>{escape(item.description)}"
                        f"</span></td><td>{item.max_points:g}</td><td>{stats}</td><td>{histogram}</td></tr>")
        diff = (diff_rubrics(previous.rubric, rubric, label_a=f"v{previous.version}", label_b=f"v{v.version}")
                if previous is not None else "(the initial rubric)")
        analyses = "".join(f"<details><summary>analysis {i + 1}</summary><pre>{escape(a)}</pre></details>"
                           for i, a in enumerate(v.analyses)) or "<p class=note>No analyses recorded.</p>"
        parts.append(
            f'<section class="rubric-version" id="rubric-v{v.version}"><h3>Rubric v{v.version} '
            f'<span class=meta>{escape(v.hash)}, created at step {v.step}{parent}</span></h3>'
            f"<table><tr><th>#</th><th>item</th><th>points</th><th>mean score</th><th>score distribution</th></tr>"
            f"{''.join(rows)}</table>"
            f'<h4>Diff to the previous version</h4><pre class="rubric-diff">{_diff_html(diff)}</pre>'
            f"<h4>Analyses that produced it</h4>{analyses}</section>")
        previous = v
    return "\n".join(parts)


def signals_section(data: RunData) -> str:
    rows = [(r["step"], s) for r in data.metrics for s in (r.get("signals") or [])]
    if not rows:
        return "<p>No reward-hacking signal fired (length collapse, reward saturation).</p>"
    return "<table><tr><th>step</th><th>signal</th></tr>" + "".join(
        f"<tr><td>{step}</td><td>{escape(str(s))}</td></tr>" for step, s in rows) + "</table>"


def _sample_card(kind: str, s: dict, titles: list[str]) -> str:
    reward = s.get("reward")
    scores = s.get("item_scores") or []
    items = "".join(f"<tr><td>{escape(titles[j] if j < len(titles) else f'item {j + 1}')}</td>"
                    f"<td>{'-' if _num(v) is None else f'{v:.2f}'}</td></tr>" for j, v in enumerate(scores))
    return (f'<div class="sample"><h5>{kind}: reward {"failed" if reward is None else f"{reward:.3f}"} '
            f'<span class=meta>prompt {escape(str(s.get("prompt_id")))}, sample {s.get("sample_index")}, '
            f'{s.get("length")} tokens</span></h5>'
            f'<details><summary>prompt</summary><pre>{escape(str(s.get("prompt", "")))}</pre></details>'
            f'<pre class="response">{escape(str(s.get("response", "")))}</pre>'
            f"<table class=scores>{items}</table>"
            f'<p class="rationale"><b>rationale:</b> {escape(str(s.get("rationale") or s.get("judge_error") or ""))}</p></div>')


def sample_browser(data: RunData) -> str:
    if not data.samples:
        return "<p>No samples logged.</p>"
    titles = {v.version: [i.title for i in v.rubric.items] for v in data.versions}
    by_step: dict[int, list[dict]] = {}
    for s in data.samples:
        by_step.setdefault(int(s["step"]), []).append(s)
    steps = sorted(by_step)
    stride = max(1, math.ceil(len(steps) / MAX_BROWSER_STEPS))
    shown = steps[::stride]
    if steps[-1] not in shown:
        shown.append(steps[-1])
    parts = []
    if stride > 1:
        parts.append(f"<p class=note>Every {stride}th step shown ({len(shown)} of {len(steps)}).</p>")
    for step in shown:
        rows = by_step[step]
        valid = sorted((s for s in rows if s.get("reward") is not None), key=lambda s: s["reward"])
        failed = len(rows) - len(valid)
        cards = []
        if valid:
            t = titles.get(valid[0].get("rubric_version"), [])
            picks = [("best", valid[-1]), ("median", valid[len(valid) // 2]), ("worst", valid[0])]
            cards = [_sample_card(kind, s, t) for kind, s in picks]
        note = f", {failed} failed judgement(s)" if failed else ""
        parts.append(f'<details class="step" id="samples-step-{step}"><summary>step {step} '
                     f'({len(rows)} samples{note})</summary>{"".join(cards) or "<p>every judgement failed</p>"}</details>')
    return "\n".join(parts)


def _combined_ratings(evals: list[tuple[str, dict]]) -> str:
    ratings = ratings_from_results([e for _, e in evals])
    if ratings is None or len(ratings.policies) < 3:
        return ""
    rows = sorted(ratings.policies, key=lambda p: -ratings.elo[p].value)
    return ("<h3>All policies compared (Bradley-Terry over every eval file, bootstrap over prompts)</h3>"
            "<table><tr><th>policy</th><th>Elo [95% CI]</th><th>games</th></tr>" + "".join(
                f"<tr><td>{escape(p)}</td><td>{ratings.elo[p].format(digits=0)}</td><td>{ratings.games[p]}</td></tr>"
                for p in rows) + "</table>")


def eval_section(data: RunData) -> str:
    if not data.evals:
        return ("<p>No evaluation yet. Run <code>mpo-fast eval RUN_DIR --against base</code> to compare this run "
                "with its starting model; the results appear here.</p>")
    parts = []
    for name, e in data.evals:
        a, b = e["policies"]["a"]["id"], e["policies"]["b"]["id"]
        head = (f"<h3>{escape(name)}: {escape(a)} vs {escape(b)}</h3><p class=meta>{escape(e['task'])}, split "
                f"{escape(str(e['split']))}, {e['prompts']} prompts, {e.get('resamples', '?')} bootstrap resamples</p>")
        rows = []
        p = e.get("pairwise")
        if p:
            judge = e.get("judge") or {}
            warn = ("" if judge.get("separate_from_training") else
                    "<p class=warn>Judged by the training judge: the policy was optimised against it, so these numbers "
                    "flatter the trained policy. Use a separate judge (--judge.base_url) for a real result.</p>")
            rows.append(f"<tr><td>win / tie / loss</td><td>{p['wins']} / {p['ties']} / {p['losses']}</td></tr>"
                        f"<tr><td>judge failures (left out)</td><td>{p['judge_failures']}</td></tr>"
                        f"<tr><td>win rate of {escape(a)}</td><td>{_pct(p['win_rate'])}</td></tr>"
                        f"<tr><td>length-controlled win rate</td><td>{_pct(p['lc_win_rate'])}</td></tr>"
                        f"<tr><td>position bias (verdict followed the position)</td><td>{_pct(p['position_bias'])}</td></tr>"
                        f"<tr><td>judge</td><td>{escape(str(judge.get('id', '?')))}</td></tr>")
            for pol, r in (e.get("ratings") or {}).items():
                rows.append(f"<tr><td>Elo {escape(pol)}</td><td>{_elo(r)}</td></tr>")
            head += warn
        for pol, acc in (e.get("accuracy") or {}).items():
            rows.append(f"<tr><td>accuracy {escape(pol)}</td><td>{_pct(acc['accuracy'])} ({acc['correct']}/{acc['total']}, "
                        f"{acc['unanswered']} unanswered)</td></tr>")
        for pol, scores in (e.get("rouge") or {}).items():
            rows.append(f"<tr><td>ROUGE {escape(pol)}</td><td>" + ", ".join(
                f"{escape(t)} {_pct(s)}" for t, s in scores.items()) + "</td></tr>")
        for pol, length in (e.get("mean_length_chars") or {}).items():
            rows.append(f"<tr><td>mean length {escape(pol)}</td><td>{length:.0f} characters</td></tr>")
        parts.append(head + '<table class="eval">' + "".join(rows) + "</table>")
    parts.append(_combined_ratings(data.evals))
    return "\n".join(parts)


def overview_section(data: RunData) -> str:
    c = data.config
    m = data.metrics
    facts: list[tuple[str, Any]] = [
        ("run directory", str(data.directory)), ("task", data.task),
        ("policy model", c.get("model", {}).get("name_or_path", "?")),
        ("judge", f"{c.get('judge', {}).get('backend', '?')} {c.get('judge', {}).get('model', '')}, "
                  f"{c.get('judge', {}).get('scoring', '')}/{c.get('judge', {}).get('call_mode', '')}"),
        ("meta-judge", "on" if c.get("meta", {}).get("enabled", True) else "off (fixed rubric)"),
        ("steps logged", m[-1]["step"] if m else 0), ("rubric versions", len(data.versions)),
    ]
    if m:
        judged = sum(int(r.get("samples", 0)) for r in m)
        failed = int(m[-1].get("judge_failed_total", 0))
        facts.append(("judge failures", f"{failed} of {judged} ({100 * failed / max(judged, 1):.1f}%)"))
        first = [_num(r.get("reward_mean")) for r in m[:5]]
        last = [_num(r.get("reward_mean")) for r in m[-5:]]
        f = [x for x in first if x is not None]
        l_ = [x for x in last if x is not None]
        if f and l_:
            facts.append(("mean reward, first 5 / last 5 steps", f"{statistics.fmean(f):.3f} / {statistics.fmean(l_):.3f} "
                          "(rewards under different rubric versions are not comparable)"))
    if data.summary and data.summary.get("wall_seconds"):
        facts.append(("wall time", f"{data.summary['wall_seconds']:.0f} s"))
    return "<table>" + "".join(f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>" for k, v in facts) + "</table>"


def join(parts: Iterable[str]) -> str:
    return "\n".join(parts)
