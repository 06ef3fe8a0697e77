"""Releasing a claim whose deploy cast failed, when the cast may have arrived after all."""

from __future__ import annotations

import pytest
from sqlalchemy import update
from sqlmodel import col, select

from libs.db import InstanceStatus, Node
from libs.db.models import Event
from libs.notify import Notifier
from services.scheduler.claims import ClaimOutcome, claim_node, release_claim
from tests.unit.scheduler.estate import Estate

FAULT = {"code": "service_unavailable", "message": "cast not confirmed"}


@pytest.fixture
def estate(db):
    return Estate(db)


def test_a_claim_whose_deploy_never_started_is_released(estate):
    instance = estate.instance(estate.flavor())
    node = estate.node("n1")
    assert claim_node(estate.db, instance.id, node.id) is ClaimOutcome.CLAIMED

    assert release_claim(estate.db, instance.id, node.id, FAULT) is True

    assert estate.get_node(node.id).instance_id is None
    failed = estate.get_instance(instance.id)
    assert (failed.status, failed.node_id, failed.fault) == (InstanceStatus.ERROR, None, FAULT)


def test_a_claim_whose_conductor_got_the_cast_after_all_is_kept(estate):
    instance = estate.instance(estate.flavor())
    node = estate.node("n1")
    assert claim_node(estate.db, instance.id, node.id) is ClaimOutcome.CLAIMED
    with estate.db.session() as session:  # the unconfirmed cast reached its conductor
        session.exec(
            update(Node)
            .where(col(Node.id) == node.id)
            .values(provision_state="deploying", reservation="cond-1")
        )

    assert release_claim(estate.db, instance.id, node.id, FAULT) is False

    assert estate.get_node(node.id).instance_id == instance.id
    deploying = estate.get_instance(instance.id)
    assert (deploying.status, deploying.node_id) == (InstanceStatus.BUILD, node.id)


def test_a_claims_event_shows_the_instance_as_the_claim_left_it(estate):
    instance = estate.instance(estate.flavor())
    node = estate.node("n1")
    assert claim_node(estate.db, instance.id, node.id, Notifier()) is ClaimOutcome.CLAIMED

    with estate.db.session() as session:
        (event,) = session.exec(select(Event).where(col(Event.object_id) == instance.id)).all()
    assert event.event_type == "tetsu.instance.schedule.end"
    payload = event.payload
    assert (payload["node_id"], payload["task_state"], payload["attempts"]) == (
        node.id,
        "deploying",
        1,
    )


def test_a_claim_hands_on_the_nodes_pinned_conductor_as_it_read_it(estate):
    seen: list[tuple[str, str | None]] = []
    flavor = estate.flavor()
    first, second = estate.instance(flavor), estate.instance(flavor)
    anywhere = estate.node("n1")
    pinned = estate.node("n2", pinned_conductor="cond-7")

    assert claim_node(estate.db, first.id, anywhere.id, pinned=lambda *pin: seen.append(pin)) is (
        ClaimOutcome.CLAIMED
    )
    assert claim_node(estate.db, second.id, pinned.id, pinned=lambda *pin: seen.append(pin)) is (
        ClaimOutcome.CLAIMED
    )
    # A node taken already, or an instance that no longer waits: nothing is handed on.
    third = estate.instance(flavor)
    outcome = claim_node(estate.db, third.id, anywhere.id, pinned=lambda *pin: seen.append(pin))
    assert outcome is ClaimOutcome.NODE_TAKEN
    free = estate.node("n3")
    outcome = claim_node(estate.db, first.id, free.id, pinned=lambda *pin: seen.append(pin))
    assert outcome is ClaimOutcome.INSTANCE_GONE

    assert seen == [(anywhere.id, None), (pinned.id, "cond-7")]
