"""The first run: the real `python train.py` (configs/shapes.yaml), as a newcomer runs it.

    python -m benchmarks --only first_run                    # 3 runs of the default job
    python -m benchmarks --only first_run --busy             # beside one CPU-bound process
    python -m benchmarks --only first_run --checkout ../old  # another checkout's train.py
    python -m benchmarks --only first_run --train-overrides train.threads=1
    python -m benchmarks --only first_run --quick            # tiny overrides, 2 runs: seconds

Each run is one subprocess `python train.py run_dir=<tmp>/run data.root=<tmp>/data [overrides]`
in a fresh temporary directory, so generating the shapes dataset is timed too, as on a fresh
clone. Its working directory and PYTHONPATH are the checkout (so that checkout's `captioner` runs)
and its output goes to <tmp>/train.log (kept, and named, when the run fails). Per run:
  wall s           perf_counter around the subprocess: what the newcomer waits
  CPU s            user + sys of train.py and the descendants it waited for (os.wait4's rusage)
  peak RSS (tree)  the peak of the SUM of VmRSS over train.py and all its descendants, read from
                   /proc every 0.2 s: METEOR's Java scorer (~1.2 GB) runs beside train.py, and a
                   per-process maximum would hide it. A spike shorter than 0.2 s can be missed:
                   the JSON also has the sum of each process's VmHWM, an upper bound (their peaks
                   need not coincide), so the true peak lies between the two
  largest process  the largest single process's VmHWM (its own high-water mark, read at each
                   sample). Not wait4's ru_maxrss: a child started by fork/vfork and exec keeps the
                   high-water mark of the parent's memory: it reports at least this benchmark's
                   own size (0.7-0.9 GB with torch loaded), whatever train.py holds
and the test BLEU-4, content accuracy and relation accuracy of <run_dir>/metrics.json.

The child gets our environment less the OMP_WAIT_POLICY=PASSIVE that benchmarks/run.py sets for
its own timings: a user running train.py has no such variable, so the job is timed with OpenMP's
default (spinning) wait policy. A value the user set before run.py is passed on.
--busy keeps one `while True: pass` process running for the whole of each run (killed after it),
as one other job on the machine would. To compare two versions, make a `git worktree` of the
"before" commit, run this with --checkout pointing at it, then without (this checkout), back to
back on the same quiet machine, and quote both tables: one run here is minutes, and a machine's
load drifts over that time, so numbers from different sessions do not compare.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.common import BenchmarkError, Settings, table, write_result

REPEATS = 3  # runs of the real job unless --repeats says otherwise
QUICK_REPEATS = 2
# --quick: seconds a run. One thread: on a loaded 2-core machine two spinning ones took 5x longer.
QUICK_OVERRIDES = (
    "data.synthetic.num_train=64", "data.synthetic.num_val=16", "data.synthetic.num_test=16",
    "train.epochs=1", "train.batch_size=16", "train.captions_per_image=2", "train.threads=1",
    "eval.meteor=false", "eval.max_length=8", "model.hidden_size=32", "model.embed_size=16")
SAMPLE_SECONDS = 0.2  # how often the process tree's RSS is read
LOG_LINES = 15  # last lines of train.log shown when a run fails
ROOT = Path(__file__).resolve().parents[1]
MB = 1024 * 1024


class TreeMemory(threading.Thread):
    """Samples the summed RSS of a process and all its descendants until stopped. Keeps the
    peak (a lower bound of the true one) and each process's high-water mark (summed: an upper)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak_bytes, self.most_processes = pid, 0, 0
        self.high_water: dict[int, int] = {}  # pid -> VmHWM, the most it ever held
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            tree = descendants(self.pid)
            sizes = {pid: _memory_bytes(pid) for pid in tree}
            self.peak_bytes = max(self.peak_bytes, sum(rss for rss, _ in sizes.values()))
            for pid, (_, high_water) in sizes.items():
                self.high_water[pid] = max(self.high_water.get(pid, 0), high_water)
            self.most_processes = max(self.most_processes, len(tree))
            self.stopped.wait(SAMPLE_SECONDS)

    def stop(self) -> None:
        self.stopped.set()
        self.join()


def descendants(root: int) -> list[int]:
    """root and every process whose parent chain leads to it (a /proc scan: /proc/*/children is
    not in every kernel)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:  # it ended while we looked
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])  # after "pid (comm) state": ppid
            children.setdefault(parent, []).append(int(entry.name))
    tree, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        tree.append(pid)
        frontier += children.get(pid, [])
    return tree


def _memory_bytes(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process; zeros when it is gone or a zombie (no such lines)."""
    fields = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                fields[line[:5]] = int(line.split()[1]) * 1024  # "VmRSS:   123456 kB"
    except (OSError, ValueError):
        pass
    return fields.get("VmRSS", 0), fields.get("VmHWM", 0)


def one_run(checkout: Path, overrides: list[str], env: dict[str, str], busy: bool) -> dict:
    """Run train.py once in a fresh temporary directory: its numbers, or a BenchmarkError that
    names the log (kept, with its last lines printed)."""
    directory = Path(tempfile.mkdtemp(prefix="first_run-"))
    command = [sys.executable, "train.py", f"run_dir={directory / 'run'}",
               f"data.root={directory / 'data'}", *overrides]
    log = directory / "train.log"
    spin = [sys.executable, "-c", "while True: pass"]
    spinner = subprocess.Popen(spin, env=env) if busy else None
    try:
        record = _timed(command, checkout, env, log)
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    returncode = record.pop("returncode")
    if returncode != 0:
        tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        print("\n".join(tail[-LOG_LINES:]), file=sys.stderr)
        last = tail[-1] if tail else "no output"
        raise BenchmarkError(f"train.py exited {returncode} after {record['wall_s']} s ({last}); "
                             f"its log: {log}")
    record.update(_scores(directory / "run" / "metrics.json"))
    shutil.rmtree(directory)
    return record


def _timed(command: list[str], cwd: Path, env: dict[str, str], log: Path) -> dict:
    """Wall, CPU and memory of one subprocess run to its end."""
    with log.open("w") as out:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        memory = TreeMemory(process.pid)
        memory.start()
        try:
            # the rusage of the child and of the descendants it waited for
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
        finally:
            if process.returncode is None:  # interrupted here: do not leave train.py running
                process.kill()
                process.wait()
            memory.stop()
        wall = time.perf_counter() - started
    return {"returncode": process.returncode, "wall_s": round(wall, 2),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 2), "user_s": round(usage.ru_utime, 2),
            "sys_s": round(usage.ru_stime, 2), "peak_tree_rss_mb": round(memory.peak_bytes / MB, 1),
            "largest_process_rss_mb": round(max(memory.high_water.values(), default=0) / MB, 1),
            "sum_of_process_peaks_mb": round(sum(memory.high_water.values()) / MB, 1),
            "most_processes": memory.most_processes}


def _scores(path: Path) -> dict:
    """metrics.json's test scores, in % (relation is None when no caption states one)."""
    metrics = json.loads(path.read_text())
    return {"bleu4": metrics["bleu4"], "content_accuracy": metrics["content_accuracy"],
            "relation": metrics.get("relation"),
            "relations_stated": metrics.get("relations_stated"),
            "epoch_seconds": [epoch.get("epoch_seconds") for epoch in metrics.get("history", [])]}


def commit(checkout: Path) -> str:
    """The checkout's short commit ("+modified" when tracked files differ from it); "unknown"
    when it is not a git repository."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(checkout), *args], capture_output=True, text=True,
                              check=True).stdout.strip()
    try:
        head = git("rev-parse", "--short", "HEAD")
        return head + ("+modified" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def child_environment(settings: Settings, checkout: Path) -> dict[str, str]:
    """Ours, with PYTHONPATH = the checkout and without the OMP_WAIT_POLICY that run.py set."""
    env = dict(os.environ, PYTHONPATH=str(checkout))
    if settings.extra.get("user_omp_wait_policy") is None:
        env.pop("OMP_WAIT_POLICY", None)
    return env


def _span(values: list, digits: int = 1) -> str:
    """ "median (min-max)", or the one value when they agree; "-" for none."""
    values = [value for value in values if value is not None]
    if not values:
        return "-"
    low, middle, high = (f"{v:.{digits}f}"
                         for v in (min(values), statistics.median(values), max(values)))
    return middle if low == high else f"{middle} ({low}-{high})"


def summary(runs: list[dict]) -> dict:
    """Median, minimum and maximum of every number over the runs."""
    keys = ("wall_s", "cpu_s", "peak_tree_rss_mb", "largest_process_rss_mb", "bleu4",
            "content_accuracy", "relation")
    out = {}
    for key in keys:
        values = [run[key] for run in runs if run[key] is not None]
        out[key] = ({"median": statistics.median(values), "min": min(values), "max": max(values)}
                    if values else None)
    return out


def _options(settings: Settings) -> tuple[Path, bool, list[str], int]:
    """checkout, busy, train.py overrides and runs, from Settings.extra (set by run.py), checked."""
    extra = settings.extra
    checkout = Path(extra.get("checkout") or ROOT).resolve()
    if not (checkout / "train.py").is_file():
        raise BenchmarkError(f"--checkout {checkout}: no train.py there")
    overrides = list(extra.get("train_overrides") or [])
    for override in overrides:
        if "=" not in override:
            raise BenchmarkError(f"--train-overrides {override!r}: expected key=value, "
                                 "e.g. train.threads=1")
    repeats = extra.get("repeats") or (QUICK_REPEATS if settings.quick else REPEATS)
    return checkout, bool(extra.get("busy")), overrides, repeats


def run(settings: Settings) -> dict:
    """Time the fresh runs one after another, print the tables, write first_run.json."""
    checkout, busy, overrides, repeats = _options(settings)
    overrides = [*(QUICK_OVERRIDES if settings.quick else ()), *overrides]
    env, version = child_environment(settings, checkout), commit(checkout)
    runs = []
    for index in range(repeats):
        runs.append(one_run(checkout, overrides, env, busy))
        print(f"run {index + 1}/{repeats}: {runs[-1]['wall_s']} s wall, "
              f"{runs[-1]['cpu_s']} s CPU", flush=True)
    _print_tables(runs, version, busy, overrides)
    path = write_result(settings, "first_run", {
        "checkout": str(checkout), "commit": version, "busy": busy, "overrides": overrides,
        "child_omp_wait_policy": env.get("OMP_WAIT_POLICY", ""), "runs": runs,
        "summary": summary(runs)})
    return {"path": str(path), "median_wall_s": statistics.median(run["wall_s"] for run in runs)}


def _print_tables(runs: list[dict], version: str, busy: bool, overrides: list[str]) -> None:
    def span(key: str, digits: int = 1) -> str:
        return _span([run[key] for run in runs], digits)
    print(table(f"First run: python train.py, median (min-max) of {len(runs)} fresh runs",
                ["commit", "machine", "wall s", "CPU s", "peak RSS, tree MB", "largest process MB",
                 "test BLEU-4", "content accuracy %", "relation accuracy %"],
                [[version, "busy (1 other CPU-bound process)" if busy else "quiet", span("wall_s"),
                  span("cpu_s"), span("peak_tree_rss_mb", 0), span("largest_process_rss_mb", 0),
                  span("bleu4"), span("content_accuracy"), span("relation")]]))
    print(f"\ntrain.py overrides: {' '.join(overrides) or 'none'}\n")
    print(table("Each run", ["run", "wall s", "CPU s", "peak RSS, tree MB", "processes",
                             "BLEU-4", "content %", "relation % (stated)"],
                [[index + 1, run["wall_s"], run["cpu_s"], run["peak_tree_rss_mb"],
                  run["most_processes"], _span([run["bleu4"]]), _span([run["content_accuracy"]]),
                  f"{_span([run['relation']])} ({run['relations_stated']})"]
                 for index, run in enumerate(runs)]))
