"""The report and the main job end to end (slow: they run every analysis)."""
import json
import re
from html.parser import HTMLParser

import pytest
from helpers import run_cli


class _Scan(HTMLParser):
    def __init__(self):
        super().__init__()
        self.h2, self.script_src, self._in_h2 = [], [], False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "script" and a.get("src"):
            self.script_src.append(a["src"])
        if tag in ("link", "img") and (a.get("href") or a.get("src") or "").startswith("http"):
            self.script_src.append(a.get("href") or a.get("src"))
        self._in_h2 = tag == "h2"

    def handle_data(self, data):
        if self._in_h2:
            self.h2.append(data.strip())
            self._in_h2 = False


@pytest.mark.slow
def test_report_on_two_taxi_checkpoints(tiny_taxi_ckpts, tmp_path):
    from nextlat_probe.report import run_report

    out = tmp_path / "report"
    summary = run_report([tiny_taxi_ckpts["gpt"], tiny_taxi_ckpts["nextlat"]], out, n_seqs=24, fit_steps=40, progress=False, quiet=True)
    assert [r["objective"] for r in summary["summary"]] == ["gpt", "nextlat"]
    scan = _Scan()
    scan.feed((out / "report.html").read_text())
    for section in ("Summary", "Training curves", "Loss per position vs the exact floor", "Effective rank",
                    "Where the model thinks it is: probed (x, y) over the map", "Belief probe R² per layer",
                    "Transition consistency", "Taxi world model (Table 1 style)", "Reconstructed maps"):
        assert section in scan.h2, (section, scan.h2)
    assert scan.script_src == []  # offline: plotly.js is inlined, nothing is fetched
    data = json.loads((out / "summary.json").read_text())
    rows = {r["objective"]: r for r in data["summary"]}
    assert set(rows) == {"gpt", "nextlat"}
    for key in ("val_loss", "gap_to_floor", "effective_rank", "probe_r2", "transition_err1", "belief_ratio",
                "next_token", "valid_trajectory", "compression", "detour"):
        for obj in rows:
            assert rows[obj].get(key) is not None, (obj, key)
    # every record has the one shape, and the summary agrees with the records
    from nextlat_probe.records import check_record

    for r in data["records"]:
        check_record(r)
    analyses = {r["analysis"] for r in data["records"]}
    assert analyses == {"rank", "probe", "transition", "position_loss", "worldmodel", "mapping"}
    rank_last = [r for r in data["records"] if r["analysis"] == "rank" and r["objective"] == "gpt"][-1]
    assert rank_last["layer"] == "L1" and rank_last["params"]["n_seqs"] == 24
    assert rows["gpt"]["effective_rank"] == pytest.approx(rank_last["metrics"]["effective_rank"])
    wm = [r for r in data["records"] if r["analysis"] == "worldmodel" and r["objective"] == "nextlat"][0]
    assert rows["nextlat"]["next_token"] == pytest.approx(wm["metrics"]["next_token"]["value"])
    # one set of sequences: rank, probes, transition and losses all read the same 24
    for r in data["records"]:
        if r["analysis"] in ("rank", "probe", "transition", "position_loss"):
            assert r["params"]["n_seqs"] == 24 and r["params"]["seed"] == 0
    for stem in ("effective_rank", "transition", "table1", "worldmodel_appendix", "maps", "position_loss", "beliefs",
                 "training_curves"):
        pdf = out / "figures" / f"{stem}.pdf"
        assert pdf.stat().st_size > 1000 and pdf.read_bytes().startswith(b"%PDF"), stem
        assert (out / "figures" / f"{stem}.png").stat().st_size > 1000
    _check_what_a_person_reads(out, data, tiny_taxi_ckpts)


def _page_figures(page: str) -> list[dict]:
    """Every plotly figure of a report page, as {"data", "layout"}."""
    dec, out = json.JSONDecoder(), []
    for m in re.finditer(r'Plotly\.newPlot\(\s*"[^"]+",\s*', page):
        data, end = dec.raw_decode(page, m.end())
        layout, _ = dec.raw_decode(page, re.compile(r",\s*").match(page, end).end())
        out.append({"data": data, "layout": layout})
    return out


def _check_what_a_person_reads(out, data, ckpts):
    """No raw metric key in any table header, section heading or figure title / axis label
    of the report, its paper figures or its printed table; every metric shown has a label;
    the counts in the map titles are summary.json's."""
    from helpers import html_headers, metric_keys, mpl_texts, plotly_texts, raw_keys

    from nextlat_probe.checkpoint import load_checkpoint
    from nextlat_probe.labels import has_label
    from nextlat_probe.plots import paper as P
    from nextlat_probe.report import summary_text

    records = data["records"]
    unlabelled = {(r["analysis"], k) for r in records for k in r["metrics"]
                  if k != "points" and not has_label(k, r["analysis"])}
    assert not unlabelled, unlabelled
    keys = metric_keys(records + data["summary"])
    page = (out / "report.html").read_text()
    heads = html_headers(page)
    assert "metric" in heads and "valid trajectories (legal, ends at the destination) ↑" in heads
    assert "distinction precision ↑" in heads and "detour robustness (random detours, p = 0.75) ↑" in heads
    assert [h for h in heads if raw_keys(h, keys)] == []
    figs = _page_figures(page)
    assert len(figs) >= 7  # training, positions, rank, probed maps, probe R², transition, rebuilt maps
    texts = [t for f in figs for t in plotly_texts(f)]
    assert [t for t in texts if raw_keys(t, keys)] == []
    assert [line for line in summary_text(data["summary"]).splitlines() if raw_keys(line.split("  ")[0], keys)] == []
    # protocol lines are there, collapsed
    assert page.count("<details class='protocol'>") >= 5 and "protocol vafa2024" in page
    # the verdict lines cover the headline metrics and name the detour setting
    assert "detour robustness (random detours, p = 0.75) ↑:" in page
    assert "distinction recall ↑:" in page
    # the counts of the map titles are summary.json's, in the page and in the paper figure
    maps = [r for r in records if r["analysis"] == "mapping" and r["variant"] == "behaviour"]
    rows = {r["name"]: r for r in data["summary"]}
    titles = " ".join(t.replace("<br>", " ") for f in figs for t in plotly_texts(f))
    world = load_checkpoint(ckpts["gpt"]).world
    paper_titles = " ".join(t.replace("\n", " ") for t in mpl_texts(P.map_plot(world.map, maps)))
    for r in maps:
        n = r["metrics"]["n_invented"]
        assert rows[r["name"]]["invented_edges"] == n
        want = f"{r['name']}: rebuilt from behaviour - edge recall"
        assert want in titles and f" {n} invented" in titles.split(want, 1)[1].split("missed")[0], titles
        assert f" {n} invented" in paper_titles.split(want, 1)[1].split("missed")[0], paper_titles


@pytest.mark.slow
def test_report_cli_on_mess3_and_errors(tiny_mess3_ckpts, tmp_path):
    out = tmp_path / "rep"
    r = run_cli("nextlat_probe.report", str(tiny_mess3_ckpts["gpt"]), str(tiny_mess3_ckpts["nextlat"]), "--out", str(out),
                "--n-seqs", "16", "--fit-steps", "20", "--no-figures", "--no-progress")
    assert r.returncode == 0, r.stderr
    # metrics as rows, one column per model named with its objective in words
    assert re.search(r"^metric\s+gpt \(GPT\)\s+nextlat \(NextLat\)$", r.stdout, re.M), r.stdout
    assert re.search(r"^eff\. rank \(block 1\) ↓\s+[0-9.]+\s+[0-9.]+$", r.stdout, re.M), r.stdout
    html = (out / "report.html").read_text()
    assert "Belief geometry: exact vs probed" in html  # 3-state world: the simplex section
    assert "Taxi world model" not in html
    # compression and distinction of an HMM world, by the protocol for worlds with exact beliefs
    assert "Belief-state world model: compression and distinction" in html and "protocol myhill_nerode" in html
    data = json.loads((out / "summary.json").read_text())
    wm = [r for r in data["records"] if r["analysis"] == "worldmodel"]
    assert {r["objective"] for r in wm} == {"gpt", "nextlat"}
    assert all(r["protocol"]["name"] == "myhill_nerode" and "compression" in r["metrics"] for r in wm)
    # every section names its protocol (rank's default, the probe's, the floor of the loss)
    for name in ("protocol training_length", "protocol held_out", "protocol exact_floor", "protocol groups&gt;=2"):
        assert name in html, name
    assert "wrote" in r.stderr and "figures" not in r.stderr  # --no-figures: none written, none claimed
    assert not (out / "figures").exists()
    fresh = tmp_path / "never"
    r = run_cli("nextlat_probe.report", str(tmp_path / "nope.pt"), "--out", str(fresh))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert not fresh.exists()  # a failed run leaves no empty folder
    r = run_cli("nextlat_probe.report", str(tiny_mess3_ckpts["gpt"]), "--out", str(out / "report.html"))
    assert r.returncode == 2 and "not a folder" in r.stderr
    r = run_cli("nextlat_probe.report", str(tiny_mess3_ckpts["gpt"]), "--out", str(fresh), "--device", "tpu")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and not fresh.exists()


@pytest.mark.slow
def test_demo_trains_reports_and_reuses(tmp_path):
    args = ["nextlat_probe.demo", "--world", "mess3", "--steps", "12", "--n-seqs", "12", "--out", str(tmp_path / "demo"), "--no-progress"]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "demo" / "report" / "report.html").is_file()
    assert "gpt" in r.stdout and "nextlat" in r.stdout and "Report:" in r.stdout
    assert (tmp_path / "demo" / "gpt-seed0" / "ckpt_step4.pt").is_file()  # kept for matched-loss comparisons
    again = run_cli(*args)
    assert again.returncode == 0 and "reusing" in again.stderr


def test_the_demo_keeps_no_checkpoint_just_before_the_final_one():
    from nextlat_probe.demo import keep_interval

    assert keep_interval(2000) == 334  # kept at 334 ... 1670, then the final 2000
    for steps in (12, 60, 100, 999, 2000, 2001, 3000, 6000):
        k = keep_interval(steps)
        last = steps // k * k
        assert 1 <= steps // k <= 6
        assert last == steps or steps - last >= k // 2, (steps, k, last)


@pytest.mark.slow
def test_report_scores_the_world_model_again_at_matched_loss(tmp_path):
    """A long GPT and a short NextLat: the matched-loss checkpoint of GPT is an early kept
    one, and the report's world-model numbers for it equal an evaluation of that file."""
    from nextlat_probe.checkpoint import load_checkpoint
    from nextlat_probe.compare import run_worldmodel
    from nextlat_probe.report import run_report
    from nextlat_probe.training.config import TrainConfig
    from nextlat_probe.training.trainer import train

    ck = {}
    for obj, steps in (("gpt", 80), ("nextlat", 20)):
        cfg = TrainConfig(world="taxi", world_options={"map_size": 4, "max_len": 12, "min_len": 2}, objective=obj,
                          steps=steps, batch_size=32, eval_every=10, save_every=20, keep_every=20, n_val=64,
                          device="cpu", warmup_steps=5, lr=3e-3)
        ck[obj] = train(cfg, out_dir=tmp_path / obj, progress=False).checkpoint
    summary = run_report([ck["gpt"], ck["nextlat"]], tmp_path / "rep", n_seqs=24, fit_steps=20, figures=False,
                         progress=False, quiet=True)
    runs = summary["rank_matched_loss"]["runs"]
    assert runs["nextlat"]["step"] == 20 and runs["gpt"]["step"] < 80  # GPT passes NextLat's loss early
    wm = {r["name"]: r for r in summary["worldmodel_matched_loss"]}
    assert set(wm) == {"gpt", "nextlat"} and all(r["variant"] == "matched_loss" for r in wm.values())
    assert wm["gpt"]["step"] == runs["gpt"]["step"]
    early = load_checkpoint(tmp_path / "gpt" / f"ckpt_step{runs['gpt']['step']}.pt", device="cpu")
    direct = run_worldmodel([early], n_pairs=50, seed=0)[0]
    assert wm["gpt"]["metrics"]["trajectory_valid"] == direct["metrics"]["trajectory_valid"]
    assert wm["gpt"]["metrics"]["compression"] == direct["metrics"]["compression"]
    # the equal-step record of GPT is its final checkpoint, a different model
    final = [r for r in summary["records"] if r["analysis"] == "worldmodel" and r["name"] == "gpt"][0]
    assert final["step"] == 80
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "World-model metrics at matched validation loss" in html


def test_verdict_lines_compare_each_objective_with_gpt():
    from nextlat_probe.report import _verdict_lines

    g = {"objective": "gpt", "effective_rank": 40.0, "val_loss": 0.85, "compression": 0.7}
    n = {"objective": "nextlat", "effective_rank": 25.0, "val_loss": 0.90, "compression": 0.7}
    m = {"objective": "mtp", "effective_rank": 41.0, "val_loss": 0.84, "compression": float("nan")}
    two = _verdict_lines([g, n])
    assert two == ["validation loss ↓: GPT better (GPT 0.8500, NextLat 0.9000)",
                   "effective rank ↓: NextLat better (GPT 40.00, NextLat 25.00)",
                   "sequence compression ↑: tie (0.700)"]
    three = _verdict_lines([g, n, m])
    assert three[:3] == ["NextLat vs GPT, " + line for line in two]
    assert three[3:] == ["MTP vs GPT, validation loss ↓: MTP better (GPT 0.8500, MTP 0.8400)",
                         "MTP vs GPT, effective rank ↓: GPT better (GPT 40.00, MTP 41.00)"]
    # MTP's undefined compression is left out, not called a tie
    assert _verdict_lines([n, m]) == [] and _verdict_lines([g, g, n]) == []


def test_rank_along_training_reads_each_models_own_last_block(tmp_path):
    """A 2-block and a 4-block model: each trajectory ends at its own last block's final
    point, also for the model that kept no checkpoint along training."""
    from nextlat_probe.report import prepare
    from nextlat_probe.training.config import TrainConfig
    from nextlat_probe.training.trainer import train

    ck = {}
    for preset, keep in (("tiny", 10), ("mini", 0)):
        cfg = TrainConfig(world="mess3", objective="gpt", preset=preset, steps=20, batch_size=8, seq_len=10,
                          eval_every=10, save_every=20, keep_every=keep, n_val=16, device="cpu", warmup_steps=2)
        ck[preset] = train(cfg, out_dir=tmp_path / preset, progress=False).checkpoint
    ctx = prepare([ck["tiny"], ck["mini"]], 16, 0, "cpu", 2, 10, False)
    traj = ctx.get("rank_training")
    by = {}
    for r in traj:
        by.setdefault(r["name"], []).append(r)
    names = [m.name for m in ctx.models]
    assert [r["step"] for r in by[names[0]]] == [10, 20] and {r["layer"] for r in by[names[0]]} == {"L1"}
    assert [(r["step"], r["layer"]) for r in by[names[1]]] == [(20, "L3")]
