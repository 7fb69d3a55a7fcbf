"""eis-hil sweep through the real CLI: the cross product, overrides and their errors, resume, a failing task,
signals, identical bytes whatever the executor, and the dataset read back with DuckDB."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hil_server.cli import main

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"

TINY = """name: {name}
step_rate_hz: 10
eis: {{interval_s: 2, frequencies: {{min_hz: 0.1, max_hz: 1000, points_per_decade: 2}}}}
cells: {{count: 2, profile: zhang2020, soc: 0.9}}
timeline:
  - rest: {{duration_s: {rest}}}
  - constant_current: {{current_a: 0.02, duration_s: 10}}
"""


def _scenario(tmp_path: Path, name: str = "tiny", rest: float = 5) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(TINY.format(name=name, rest=rest), encoding="utf-8")
    return path


def _sweep(tmp_path: Path, body: str, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(body, encoding="utf-8")
    return path


def _tree_hashes(out: Path) -> dict[str, str]:
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for table in ("states", "spectra", "faults", "frequencies")
        for p in sorted((out / table).rglob("*.parquet"))
    }


def _manifest(out: Path) -> dict[str, dict[str, object]]:
    return {t["id"]: t for t in json.loads((out / "manifest.json").read_text())["tasks"]}


def test_cross_product_of_scenarios_profiles_overrides_and_seeds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _scenario(tmp_path, "a")
    _scenario(tmp_path, "b")
    sweep = _sweep(
        tmp_path,
        """name: cross
scenarios: [a.yaml, b.yaml]
profiles: [zhang2020, rashid2023]
seeds: [1, 2]
overrides:
  - {key: ambient.temp_c, values: [0, 40]}
  - {key: cells.spread.soc_std, name: soc_spread, values: [0.0, 0.01]}
""",
    )
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "32 tasks"
    assert len(set(lines[:-1])) == 32
    assert lines[0] == "scenario=a/profile=zhang2020/ambient_temp_c=0/soc_spread=0.0/seed=1"
    assert "scenario=b/profile=rashid2023/ambient_temp_c=40/soc_spread=0.01/seed=2" in lines


def test_seed_count_derives_seeds_from_the_sweep_seed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _scenario(tmp_path)
    runs = []
    for sweep_seed in (1, 1, 2):
        sweep = _sweep(tmp_path, f"name: s\nseed: {sweep_seed}\nscenarios: [tiny.yaml]\nseeds: 3\n")
        assert main(["sweep", str(sweep), "--out", str(tmp_path / "o"), "--dry-run"]) == 0
        runs.append(capsys.readouterr().out.splitlines()[:-1])
    assert runs[0] == runs[1] != runs[2]
    assert len({line.rsplit("=", 1)[1] for line in runs[0]}) == 3


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "name: bad\nscenarios: [tiny.yaml]\noverrides:\n  - key: ambient.temp_c\n    values: [10, 500]\n",
            "sweep.yaml:5: overrides[0].values[1]: ambient.temp_c = 500 in tiny.yaml: ambient.temp_c: "
            "expected a number in [-60, 100], got '500'",
        ),
        (
            "name: bad\nscenarios: [tiny.yaml]\noverrides:\n  - {key: cells.sox, values: [0.5]}\n",
            "sweep.yaml:4: overrides[0].values[0]: cells.sox = 0.5 in tiny.yaml: cells.sox: "
            "unknown key 'sox' (did you mean 'soh'?)",
        ),
        (
            "name: bad\nscenarios: [tiny.yaml]\noverrides:\n"
            "  - {key: 'timeline[7].rest.duration_s', values: [1]}\n",
            "sweep.yaml:4: overrides[0].values[0]: tiny.yaml: no item [7] at timeline (the scenario has 2)",
        ),
        (
            "name: bad\nscenarios: [tiny.yaml]\noverrides:\n  - {key: 'cells..soc', values: [1]}\n",
            "sweep.yaml:4: overrides[0].key: expected a key path such as timeline[2].drive_cycle.scale",
        ),
        (
            "name: bad\nscenarios: [tiny.yaml]\noverrides:\n"
            "  - {key: cells.temp_c, name: temp_c, values: [10]}\n",
            "sweep.yaml:4: overrides[0].name: partition column 'temp_c' clashes",
        ),
        (
            "name: bad\nscenarios: [tiny.yaml, nope.yaml]\n",
            "sweep.yaml:2: scenarios[1]: scenario file not found",
        ),
        (
            "name: bad\nscenarios: [tiny.yaml]\nseeds: 0\n",
            "sweep.yaml:3: seeds: expected an integer in [1, 100000]",
        ),
        (
            "name: bad\nscenarios: [tiny.yaml]\nprofiles:\n  - zhang2020\n  - no_such_cell\n",
            "sweep.yaml:5: profiles[1]: unknown profile 'no_such_cell'",
        ),
        (
            "name: bad\nscenarios: [tiny.yaml]\nsedes: 3\n",
            "sweep.yaml:3: sedes: unknown key 'sedes' (did you mean",
        ),
    ],
)
def test_bad_sweep_files_name_file_line_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, expected: str
) -> None:
    _scenario(tmp_path)
    sweep = _sweep(tmp_path, body)
    out = tmp_path / "out"
    assert main(["sweep", str(sweep), "--out", str(out)]) == 2
    printed = capsys.readouterr().err  # errors on stderr
    assert f"{sweep.parent}/{expected}" in printed, printed
    assert not out.exists()  # refused before any work


def test_options_out_of_range_and_unwritable_output_are_refused_before_work(tmp_path: Path) -> None:
    _scenario(tmp_path)
    sweep = _sweep(tmp_path, "name: s\nscenarios: [tiny.yaml]\n")
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "o"), "--workers", "0"]) == 2
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "o"), "--address", "auto"]) == 2
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["sweep", str(sweep), "--out", str(blocker / "o")]) == 2
    assert main(["sweep", str(sweep), "--out", "nosuchfs://bucket/prefix"]) == 2
    assert not (tmp_path / "o").exists()


def test_dataset_reads_back_with_duckdb_and_a_rerun_resumes(tmp_path: Path) -> None:
    duckdb = pytest.importorskip("duckdb")
    _scenario(tmp_path)
    body = "name: s\nscenarios: [tiny.yaml]\nprofiles: [zhang2020, rashid2023]\nseeds: [1, 2]\n"
    sweep = _sweep(tmp_path, body)
    out = tmp_path / "out"
    assert main(["sweep", str(sweep), "--out", str(out), "--workers", "2"]) == 0
    manifest = _manifest(out)
    assert len(manifest) == 4
    assert all(t["status"] == "ok" and t["finished"] for t in manifest.values())
    rows = duckdb.sql(
        f"SELECT profile, seed, count(*) AS n, count(DISTINCT spectrum_id) AS spectra "
        f"FROM read_parquet('{out}/spectra/**/*.parquet', hive_partitioning = true) GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    per_task = {(t["profile"], t["seed"]): t["rows"] for t in manifest.values()}
    assert [(p, s) for p, s, _, _ in rows] == sorted(per_task)
    for profile, seed, n, spectra in rows:
        assert n == per_task[(profile, seed)]["spectra"]  # type: ignore[index]
        assert spectra == 2 * 7  # 2 cells, a spectrum every 2 s over 15 s
    states = duckdb.sql(
        f"SELECT count(*) FROM read_parquet('{out}/states/**/*.parquet', hive_partitioning = true)"
    ).fetchall()
    assert states == [(4 * 150 * 2,)]

    before = {p: (out / p).stat().st_ino for p in _tree_hashes(out)}
    assert main(["sweep", str(sweep), "--out", str(out)]) == 0  # everything finished: nothing runs again
    assert {p: (out / p).stat().st_ino for p in _tree_hashes(out)} == before
    _sweep(tmp_path, body.replace("[1, 2]", "[1, 2, 3]"))  # one more seed: only its tasks run
    assert main(["sweep", str(sweep), "--out", str(out)]) == 0
    after = {p: (out / p).stat().st_ino for p in _tree_hashes(out)}
    assert {p: i for p, i in after.items() if p in before} == before
    assert len(after) == 6 * 4
    _scenario(tmp_path, rest=6)  # the scenario changed: its hash does, so every task runs again
    assert main(["sweep", str(sweep), "--out", str(out)]) == 0
    assert all(after[p] != i for p, i in {p: (out / p).stat().st_ino for p in after}.items())


def test_a_failing_task_is_recorded_and_the_rest_finish(tmp_path: Path) -> None:
    _scenario(tmp_path)
    # each value is valid alone; min 500 Hz with max 200 Hz is not: found when that task loads its scenario
    sweep = _sweep(
        tmp_path,
        """name: s
scenarios: [tiny.yaml]
overrides:
  - {key: eis.frequencies.min_hz, name: fmin, values: [0.1, 500]}
  - {key: eis.frequencies.max_hz, name: fmax, values: [1000, 200]}
""",
    )
    out = tmp_path / "out"
    assert main(["sweep", str(sweep), "--out", str(out), "--workers", "2"]) == 1
    manifest = _manifest(out)
    failed = {k: t for k, t in manifest.items() if t["status"] == "failed"}
    assert list(failed) == ["scenario=tiny/profile=zhang2020/fmin=500/fmax=200/seed=0"]
    assert "expected min_hz < max_hz (200), got 500" in str(failed[next(iter(failed))]["error"])
    assert sum(t["status"] == "ok" for t in manifest.values()) == 3
    assert len(_tree_hashes(out)) == 3 * 4
    assert not any("fmin=500/fmax=200" in p for p in _tree_hashes(out))


def _children(pid: int) -> set[int]:
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            if f"\nPPid:\t{pid}\n" in status:
                out.add(int(entry.name))
    return out


def _descendants(pid: int) -> set[int]:
    found: set[int] = set()
    todo = [pid]
    while todo:
        children = _children(todo.pop())
        todo.extend(children - found)
        found |= children
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize(
    ("signum", "executor"),
    [(signal.SIGINT, "local"), (signal.SIGTERM, "local"), (signal.SIGINT, "ray")],
)
def test_a_signal_stops_every_worker_and_leaves_a_true_manifest(
    tmp_path: Path, signum: int, executor: str
) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    if executor == "ray":
        pytest.importorskip("ray")
    _scenario(tmp_path)
    # one short task, one that would run for minutes: the signal comes once the short one is recorded
    sweep = _sweep(
        tmp_path,
        "name: s\nscenarios: [tiny.yaml]\noverrides:\n"
        "  - {key: 'timeline[0].rest.duration_s', name: rest_s, values: [1, 1000000]}\n",
    )
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "hil_server.cli",
        "sweep",
        str(sweep),
        "--out",
        str(out),
        "--workers",
        "2",
    ]
    proc = subprocess.Popen(
        [*command, "--executor", executor],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "manifest.json").exists() or len(_children(proc.pid)) < 2:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        workers = _descendants(proc.pid)  # worker processes; on Ray also its raylet, GCS and their workers
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr
    assert "stopped by" in stdout
    assert not any(_alive(pid) for pid in workers)
    manifest = _manifest(out)
    assert list(manifest) == ["scenario=tiny/profile=zhang2020/rest_s=1/seed=0"]
    assert manifest["scenario=tiny/profile=zhang2020/rest_s=1/seed=0"]["status"] == "ok"
    assert not (out / "_staging").exists()
    files = _tree_hashes(out)
    assert len(files) == 4
    assert all("rest_s=1/" in p for p in files)
    for p in files:
        pq.read_table(out / p)  # whole, valid Parquet
    assert "rest_s=1000000" not in str(os.listdir(out / "states" / "scenario=tiny" / "profile=zhang2020"))


def test_identical_bytes_with_one_or_two_workers_and_on_ray(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    _scenario(tmp_path, "a")
    _scenario(tmp_path, "b", rest=3)
    sweep = _sweep(
        tmp_path,
        "name: s\nseed: 5\nscenarios: [a.yaml, b.yaml]\nseeds: 2\n"
        "overrides:\n  - {key: ambient.temp_c, name: amb, values: [5, 30]}\n",
    )
    runs = {
        "one": ["--workers", "1"],
        "two": ["--workers", "2"],
        "ray": ["--executor", "ray", "--workers", "2"],
    }
    hashes = {}
    for name, extra in runs.items():
        assert main(["sweep", str(sweep), "--out", str(tmp_path / name), *extra]) == 0
        hashes[name] = _tree_hashes(tmp_path / name)
    assert len(hashes["one"]) == 8 * 4
    assert hashes["one"] == hashes["two"] == hashes["ray"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_worker_fails_only_its_task(tmp_path: Path) -> None:
    _scenario(tmp_path)
    # one worker: the long first task is the one running when it is killed; a new worker runs the rest
    sweep = _sweep(
        tmp_path,
        "name: s\nscenarios: [tiny.yaml]\noverrides:\n"
        "  - {key: 'timeline[0].rest.duration_s', name: rest_s, values: [1000000, 1, 2]}\n",
    )
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hil_server.cli", "sweep", str(sweep), "--out", str(out), "--workers", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not _children(proc.pid):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        (worker,) = _children(proc.pid)
        os.kill(worker, signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, stderr
    manifest = _manifest(out)
    assert {k.split("/")[2]: t["status"] for k, t in manifest.items()} == {
        "rest_s=1000000": "failed",
        "rest_s=1": "ok",
        "rest_s=2": "ok",
    }
    assert manifest["scenario=tiny/profile=zhang2020/rest_s=1000000/seed=0"]["error"] == (
        "worker process died (killed by signal 9)"
    )
    assert "2 of 3 tasks finished" in stdout
