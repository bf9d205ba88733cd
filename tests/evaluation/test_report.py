"""`mpo-fast report`: one self-contained HTML file with the expected sections, real plots, the
rubric diff, the sample browser and the eval table; untrusted text escaped."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest

from mpo_fast.cli import EXIT_BAD_INPUT, main
from mpo_fast.report import load_run, render_report, write_report
from tests.evaluation.synthetic_run import INJECTION, eval_result, make_run

SVG = re.compile(r"<svg\b.*?</svg>", re.S)


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.ids.update(v for k, v in attrs if k == "id")


def _parse(html: str) -> _Tags:
    p = _Tags()
    p.feed(html)
    return p


@pytest.fixture
def run_dir(tmp_path):
    run = make_run(tmp_path)
    (run / "eval").mkdir()
    outcomes = ["win"] * 6 + ["tie"] * 2 + ["loss"] * 2 + ["failed"]
    (run / "eval" / "mpo_vs_base.json").write_text(json.dumps(eval_result("mpo", "base", outcomes)))
    (run / "eval" / "fixed_vs_base.json").write_text(json.dumps(eval_result("fixed", "base", ["win", "loss", "tie"] * 3 + ["win"])))
    (run / "eval" / "mpo_vs_fixed.json").write_text(json.dumps(eval_result("mpo", "fixed", ["win"] * 7 + ["loss"] * 3)))
    (run / "eval" / "broken.json").write_text("{not json")
    return run


def test_report_has_every_section_and_is_self_contained(run_dir):
    path = write_report(run_dir)
    assert path == run_dir / "report.html"
    html = path.read_text(encoding="utf-8")
    tags = _parse(html)
    for section in ("overview", "eval", "training", "rubrics", "signals", "samples", "rubric-v1", "rubric-v2", "rubric-v3"):
        assert section in tags.ids, section
    assert "script" not in tags.tags and "link" not in tags.tags and "img" not in tags.tags
    # no network: nothing is fetched (URLs appear only as XML namespaces and in SVG metadata)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html) and "@import" not in html
    assert not re.search(r"""url\(\s*["']?(https?:|//)""", html)  # url(#clip) references stay in the page
    assert INJECTION not in html and "&lt;script&gt;alert" in html


def test_plots_are_real_svg_with_lines_spans_and_markers(run_dir):
    pytest.importorskip("matplotlib")
    html = render_report(load_run(run_dir))
    svgs = SVG.findall(html)
    assert len(svgs) >= 7
    for s in svgs:
        ET.fromstring(s)  # well-formed XML
    reward = next(s for s in svgs if "Reward per step" in s)
    root = ET.fromstring(reward)
    ns = "{http://www.w3.org/2000/svg}"
    ids = {e.get("id") for e in root.iter() if e.get("id")}
    line = list(next(e for e in root.iter() if e.get("id") == "reward-per-step-line-mean-reward").iter(f"{ns}path"))
    spans = [i.split("-span-")[1].replace("-", " ") for i in sorted(ids) if "-span-" in i]
    assert {"reward-per-step-marker-swap-4", "reward-per-step-marker-swap-8", "reward-per-step-marker-signal-6"} <= ids
    assert spans == ["rubric v1", "rubric v2", "rubric v3"]
    assert line and len(re.findall(r"[ML]\s*-?[\d.]+[ ,]-?[\d.]+", line[0].get("d"))) == 12  # one vertex per step


def test_rubric_timeline_diff_analyses_and_score_distributions(run_dir):
    html = render_report(load_run(run_dir))
    v2 = html[html.index('id="rubric-v2"'): html.index('id="rubric-v3"')]
    assert '<span class="added">+ [4 pts] Evidence: Cites examples.</span>' in v2
    assert '<span class="reworded">~ [3 pts] Clarity</span>' in v2
    assert "Responses ignore evidence" in v2 and "score distribution" in v2 and "scores of item 3" in v2
    v3 = html[html.index('id="rubric-v3"'):]
    assert '<span class="removed">- [3 pts] Clarity: Reads easily, short sentences.</span>' in v3


def test_sample_browser_signals_and_eval_table(run_dir):
    html = render_report(load_run(run_dir))
    step3 = html[html.index('id="samples-step-3"'): html.index('id="samples-step-4"')]
    assert "1 failed judgement" in step3
    for kind in ("best: reward", "median: reward", "worst: reward"):
        assert kind in step3
    assert "rationale 3/3" in step3 and "Answers the prompt" in step3  # best sample, item titles of its version
    signals = html[html.index('id="signals"'): html.index('id="samples"')]
    assert "<td>6</td><td>length_collapse" in signals
    ev = html[html.index('id="eval"'): html.index('id="training"')]
    assert "6 / 2 / 2" in ev and "judge failures (left out)</td><td>1" in ev
    assert "60.0% <span class=ci>[40.0, 80.0]</span>" in ev and "Judged by the training judge" in ev
    assert "All policies compared" in ev and ev.count("<td>mpo</td>") == 1  # the combined Bradley-Terry table
    combined = ev[ev.index("All policies compared"):]
    assert combined.index("<td>mpo</td>") < combined.index("<td>fixed</td>") < combined.index("<td>base</td>")


def test_report_of_a_real_tiny_run(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    assert main(["report", str(run)]) == 0
    assert f"report: {run / 'report.html'}" in capsys.readouterr().out
    html = (run / "report.html").read_text()
    assert html.count("<svg") >= 8 and 'id="rubric-v2"' in html and "No evaluation yet" in html
    # the trainer logs the policy entropy (issue 17): the chart is drawn, with one vertex per step
    assert "Entropy: not logged" not in html
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(0 < r["entropy"] < 6 for r in metrics if "loss" in r)  # nats, under log(vocab ~ 100)
    entropy = next(s for s in SVG.findall(html) if ">Entropy<" in s)
    path = next(e for e in ET.fromstring(entropy).iter() if e.get("id") == "entropy-line-entropy")
    d = next(path.iter("{http://www.w3.org/2000/svg}path")).get("d")
    assert len(re.findall(r"[ML]\s*-?[\d.]+[ ,]-?[\d.]+", d)) == sum("loss" in r for r in metrics)


def test_report_without_matplotlib_is_written_with_a_note_per_chart(run_dir, monkeypatch):
    from mpo_fast.report import charts

    monkeypatch.setattr(charts, "matplotlib_available", lambda: False)
    html = write_report(run_dir).read_text()
    assert "<svg" not in html
    notes = re.findall(r'<p class="note chart-missing">Chart &ldquo;(.*?)&rdquo; not drawn: matplotlib is not installed '
                       r"\(pip install &#x27;mpo-fast\[eval\]&#x27;\)", html)
    assert len(notes) >= 8 and any(n.startswith("Reward per step") for n in notes) and "Entropy" in notes
    assert 'id="rubric-v2"' in html and 'id="samples-step-3"' in html  # the rest of the report is there


def test_report_refuses_a_folder_without_a_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == EXIT_BAD_INPUT
    assert "metrics.jsonl" in capsys.readouterr().err


@pytest.mark.slow
def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed on this machine (apt-get install chromium)")
    path = write_report(run_dir)
    shot = tmp_path / "report.png"
    # The background-networking flags: this machine has no network, and Chromium otherwise retries
    # its update and sync hosts at every start.
    done = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
                           "--window-size=1200,3000", "--enable-logging=stderr", "--v=0", path.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.is_file() and shot.stat().st_size > 10_000
    assert "Uncaught" not in done.stderr and "CONSOLE" not in done.stderr


def test_report_of_a_run_that_has_not_logged_a_step(tmp_path):
    from mpo_fast.trainer import MPOConfig

    (tmp_path / "config.yaml").write_text(MPOConfig(output_dir=str(tmp_path)).to_yaml())
    html = write_report(tmp_path).read_text()
    for text in ("No metrics logged yet", "No rubric store", "No samples logged", "No evaluation yet"):
        assert text in html
