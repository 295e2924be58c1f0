"""Progress written to a log file: a few plain lines, not a carriage-return per update."""
import io

from nextlat_probe import progress as P


def test_plain_progress_prints_start_tenths_and_end(monkeypatch):
    clock = iter(range(0, 10_000, 2))  # every call to the clock moves 2 s on
    monkeypatch.setattr(P.time, "monotonic", lambda: float(next(clock)))
    out = io.StringIO()
    for _ in P.PlainProgress(range(100), desc="work", stream=out, min_seconds=1000):
        pass
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines[0].startswith("[work] start 0/100") and lines[-1].startswith("[work] done 100/100")
    # one line per tenth crossed (10%, ..., 90%) between start and end
    assert [ln.split()[2] for ln in lines[1:-1]] == [f"{k}/100" for k in range(10, 100, 10)]


def test_plain_progress_is_quiet_for_fast_loops():
    out = io.StringIO()
    bar = P.PlainProgress(total=10_000, desc="fast", stream=out)
    for _ in range(10_000):
        bar.update()
    bar.close()
    bar.close()  # closing twice prints once
    assert len(out.getvalue().splitlines()) == 2  # start and done: updates came faster than 1 s


def test_progress_uses_plain_lines_off_a_terminal(capsys):
    bar = P.progress(range(3), desc="x")
    assert isinstance(bar, P.PlainProgress)  # pytest's captured stderr is not a terminal
    assert list(bar) == [0, 1, 2]
    assert P.PlainProgress(range(3), disable=True, stream=io.StringIO()).stream.getvalue() == ""


def test_plain_progress_prints_about_ten_lines_however_slow(monkeypatch):
    """A 2,000-step run taking 10 minutes prints start, nine tenths and done: not a line
    every few seconds (the old log had 67 lines for one demo training)."""
    clock = iter(i * 0.3 for i in range(100_000))  # 0.3 s per step: 600 s in all
    monkeypatch.setattr(P.time, "monotonic", lambda: next(clock))
    out = io.StringIO()
    bar = P.PlainProgress(total=2000, desc="train", stream=out)
    for _ in range(2000):
        bar.update()
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 11, lines
    assert [ln.split()[2] for ln in lines[1:-1]] == [f"{k}/2000" for k in range(200, 2000, 200)]


def test_plain_progress_says_it_is_alive_during_a_long_tenth(monkeypatch):
    clock = iter(i * 100.0 for i in range(1000))  # 100 s per update: a tenth takes 1,000 s
    monkeypatch.setattr(P.time, "monotonic", lambda: next(clock))
    out = io.StringIO()
    bar = P.PlainProgress(total=100, desc="slow", stream=out, stall_seconds=300)
    for _ in range(10):
        bar.update()
    lines = out.getvalue().splitlines()
    # no tenth was crossed before the 10th update, yet the log shows a line every 300 s or so
    seconds = [float(ln.split("(")[1].split()[0]) for ln in lines]
    assert len(lines) >= 4, lines
    assert all(300 <= b - a <= 400 for a, b in zip(seconds, seconds[1:])), lines

