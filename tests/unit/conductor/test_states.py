"""The provision state machine: which events each state allows, and where they lead."""

from __future__ import annotations

import pytest

from libs.errors import InvalidStateTransition
from services.conductor import states
from services.conductor.states import Event, ProvisionState

S = ProvisionState


@pytest.mark.parametrize(
    ("state", "event", "target"),
    [
        (S.ENROLL, Event.MANAGE, S.MANAGEABLE),
        (S.MANAGEABLE, Event.PROVIDE, S.CLEANING),
        (S.AVAILABLE, Event.DEPLOY, S.DEPLOYING),
        (S.DEPLOYING, Event.WAIT, S.DEPLOYWAIT),
        (S.DEPLOYWAIT, Event.RESUME, S.DEPLOYING),
        (S.DEPLOYING, Event.DONE, S.ACTIVE),
        (S.DEPLOYWAIT, Event.FAIL, S.DEPLOYFAIL),
        (S.ACTIVE, Event.DELETE, S.DELETING),
        (S.DEPLOYFAIL, Event.DELETE, S.DELETING),
        (S.DELETING, Event.CLEAN, S.CLEANING),
        (S.CLEANING, Event.WAIT, S.CLEANWAIT),
        (S.CLEANWAIT, Event.RESUME, S.CLEANING),
        (S.CLEANING, Event.DONE, S.AVAILABLE),
        (S.CLEANWAIT, Event.FAIL, S.CLEANFAIL),
        (S.CLEANFAIL, Event.MANAGE, S.MANAGEABLE),
    ],
)
def test_allowed_transitions(state: S, event: Event, target: S):
    assert states.next_state(state, event) == target


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (S.ENROLL, Event.PROVIDE),  # credentials not checked yet
        (S.ENROLL, Event.DEPLOY),
        (S.MANAGEABLE, Event.DEPLOY),  # not cleaned and offered yet
        (S.ACTIVE, Event.DEPLOY),
        (S.AVAILABLE, Event.RESUME),  # a callback nobody waits for
        (S.ACTIVE, Event.RESUME),
        (S.DEPLOYWAIT, Event.DELETE),
        (S.CLEANWAIT, Event.MANAGE),
        ("no such state", Event.MANAGE),
        (S.AVAILABLE, "no such event"),
    ],
)
def test_refused_transitions(state: str, event: str):
    with pytest.raises(InvalidStateTransition, match="cannot"):
        states.next_state(state, event)


def test_a_refusal_lists_what_is_allowed():
    with pytest.raises(InvalidStateTransition) as caught:
        states.next_state("enroll", "deploy")  # as read from the database
    assert caught.value.reason == (
        "cannot deploy a node in provision state 'enroll' (allowed: manage)"
    )


@pytest.mark.parametrize("state", sorted(states.TRANSIENT_STATES))
def test_take_over_fails_each_transient_state_as_its_own_failure_would(state: S):
    assert states.FAIL_ON_TAKEOVER[state] == states.next_state(state, Event.FAIL)
    assert states.target_state(state) is not None


@pytest.mark.parametrize("state", sorted(states.STABLE_STATES))
def test_stable_states_have_no_target(state: S):
    assert states.target_state(state) is None
