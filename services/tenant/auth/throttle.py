"""Slowing down password guessing: failure counters per account and per client address.

Each failed sign-in increments two Redis counters: one for the email (hashed, so no address
book sits in Redis) and one for the client address. Past the free failures
(`TALLY_SIGNIN_MAX_FAILURES_PER_ACCOUNT` / `_PER_ADDRESS`) every further failure locks that
account or address for `base * 2^(n-1)` seconds, capped at `TALLY_SIGNIN_BACKOFF_MAX_SECONDS`.
A locked account or address gets 429 with `Retry-After` before its password is even checked,
so a guessing attacker gets a handful of tries per hour instead of thousands per second, while
the owner, who knows the password, is at most delayed. Counters expire after
`TALLY_SIGNIN_FAILURE_WINDOW_SECONDS` without failures; a success clears the account's.
"""

from __future__ import annotations

import hashlib
import math

import redis.asyncio as redis

from tally.config import Settings
from tally.errors import TallyError

_PREFIX = "tally:signin"

# KEYS: counter, lock. ARGV: free failures, window s, base s, max s.
# Returns the lockout in milliseconds that this failure started (0 while still free).
_RECORD_FAILURE = """
local n = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
local free = tonumber(ARGV[1])
if n <= free then return 0 end
local ms = math.min(tonumber(ARGV[3]) * 1000 * 2 ^ (n - free - 1), tonumber(ARGV[4]) * 1000)
redis.call('SET', KEYS[2], n, 'PX', math.floor(ms))
return math.floor(ms)
"""


class TooManyAttempts(TallyError):
    """Sign-in is locked for this account or address for `retry_after` seconds."""

    status_code = 429
    error_type = "rate_limit_error"
    code = "too_many_attempts"

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            f"too many failed sign-ins; try again in {retry_after} s", code="too_many_attempts"
        )
        self.retry_after = retry_after


class SignInThrottle:
    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self._redis = client
        self._settings = settings

    @staticmethod
    def _account_key(email: str) -> str:
        digest = hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]
        return f"{_PREFIX}:account:{digest}"

    @staticmethod
    def _address_key(address: str) -> str:
        return f"{_PREFIX}:address:{address[:64]}"

    async def check(self, email: str, address: str | None) -> None:
        """Raise `TooManyAttempts` while the account or the address is locked."""
        keys = [self._account_key(email) + ":lock"]
        if address:
            keys.append(self._address_key(address) + ":lock")
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.pttl(key)
            remaining = [int(ms) for ms in await pipe.execute()]
        longest = max(remaining)
        if longest > 0:
            raise TooManyAttempts(math.ceil(longest / 1000))

    async def record_failure(self, email: str, address: str | None) -> None:
        s = self._settings
        window = max(s.signin_failure_window_seconds, s.signin_backoff_max_seconds)
        account = self._account_key(email)
        await self._redis.eval(  # type: ignore[misc]
            _RECORD_FAILURE,
            2,
            account,
            account + ":lock",
            str(s.signin_max_failures_per_account),
            str(window),
            str(s.signin_backoff_base_seconds),
            str(s.signin_backoff_max_seconds),
        )
        if address:
            key = self._address_key(address)
            await self._redis.eval(  # type: ignore[misc]
                _RECORD_FAILURE,
                2,
                key,
                key + ":lock",
                str(s.signin_max_failures_per_address),
                str(window),
                str(s.signin_backoff_base_seconds),
                str(s.signin_backoff_max_seconds),
            )

    async def record_success(self, email: str) -> None:
        """The owner got in: forget the account's failures (not the address's)."""
        account = self._account_key(email)
        await self._redis.delete(account, account + ":lock")
