"""Issue 17, the lockout's abuse (closing note): failures lock a login per (email,
address), and slow (never lock) an account's logins from every address past a
higher count, except from an address the account has logged in from."""

from __future__ import annotations

import pytest

from database import errors, identity

from factories import make_user, scalar

EMAIL = "target@example.com"
RIGHT = "right password"
LIMITS = identity.AbuseLimits(
    login_per_ip=1000,
    lockout_failures=3,
    lockout_s=600,
    slow_failures=5,
    slow_window_s=900,
    slow_interval_s=30,
)


@pytest.fixture
def user(sql):
    user_id = make_user(sql, email=EMAIL)
    return user_id


def _fail(s, ip: str, times: int = 1) -> None:
    for _ in range(times):
        with pytest.raises(errors.AuthenticationFailed):
            identity.login(s, EMAIL, "a wrong guess", ip=ip, limits=LIMITS)


def test_failures_from_one_address_lock_only_that_address(user, session_factory):
    with session_factory() as s:
        identity.change_password(s, user, RIGHT)
        _fail(s, "198.51.100.7", 3)
        # The guesser's address is locked out, even with the right password...
        with pytest.raises(errors.AccountLocked) as locked:
            identity.login(s, EMAIL, RIGHT, ip="198.51.100.7", limits=LIMITS)
        assert 590 <= locked.value.retry_after <= 600
        # ...the owner, elsewhere, is not: the right password works at once.
        token, _ = identity.login(s, EMAIL, RIGHT, ip="203.0.113.20", limits=LIMITS)
        assert token.startswith("ams_")


def test_failures_from_many_addresses_slow_but_never_lock(user, session_factory, sql):
    with session_factory() as s:
        identity.change_password(s, user, RIGHT)
        # The owner logged in from their address before the attack.
        identity.login(s, EMAIL, RIGHT, ip="203.0.113.20", limits=LIMITS)
        # A guess spread over addresses: none reaches its own lockout (3).
        for n, times in enumerate((2, 2, 1)):
            _fail(s, f"198.51.100.{n + 1}", times)
        assert (
            scalar(
                sql, "SELECT count FROM rate_limits WHERE key = :k", k=f"login-fail-email:{EMAIL}"
            )
            == 5
        )
        # Past slow_failures (5): from a new address, one attempt per slow_interval_s
        # among all new addresses: the next passes (and fails), the one after waits.
        _fail(s, "192.0.2.50")
        with pytest.raises(errors.AccountLocked) as slowed:
            identity.login(s, EMAIL, RIGHT, ip="192.0.2.51", limits=LIMITS)
        assert 1 <= slowed.value.retry_after <= 30
        # Slowed, not locked: when the interval has passed, the right password works
        # from a new address too.
        sql(
            "UPDATE rate_limits SET window_started_at = now() - interval '31 seconds'"
            " WHERE key = :k",
            k=f"login-slow:{EMAIL}",
        )
        token, _ = identity.login(s, EMAIL, RIGHT, ip="192.0.2.51", limits=LIMITS)
        assert token.startswith("ams_")


def test_the_owner_from_a_known_address_is_not_slowed(user, session_factory, sql):
    with session_factory() as s:
        identity.change_password(s, user, RIGHT)
        identity.login(s, EMAIL, RIGHT, ip="203.0.113.20", limits=LIMITS)
        for n, times in enumerate((2, 2, 1)):
            _fail(s, f"198.51.100.{n + 1}", times)
        # An attacker keeps the slow gate busy...
        _fail(s, "192.0.2.50")
        with pytest.raises(errors.AccountLocked):
            identity.login(s, EMAIL, "a wrong guess", ip="192.0.2.52", limits=LIMITS)
        # ...the owner, from where they logged in before, logs in at once; a success
        # clears the counts.
        token, _ = identity.login(s, EMAIL, RIGHT, ip="203.0.113.20", limits=LIMITS)
        assert token.startswith("ams_")
        assert (
            scalar(
                sql,
                "SELECT count(*) FROM rate_limits WHERE key = :k",
                k=f"login-fail-email:{EMAIL}",
            )
            == 0
        )


def test_unknown_emails_are_counted_alike(session_factory, sql):
    """No account: the same answers (the counts tell nothing about which emails exist)."""
    with session_factory() as s:
        for n, times in enumerate((2, 2, 1)):
            for _ in range(times):
                with pytest.raises(errors.AuthenticationFailed):
                    identity.login(
                        s, "nobody@example.com", "x" * 12, ip=f"198.51.100.{n + 1}", limits=LIMITS
                    )
        with pytest.raises(errors.AuthenticationFailed):
            identity.login(s, "nobody@example.com", "x" * 12, ip="192.0.2.50", limits=LIMITS)
        with pytest.raises(errors.AccountLocked):
            identity.login(s, "nobody@example.com", "x" * 12, ip="192.0.2.51", limits=LIMITS)
