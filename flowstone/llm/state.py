"""Where rate limits and breaker states live: in this process, or in Redis for every process.

Why: with the multiprocess or Celery executors every step process would otherwise believe it
has a provider's whole requests-per-minute budget, and a provider that one process has found
dead would still be called by all the others. ``FLOWSTONE_LLM_STATE`` names a store they all
share:

    unset or empty                                in-process (each process its own limits)
    redis://[user:password@]host[:port][/db]      Redis (``rediss://`` for TLS)
             [?prefix=name]                       key prefix, default ``flowstone:llm``

The library is redis-py; the protocol is two small server-side Lua scripts, because every
decision must be atomic across hosts and must use one clock (the Redis server's ``TIME``):

- a token bucket that *reserves*: a caller takes its tokens at once, going into debt when the
  bucket is short, and is told how long to sleep before sending. One round trip per request,
  first come first served, and a caller waits rather than fails. (The ``limits`` library was
  considered: its moving and sliding windows let a whole window's budget out at once, which a
  provider that paces its own budget, like the stub or most real APIs, answers with 429s; a
  token bucket of capacity 1 paces requests evenly, as the in-process limiter does.)
- a breaker state machine in a Redis hash (state, failure and success counts, half-open
  trials, opened_at), with a TTL so that abandoned endpoints disappear.

A Redis that does not answer never fails a call: the process logs one warning, falls back to
its own in-process limiter and breaker, and tries Redis again after ``RETRY_AFTER_S``.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

from flowstone.errors import ConfigError
from flowstone.llm.redaction import get_logger

if TYPE_CHECKING:
    import redis

log = get_logger(__name__)

ENV = "FLOWSTONE_LLM_STATE"
DEFAULT_PREFIX = "flowstone:llm"
#: After an outage, how long a process uses its own limits before it asks Redis again.
RETRY_AFTER_S = 30.0
#: Socket timeouts: a Redis that hangs must not hold a request longer than a slow provider.
CONNECT_TIMEOUT_S = 1.0
SOCKET_TIMEOUT_S = 2.0
_SCHEMES = ("redis", "rediss")


@dataclass(frozen=True)
class StateConfig:
    """The parsed ``FLOWSTONE_LLM_STATE``: ``backend`` is ``process`` or ``redis``."""

    backend: str
    url: str | None = field(default=None, repr=False)  # may hold a password
    prefix: str = DEFAULT_PREFIX

    @property
    def shared(self) -> bool:
        return self.backend != "process"

    @property
    def display(self) -> str:
        """The URL without its password (for logs and the doctor)."""
        if self.url is None:
            return "in-process"
        parts = urlsplit(self.url)
        netloc = parts.netloc
        if "@" in netloc:
            creds, host = netloc.rsplit("@", 1)
            user = creds.split(":", 1)[0]
            netloc = f"{user}:***@{host}" if ":" in creds else f"{user}@{host}"
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


PROCESS = StateConfig("process")


def _bad(value: str, why: str) -> ConfigError:
    shown = StateConfig("redis", value).display if "@" in value else value
    return ConfigError(
        "environment",
        ENV,
        f"{why} (got {shown!r}); expected redis://[user:password@]host[:port][/db][?prefix=name] "
        "or rediss://..., or unset for in-process limits",
    )


def parse_state_url(value: str | None) -> StateConfig:
    """Parse a ``FLOWSTONE_LLM_STATE`` value; a malformed one is a :class:`ConfigError` that
    names the variable (a typo must not silently leave every process on its own limits)."""
    if value is None or not value.strip():
        return PROCESS
    value = value.strip()
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise _bad(value, f"not a URL: {exc}") from None
    if parts.scheme in ("postgresql", "postgres") or parts.scheme.startswith("postgresql+"):
        raise _bad(value, "a PostgreSQL store for LLM state is not supported yet; use Redis")
    if parts.scheme not in _SCHEMES:
        raise _bad(value, f"unknown scheme {parts.scheme!r}")
    if not parts.hostname:
        raise _bad(value, "no host")
    if port is not None and not 0 < port < 65536:
        raise _bad(value, f"port {port} out of range")
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise _bad(value, f"the database must be a number, not {db!r}")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"prefix"})
    if unknown:
        raise _bad(value, f"unknown option(s) {', '.join(unknown)} (only prefix)")
    prefix = query.get("prefix", [DEFAULT_PREFIX])[-1].strip() or DEFAULT_PREFIX
    url = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    return StateConfig("redis", url, prefix)


def current_config(environ: dict[str, str] | None = None) -> StateConfig:
    """The state configuration from the environment (raises :class:`ConfigError`)."""
    import os

    env = os.environ if environ is None else environ
    return parse_state_url(env.get(ENV))


# -------------------------------------------------------------------------------- scripts

# KEYS[1] the bucket hash; ARGV rate_per_s, capacity, amount, ttl_s. Refills from the server's
# clock, then reserves ``amount``: returns the seconds the caller must wait before sending
# (0 when the bucket had enough). Taking what is short as debt queues callers in arrival order
# without each of them polling.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate = tonumber(ARGV[1])
local cap = tonumber(ARGV[2])
local amount = tonumber(ARGV[3])
local b = redis.call('HMGET', KEYS[1], 'level', 'stamp')
local level = tonumber(b[1])
local stamp = tonumber(b[2])
if level == nil or stamp == nil then level = cap; stamp = now end
if now > stamp then level = math.min(cap, level + (now - stamp) * rate) else now = stamp end
local need = math.min(amount, cap)
local wait = 0
if level < need then wait = (need - level) / rate end
level = level - amount
redis.call('HSET', KEYS[1], 'level', tostring(level), 'stamp', tostring(now))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
return tostring(wait)
"""

# KEYS[1] the bucket hash; ARGV rate_per_s, capacity, delta, ttl_s: charge ``delta`` more
# (or give it back when negative) once the provider has counted the tokens.
_ADJUST = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate = tonumber(ARGV[1])
local cap = tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'level', 'stamp')
local level = tonumber(b[1])
local stamp = tonumber(b[2])
if level == nil or stamp == nil then level = cap; stamp = now end
if now > stamp then level = math.min(cap, level + (now - stamp) * rate) else now = stamp end
level = math.min(cap, level - tonumber(ARGV[3]))
redis.call('HSET', KEYS[1], 'level', tostring(level), 'stamp', tostring(now))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
return tostring(level)
"""

# KEYS[1] the breaker hash; ARGV op, failure_threshold, recovery_timeout_s,
# half_open_max_calls, success_threshold, ttl_s, trial_timeout_s.
# op: peek | acquire | success | failure | release. Returns {answer, state, moved_from, why,
# retry_in_s}: ``answer`` is 1/0 for acquire and peek (would a call go through), ``moved_from``
# the state before a transition this call made ('' for none). Half-open trials a process
# claimed and never reported (it died) are forgotten after trial_timeout_s.
_BREAKER = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local op = ARGV[1]
local threshold = tonumber(ARGV[2])
local recovery = tonumber(ARGV[3])
local max_trials = tonumber(ARGV[4])
local needed = tonumber(ARGV[5])
local ttl = tonumber(ARGV[6])
local trial_timeout = tonumber(ARGV[7])
local h = redis.call('HMGET', KEYS[1], 'state', 'failures', 'successes', 'trials',
                     'opened_at', 'trial_at')
local state = h[1] or 'closed'
local failures = tonumber(h[2]) or 0
local successes = tonumber(h[3]) or 0
local trials = tonumber(h[4]) or 0
local opened_at = tonumber(h[5]) or 0
local trial_at = tonumber(h[6]) or 0
local from = ''
local why = ''
local function move(new, reason)
  if new == state then return end
  if from == '' then from = state end
  why = reason
  state = new
  failures = 0; successes = 0; trials = 0
  if new == 'open' then opened_at = now end
end
if state == 'open' and now - opened_at >= recovery then
  move('half_open', 'recovery timeout passed')
end
if state == 'half_open' and trials > 0 and now - trial_at >= trial_timeout then
  trials = 0
end
local answer = 0
if op == 'peek' then
  if state == 'closed' or (state == 'half_open' and trials < max_trials) then answer = 1 end
elseif op == 'acquire' then
  if state == 'closed' then answer = 1
  elseif state == 'half_open' and trials < max_trials then
    trials = trials + 1; trial_at = now; answer = 1
  end
elseif op == 'success' then
  if state == 'half_open' then
    successes = successes + 1
    if successes >= needed then move('closed', successes .. ' trial call(s) succeeded')
    elseif trials > 0 then trials = trials - 1 end
  else
    failures = 0
  end
elseif op == 'failure' then
  if state == 'half_open' then move('open', 'a trial call failed')
  elseif state == 'closed' then
    failures = failures + 1
    if failures >= threshold then move('open', failures .. ' consecutive failed calls') end
  end
elseif op == 'release' then
  if state == 'half_open' and trials > 0 then trials = trials - 1 end
end
redis.call('HSET', KEYS[1], 'state', state, 'failures', failures, 'successes', successes,
           'trials', trials, 'opened_at', tostring(opened_at), 'trial_at', tostring(trial_at))
redis.call('EXPIRE', KEYS[1], ttl)
local retry = 0
if state == 'open' then retry = math.max(0, recovery - (now - opened_at)) end
return {answer, state, from, why, tostring(retry)}
"""


@dataclass(frozen=True)
class BreakerReply:
    """What the breaker script answered: ``moved_from`` is set when this call moved it."""

    allowed: bool
    state: str
    moved_from: str
    why: str
    retry_in_s: float


class StateUnavailable(Exception):
    """Redis did not answer; the caller falls back to its in-process state."""


class RedisState:
    """The shared store: one redis-py client (its connection pool is thread-safe and
    re-created after a fork) and the scripts, plus the one-warning-per-process outage rule."""

    def __init__(self, config: StateConfig):
        import redis

        assert config.url is not None
        self.config = config
        self.client: redis.Redis = redis.Redis.from_url(
            config.url,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            socket_timeout=SOCKET_TIMEOUT_S,
            health_check_interval=30,
        )
        self._take = self.client.register_script(_TAKE)
        self._adjust = self.client.register_script(_ADJUST)
        self._breaker = self.client.register_script(_BREAKER)
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._warned = False

    # -- keys -----------------------------------------------------------------------------
    def key(self, kind: str, endpoint: str) -> str:
        """``<prefix>:<kind>:<hash of the endpoint>``: the endpoint holds a URL and a credential
        hash; a fixed-length digest keeps keys short and free of separators."""
        digest = hashlib.sha256(endpoint.encode()).hexdigest()[:24]
        return f"{self.config.prefix}:{kind}:{digest}"

    # -- outage handling ------------------------------------------------------------------
    @property
    def available(self) -> bool:
        """False during the cool-down after a failure: callers use their own state then."""
        return time.monotonic() >= self._down_until

    def _failed(self, exc: BaseException) -> StateUnavailable:
        with self._lock:
            self._down_until = time.monotonic() + RETRY_AFTER_S
            first = not self._warned
            self._warned = True
        if first:
            log.warning(
                "LLM state store %s (%s) does not answer: %s: %s; this process falls back to "
                "its own rate limits and circuit breakers (retrying the store every %.0fs; "
                "this warning is not repeated)",
                self.config.display,
                ENV,
                type(exc).__name__,
                exc,
                RETRY_AFTER_S,
            )
        else:
            log.debug("LLM state store %s still unavailable: %s", self.config.display, exc)
        return StateUnavailable(str(exc))

    def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        import redis

        if not self.available:
            raise StateUnavailable("in cool-down after an outage")
        try:
            return script(keys=keys, args=args)
        except (redis.RedisError, OSError) as exc:
            raise self._failed(exc) from exc

    # -- operations -----------------------------------------------------------------------
    def take(self, key: str, rate_per_s: float, capacity: float, amount: float) -> float:
        """Reserve ``amount`` from the bucket at ``key``; the seconds to wait before sending."""
        ttl = _bucket_ttl(rate_per_s, capacity)
        return float(self._run(self._take, [key], [rate_per_s, capacity, amount, ttl]))

    def adjust(self, key: str, rate_per_s: float, capacity: float, delta: float) -> None:
        ttl = _bucket_ttl(rate_per_s, capacity)
        self._run(self._adjust, [key], [rate_per_s, capacity, delta, ttl])

    def breaker(
        self,
        key: str,
        op: str,
        *,
        failure_threshold: int,
        recovery_timeout_s: float,
        half_open_max_calls: int,
        success_threshold: int,
    ) -> BreakerReply:
        # Long enough that an open breaker outlives its recovery; short enough that an
        # endpoint nobody calls any more leaves nothing behind for long.
        ttl = int(max(3600.0, 10 * recovery_timeout_s))
        trial_timeout = max(120.0, recovery_timeout_s)
        answer, state, moved_from, why, retry = self._run(
            self._breaker,
            [key],
            [
                op,
                failure_threshold,
                recovery_timeout_s,
                half_open_max_calls,
                success_threshold,
                ttl,
                trial_timeout,
            ],
        )
        return BreakerReply(
            bool(int(answer)), _text(state), _text(moved_from), _text(why), float(retry)
        )

    def ping(self) -> float:
        """Seconds a PING took; raises the client's error when the store does not answer."""
        started = time.perf_counter()
        self.client.ping()
        return time.perf_counter() - started

    def server_version(self) -> str:
        info = self.client.info("server")
        return str(info.get("redis_version", "?"))

    def clear(self) -> int:
        """Delete every key under this prefix (tests and benchmarks start from full buckets
        and closed breakers); the number deleted."""
        deleted = 0
        for key in self.client.scan_iter(match=f"{self.config.prefix}:*", count=500):
            deleted += int(self.client.delete(key))
        return deleted

    def close(self) -> None:
        self.client.close()


def _bucket_ttl(rate_per_s: float, capacity: float) -> int:
    """A bucket untouched for the time it takes to refill (plus a minute) is full again:
    dropping it changes nothing."""
    return int(capacity / rate_per_s + 60)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


_resolved: tuple[StateConfig, RedisState | None] | None = None
_resolved_lock = threading.Lock()


def shared_state() -> RedisState | None:
    """This process's shared store, or None for in-process state; built once per value of
    ``FLOWSTONE_LLM_STATE`` (raises :class:`ConfigError` when it is malformed)."""
    global _resolved
    config = current_config()
    with _resolved_lock:
        if _resolved is None or _resolved[0] != config:
            if _resolved is not None and _resolved[1] is not None:
                _resolved[1].close()
            _resolved = (config, RedisState(config) if config.shared else None)
        return _resolved[1]


def reset_shared_state() -> None:
    """Forget the store this process built (the next call reads the environment again)."""
    global _resolved
    with _resolved_lock:
        if _resolved is not None and _resolved[1] is not None:
            _resolved[1].close()
        _resolved = None
