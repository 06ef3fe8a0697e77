"""The node provisioning state machine: states, events and the allowed transitions as data.

Stable states wait for a user or operator; transient states are work in progress that a
conductor owns. A conductor that finds a node in a transient state with no live owner
fails it (:data:`FAIL_ON_TAKEOVER`) instead of guessing where the work stopped.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from libs.errors import InvalidStateTransition


class ProvisionState(enum.StrEnum):
    ENROLL = "enroll"
    MANAGEABLE = "manageable"
    AVAILABLE = "available"
    DEPLOYING = "deploying"
    DEPLOYWAIT = "wait call-back"
    ACTIVE = "active"
    DELETING = "deleting"
    CLEANING = "cleaning"
    CLEANWAIT = "clean wait"
    DEPLOYFAIL = "deploy failed"
    CLEANFAIL = "clean failed"
    ERROR = "error"


class Event(enum.StrEnum):
    MANAGE = "manage"  # operator: take the node under management (credentials checked)
    PROVIDE = "provide"  # operator: clean it and offer it to the scheduler
    DEPLOY = "deploy"  # scheduler: deploy an instance on it
    WAIT = "wait"  # conductor: the ramdisk is booting; wait for its callback
    RESUME = "resume"  # the ramdisk called back: go on
    DONE = "done"  # the step finished
    FAIL = "fail"  # the step failed (or its callback timed out)
    DELETE = "delete"  # tear the instance down (also: give up on a failed deploy)
    REBUILD = "rebuild"  # the user: write the instance's (new) image again, same node
    FENCE = "fence"  # its instance was evacuated: the node is cut off until repaired
    CLEAN = "clean"  # deleting is done: clean the disk


S = ProvisionState
E = Event


@dataclass(frozen=True)
class Transition:
    source: ProvisionState
    event: Event
    target: ProvisionState


#: Every allowed transition. Anything else raises :class:`InvalidStateTransition`.
TRANSITIONS: tuple[Transition, ...] = tuple(
    Transition(source, event, target)
    for source, event, target in [
        (S.ENROLL, E.MANAGE, S.MANAGEABLE),
        (S.MANAGEABLE, E.MANAGE, S.MANAGEABLE),
        (S.MANAGEABLE, E.PROVIDE, S.CLEANING),
        (S.AVAILABLE, E.MANAGE, S.MANAGEABLE),
        (S.AVAILABLE, E.DEPLOY, S.DEPLOYING),
        (S.DEPLOYING, E.WAIT, S.DEPLOYWAIT),
        (S.DEPLOYWAIT, E.RESUME, S.DEPLOYING),
        (S.DEPLOYING, E.DONE, S.ACTIVE),
        (S.DEPLOYING, E.FAIL, S.DEPLOYFAIL),
        (S.DEPLOYWAIT, E.FAIL, S.DEPLOYFAIL),
        (S.DEPLOYFAIL, E.DELETE, S.DELETING),
        (S.DEPLOYFAIL, E.MANAGE, S.MANAGEABLE),
        (S.ACTIVE, E.DELETE, S.DELETING),
        (S.ACTIVE, E.REBUILD, S.DEPLOYING),
        (S.ACTIVE, E.FENCE, S.ERROR),
        (S.DEPLOYFAIL, E.FENCE, S.ERROR),
        (S.ERROR, E.FENCE, S.ERROR),
        (S.ERROR, E.MANAGE, S.MANAGEABLE),
        (S.ERROR, E.DELETE, S.DELETING),
        (S.DELETING, E.CLEAN, S.CLEANING),
        (S.DELETING, E.FAIL, S.ERROR),
        (S.CLEANING, E.WAIT, S.CLEANWAIT),
        (S.CLEANWAIT, E.RESUME, S.CLEANING),
        (S.CLEANING, E.DONE, S.AVAILABLE),
        (S.CLEANING, E.FAIL, S.CLEANFAIL),
        (S.CLEANWAIT, E.FAIL, S.CLEANFAIL),
        (S.CLEANFAIL, E.MANAGE, S.MANAGEABLE),
    ]
)

_TABLE: dict[tuple[ProvisionState, Event], ProvisionState] = {
    (t.source, t.event): t.target for t in TRANSITIONS
}

STABLE_STATES = frozenset(
    {S.ENROLL, S.MANAGEABLE, S.AVAILABLE, S.ACTIVE, S.DEPLOYFAIL, S.CLEANFAIL, S.ERROR}
)
TRANSIENT_STATES = frozenset(set(ProvisionState) - STABLE_STATES)

#: The stable state a transient state settles in when its work succeeds (target state).
TARGET_OF: dict[ProvisionState, ProvisionState] = {
    S.DEPLOYING: S.ACTIVE,
    S.DEPLOYWAIT: S.ACTIVE,
    S.DELETING: S.AVAILABLE,
    S.CLEANING: S.AVAILABLE,
    S.CLEANWAIT: S.AVAILABLE,
}

#: Where a node goes when its conductor died in the middle of a transient state: where
#: that state's ``fail`` event leads (every transient state has one).
FAIL_ON_TAKEOVER: dict[ProvisionState, ProvisionState] = {
    state: _TABLE[(state, E.FAIL)] for state in TRANSIENT_STATES
}


def next_state(state: str, event: str) -> ProvisionState:
    """The state ``event`` leads to from ``state``, or :class:`InvalidStateTransition`."""
    try:
        return _TABLE[(ProvisionState(state), Event(event))]
    except (KeyError, ValueError):
        state = getattr(state, "value", state)  # a ProvisionState prints as its value
        allowed = ", ".join(allowed_events(state)) or "none"
        raise InvalidStateTransition(
            f"cannot {event} a node in provision state {state!r} (allowed: {allowed})"
        ) from None


def allowed_events(state: str) -> list[str]:
    """The events allowed in ``state``, in declaration order (for error messages and CLI)."""
    return [t.event.value for t in TRANSITIONS if t.source == state]


def target_state(state: ProvisionState) -> ProvisionState | None:
    """The target provision state shown while a node is in ``state`` (None when stable)."""
    return TARGET_OF.get(state)
