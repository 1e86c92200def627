"""The shared store: run records and the queue in Redis (``NB2SVC_QUEUE_URL=redis://…``), for many replicas.

Keys, under ``nb2svc:{service}:``:

- ``run:{id}``: a hash, ``status`` and ``json`` (the record); ``runs``: a sorted set of ``created_at|id`` (the
  listing, newest first); ``counts``: runs by status (for /metrics).
- ``queue``: a list of run ids. A worker moves an id atomically (BLMOVE) into ``taken:{worker}``, so an id is
  always in one list or the other: a queued run is never lost, even when its worker dies before it starts.
- ``lease:{worker}``: refreshed every ``lease/3`` seconds with a ``lease`` TTL (15 s by default) while the worker
  lives; ``workers``: the workers seen. Any replica's reaper takes over a worker whose lease expired: the runs it
  had only taken go back on the queue, the runs it was running end ``failed`` (``lost_instance``).
- ``cancel:{id}``: a cancel for a run executing elsewhere; its worker polls for its own runs twice a second.

Each status change is one Lua script (a check and a write, atomic): a cancel and a start, or a reaper and a
finish, never both win. Every call goes through redis-py's asyncio client; nothing of the protocol is
written here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from ..runs import Run, new_id, now
from . import Problem, StoreUnavailable

log = logging.getLogger("nb2svc.runs")
T = TypeVar("T")
TICK_S = 0.5  # cancels are polled this often; the lease refreshed every lease/3

_NEW = """
redis.call('HSET', KEYS[1], 'status', 'queued', 'json', ARGV[1])
redis.call('ZADD', KEYS[2], 0, ARGV[2])
redis.call('HINCRBY', KEYS[3], 'queued', 1)
return 1
"""
_TRANSITION = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur or (ARGV[1] ~= '' and cur ~= ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'json', ARGV[3])
if cur ~= ARGV[2] then
  redis.call('HINCRBY', KEYS[2], cur, -1)
  redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
end
return 1
"""
_DELETE = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HINCRBY', KEYS[3], cur, -1)
redis.call('LREM', KEYS[4], 0, ARGV[2])
return 1
"""


class RedisStore:
    """RunStore, Queue and Lifecycle over one Redis, shared by every replica of a service."""

    shared = True

    def __init__(self, url: str, service: str, instance: str, lease_s: float) -> None:
        self.url = url
        self.instance = instance
        self.worker = f"{instance}:{uuid.uuid4().hex[:8]}"  # unique even where replicas share a host name
        self.lease_s = lease_s
        self._p = f"nb2svc:{service}:"
        # socket_timeout above BLMOVE's 1 s block; a down server is seen within 2 s. A pooled connection from
        # before a Redis restart is dead: checked (PING) when idle over a second, and a call retried once.
        self.redis = aioredis.Redis.from_url(
            url,
            socket_timeout=5,
            socket_connect_timeout=2,
            health_check_interval=1,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 1),
            retry_on_error=[RedisConnectionError],
            decode_responses=True,
        )
        self._new = self.redis.register_script(_NEW)
        self._transition = self.redis.register_script(_TRANSITION)
        self._delete = self.redis.register_script(_DELETE)
        self._counts: dict[str, int] = {}
        self._problem: Problem | None = None
        self._up_since: float | None = None  # when Redis last came (back) up, as this replica saw it
        self._task: asyncio.Task[None] | None = None
        self._on_cancel: Callable[[str], None] = lambda run_id: None
        self._running: Callable[[], list[str]] = list

    def _k(self, *parts: str) -> str:
        return self._p + ":".join(parts)

    async def _call(self, op: Callable[[], Awaitable[T]]) -> T:
        """One Redis operation; an unreachable Redis becomes StoreUnavailable (a 503, or a retry)."""
        try:
            result = await op()
        except (RedisError, OSError) as e:
            self._down(e)
            raise StoreUnavailable(self._problem or {}) from None
        self._up()
        return result

    def _down(self, e: BaseException) -> None:
        if self._problem is None:
            log.error("the run store at %s cannot be reached: %s", self._where(), e)
        self._problem = {
            "error": "queue_unavailable",
            "message": f"the run store (Redis at {self._where()}) cannot be reached: {e}",
            "hint": "start Redis or fix NB2SVC_QUEUE_URL; runs already queued wait there and go on when it is back",
        }
        self._up_since = None

    def _up(self) -> None:
        if self._problem is not None:
            log.info("the run store at %s is back", self._where())
        self._problem = None
        if self._up_since is None:
            self._up_since = time.monotonic()

    def _where(self) -> str:
        pool = self.redis.connection_pool.connection_kwargs
        return f"{pool.get('host', '?')}:{pool.get('port', '?')}" if "host" in pool else self.url.split("@")[-1]

    # Lifecycle
    async def start(self, on_cancel: Callable[[str], None], running: Callable[[], list[str]]) -> None:
        self._on_cancel, self._running = on_cancel, running
        with contextlib.suppress(StoreUnavailable):  # /health says so; the loop keeps trying
            await self._heartbeat()
        self._task = asyncio.ensure_future(self._loop())

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(RedisError, OSError):  # runs this worker only took go back on the queue
            for run_id in await self.redis.lrange(self._k("taken", self.worker), 0, -1):
                await self.redis.lmove(self._k("taken", self.worker), self._k("queue"), "LEFT", "RIGHT")
                log.info("run %s goes back on the queue", run_id)
            await self.redis.delete(self._k("lease", self.worker))
            await self.redis.srem(self._k("workers"), self.worker)
        await self.redis.aclose()

    def problem(self) -> Problem | None:
        return self._problem

    async def _loop(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(TICK_S)
            ticks += 1
            try:
                await self._poll_cancels()
                if ticks % max(1, round(self.lease_s / 3 / TICK_S)) == 0:
                    await self._heartbeat()
                    await self._reap()
            except StoreUnavailable:
                pass  # logged once by _down; /health answers 503 meanwhile
            except Exception:
                log.exception("the run store's upkeep failed; it goes on")

    async def _heartbeat(self) -> None:
        async def beat() -> None:
            async with self.redis.pipeline(transaction=True) as p:
                p.set(self._k("lease", self.worker), self.instance, px=int(self.lease_s * 1000))
                p.sadd(self._k("workers"), self.worker)
                p.hgetall(self._k("counts"))
                *_, counts = await p.execute()
            self._counts = {k: int(v) for k, v in counts.items() if int(v) > 0}

        await self._call(beat)

    async def _poll_cancels(self) -> None:
        ids = self._running()
        if not ids:
            return
        flags = await self._call(lambda: self.redis.mget([self._k("cancel", i) for i in ids]))
        for run_id, flag in zip(ids, flags, strict=True):
            if flag is not None:
                self._on_cancel(run_id)

    async def _reap(self) -> None:
        """Take over workers whose lease expired. Only once this replica has seen Redis up for a whole lease:
        after an outage, live workers get that long to renew theirs before anyone calls them dead."""
        if self._up_since is None or time.monotonic() - self._up_since < self.lease_s:
            return
        if not await self._call(lambda: self.redis.set(self._k("reaper"), self.worker, nx=True, px=4000)):
            return  # another replica is reaping
        workers = {str(w) for w in await self._call(lambda: self.redis.smembers(self._k("workers")))}
        for worker in workers - {self.worker}:
            lease = self._k("lease", worker)
            if not await self._call(lambda lease=lease: self.redis.exists(lease)):  # type: ignore[misc]
                await self._take_over(worker)

    async def _take_over(self, worker: str) -> None:
        taken = self._k("taken", worker)
        for run_id in [str(i) for i in await self._call(lambda: self.redis.lrange(taken, 0, -1))]:
            run = await self.get(run_id)
            if run is not None and run.status == "running":
                name = run.instance or worker
                error = {
                    "error": "lost_instance",
                    "message": f"instance {name} stopped during the run (no heartbeat for {self.lease_s:g} s)",
                }
                if await self.transition(replace(run, status="failed", finished_at=now(), error=error), "running"):
                    log.warning("run %s failed: instance %s was lost during the run", run.id, name)
            elif run is not None and run.status == "queued":
                await self._call(lambda run_id=run_id: self.redis.rpush(self._k("queue"), run_id))  # type: ignore[misc]
                log.warning("run %s goes back on the queue: instance %s was lost before it started", run.id, worker)
        await self._call(lambda: self.redis.delete(taken))
        await self._call(lambda: self.redis.srem(self._k("workers"), worker))

    # RunStore
    async def new(self, parameters: dict[str, Any]) -> Run:
        run = Run(id=new_id(), status="queued", parameters=parameters, created_at=now())
        keys = [self._k("run", run.id), self._k("runs"), self._k("counts")]
        await self._call(lambda: self._new(keys=keys, args=[run.to_json(), _member(run)]))
        return run

    async def get(self, run_id: str) -> Run | None:
        raw = await self._call(lambda: self.redis.hget(self._k("run", run_id), "json"))
        return _read(raw, run_id)

    async def transition(self, run: Run, expected: str) -> bool:
        keys = [self._k("run", run.id), self._k("counts")]
        text = run.to_json()  # a value JSON cannot hold is a ValueError here, as on disk
        done = await self._call(lambda: self._transition(keys=keys, args=[expected, run.status, text]))
        if done and run.done:
            await self._call(lambda: self.redis.delete(self._k("cancel", run.id)))
        return bool(done)

    async def page(self, limit: int, before: tuple[str, str] | None) -> list[Run]:
        top = "(" + "|".join(before) if before else "+"
        members = await self._call(lambda: self.redis.zrevrangebylex(self._k("runs"), top, "-", start=0, num=limit))
        ids = [str(m).rpartition("|")[2] for m in members]
        if not ids:
            return []

        async def records() -> list[Any]:
            async with self.redis.pipeline(transaction=False) as p:
                for run_id in ids:
                    p.hget(self._k("run", run_id), "json")
                return list(await p.execute())

        raws = await self._call(records)
        return [run for run_id, raw in zip(ids, raws, strict=True) if (run := _read(raw, run_id)) is not None]

    async def delete(self, run: Run) -> None:
        keys = [self._k("run", run.id), self._k("runs"), self._k("counts"), self._k("queue")]
        await self._call(lambda: self._delete(keys=keys, args=[_member(run), run.id]))
        await self._call(lambda: self.redis.delete(self._k("cancel", run.id)))

    def counts(self) -> dict[str, int]:
        return dict(self._counts)  # refreshed with each heartbeat (metrics are read synchronously)

    # Queue
    async def put(self, run_id: str) -> None:
        await self._call(lambda: self.redis.lpush(self._k("queue"), run_id))

    async def waiting(self) -> int:
        return int(await self._call(lambda: self.redis.llen(self._k("queue"))))

    async def take(self) -> str:
        """Block until a run id moves from the queue into this worker's taken list; retry while Redis is down."""
        while True:
            try:
                raw = await self._call(
                    lambda: self.redis.blmove(self._k("queue"), self._k("taken", self.worker), 1, "RIGHT", "LEFT")
                )
            except StoreUnavailable:
                await asyncio.sleep(1)
                continue
            if raw is not None:
                return str(raw)

    async def ack(self, run_id: str) -> None:
        while True:  # an id left in the taken list would be reaped (requeued) once this worker stops
            try:
                await self._call(lambda: self.redis.lrem(self._k("taken", self.worker), 1, run_id))
                return
            except StoreUnavailable:
                await asyncio.sleep(1)

    async def remove(self, run_id: str) -> None:
        await self._call(lambda: self.redis.lrem(self._k("queue"), 0, run_id))

    async def request_cancel(self, run_id: str) -> None:
        # kept a day at most: the executing worker deletes it when the run ends
        await self._call(lambda: self.redis.set(self._k("cancel", run_id), "1", ex=24 * 3600))


def _member(run: Run) -> str:
    return "|".join(run.order)


def _read(raw: str | bytes | None, run_id: str) -> Run | None:
    if raw is None:
        return None
    try:
        return Run.from_json(raw)
    except (ValueError, TypeError) as e:
        log.warning("run %s's record in Redis is left out: %s", run_id, e)
        return None
