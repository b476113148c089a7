"""What the resumable benchmarks (quality/downstream, quality/real_domains, quality/generative_domains)
share: one JSON per finished unit, git commits of those results, the library calls that produce a unit,
and the table's number format.

Each unit's JSON holds its result, its ``definition`` (the settings that made it), ``unit_seconds``
and ``finished``; a rerun reuses it while the definition matches, so a crashed run resumes. The
byte layout of these files is fixed: cached results of long runs are read back by later versions.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ntk_selector.io.definitions import canonical

# ----------------------------------------------------------------------------- files and logging


def log(text: str) -> None:
    print(f"[{dt.datetime.now():%Y-%m-%d %H:%M:%S}] {text}", flush=True)


def write_text(path: Path, text: str) -> None:
    """Through a temporary file of this process, so a crash or a second writer never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")  # read back as UTF-8 (read_jsonl)
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def counts(values: list[str]) -> dict[str, int]:
    """How often each value occurs, most frequent first (ties by value)."""
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))


def task_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    """How many rows come from each pool task (rows without one count as "(none)")."""
    return counts([str(r.get("task", "(none)")) for r in rows])


def mean_std(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    """``mean ± std`` over seeds (std only with two or more), scaled to percent unless told otherwise."""
    if not values:
        return "–"
    v = np.asarray(values) * scale
    return f"{v.mean():.{digits}f}" + (f" ± {v.std(ddof=1):.{digits}f}" if len(v) > 1 else "")


# ----------------------------------------------------------------------------- units


def exit_cleanly_on_sigterm() -> None:
    """``kill PID`` (SIGTERM) ends a benchmark like Ctrl-C: as an exception, so the unit in flight
    releases its lock and the stores their locks, instead of leaving them for the next run to clear."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


UNIT_LOCK_POLL_SECONDS = 30.0


class UnitBusy(Exception):
    """A unit another live worker is computing (raised instead of waiting when asked not to wait)."""


def _process_identity(pid: int) -> str | None:
    """Who ``pid`` is on this boot: the boot id and the process's start time (so a lock left before a
    restart, or by a process whose number was reused, is not taken for a live holder)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    start = stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name
    return f"{boot}:{start}"


def _lock_holder_alive(lock: Path) -> bool:
    """Whether the process that wrote a unit's lock file still runs (a lock left by a process that
    died, e.g. at a machine's restart, is stale)."""
    try:
        pid, identity = lock.read_text().split()[:2]
    except (OSError, ValueError):
        return False
    return pid.isdigit() and _process_identity(int(pid)) == identity


@contextlib.contextmanager
def _sigterm_held() -> Iterator[None]:
    """SIGTERM held back (delivered on exit) while a lock file is created and its owner recorded."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _take_unit_lock(lock: Path, what: str) -> bool:
    """True once this process holds ``lock``; False while another live worker holds it."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        if _lock_holder_alive(lock):
            return False
        log(f"{what}: removing a stale lock ({lock.read_text().strip() if lock.exists() else 'gone'})")
        lock.unlink(missing_ok=True)
        return _take_unit_lock(lock, what)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"{os.getpid()} {_process_identity(os.getpid())} {dt.datetime.now().isoformat(timespec='seconds')}\n")
    return True


def cached_unit(
    path: Path, definition: dict[str, Any], compute: Callable[[], dict[str, Any]], what: str, wait: bool = True
) -> tuple[dict[str, Any], bool]:
    """(the unit's result, whether it was computed now): the JSON at ``path`` when its definition
    matches, else ``compute()`` stored there with its definition and timing. A lock file beside the
    JSON (``<name>.lock``, ignored by git) lets several workers share one results folder: a unit
    another live worker is computing is never computed twice; it is waited for, or with
    ``wait=False`` UnitBusy is raised so the caller can do other units first."""
    definition = canonical(definition)
    lock = path.with_name(path.name + ".lock")
    waited = taken = False
    try:
        while True:
            if path.exists():
                old = json.loads(path.read_text())
                if old.get("definition") == definition:
                    return old, False
            with _sigterm_held():  # a SIGTERM lands once `taken` says whether the lock is ours to remove
                taken = _take_unit_lock(lock, what)
            if taken:
                break
            if not wait:
                raise UnitBusy(what)
            if not waited:
                log(f"{what}: another worker is computing it; waiting")
                waited = True
            time.sleep(UNIT_LOCK_POLL_SECONDS)
        if path.exists():  # finished by another worker between the check and the lock
            old = json.loads(path.read_text())
            if old.get("definition") == definition:
                return old, False
            log(f"{what}: cached result has another definition, recomputing")
        log(f"{what} ...")
        start = time.perf_counter()
        result = compute()
        result.update(
            {
                "definition": definition,
                "unit_seconds": round(time.perf_counter() - start, 1),
                "finished": dt.datetime.now().isoformat(timespec="seconds"),
            }
        )
        write_json(path, result)
    finally:
        if taken:
            lock.unlink(missing_ok=True)
    extra = "".join(
        f", {k} {result[k]:.4f}" for k in ("accuracy", "balanced_accuracy") if isinstance(result.get(k), float)
    )
    log(f"{what}: done in {result['unit_seconds']:.0f} s{extra}")
    return result, True


def count_units(folder: Path) -> int:
    return sum(1 for _ in folder.rglob("*.json"))


def git_commit(paths: list[Path], message: str) -> None:
    """Commit only these paths of the repository that holds them (retrying while the index is locked)."""
    top = subprocess.run(
        ["git", "rev-parse", "--show-toplevel"], cwd=paths[0], capture_output=True, text=True
    ).stdout.strip()
    if not top:
        return
    rel = [str(p.resolve().relative_to(top)) for p in paths if p.exists()]
    for attempt in range(10):
        add = subprocess.run(["git", "add", "--", *rel], cwd=top, capture_output=True, text=True)
        err = add.stderr
        if add.returncode == 0:
            if subprocess.run(["git", "diff", "--cached", "--quiet", "--", *rel], cwd=top).returncode == 0:
                return  # nothing new since the last commit
            done = subprocess.run(
                ["git", "commit", "-q", "-m", message, "--", *rel], cwd=top, capture_output=True, text=True
            )
            if done.returncode == 0:
                log(f"committed: {message}")
                return
            err = done.stderr or done.stdout
        if "index.lock" not in err:
            log(f"git commit skipped: {err.strip()[-200:]}")
            return
        time.sleep(5 + 5 * attempt)
    log("git commit skipped: index stayed locked")


# ----------------------------------------------------------------------------- library calls


def cli_flags(**settings: Any) -> list[str]:
    """``--name value`` for each setting (``--flag`` for True; None and False left out): the CLI
    spelling of the keyword settings the Python API takes."""
    flags: list[str] = []
    for name, value in settings.items():
        if value is None or value is False:
            continue
        flags.append(f"--{name.replace('_', '-')}")
        if value is not True:
            flags.append(str(value))
    return flags


def run_ranks(command: str, ranks: int, *args: str, **settings: Any) -> None:
    """``ntk-selector COMMAND`` as ``ranks`` torchrun processes of one thread each. On a CPU two 1-thread
    ranks embed and featurize faster than one 2-thread process (BENCHMARKS.md, "Real domains"); the
    stores they fill are what one process would write, so the caller's in-process run that follows
    finds them done and only scores and writes the outputs."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={ranks}",
        "-m",
        "ntk_selector",
        command,
        *args,
        *cli_flags(**settings),
    ]
    log(f"{command} under torchrun, {ranks} ranks of one thread")
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def run_select(
    domain: Path, pool: Path | None, out: Path, n: int, method: str, ranks: int = 1, **settings: Any
) -> tuple[list[int], dict[str, Any]]:
    """``ntk_selector.select`` into ``out`` with the benchmarks' logging settings: (the selected pool
    rows, best first; run.json as written). With ``ranks`` > 1 the model work runs first under
    torchrun (``run_ranks``); run.json's ``store_seconds`` then hold its cost."""
    import ntk_selector

    if ranks > 1 and method != "random":
        run_ranks(
            "select",
            ranks,
            "--domain",
            str(domain),
            *(["--pool", str(pool)] if pool is not None else []),
            "-n",
            str(n),
            "--out",
            str(out),
            "--method",
            method,
            quiet=True,
            debug=True,
            **settings,
        )
    selection = ntk_selector.select(domain, pool, n, method=method, out=out, quiet=True, debug=True, **settings)
    return selection.indices.tolist(), json.loads((out / "run.json").read_text())


def finetune_summary(
    files: list[Path],
    adapter: Path,
    *,
    model: str | None,
    max_length: int,
    token_budget: int,
    rank: int,
    seed: int,
    epochs: float,
    lr: float,
    batch_size: int,
    group_by_length: bool,
    loss_mean: str = "token",
) -> dict[str, Any]:
    """LoRA fine-tune (alpha = 2·rank) on the union of ``files`` into ``adapter``; the unit's result."""
    from ntk_selector.config import DataConfig, LoraSettings, ModelConfig, RunConfig, TrainConfig
    from ntk_selector.training.finetune import finetune

    state = finetune(
        files,
        adapter,
        ModelConfig(model=model),
        DataConfig(max_length=max_length, token_budget=token_budget),
        LoraSettings(rank=rank, lora_alpha=2.0 * rank),
        RunConfig(seed=seed, quiet=True, overwrite=True),
        TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, loss_mean=loss_mean),
        group_by_length=group_by_length,
    )
    losses = state["losses"]
    return {
        "adapter": str(adapter),
        "examples": state["examples"],
        "steps": state["steps"],
        "seconds": state["seconds"],
        "loss_first": state["loss_first"],
        "loss_last": state["loss_last"],
        "loss_curve": [round(float(np.mean(losses[i : i + 10])), 4) for i in range(0, len(losses), 10)],
    }
