"""The curves of ``bench.scale``, one function per curve; each runs in its own process on a fresh database.

python -m bench.scale_runs CURVE URL SIZES_JSON OUT_JSON     # what bench.scale spawns
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from functools import partial
from itertools import pairwise
from typing import Any

from bench.common import TMP_PARENT, FreshDB, rss_mb, summary_ms
from bench.scale_seed import clone, expire_all
from stepstone import Engine, WorkflowEntrypoint

HIBERNATED: list[str] = []
SLEEP_AT: dict[str, float] = {}
WOKE: dict[str, float] = {}
STAMPS: list[float] = []
RUN_ENTERED: list[float] = []
AFTER: list[float] = []
RUNNER_GAPS: list[tuple[float, float]] = []  # (previous step start, this step start) of every runner
STOP = asyncio.Event()


class Hib(WorkflowEntrypoint):
    """Hibernate in a one-hour sleep."""

    async def run(self, event: Any, step: Any) -> None:
        HIBERNATED.append(event.instance_id)
        await step.sleep("hib", "1 hour")


class Wake(WorkflowEntrypoint):
    """Sleep ``s`` seconds (long enough to hibernate), then one step that records when it started."""

    async def run(self, event: Any, step: Any) -> None:
        iid = event.instance_id
        SLEEP_AT.setdefault(iid, time.time())

        async def after() -> None:
            WOKE.setdefault(iid, time.time())

        await step.sleep("nap", event.payload["ms"])
        await step.do("after", after)


class History(WorkflowEntrypoint):
    """``n`` sequential no-op steps (each stamps its start), a hibernating sleep, then one more step."""

    async def run(self, event: Any, step: Any) -> None:
        RUN_ENTERED.append(time.perf_counter())
        iid = event.instance_id

        async def stamp() -> None:
            STAMPS.append(time.perf_counter())

        async def after() -> None:
            AFTER.append(time.perf_counter())
            WOKE.setdefault(iid, time.time())

        for i in range(int(event.payload["n"])):
            await step.do(f"s{i}", stamp)
        SLEEP_AT.setdefault(iid, time.time())
        await step.sleep("nap", event.payload["ms"])
        await step.do("after", after)


class Done(WorkflowEntrypoint):
    """One step, then complete: the shape of the finished population."""

    async def run(self, event: Any, step: Any) -> Any:
        return await step.do("one", lambda: {"ok": True})


class Runner(WorkflowEntrypoint):
    """No-op steps until ``STOP``; records every gap between its consecutive steps."""

    async def run(self, event: Any, step: Any) -> None:
        last: list[float] = []

        async def tick() -> None:
            now = time.perf_counter()
            if last:
                RUNNER_GAPS.append((last[0], now))
            last[:] = [now]

        i = 0
        while not STOP.is_set():
            await step.do(f"t{i}", tick)
            i += 1


class Big(WorkflowEntrypoint):
    """``k`` sequential steps each returning a string of ``size`` encoded bytes."""

    async def run(self, event: Any, step: Any) -> None:
        body = "x" * (int(event.payload["size"]) - 2)  # JSON adds the two quotes

        async def big() -> str:
            STAMPS.append(time.perf_counter())
            return body

        for i in range(int(event.payload["k"])):
            await step.do(f"b{i}", big)
        STAMPS.append(time.perf_counter())


def _timed_claims(engine: Engine) -> list[float]:
    """Wrap the storage's ``claim`` so each call's duration is recorded (the list returned)."""
    took: list[float] = []
    storage: Any = engine.storage
    inner = storage.claim

    async def claim(**kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await inner(**kw)
        finally:
            took.append(time.perf_counter() - t0)

    storage.claim = claim
    return took


async def _until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.perf_counter() + timeout
    while not pred():
        if time.perf_counter() > deadline:
            raise TimeoutError(f"waiting for {what}")
        await asyncio.sleep(0.01)


async def _template(engine: Engine, name: str, status: str, timeout: float, iid: str = "template") -> int:
    rec = None
    deadline = time.perf_counter() + timeout
    while rec is None or rec.status != status:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"template of {name} never reached {status}: {rec}")
        await asyncio.sleep(0.02)
        rec = await engine.storage.get_instance("local", name, iid)
    return rec.pk


async def _create(wf: Any, rows: list[dict[str, Any]], batch: int = 100) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(rows), batch):
        await wf.create_batch({"instances": rows[i : i + batch]})
    return time.perf_counter() - t0


async def _wait_after(inst: Any, timeout: float) -> None:
    """Until the history instance's last step ran; raises if the instance ended another way."""
    deadline = time.perf_counter() + timeout
    while not AFTER:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"waiting for {inst.id}")
        status = await inst.status()
        if status.status in ("errored", "terminated"):
            raise RuntimeError(f"instance {inst.id} {status.status}: {status.error}")
        await asyncio.sleep(0.25)


def _all_woke(ids: list[str]) -> bool:
    return all(x in WOKE for x in ids)


def _stamped(k: int) -> bool:
    return len(STAMPS) > k


def _lateness(ids: list[str], sleep_s: float) -> list[float]:
    return [WOKE[i] - (SLEEP_AT[i] + sleep_s) for i in ids if i in WOKE and i in SLEEP_AT]


# -- the curves -----------------------------------------------------------------------------------------------
async def hibernating(url: str, sizes: dict[str, Any]) -> dict[str, Any]:
    """Population of hibernating instances growing point by point; at each: RSS, create rate, claims, timers."""
    n_create, n_wake, wake_s = int(sizes["hib_creates"]), int(sizes["hib_wakers"]), float(sizes["hib_wake_s"])
    gc.collect()
    base = rss_mb()
    points = []
    async with Engine(url, concurrency=500) as engine:
        hib = engine.register(Hib, name="hib")
        wake = engine.register(Wake, name="wake")
        claims = _timed_claims(engine)
        await hib.create(id="template")
        template = await _template(engine, "hib", "waiting", sizes["timeout_s"])
        population, cloned = 1, 0
        for target in [0, *sizes["hib_points"]]:
            seed_s = 0.0
            if target:
                missing = max(0, target - population - n_create)
                seed_s = await asyncio.to_thread(clone, url, template, "h", cloned, missing)
                cloned += missing
                population += missing
            HIBERNATED.clear()
            rows = [{"id": f"c{target}-{i}"} for i in range(n_create)]
            create_s = await _create(hib, rows)
            await _until(lambda: len(HIBERNATED) >= n_create, sizes["timeout_s"], "new instances to hibernate")
            population += n_create
            await asyncio.sleep(0.5)  # their suspend writes
            gc.collect()
            mem = rss_mb()
            claims.clear()
            ids = [f"w{target}-{i}" for i in range(n_wake)]
            t0 = time.perf_counter()
            chunk = max(1, n_wake // 10)
            for k, i in enumerate(range(0, n_wake, chunk)):  # started within one second, as phase 4
                await asyncio.sleep(max(0.0, t0 + k * 0.1 - time.perf_counter()))
                await wake.create_batch(
                    {"instances": [{"id": x, "params": {"ms": wake_s * 1000}} for x in ids[i : i + chunk]]}
                )
            await _until(partial(_all_woke, ids), sizes["timeout_s"], "the timers")
            point: dict[str, Any] = {
                "hibernating": population,
                "seed_s": seed_s,
                "create_per_s": n_create / create_s,
                "rss_mb": mem["rss_mb"],
                "rss_over_baseline_mb": mem["rss_mb"] - base["rss_mb"],
                "claim": summary_ms(claims),
                "lateness": summary_ms(_lateness(ids, wake_s)),
            }
            points.append(point)
            print(f"  hibernating {population:,}: {point['lateness']['p99_ms']:.1f} ms p99", file=sys.stderr)
    return {"baseline_rss_mb": base["rss_mb"], "points": points}


async def history(url: str, sizes: dict[str, Any]) -> dict[str, Any]:
    """One instance per length: per-step cost at its start and end, and the wake-up after a hibernation."""
    nap_s = float(sizes["hist_nap_s"])
    points = []
    async with Engine(url, concurrency=10) as engine:
        # up to 25,000 steps, the configurable maximum (the default limit is 10,000)
        wf = engine.register(History, name="hist", limits={"steps": max(10_000, *map(int, sizes["hist_lengths"]))})
        for length in sizes["hist_lengths"]:
            n = int(length) - 2  # + the sleep and the step after it: ``length`` steps in all
            STAMPS.clear()
            RUN_ENTERED.clear()
            AFTER.clear()
            iid = f"len{length}"
            inst = await wf.create(id=iid, params={"n": n, "ms": nap_s * 1000})
            await _wait_after(inst, sizes["timeout_s"])
            gaps = [b - a for a, b in pairwise(STAMPS)]
            edge = max(10, len(gaps) // 10)
            start, end = summary_ms(gaps[:edge]), summary_ms(gaps[-edge:])
            rec = await inst.record()
            loads = []
            for _ in range(5):
                t0 = time.perf_counter()
                await engine.storage.load_history(rec.pk)
                loads.append(time.perf_counter() - t0)
            points.append(
                {
                    "steps": int(length),
                    "start": start,
                    "end": end,
                    "end_over_start": (end["p50_ms"] or 0) / (start["p50_ms"] or 1),
                    "replay_in_run_ms": (AFTER[-1] - RUN_ENTERED[-1]) * 1000,
                    "wake_to_next_step_ms": (WOKE[iid] - (SLEEP_AT[iid] + nap_s)) * 1000,
                    "load_history": summary_ms(loads),
                }
            )
            print(f"  history {length:,}: end/start {points[-1]['end_over_start']:.2f}", file=sys.stderr)
    return {"points": points}


async def _read_times(fn: Callable[[], Any], n: int) -> dict[str, Any]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - t0)
    return summary_ms(times)


async def finished(url: str, sizes: dict[str, Any]) -> dict[str, Any]:
    """A population of finished instances: reads at each size, then its purge while ``running`` instances step."""
    reads, n_run, page = int(sizes["fin_reads"]), int(sizes["fin_running"]), 50
    points = []
    async with Engine(url, concurrency=max(100, n_run + 50), purge_interval=1e9) as engine:
        st: Any = engine.storage
        done = engine.register(Done, name="done")
        runner = engine.register(Runner, name="runner")
        for round_no, target in enumerate(sizes["fin_points"], 1):
            have = (await st.list_instances("local", "done", limit=1)).total
            await done.create(id=f"template{round_no}")
            template = await _template(engine, "done", "complete", sizes["timeout_s"], f"template{round_no}")
            missing = max(0, int(target) - have - 1)
            seed_s = await asyncio.to_thread(clone, url, template, f"f{round_no}-", 0, missing)
            total = (await st.list_instances("local", "done", limit=1)).total
            some = f"f{round_no}-{missing // 2:08d}" if missing else f"template{round_no}"
            point: dict[str, Any] = {"finished": total, "seed_s": seed_s}
            last = max(0, total - page)
            point["list_first"] = await _read_times(partial(st.list_instances, "local", "done", limit=page), reads)
            point["list_last"] = await _read_times(
                partial(st.list_instances, "local", "done", limit=page, offset=last), reads
            )
            point["describe"] = await _read_times(partial(_describe, done, some), reads)
            point["count"] = await _read_times(partial(st.count_by_status, "local", "done"), reads)
            if target > int(sizes.get("fin_purge_max", target)):  # too many to purge in this run's time
                points.append(point)
                continue
            # the purge of all of them while runners step
            await asyncio.to_thread(expire_all, url, "done", time.time())  # before the runners start
            STOP.clear()
            RUNNER_GAPS.clear()
            await _create(runner, [{"id": f"r{round_no}-{i}"} for i in range(n_run)])
            await asyncio.sleep(float(sizes["fin_warm_s"]))
            t_base = time.perf_counter()
            await asyncio.sleep(float(sizes["fin_baseline_s"]))
            t0 = time.perf_counter()
            purged = await st.purge_expired(now=time.time())
            t1 = time.perf_counter()
            purge_s = t1 - t0
            await asyncio.sleep(float(sizes["fin_warm_s"]))  # the gaps that span the purge's end
            STOP.set()
            await _until(lambda: engine.worker is not None and engine.worker.busy == 0, sizes["timeout_s"], "runners")
            # before: gaps wholly in the baseline window; during: every gap that overlaps the purge
            before = [e - a for a, e in RUNNER_GAPS if a >= t_base and e <= t0]
            during = [e - a for a, e in RUNNER_GAPS if e > t0 and a < t1]
            RUNNER_GAPS.clear()
            b, d = summary_ms(before), summary_ms(during)
            point["purge"] = {
                "purged": purged,
                "seconds": purge_s,
                "per_s": purged / purge_s if purge_s else None,
                "step_before": b,
                "step_during": d,
                "p99_ratio": (d["p99_ms"] or 0) / (b["p99_ms"] or 1),
            }
            points.append(point)
            print(
                f"  finished {total:,}: list {point['list_first']['p50_ms']:.1f} ms, purge {purge_s:.1f} s",
                file=sys.stderr,
            )
    return {"page": page, "points": points}


async def _describe(wf: Any, iid: str) -> Any:
    return await (await wf.get(iid)).describe()


def disk_write_mb_s(total_mb: int) -> float:
    """The disk's sequential write rate: ``total_mb`` in 1 MiB writes to a new file, then fsync."""
    TMP_PARENT.mkdir(parents=True, exist_ok=True)
    path = TMP_PARENT / f"disk-{os.getpid()}.bin"
    block = os.urandom(1 << 20)
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range(total_mb):
            os.write(fd, block)
        os.fsync(fd)
    finally:
        os.close(fd)
        elapsed = time.perf_counter() - t0
        path.unlink(missing_ok=True)
    return total_mb / elapsed


async def result_size(url: str, sizes: dict[str, Any]) -> dict[str, Any]:
    """Steps returning 1 KiB … 1 MiB: MB/s recorded, beside the disk's own sequential write rate."""
    total = int(sizes["size_total_mb"])
    points = []
    async with Engine(url, concurrency=10) as engine:
        wf = engine.register(Big, name="big", limits={"steps": 25_000})
        for size in sizes["size_bytes"]:
            size = int(size)
            k = max(4, min(5000, (total << 20) // size))
            disk = await asyncio.to_thread(disk_write_mb_s, total)
            STAMPS.clear()
            inst = await wf.create(id=f"s{size}", params={"size": size, "k": k})
            await _until(partial(_stamped, k), sizes["timeout_s"], f"{k} steps of {size} bytes")
            wall = STAMPS[-1] - STAMPS[0]
            await inst.status()
            points.append(
                {
                    "bytes": size,
                    "steps": k,
                    "mb_per_s": k * size / (1 << 20) / wall,
                    "steps_per_s": k / wall,
                    "disk_mb_per_s": disk,
                }
            )
            print(f"  {size:,} B: {points[-1]['mb_per_s']:.1f} MB/s (disk {disk:.0f})", file=sys.stderr)
    return {"points": points}


CURVES = {"hibernating": hibernating, "history": history, "finished": finished, "result_size": result_size}


def main() -> None:
    curve, backend, sizes_json, out = sys.argv[1:5]
    sizes = json.loads(sizes_json)
    engine = f"scale-{backend}"
    db = FreshDB.create(engine)
    t0 = time.perf_counter()
    try:
        result = asyncio.run(CURVES[curve](db.url, sizes))
        payload: dict[str, Any] = {"ok": True, "result": result}
    except BaseException as exc:  # report, don't crash the run
        payload = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    payload["elapsed_s"] = time.perf_counter() - t0
    with open(out, "w") as fh:
        json.dump(payload, fh)
    db.drop()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
