"""Canary rollouts over real HTTP: the model server (uvicorn, in a thread) serving a real champion and a
challenger with an injected fault, real traffic replayed from real flights, and the deploy DAG's target
(``LocalServerTarget``) plus the rollout rules (``airloop.canary.advance``) deciding.

Each faulty challenger must be rolled back at the first step (so it never sees more than the first step's
share of traffic) with no 5xx reaching a client while the champion is healthy; a healthy one is promoted.
"""

from __future__ import annotations

import threading
import time

import pytest

from airloop.canary import advance, start_rollout
from airloop.config import CanaryConfig, get_pipeline
from airloop.datasets import load_partitions
from airloop.serving import replay
from airloop.serving.client import ModelServerClient
from airloop.serving.server import HttpModel, ModelService, Variant, create_app, load_variants
from airloop_airflow.targets.local import LocalServerTarget
from tests.conftest import free_port, serve_in_thread

pytestmark = pytest.mark.integration

# The deadline is not what these tests check (tests/include/test_canary.py does); it only bounds a stuck
# rollout. A healthy rollout needs about 5,100 requests (300 challenger requests at each step): on a slow
# 2-core machine that took more than 2 minutes (216 of 300 at the 25 % step when 2 minutes were up).
#: the model server's admin token (the deploy DAG sends its connection's password)
TOKEN = "canary-test-token"
CANARY = CanaryConfig(steps=(10, 25, 50, 100), min_requests=300, interval_seconds=1, deadline_minutes=10)


class FailsOneInTen:
    def __init__(self, model):
        self.model, self.n, self.lock = model, 0, threading.Lock()

    def predict(self, df):
        with self.lock:
            self.n += 1
            n = self.n
        if n % 10 == 0:
            raise RuntimeError("injected: 10% of requests fail")
        return self.model.predict(df)


class AddsLatency:
    def __init__(self, model, seconds=0.6):
        self.model, self.seconds = model, seconds

    def predict(self, df):
        time.sleep(self.seconds)
        return self.model.predict(df)


class Constant:
    def predict(self, df):
        return [0.97] * len(df)


@pytest.fixture(scope="module")
def traffic(feature_root):
    root, parts = feature_root
    rows = load_partitions(root, "raw", "flight_delays", tuple(parts[-2:]))
    return replay.bodies_for(get_pipeline("flight_delays"), rows)


def rollout(champion_uri, make_challenger, traffic):
    """Serve, replay traffic, and drive the canary to its end; (rollout state, client-side counts)."""
    champ, _ = load_variants("flight_delays", champion_uri)
    chall = Variant("challenger", "99", make_challenger(champ.model))
    service = ModelService("flight_delays", champ, None, 0.0, None, seed=7)
    with serve_in_thread(create_app(service, lambda: (champ, chall), admin_token=TOKEN)) as url:
        state, counts = drive(url, champ.version, traffic)
    return state, counts, service


def drive(url, champion_version, traffic):
    target = LocalServerTarget(ModelServerClient(url, token=TOKEN))
    done = threading.Event()
    counts = {}
    sender = threading.Thread(
        target=lambda: counts.update(replay.replay(url, traffic, concurrency=4, loop=True, stop=done.is_set))
    )
    try:
        target.prepare("99")
        state = start_rollout("flight_delays", "99", champion_version, target.readings(), time.time())
        target.set_percent(CANARY.steps[0])
        sender.start()
        while state.status == "running":
            time.sleep(0.3)
            d = advance(state, CANARY, target.readings(), time.time())
            if d.action == "rollback":
                target.set_percent(0)
            elif d.action == "continue":
                target.set_percent(CANARY.steps[state.step])
        target.finish(promoted=state.status == "promoted")
    finally:
        done.set()
        if sender.is_alive():
            sender.join()
    return state, counts


def test_a_healthy_challenger_is_promoted(champion, traffic):
    state, counts, service = rollout(champion[0], lambda m: m, traffic)
    assert state.status == "promoted", state.decisions
    assert [d["percent"] for d in state.decisions] == [10, 25, 50, 100]
    assert counts.get("variant:challenger", 0) > 0 and counts.get("500", 0) == 0 and counts.get("0", 0) == 0


@pytest.mark.parametrize(
    ("name", "make", "reason"),
    [
        ("fails 10% of requests", FailsOneInTen, "5xx rate"),
        ("adds 600 ms", AddsLatency, "p99 latency"),
        ("refuses connections", lambda m: HttpModel(f"http://127.0.0.1:{free_port()}", timeout=1.0), "5xx rate"),
        ("predicts a constant", lambda m: Constant(), "predictions shifted"),
    ],
)
def test_a_faulty_challenger_is_rolled_back_at_the_first_step(champion, traffic, name, make, reason):
    state, counts, service = rollout(champion[0], make, traffic)
    assert state.status == "rolled_back", (name, state.decisions)
    last = state.decisions[-1]
    assert last["percent"] == CANARY.steps[0] and reason in last["reason"], (name, last)
    assert service.weight == 0.0  # the challenger's share went back to 0
    # no client saw the challenger's faults: the champion answered instead
    assert counts.get("500", 0) == 0 and counts.get("0", 0) == 0, (name, counts)
    assert counts.get("200", 0) > 0
