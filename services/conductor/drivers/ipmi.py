"""IPMI power and management (interfaces ``ipmi``): a node's BMC over IPMI v2.0 (RMCP+,
UDP), spoken with pyghmi's session layer and four chassis commands of our own.

How a BMC is used, and why (pyghmi 1.6.19; docs/baremetal.md "IPMI" has the story):

- Each operation opens its own session and closes it at the end, and only one operation
  at a time talks to a given BMC address and port in this process (a lock per BMC). pyghmi
  keeps its sessions in process-wide tables and hands a live one to whoever asks for the
  same BMC and credentials; with one session per BMC at a time there is nothing to share,
  and no idle session goes stale between operations.
- Credentials go to pyghmi as bytes: given str, pyghmi files a new session under one key
  and removes it under another, so the next session to that BMC is handed the old one
  and waits forever (or fails at once, once the old one is closed).
- pyghmi offers cipher suite 17 (SHA-256) and believes the BMC took it, even when the
  BMC's answer names suite 3 (SHA-1), as pyghmi's own BMC server (and so virtualbmc)
  answers; the login then dies on a hash of the wrong length. :class:`_Session` reads
  the BMC's choice and speaks SHA-1 when that is what it chose. It also takes an answer
  that came in before pyghmi began to wait for it (pyghmi would sleep to its resend timer).
- Each attempt runs on a helper thread, so the caller gives up at ``ipmi_timeout`` even
  when pyghmi would wait longer; a given-up session is stopped so it sends no more.
  Transient failures are tried again with exponential backoff, up to ``ipmi_retries``
  attempts; a BMC that refuses the credentials fails at once.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from pyghmi import exceptions as pyghmi_exceptions  # type: ignore[import-untyped]
from pyghmi.ipmi.private import session as pyghmi_session  # type: ignore[import-untyped]

from libs import redact
from libs.db import PowerState
from libs.errors import BadRequest

from .base import (
    BootDevice,
    DriverError,
    ManagementInterface,
    PowerInterface,
    check_driver_info,
)

if TYPE_CHECKING:
    from services.conductor.settings import ConductorSettings
    from services.conductor.task_manager import Task

LOG = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_PORT = 623
POLL_INTERVAL = 0.25  # seconds between power-state reads while a change takes effect
BACKOFF_FIRST = 0.5  # seconds before the second attempt; doubles for each next one
BACKOFF_MAX = 8.0
# How long past an attempt's deadline its caller waits before giving up on it: room for
# the last power-state read, so a slow change is reported as such, not as silence.
ABANDON_GRACE = 0.25

# IPMI numbers (IPMI v2.0 specification).
NETFN_CHASSIS = 0x00
CMD_GET_CHASSIS_STATUS = 0x01
CMD_CHASSIS_CONTROL = 0x02
CMD_SET_BOOT_OPTIONS = 0x08
CMD_GET_BOOT_OPTIONS = 0x09
CHASSIS_POWER_DOWN = 0x00
CHASSIS_POWER_UP = 0x01
BOOT_PARAM_VALID_BIT_CLEARING = 0x03
BOOT_PARAM_FLAGS = 0x05
KEEP_FLAGS_PAST_60_S = 0x08  # valid bit clearing: not when no chassis control comes in 60 s
BOOT_FLAGS_VALID = 0x80
BOOT_FLAGS_PERSISTENT = 0x40
#: Boot device selector (bits 5-2 of the boot flags' second byte).
BOOT_DEVICES = {BootDevice.PXE: 0x1, BootDevice.DISK: 0x2}
BOOT_DEVICE_NAMES = {0x0: "no override", 0x3: "disk (safe mode)", 0x5: "CD/DVD", 0x6: "setup"}
#: Completion codes worth another attempt: node busy, timeout while processing, response
#: could not be provided, firmware update or BMC initialization in progress.
TRANSIENT_CODES = frozenset({0xC0, 0xC3, 0xCE, 0xD1, 0xD2})
PYGHMI_TIMEOUT_CODE = 0xFFFF  # pyghmi's code for "no response after its resends"
#: RAKP message 2 statuses by which a BMC refuses a login: invalid role, unauthorized
#: role, invalid name length, unauthorized name.
REFUSED_RAKP2_STATUSES = frozenset({0x09, 0x0A, 0x0C, 0x0D})
RAKP_HMAC_SHA1 = 0x01  # authentication algorithm 1 (cipher suites 1 to 3)


class _Failure(Exception):
    """One attempt failed: ``description`` completes "IPMI: BMC <address:port> ...";
    ``retry`` says whether another attempt may go better."""

    def __init__(self, description: str, *, retry: bool) -> None:
        super().__init__(description)
        self.description = description
        self.retry = retry


@dataclass(frozen=True)
class _Target:
    """A node's BMC and how hard to try it, from its driver_info and the settings."""

    address: str
    port: int
    username: str
    password: str = field(repr=False)
    timeout: float
    retries: int
    driver_info: Mapping[str, Any] = field(repr=False, compare=False)

    @property
    def endpoint(self) -> str:
        return f"{self.address}:{self.port}"

    def scrub(self, text: str) -> str:
        return redact.scrub(text, self.driver_info)


def _target(task: Task, settings: ConductorSettings, interface: str) -> _Target:
    """The node's BMC; BadRequest (naming keys, never values) if driver_info is unusable."""
    info = check_driver_info(
        task,
        required=["ipmi_address", "ipmi_username", "ipmi_password"],
        strings=["ipmi_address"],
        numbers=["ipmi_timeout", "ipmi_retries"],
        interface=interface,
    )
    for key in ("ipmi_username", "ipmi_password"):
        # The CLI turns a value that parses as JSON into a number: an all-digit password
        # arrives as an int, and means the same digits.
        if isinstance(info[key], bool) or not isinstance(info[key], str | int):
            raise BadRequest(f"{interface}: driver_info {key} must be a string")
    port = info.get("ipmi_port", DEFAULT_PORT)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise BadRequest(f"{interface}: driver_info ipmi_port must be a UDP port (1-65535)")
    timeout = info.get("ipmi_timeout", settings.ipmi_timeout)
    if timeout <= 0:
        raise BadRequest(f"{interface}: driver_info ipmi_timeout must be more than 0 s")
    retries = info.get("ipmi_retries", settings.ipmi_retries)
    if not isinstance(retries, int) or retries < 1:
        raise BadRequest(f"{interface}: driver_info ipmi_retries must be a whole number >= 1")
    return _Target(
        address=info["ipmi_address"],
        port=port,
        username=str(info["ipmi_username"]),
        password=str(info["ipmi_password"]),
        timeout=float(timeout),
        retries=retries,
        driver_info=info,
    )


class _Session(pyghmi_session.Session):  # type: ignore[misc]
    """pyghmi's RMCP+ session, fixed where it fails us: it honours the BMC's choice of
    cipher suite, does not sleep on an answer that is already in, tells a refused login
    from silence, and can be stopped by a caller that gave up on it. Its parent logs in
    as it is made and raises if that fails."""

    refused_login = False  # the BMC judged the user name or password wrong
    _rakp2_status: int | None = None
    # pyghmi's own attributes this class writes.
    attemptedhash: int
    allsockaddrs: list[Any]

    def __new__(cls, attempt: _Attempt, **login: Any) -> _Session:
        return super().__new__(cls, **login)  # type: ignore[no-any-return]

    def __init__(self, attempt: _Attempt, **login: Any) -> None:
        self._attempt = attempt
        if getattr(self, "initialized", False):
            # pyghmi handed out a live session it had for this BMC (one left open by an
            # operation whose logout failed): this attempt owns it now, and closes it.
            attempt.started(self)
        super().__init__(**login)

    def login(self) -> None:
        # Every attribute is in place by now: from here on the attempt can stop us.
        try:
            self._attempt.started(self)
        except _Failure:
            # Given up before the first packet: pyghmi has filed us as a login in progress
            # for this BMC and would hand us to the next session asking for it, which then
            # waits for a login that never comes. Stopping takes us out of its tables.
            self.stop()
            raise
        super().login()

    def _got_rmcp_response(self, data: bytearray) -> Any:
        # The open-session response names the algorithms the BMC chose (authentication at
        # byte 16); pyghmi assumes it accepted the SHA-256 ones it proposed.
        if (
            self.sessioncontext == "OPENSESSION"
            and len(data) > 16
            and data[0] == self.rmcptag
            and data[1] == 0
            and self.attemptedhash == 256
            and data[16] == RAKP_HMAC_SHA1
        ):
            self.attemptedhash = 1  # pyghmi's mark for SHA-1 (suite 3)
            self.currhashlib = hashlib.sha1
            self.currhashlen = 12  # HMAC-SHA1-96
        return super()._got_rmcp_response(data)

    def awaitresponse(self, retry: bool, netfn: int, command: int) -> Any:
        # An answer can be in before pyghmi starts to wait for it (a BMC on this host
        # answers within microseconds); pyghmi then sleeps until its resend timer, 0.5 to
        # 1 s, with the answer queued. Measured: 1 command in 20 without this, none in 240.
        self.process_pktqueue()
        return super().awaitresponse(retry, netfn, command)

    def _got_rakp2(self, data: bytearray) -> Any:
        if len(data) > 1 and data[0] == self.rmcptag:
            self._rakp2_status = data[1]
        return super()._got_rakp2(data)

    def onlogon(self, parameter: dict[str, Any]) -> None:
        # pyghmi reports a failed login as text only; the state it leaves tells why.
        # "FAILED" is where it puts a session whose RAKP2 proved another password.
        if "error" in parameter and (
            self.sessioncontext == "FAILED"
            or (
                self.sessioncontext == "EXPECTINGRAKP2"
                and self._rakp2_status in REFUSED_RAKP2_STATUSES
            )
        ):
            self.refused_login = True
        super().onlogon(parameter)

    def stop(self) -> None:
        """Break the session from any thread: no more resends, no keepalive, never handed
        out again by pyghmi, and whoever waits in it wakes up to an error."""
        if self.broken:
            return  # pyghmi broke it already
        self.logged = 0  # nothing to say to the BMC: it is not answering in time
        if not hasattr(self, "allsockaddrs"):  # stopped before its first packet went out
            self.allsockaddrs = []
        self._mark_broken("given up")


class _Attempt:
    """One try at an operation: log in, run ``work``, log out, on a helper thread, so the
    caller can give up at the deadline whatever pyghmi is waiting for."""

    def __init__(self, target: _Target, work: Callable[[_Session, _Attempt], Any]) -> None:
        self.target = target
        self.work = work
        self.deadline = time.monotonic() + target.timeout
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self._session: _Session | None = None
        self._abandoned = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        try:
            session = _Session(
                self,
                bmc=self.target.address,
                userid=self.target.username.encode(),
                password=self.target.password.encode(),
                port=self.target.port,
                keepalive=False,  # an idle session we lost track of logs out, not lingers
            )
            self.result = self.work(session, self)
        except BaseException as exc:
            self.error = exc
        finally:
            self._close()
            self.done.set()

    def _close(self) -> None:
        with self._lock:
            session, abandoned = self._session, self._abandoned.is_set()
        if session is None or abandoned:
            return  # never logged in, or already stopped by abandon()
        try:
            if session.logged and not session.broken:
                session.logout()  # frees the BMC's session slot (BMCs have a handful)
            else:
                session.stop()  # the login failed or the BMC went silent: just let go
        except Exception:
            LOG.debug("IPMI: BMC %s: closing the session failed", self.target.endpoint)

    def started(self, session: _Session) -> None:
        """Called by the session as it starts to log in."""
        with self._lock:
            if self._abandoned.is_set():
                raise _Failure("given up", retry=True)
            self._session = session

    def abandon(self) -> None:
        """The caller gives up: stop the session so it sends nothing more."""
        with self._lock:
            self._abandoned.set()
            session = self._session
        if session is not None:
            session.stop()

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def pause(self, seconds: float) -> None:
        """Sleep, but wake at once when the caller gives up."""
        self._abandoned.wait(max(0.0, min(seconds, self.remaining())))

    def failure(self, exc: BaseException) -> _Failure:
        """What went wrong, from what the helper thread raised."""
        if isinstance(exc, _Failure):
            return exc
        session = self._session
        if session is not None and session.refused_login:
            return _Failure("refused the credentials", retry=False)
        if isinstance(exc, pyghmi_exceptions.IpmiException):
            # Login gave up, or the session broke after pyghmi's own resends: silence.
            # pyghmi's text says little more ("None", "timeout", "Session no longer
            # connected"), except for RMCP+ errors such as "Insufficient resources".
            text = str(exc)
            if text in ("None", "timeout", "Session no longer connected", "given up"):
                return self.no_answer()
            return _Failure(f"failed the login: {self.target.scrub(text)}", retry=True)
        return _Failure(
            f"broke the IPMI exchange: {type(exc).__name__}: {self.target.scrub(str(exc))}",
            retry=True,
        )

    def no_answer(self) -> _Failure:
        waited = self.target.timeout - self.remaining()
        return _Failure(f"did not answer within {_seconds(waited)} s", retry=True)


def _seconds(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}".removesuffix(".0")


# pyghmi's sessions live in process-wide tables, so the locks that keep one operation at
# a time per BMC are process-wide too, whichever conductor or factory asks.
_bmc_locks: dict[tuple[str, int], threading.Lock] = {}
_bmc_locks_guard = threading.Lock()


def _bmc_lock(target: _Target) -> threading.Lock:
    with _bmc_locks_guard:
        return _bmc_locks.setdefault((target.address, target.port), threading.Lock())


def _run(target: _Target, what: str, work: Callable[[_Session, _Attempt], T]) -> T:
    """``work`` against the BMC in a fresh session, with the attempts and backoff of
    ``target``; DriverError with a reason free of credentials once it cannot be done."""
    with _bmc_lock(target):
        for number in range(1, target.retries + 1):
            started = time.monotonic()
            attempt = _Attempt(target, work)
            helper = threading.Thread(
                target=attempt.run, name=f"ipmi-{target.endpoint}", daemon=True
            )
            helper.start()
            if not attempt.done.wait(target.timeout + ABANDON_GRACE):
                attempt.abandon()
                failure = _Failure(
                    f"did not answer within {_seconds(target.timeout)} s", retry=True
                )
            elif attempt.error is None:
                LOG.debug(
                    "IPMI: BMC %s: %s took %.3f s",
                    target.endpoint,
                    what,
                    time.monotonic() - started,
                )
                return attempt.result  # type: ignore[no-any-return]
            else:
                failure = attempt.failure(attempt.error)
            if not failure.retry:
                raise DriverError(f"IPMI: BMC {target.endpoint} {failure.description}")
            if number == target.retries:
                attempts = "1 attempt" if number == 1 else f"{number} attempts"
                raise DriverError(f"IPMI: BMC {target.endpoint} {failure.description} ({attempts})")
            backoff = min(BACKOFF_FIRST * 2 ** (number - 1), BACKOFF_MAX)
            LOG.warning(
                "IPMI: BMC %s: %s, attempt %d of %d: %s; again in %g s",
                target.endpoint,
                what,
                number,
                target.retries,
                failure.description,
                backoff,
            )
            time.sleep(backoff)
    raise AssertionError("unreachable: the last attempt returns or raises")


def _command(
    session: _Session, attempt: _Attempt, what: str, command: int, data: tuple[int, ...] = ()
) -> bytes:
    """One chassis command; its response data, or _Failure saying why not."""
    response = session.raw_command(netfn=NETFN_CHASSIS, command=command, data=data)
    code = response.get("code", 0)
    if code == PYGHMI_TIMEOUT_CODE:
        raise attempt.no_answer()
    if code:
        meaning = attempt.target.scrub(str(response.get("error") or "unknown error"))
        raise _Failure(
            f"refused {what}: {meaning}, completion code 0x{code:02x}",
            retry=code in TRANSIENT_CODES,
        )
    return bytes(response.get("data", b""))


def _read_power(session: _Session, attempt: _Attempt) -> PowerState:
    data = _command(session, attempt, "get chassis status", CMD_GET_CHASSIS_STATUS)
    if not data:
        raise _Failure("answered get chassis status without data", retry=True)
    return PowerState.ON if data[0] & 0x01 else PowerState.OFF


def _power_state(target: _Target) -> PowerState:
    return _run(target, "get power state", _read_power)


def _set_power(target: _Target, state: PowerState) -> None:
    """Power the machine on or off and wait until the BMC reports it so."""

    def work(session: _Session, attempt: _Attempt) -> None:
        if _read_power(session, attempt) == state:
            return
        control = CHASSIS_POWER_UP if state == PowerState.ON else CHASSIS_POWER_DOWN
        _command(session, attempt, "chassis control", CMD_CHASSIS_CONTROL, (control,))
        while attempt.remaining() > 0:
            attempt.pause(POLL_INTERVAL)
            if _read_power(session, attempt) == state:
                return
        raise _Failure(
            f"did not reach {state.value} within {_seconds(attempt.target.timeout)} s",
            retry=True,
        )

    _run(target, f"set {state.value}", work)


def _set_boot_device(target: _Target, device: BootDevice) -> None:
    def work(session: _Session, attempt: _Attempt) -> None:
        # By default a BMC drops the boot flags when no chassis control command follows
        # within 60 s of setting them, persistent or not; the power-on may come later.
        _command(
            session,
            attempt,
            "set boot options",
            CMD_SET_BOOT_OPTIONS,
            (BOOT_PARAM_VALID_BIT_CLEARING, KEEP_FLAGS_PAST_60_S),
        )
        flags = BOOT_FLAGS_VALID | BOOT_FLAGS_PERSISTENT
        selector = BOOT_DEVICES[device] << 2
        _command(
            session,
            attempt,
            "set boot device",
            CMD_SET_BOOT_OPTIONS,
            (BOOT_PARAM_FLAGS, flags, selector, 0, 0, 0),
        )

    _run(target, f"set boot device {device.value}", work)


def _boot_device(target: _Target) -> BootDevice:
    def work(session: _Session, attempt: _Attempt) -> BootDevice:
        data = _command(
            session, attempt, "get boot options", CMD_GET_BOOT_OPTIONS, (BOOT_PARAM_FLAGS, 0, 0)
        )
        if len(data) < 4:
            raise _Failure("answered get boot options too briefly", retry=True)
        selector = (data[3] >> 2) & 0x0F if data[2] & BOOT_FLAGS_VALID else 0x0
        for device, code in BOOT_DEVICES.items():
            if code == selector:
                return device
        name = BOOT_DEVICE_NAMES.get(selector, f"device 0x{selector:x}")
        raise _Failure(f"reports boot device {name}, neither pxe nor disk", retry=False)

    return _run(target, "get boot device", work)


class IPMIPower(PowerInterface):
    def validate(self, task: Task) -> None:
        _target(task, self.env.settings, "ipmi power")

    def get_power_state(self, task: Task) -> PowerState:
        return _power_state(_target(task, self.env.settings, "ipmi power"))

    def set_power_state(self, task: Task, state: PowerState) -> None:
        if state not in (PowerState.ON, PowerState.OFF):
            raise BadRequest(f"cannot set power state {state!r} (power on, power off)")
        _set_power(_target(task, self.env.settings, "ipmi power"), state)

    def reboot(self, task: Task) -> None:
        """A hard cycle that ends powered on: off (if on) and then on. A chassis reset is
        not used: what a reset does to a machine that is off differs between BMCs."""
        target = _target(task, self.env.settings, "ipmi power")
        _set_power(target, PowerState.OFF)
        _set_power(target, PowerState.ON)


class IPMIManagement(ManagementInterface):
    def validate(self, task: Task) -> None:
        _target(task, self.env.settings, "ipmi management")

    def set_boot_device(self, task: Task, device: BootDevice) -> None:
        """Boot from ``device`` at every power-on from now on (a persistent setting)."""
        _set_boot_device(_target(task, self.env.settings, "ipmi management"), BootDevice(device))

    def get_boot_device(self, task: Task) -> BootDevice:
        return _boot_device(_target(task, self.env.settings, "ipmi management"))
