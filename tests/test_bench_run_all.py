"""bench/run_all.py full: a run interrupted or failed part-way is taken up by --continue at its first
script not yet run to success, the cell-keeping scripts are told which run their cells belong to (and
decide from their results file whether to start anew or fill in), and the section at the top of
BENCHMARKS.md says how far the run got."""

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load(name: str, file: str):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(name, BENCH / file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_grid(name: str):  # type: ignore[no-untyped-def]
    """bench/recovery_grid.py, which imports its neighbours as top-level modules."""
    sys.path.insert(0, str(BENCH))
    try:
        return load(name, "recovery_grid.py")
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture()
def run_all(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    module = load("bench_run_all", "run_all.py")
    # scripts standing in for the benchmarks: each appends its arguments to calls.txt; fail.py exits with
    # the code in fail-code.txt
    (tmp_path / "ok.py").write_text(
        "import sys, pathlib\n"
        "p = pathlib.Path(__file__).with_name('calls.txt')\n"
        "p.write_text((p.read_text() if p.exists() else '') + ' '.join(sys.argv) + '\\n')\n")
    (tmp_path / "recovery_table.py").write_text((tmp_path / "ok.py").read_text())
    (tmp_path / "fail.py").write_text(
        (tmp_path / "ok.py").read_text() +
        "raise SystemExit(int(pathlib.Path(__file__).with_name('fail-code.txt').read_text()))\n")
    (tmp_path / "fail-code.txt").write_text("3")
    monkeypatch.setattr(module, "BENCH", tmp_path)
    monkeypatch.setattr(module, "STATE", tmp_path / "run_full.json")
    monkeypatch.setattr(module, "FULL", [("ok.py", ["--a", "1"], ""), ("recovery_table.py", ["--samples", "512"], ""),
                                         ("fail.py", [], "a note"), ("ok.py", ["--b"], "")])
    return module


def fake_common(sections: list[str]) -> SimpleNamespace:
    return SimpleNamespace(machine=lambda paths: "Test CPU (AVX2), 2 cores, no GPU; secateurs at commit abc",
                           revision=lambda paths: "commit abc",
                           load_average=lambda: "0.10",
                           write_section=lambda name, body, top=False: sections.append(body))


def args(**kw):  # type: ignore[no-untyped-def]
    return SimpleNamespace(**{"cont": False, "only": None, "nni_python": None, **kw})


def calls(tmp_path: Path) -> list[str]:
    return [line.split(" ", 1)[1] if " " in line else "" for line in
            (tmp_path / "calls.txt").read_text().splitlines()]


def test_a_failed_run_is_continued_at_its_unfinished_script(run_all, tmp_path):  # type: ignore[no-untyped-def]
    sections: list[str] = []
    with pytest.raises(SystemExit, match="failed: fail.py"):
        run_all.run_full(args(), fake_common(sections))
    state = json.loads((tmp_path / "run_full.json").read_text())
    # every script ran once; the cell-keeping one was told the run's id
    assert calls(tmp_path) == ["--a 1", f"--samples 512 --run {state['id']}", "", "--b"]
    assert state["finished"] is None and [s["code"] for s in state["steps"]] == [0, 0, 3, 0]
    assert sections[-1].startswith("## `make bench` in progress: 4 of 4 scripts run")
    assert "| `fail.py` | 3 |" in sections[-1] and "a note" in sections[-1] and "| commit abc |" in sections[-1]
    # while a script runs, the section names it (so a run cut there says where)
    assert any("Running when this was written: `fail.py`" in s for s in sections)

    (tmp_path / "fail-code.txt").write_text("0")
    (tmp_path / "calls.txt").unlink()
    run_all.run_full(args(cont=True), fake_common(sections))
    assert calls(tmp_path) == [""]  # only the script that failed
    state = json.loads((tmp_path / "run_full.json").read_text())
    assert state["finished"] and [s["code"] for s in state["steps"]] == [0, 0, 0, 0]
    assert sections[-1].startswith("## Wall time of `make bench`: ")
    assert "2 sitting(s)" in sections[-1] and "Not run yet" not in sections[-1] and "Running" not in sections[-1]

    with pytest.raises(SystemExit, match="nothing to continue: the run started .* finished"):
        run_all.run_full(args(cont=True), fake_common(sections))


def test_an_interrupted_cell_script_is_run_again_in_the_same_run(run_all, tmp_path):  # type: ignore[no-untyped-def]
    # the state a run leaves when it is stopped inside recovery_table.py: first script done, second current
    state = {"started": "2026-12-01 00:00", "id": "2026-12-01 00:00 cafe", "finished": None,
             "current": "recovery_table.py --samples 512", "current_started": "2026-12-01 00:01",
             "steps": [{"key": "ok.py --a 1", "argv": ["--a", "1"], "code": 0, "seconds": 60.0,
                        "ended": "2026-12-01 00:01", "machine": "Other CPU", "code_at": "commit 123",
                        "sitting": "1: 2026-12-01 00:00", "load_end": "0.5"}]}
    (tmp_path / "run_full.json").write_text(json.dumps(state))
    (tmp_path / "fail-code.txt").write_text("0")
    sections: list[str] = []
    run_all.run_full(args(cont=True), fake_common(sections))
    assert calls(tmp_path) == ["--samples 512 --run 2026-12-01 00:00 cafe", "", "--b"]
    body = sections[-1]
    assert body.startswith("## Wall time of `make bench`: ") and "2 sitting(s)" in body
    assert "Other CPU" in body and "Test CPU" in body and "commit 123" in body  # each step with its own


def test_only_and_a_missing_nni_never_finish_the_run(run_all, tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(run_all, "FULL", [*run_all.FULL, ("ok.py", ["--nni"], "NNI")])
    (tmp_path / "fail-code.txt").write_text("0")
    sections: list[str] = []
    run_all.run_full(args(), fake_common(sections))  # without --nni-python the NNI step is left out
    assert calls(tmp_path) == ["--a 1", calls(tmp_path)[1], "", "--b"]
    state = json.loads((tmp_path / "run_full.json").read_text())
    assert state["finished"] is None and "Not run yet: `ok.py --nni --with-nni" in sections[-1]
    # continuing with just that script finishes the whole run, and the section keeps every script
    run_all.run_full(args(cont=True, only="ok.py", nni_python="/nni/python"), fake_common(sections))
    assert calls(tmp_path)[-1] == "--nni --with-nni /nni/python"
    assert json.loads((tmp_path / "run_full.json").read_text())["finished"]
    assert sections[-1].startswith("## Wall time of `make bench`: ") and sections[-1].count("\n| `") == 5


def test_nothing_to_continue_and_only_leave_the_record_alone(run_all, tmp_path):  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit, match="nothing to continue: .*run_full.json does not exist"):
        run_all.load_state(tmp_path / "run_full.json", True)
    (tmp_path / "run_full.json").write_text("{not json")
    with pytest.raises(SystemExit, match="is not a run's state"):
        run_all.load_state(tmp_path / "run_full.json", True)
    (tmp_path / "run_full.json").write_text('{"kept": true}')
    with pytest.raises(SystemExit, match="is not a run's state"):
        run_all.load_state(tmp_path / "run_full.json", True)
    sections: list[str] = []
    run_all.run_full(args(only="ok.py"), fake_common(sections))
    assert calls(tmp_path) == ["--a 1", "--b"] and sections == []
    assert json.loads((tmp_path / "run_full.json").read_text()) == {"kept": True}


def test_a_results_file_belongs_to_the_run_it_names(tmp_path) -> None:  # type: ignore[no-untyped-def]
    grid = load_grid("bench_recovery_grid")
    f = tmp_path / "cells.json"
    assert not grid.belongs_to(f, "run 1")  # no file: start anew
    for text in ("{broken", "[]", '{"meta": []}', '{"meta": {"run": "run 0"}, "rows": []}'):
        f.write_text(text)
        assert not grid.belongs_to(f, "run 1"), text
    f.write_text('{"meta": {"run": "run 1"}, "rows": []}')
    assert grid.belongs_to(f, "run 1")


def test_the_full_plan_names_real_scripts_and_flags() -> None:
    module = load("bench_run_all_plan", "run_all.py")
    for script, _, _ in [*module.FULL, *module.QUICK]:
        assert (BENCH / script).exists(), script
    for script in module.CELLS:  # told --run by a full run: each must take it
        shown = subprocess.run([sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True,
                               timeout=300)
        assert shown.returncode == 0, shown.stderr
        assert "--run RUN" in shown.stdout, script


def test_run_decides_between_resume_and_fresh_by_the_results_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    grid = load_grid("bench_recovery_grid_args")
    parser = argparse.ArgumentParser()
    grid.run_arguments(parser, "start anew")
    cells = tmp_path / "cells.json"

    def settled(*argv: str) -> tuple[bool, bool]:
        args = parser.parse_args(argv)
        grid.settle_run(parser, args, cells)
        return args.resume, args.fresh

    assert settled() == (False, False)
    assert settled("--resume") == (True, False)
    assert settled("--run", "run 1") == (False, True)  # no file yet
    cells.write_text('{"meta": {"run": "run 0"}, "rows": []}')
    assert settled("--run", "run 1") == (False, True)  # another run's cells
    cells.write_text('{"meta": {"run": "run 1"}, "rows": []}')
    assert settled("--run", "run 1") == (True, False)
    for argv in (["--fresh", "--resume"], ["--run", "run 1", "--fresh"], ["--run", "run 1", "--resume"]):
        with pytest.raises(SystemExit):
            settled(*argv)


def test_a_quick_run_writes_its_wall_time_per_script(run_all, tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(run_all, "QUICK", [("ok.py", ["--results", "{tmp}/x.json"], "printed only"),
                                           ("fail.py", [], "")])
    sections: list[str] = []
    with pytest.raises(SystemExit, match="failed: fail.py"):
        run_all.run_quick(args(), SimpleNamespace(**vars(fake_common(sections)), command=lambda: "run_all.py quick"))
    body = sections[-1]
    assert body.startswith("## Wall time of `make bench-quick`: ")
    assert "| `ok.py --results " in body and "| printed only |" in body and "| `fail.py` | 3 |" in body
    assert "{tmp}" not in calls(tmp_path)[0]  # the run's temporary folder was put in
    assert not (tmp_path / "run_full.json").exists()  # a quick run keeps no record
