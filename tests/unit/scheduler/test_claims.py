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
