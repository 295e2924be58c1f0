"""Hostile use of the analysis CLIs: every bad input is one stderr line and exit code 2,
nothing is left behind, and errors name the file they are about."""
from pathlib import Path

import pytest
import torch
from helpers import assert_one_line as _one_line
from helpers import run_in_process as _run


@pytest.mark.parametrize("device", ["tpu", "cuda:7", "nonsense:0"])
@pytest.mark.parametrize("module", ["rank", "probe", "transition", "worldmodel", "mapping"])
def test_bad_devices_are_one_line(module, device, tiny_mess3_ckpts, tiny_taxi_ckpts, capsys):
    ck = tiny_taxi_ckpts["gpt"] if module in ("worldmodel", "mapping") else tiny_mess3_ckpts["gpt"]
    code, _, err = _run(module, [str(ck), "--device", device], capsys)
    _one_line(code, err)
    assert "device" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
def test_cuda_without_gpu_is_one_line(tiny_mess3_ckpts, capsys):
    for module in ("rank", "probe", "transition"):
        code, _, err = _run(module, [str(tiny_mess3_ckpts["gpt"]), "--device", "cuda"], capsys)
        _one_line(code, err)
        assert "cuda" in err.lower()


@pytest.mark.parametrize("module", ["rank", "probe"])
def test_seq_len_zero_is_refused(module, tiny_mess3_ckpts, capsys):
    code, _, err = _run(module, [str(tiny_mess3_ckpts["gpt"]), "--seq-len", "0"], capsys)
    _one_line(code, err)
    assert "--seq-len" in err


@pytest.mark.parametrize("module", ["probe", "transition", "rank"])
def test_plot_into_a_directory_leaves_nothing(module, tiny_mess3_ckpts, tmp_path, capsys):
    target = tmp_path / "figs"
    target.mkdir()
    code, _, err = _run(module, [str(tiny_mess3_ckpts["gpt"]), "--n-seqs", "8", "--plot", str(target)], capsys)
    _one_line(code, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figs"] and not any(target.iterdir())


def test_nan_weights_name_their_file(tiny_mess3_ckpts, tmp_path, capsys):
    raw = torch.load(tiny_mess3_ckpts["gpt"], weights_only=True)
    key = next(k for k, v in raw["model"].items() if v.is_floating_point() and v.dim() == 2)
    raw["model"][key] = torch.full_like(raw["model"][key], float("nan"))
    bad = tmp_path / "nan-run" / "ckpt.pt"
    bad.parent.mkdir()
    torch.save(raw, bad)
    for module, extra in (("rank", []), ("probe", ["--n-test", "4"])):
        code, _, err = _run(module, [str(bad), "--n-seqs", "8", *extra], capsys)
        _one_line(code, err)
        assert str(bad) in err


def test_mixed_worlds_are_analysed_each_on_its_own(tiny_mess3_ckpts, tiny_taxi_ckpts, capsys):
    code, out, err = _run("rank", [str(tiny_mess3_ckpts["gpt"]), str(tiny_taxi_ckpts["gpt"]), "--n-seqs", "8",
                                   "--no-progress"], capsys)
    assert code == 0, err
    assert "different worlds" in err and "gpt#1" in out and "gpt#2" in out  # same run name: told apart
    assert "seq_len=12|15" in out  # each world at its own training length


def test_mapping_flags_and_layers(tiny_taxi_ckpts, tmp_path, capsys):
    ck = str(tiny_taxi_ckpts["gpt"])
    code, _, err = _run("mapping", [ck, "--layers", "5"], capsys)
    _one_line(code, err)
    code, _, err = _run("mapping", [ck, "--layers", "0,1"], capsys)
    _one_line(code, err)
    page = tmp_path / "m.html"
    code, out, err = _run("mapping", [ck, "--n-trips", "20", "--n-seqs", "16", "--plot", str(page), "--no-progress"],
                          capsys)
    assert code == 0, err
    assert page.stat().st_size > 1000 and "edges recovered" in out


def test_nan_map_coordinates_name_the_file(tmp_path, capsys):
    import json

    from nextlat_probe.worlds.streetmap import synthetic_manhattan

    d = synthetic_manhattan(3, 3, seed=0).to_dict()
    d["coords"][2] = [float("nan"), 1.0]
    path = tmp_path / "nan-map.json"
    path.write_text(json.dumps(d))
    (tmp_path / "trips.txt").write_text("0 1 E end\n")
    code, _, err = _run("mapping", ["--map", str(path), "--trajectories", str(tmp_path / "trips.txt")], capsys)
    _one_line(code, err)
    assert str(path) in err and "NaN" in err


def test_a_directory_of_trips_is_named_as_one(tmp_path, capsys):
    from nextlat_probe.worlds.streetmap import synthetic_manhattan

    synthetic_manhattan(3, 3, seed=0).to_json(tmp_path / "map.json")
    (tmp_path / "trips").mkdir()
    for module, argv in (("mapping", ["--map", str(tmp_path / "map.json"), "--trajectories", str(tmp_path / "trips")]),
                         ("taxi", ["check", "--map", str(tmp_path / "map.json"), str(tmp_path / "trips")])):
        code, _, err = _run(module, argv, capsys)
        _one_line(code, err)
        assert "directory" in err and "no such file" not in err, (module, err)


def test_closed_stdout_pipe_is_not_a_traceback():
    """``python -m nextlat_probe.taxi sample ... | head -1``: the reader leaves early."""
    import subprocess
    import sys

    from helpers import ROOT

    cmd = f"'{sys.executable}' -m nextlat_probe.taxi sample --n 20000 | head -1"
    res = subprocess.run(["bash", "-c", "set -o pipefail; " + cmd], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    assert res.stdout.count("\n") == 1 and res.stdout.split()[-1] == "end"
    assert "Traceback" not in res.stderr and "BrokenPipe" not in res.stderr, res.stderr
    assert res.returncode == 141  # as a program ended by SIGPIPE (pipefail: the CLI's own status)


# --------------------------------------------------------------------------------------
# memory: what an option implies is estimated before anything is allocated

LIMITED = """
import contextlib, importlib, io, json, resource, sys, traceback
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
from nextlat_probe.cli import run_main
results = []
for module, argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            run_main(importlib.import_module("nextlat_probe." + module).main, argv)
            code = 0
        except SystemExit as exc:
            code = exc.code
        except BaseException:  # an allocation traceback where one line was promised
            traceback.print_exc(file=err)
            code = "traceback"
    results.append([code, err.getvalue()])
print(json.dumps(results))
"""


def run_under_memory_limit(calls, gib=4):
    """Run CLI ``calls`` ([(module, argv)]) in ONE fresh process whose address space is
    limited to ``gib`` GiB; returns [(exit code, stderr)] (code "traceback" for an exception)."""
    import json
    import subprocess
    import sys

    from helpers import ROOT

    script = LIMITED.format(limit=gib << 30)
    r = subprocess.run([sys.executable, "-c", script, json.dumps([(m, [str(a) for a in argv]) for m, argv in calls])],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return [tuple(x) for x in json.loads(r.stdout.strip().splitlines()[-1])]


def test_options_that_imply_too_much_memory_are_one_line(tiny_mess3_ckpts, tmp_path):
    """Each call once ended in an allocation traceback (or worse) under a 4 GB limit."""
    ck = tiny_mess3_ckpts["gpt"]
    big_val = tmp_path / "nval" / "ckpt.pt"
    big_batch = tmp_path / "batch" / "ckpt.pt"
    for path, key in ((big_val, "n_val"), (big_batch, "batch_size")):
        raw = torch.load(ck, weights_only=True)
        raw["train_config"][key] = 10**9
        path.parent.mkdir()
        torch.save(raw, path)
    train = ["--world", "mess3", "--steps", "2", "--batch-size", "4", "--n-val", "8", "--device", "cpu", "--no-progress"]
    calls = [
        (("train", ["--out", tmp_path / "a", *train, "--seq-len", "65536"]), "seq_len 65536"),
        (("train", ["--out", tmp_path / "b", *train, "--n-val", "1000000000"]), "n_val 1000000000"),
        (("train", ["--resume", big_val, "--out", tmp_path / "c", "--no-progress"]), "n_val 1000000000"),
        (("train", ["--resume", big_batch, "--out", tmp_path / "d", "--no-progress"]), "batch_size 1000000000"),
        (("rank", [ck, "--n-seqs", "1000000000"]), "--n-seqs 1,000,000,000"),
        (("train", ["--out", tmp_path / "e", "--world", "taxi", "--map-size", "100000", "--steps", "2",
                    "--no-progress"]), "100000x100000"),
        (("probe", [ck, "--world", "taxi:map_size=100000"]), "100000x100000"),
        (("taxi", ["sample", "--map-size", "100000", "--n", "1"]), "100000x100000"),
        (("taxi", ["sample", "--map-size", "200", "--walk", "shortest", "--n", "1"]), "shortest-path distances"),
    ]
    results = run_under_memory_limit([c for c, _ in calls])
    for ((module, argv), expected), (code, err) in zip(calls, results):
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, (module, argv, code, err[-2000:])
        assert expected in lines[0] and "--max-memory" in lines[0] and "GiB" in lines[0], (argv, lines[0])
    assert not [p.name for p in tmp_path.iterdir() if p.name in "abcde"]  # no run folder left behind


def test_max_memory_sets_the_limit(tiny_mess3_ckpts, tmp_path, capsys):
    ck = str(tiny_mess3_ckpts["gpt"])
    code, _, err = _run("rank", [ck, "--n-seqs", "100000", "--max-memory", "0.01"], capsys)
    _one_line(code, err)
    assert "--n-seqs 100,000 sequences of 12 tokens" in err and "10.2 MiB available (--max-memory)" in err
    code, _, err = _run("train", ["--out", str(tmp_path / "r"), "--world", "mess3", "--steps", "1", "--n-val", "100000",
                                  "--max-memory", "0.01", "--device", "cpu", "--no-progress"], capsys)
    _one_line(code, err)
    assert "n_val 100000" in err and not (tmp_path / "r").exists()
    code, _, err = _run("rank", [ck, "--n-seqs", "8", "--max-memory", "-1"], capsys)
    assert code == 2 and "--max-memory" in err


def test_taxi_sample_streams_any_number_of_trips():
    """``taxi sample --n 1000000000 | head -3`` under a 2 GiB address-space limit: three trips at
    once, then the closed pipe ends it (it used to allocate all the trips first)."""
    import subprocess
    import sys

    from helpers import ROOT

    cmd = f"ulimit -v {2 << 20}; '{sys.executable}' -m nextlat_probe.taxi sample --n 1000000000 | head -3"
    res = subprocess.run(["bash", "-c", "set -o pipefail; " + cmd], capture_output=True, text=True, cwd=ROOT,
                         timeout=300)
    assert res.stdout.count("\n") == 3 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert res.returncode == 141


def test_taxi_sample_blocks_are_valid_trips(tmp_path, capsys, monkeypatch):
    from nextlat_probe import taxi

    monkeypatch.setattr(taxi, "SAMPLE_BLOCK", 4)
    code, out, err = _run("taxi", ["sample", "--n", "10", "--walk", "shortest", "--seed", "3"], capsys)
    assert code == 0, err
    trips = out.strip().splitlines()
    assert len(trips) == 10 and len(set(trips)) > 1
    (tmp_path / "trips.txt").write_text(out)
    code, out, err = _run("taxi", ["check", str(tmp_path / "trips.txt"), "--json"], capsys)
    assert code == 0 and '"valid": 10' in out, (out, err)


# --------------------------------------------------------------------------------------
# report --out: never overwrites a folder's files

def test_report_refuses_a_folder_that_holds_no_report(tiny_mess3_ckpts, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "report.html").write_text("<html>my own page</html>")
    (out / "notes.txt").write_text("keep")
    code, _, err = _run("report", [str(tiny_mess3_ckpts["gpt"]), "--out", str(out), "--no-progress"], capsys)
    _one_line(code, err)
    assert "holds no report" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "report.html"]
    assert (out / "report.html").read_text() == "<html>my own page</html>"


def test_report_moves_an_earlier_report_aside(tiny_mess3_ckpts, tmp_path, capsys):
    import json

    out = tmp_path / "rep"
    (out / "figures").mkdir(parents=True)
    old = {"summary": [], "records": [], "params": {"n_seqs": 1}}  # an earlier report (before "format")
    (out / "summary.json").write_text(json.dumps(old))
    (out / "report.html").write_text("<html><head><title>nextlat_probe report: old</title></head></html>")
    (out / "figures" / "rank.png").write_bytes(b"old figure")
    (out / "notes.txt").write_text("not the report's")
    code, _, err = _run("report", [str(tiny_mess3_ckpts["gpt"]), "--out", str(out), "--n-seqs", "8", "--fit-steps",
                                   "5", "--no-figures", "--no-progress"], capsys)
    assert code == 0, err
    (backup,) = out.glob(".replaced-*")
    assert f"moved the earlier report to {backup}" in err
    assert json.loads((backup / "summary.json").read_text()) == old
    assert (backup / "figures" / "rank.png").read_bytes() == b"old figure"
    assert "old" in (backup / "report.html").read_text()
    assert json.loads((out / "summary.json").read_text())["format"] == "nextlat_probe.report"
    assert (out / "notes.txt").read_text() == "not the report's"


# ----------------------------------------------------------------------------- usage errors and --help

CLIS = ("rank", "probe", "transition", "worldmodel", "mapping", "speculate", "taskeval", "train", "taxi", "report",
        "demo", "sweep", "export")


@pytest.mark.parametrize("module,argv", [
    ("rank", ["x.pt", "--n-seqs", "abc"]), ("probe", ["x.pt", "--n-test", "1.5"]),
    ("transition", ["x.pt", "--seed", "s"]), ("worldmodel", ["x.pt", "--n-pairs", "many"]),
    ("mapping", ["--protocol", "bogus"]), ("speculate", ["x.pt", "--n-prompts", "x"]),
    ("taskeval", ["x.pt", "--n-seqs", "x"]), ("train", ["--objective", "bogus"]), ("taxi", ["sample", "--n", "x"]),
    ("taxi", ["bogus"]), ("report", ["x.pt"]), ("demo", ["--steps", "x"]), ("sweep", ["--seeds", "x"]),
    ("export", ["x.pt"]), ("rank", ["x.pt", "--max-params", "-3"]),
])
def test_usage_errors_are_one_line(module, argv, capsys):
    code, out, err = _run(module, argv, capsys)
    _one_line(code, err)
    assert "--help" in err and "usage:" not in err and not out


def test_help_shows_one_default_per_option():
    """``--help`` of every CLI: never "(default: None)", and no automatic "(default: X)"
    after a help text that states its default already."""
    import argparse
    import importlib

    for module in CLIS:
        parser = importlib.import_module(f"nextlat_probe.{module}").build_parser()
        parsers = [parser] + [p for a in parser._actions if isinstance(a, argparse._SubParsersAction)
                              for p in a.choices.values()]
        for p in parsers:
            text = p.format_help()
            for bad in ("(default: None)", "(default: [])", "(default: False)"):
                assert bad not in text, (module, bad)
            fmt = p._get_formatter()
            for action in p._actions:
                if action.help in (None, argparse.SUPPRESS):
                    continue
                shown = fmt._get_help_string(action).lower()
                auto = "(default: %(default)s)"
                assert not (auto in shown and "default" in shown.replace(auto, "")), (module, shown)


# ----------------------------------------------------------------------------- output errors


def test_output_to_a_device_or_a_bad_path_is_refused_before_any_work(tiny_mess3_ckpts, tmp_path, capsys):
    import os

    ck = str(tiny_mess3_ckpts["gpt"])
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    (tmp_path / "afile").write_text("mine")
    for module, plot, needle in (("rank", "/dev/full", "not a regular file"), ("probe", str(fifo), "not a regular file"),
                                 ("rank", str(tmp_path / ("a" * 300 + ".html")), "too long"),
                                 ("probe", str(tmp_path / "afile" / "sub.html"), "not a folder")):
        code, out, err = _run(module, [ck, "--n-seqs", "8", "--plot", plot, "--no-progress"], capsys)
        _one_line(code, err)
        assert needle in err and "--plot" in err and not out, err
    assert Path("/dev/full").is_char_device() and fifo.is_fifo() and (tmp_path / "afile").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "pipe"]
    code, _, err = _run("rank", [str(tmp_path / ("b" * 300)), "--n-seqs", "8"], capsys)  # an input name too long
    _one_line(code, err, "too long")


def test_a_full_disk_is_one_line(tiny_mess3_ckpts, tmp_path, monkeypatch, capsys):
    import errno

    from nextlat_probe.plots import interactive

    def full(fig, path, title=None):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(interactive, "write_html", full)
    code, _, err = _run("rank", [str(tiny_mess3_ckpts["gpt"]), "--n-seqs", "8", "--plot", str(tmp_path / "r.html"),
                                 "--no-progress"], capsys)
    _one_line(code, err, "No space left on device", "r.html")


def test_stdout_on_a_full_device_is_one_line():
    import subprocess
    import sys

    from helpers import ROOT

    res = subprocess.run(["bash", "-c", f"'{sys.executable}' -m nextlat_probe.taxi sample --n 50 > /dev/full"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    err = res.stderr.strip()
    assert res.returncode == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("error:") and "No space left on device" in err


def test_page_writes_leave_no_temporary_on_failure(tmp_path, monkeypatch):
    from nextlat_probe.plots import page

    def fail(*args, **kwargs):  # the temporary page is written, then the disk is full
        raise OSError(28, "No space left on device")

    mine = tmp_path / "p.html.tmp"  # a user's file with the name a fixed temporary would take
    mine.write_text("keep me")
    with monkeypatch.context() as m:
        m.setattr("nextlat_probe.checkpoint.os.replace", fail)
        with pytest.raises(OSError):
            page.write_page([("x", "", "<p>x</p>")], tmp_path / "p.html")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.html.tmp"]
    page.write_page([("x", "", "<p>x</p>")], tmp_path / "p.html")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.html", "p.html.tmp"] and mine.read_text() == "keep me"


# ----------------------------------------------------------------------------- options accepted but wrong


def test_demo_validates_every_option_before_any_work(tmp_path, capsys):
    out = tmp_path / "demo"
    for argv, needle in ((["--n-seqs", "0"], "--n-seqs"), (["--device", "tpu"], "tpu"),
                         (["--world", "pathstar"], "pathstar"), (["--world", "taxi:map_size=3x"], "map_size"),
                         (["--horizon", "0"], "--horizon"), (["--world", "mess3:x=abc"], "not a number")):
        code, stdout, err = _run("demo", [*argv, "--out", str(out), "--steps", "2", "--batch-size", "4",
                                          "--no-progress"], capsys)
        _one_line(code, err, needle)  # one line: no "[demo] training ..." before the refusal
        assert not stdout and not out.exists(), argv


def test_speculate_bounds_the_draft_length_by_the_context(tiny_mess3_ckpts, capsys):
    ck = str(tiny_mess3_ckpts["nextlat"])
    for draft in ("fixed:1000000", "fixed:12", "adaptive:100000"):
        code, _, err = _run("speculate", [ck, "--draft", draft, "--n-prompts", "2", "--no-progress"], capsys)
        _one_line(code, err, draft, "context of 12 tokens")
    code, out, err = _run("speculate", [ck, "--draft", "fixed:11", "--draft", "adaptive", "--n-prompts", "2",
                                        "--no-progress", "--json"], capsys)
    assert code == 0, err


def test_list_options_refuse_empty_items(tiny_mess3_ckpts, tmp_path, capsys):
    code, _, err = _run("taskeval", [str(tiny_mess3_ckpts["gpt"]), "--lengths", "12,,18"], capsys)
    _one_line(code, err, "--lengths")
    code, _, err = _run("sweep", ["--steps", "1500,,6000", "--out", str(tmp_path / "sw"), "--dry-run"], capsys)
    _one_line(code, err, "--steps")


@pytest.mark.parametrize("size", ["3x", "x3", "3x4x5", "6.5", "0x"])
def test_map_size_is_refused_unless_n_or_axs(size, tmp_path, capsys):
    code, out, err = _run("taxi", ["info", "--map-size", size], capsys)
    _one_line(code, err, "--map-size")
    assert not out
    code, _, err = _run("train", ["--world", "taxi", "--map-size", size, "--out", str(tmp_path / "r")], capsys)
    _one_line(code, err, "--map-size")
    code, _, err = _run("train", ["--world", f"taxi:map_size={size}", "--out", str(tmp_path / "r")], capsys)
    _one_line(code, err, "map_size")
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- one world grammar


def test_train_takes_the_world_spec_of_every_cli(tmp_path, capsys):
    from nextlat_probe.checkpoint import read_checkpoint

    fast = ["--steps", "2", "--batch-size", "4", "--n-val", "4", "--eval-every", "1", "--save-every", "1",
            "--no-progress", "--device", "cpu"]
    code, _, err = _run("train", ["--world", "taxi:walk=shortest,holdout=0.2", "--map-size", "4", "--out",
                                  str(tmp_path / "taxi"), *fast], capsys)
    assert code == 0, err
    state = read_checkpoint(tmp_path / "taxi" / "ckpt.pt")
    assert state["train_config"]["world"] == "taxi"
    assert state["train_config"]["world_options"] == {"walk": "shortest", "holdout": 0.2, "map_size": 4}
    code, _, err = _run("train", ["--world", "pathstar:degree=2,length=5", "--out", str(tmp_path / "star"), *fast],
                        capsys)
    assert code == 0, err
    spec = read_checkpoint(tmp_path / "star" / "ckpt.pt")["world_spec"]
    assert (spec["degree"], spec["length"]) == (2, 5)
    # a flag is a shorthand for a key; the two must agree
    for argv, needle in ((["--world", "taxi:walk=shortest", "--walk", "random"], "disagrees"),
                         (["--world", "pathstar:degree=2", "--degree", "3"], "disagrees"),
                         (["--world", "mess3", "--walk", "random"], "only to --world taxi"),
                         (["--world", "mess3:x=0.05,x=0.1"], "twice")):
        code, _, err = _run("train", [*argv, "--out", str(tmp_path / "no"), *fast], capsys)
        _one_line(code, err, needle)
    assert not (tmp_path / "no").exists()
    # a resume may repeat the world it continues, and no other
    ck = str(tmp_path / "taxi" / "ckpt.pt")
    code, _, err = _run("train", ["--resume", ck, "--world", "taxi:walk=random", "--steps", "3"], capsys)
    _one_line(code, err, "conflicts")
    code, _, err = _run("train", ["--resume", ck, "--world", "taxi:walk=shortest,holdout=0.2", "--map-size", "4",
                                  "--steps", "3", "--no-progress"], capsys)
    assert code == 0, err
