"""200 webhook deliveries against the real API server: 20% repeats, 10% badly signed.

The ingest DAG is paused meanwhile, so the runs are created and counted but not executed (executing 140
ingestion runs is not what this measures); they are deleted afterwards.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import random
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from airloop import webhooks as wh
from airloop.http import HttpClient, HttpError
from tests.integration.stack.conftest import delete_runs

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SOURCE = "flight-delays-landing"
DAG_ID = "flight_delays__ingest"


#: statuses the route answers; 503 (metadata database busy) is re-sent with the same delivery id, as senders do
ANSWERS = tuple(s for s in range(400, 600) if s != 503)


def _post(base_url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    client = HttpClient(f"{base_url}/airloop/webhooks", retries=10, backoff=0.5, retry_statuses=frozenset({503}))
    try:
        r = client.post(SOURCE, data=body, headers={**headers, "Content-Type": "application/json"}, ok=ANSWERS)
    except HttpError as e:  # still busy after every re-send
        return e.status, json.loads(e.body or "{}")
    return r.status, r.json() or {}


def test_deliveries_with_repeats_and_bad_signatures_make_exactly_the_expected_runs(running_stack):
    s, api = running_stack
    secret = s.webhook_secret("airloop_webhook_flight_delays")
    wrong = "whsec_" + "bm90IHRoZSBzZWNyZXQgb2YgdGhpcyBzb3VyY2U="
    api.wait_for_dag(DAG_ID)
    was_paused = api.get(f"/api/v2/dags/{DAG_ID}")["is_paused"]
    api.patch(f"/api/v2/dags/{DAG_ID}", {"is_paused": True})

    tag = uuid.uuid4().hex[:8]
    rng = random.Random(7)
    landing = f"{s.data_root}/landing/flight_delays"
    # one delivery per day (Airflow keeps one run per day of the ingest DAG), days no other test runs
    unique = [(f"load_{tag}_{i:03d}", dt.date(2013, 8, 1) + dt.timedelta(days=i)) for i in range(140)]
    plan = [(mid, day, secret) for mid, day in unique]
    plan += [(mid, day, secret) for mid, day in rng.sample(unique, 40)]  # 20%: repeats
    plan += [(f"load_{tag}_bad_{i:02d}", dt.date(2013, 8, 1), wrong) for i in range(20)]  # 10%: bad signature
    rng.shuffle(plan)
    assert len(plan) == 200

    def deliver(item):
        mid, day, key = item
        body = json.dumps({"source_uri": f"{landing}/ds={day}/flights.csv", "day": day.isoformat()}).encode()
        status, answer = _post(s.base_url, body, wh.signed_headers("standard", key, mid, body))
        return mid, key, status, answer

    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(deliver, plan))
        by_id = collections.defaultdict(list)
        for mid, key, status, answer in results:
            by_id[mid].append((key == secret, status, answer))

        for mid, _day in unique:
            statuses = sorted(st for _, st, _ in by_id[mid])
            # the first delivery of an id creates its run; every repeat is answered with the same run
            assert statuses in ([202], [200, 202]), (mid, by_id[mid])
            assert {a["dag_run_id"] for _, _, a in by_id[mid]} == {wh.run_id_for(SOURCE, mid)}
        bad = [r for r in results if r[1] == wrong]
        assert len(bad) == 20 and {r[2] for r in bad} == {401}
        assert all(r[3]["detail"] == "no webhook-signature matches the body" for r in bad)

        runs = []
        for offset in (0, 100, 200):  # the API pages by at most 100
            runs += [
                r["dag_run_id"]
                for r in api.get(
                    f"/api/v2/dags/{DAG_ID}/dagRuns",
                    limit=100,
                    offset=offset,
                    run_id_pattern=f"webhook__{SOURCE}__load_{tag}",
                )["dag_runs"]
            ]
        assert sorted(runs) == sorted(wh.run_id_for(SOURCE, mid) for mid, _ in unique)
        counts = collections.Counter(r[2] for r in results)
        print(f"\n200 deliveries: {dict(counts)}")
    finally:
        delete_runs(DAG_ID, f"webhook__{SOURCE}__load_{tag}")
        api.patch(f"/api/v2/dags/{DAG_ID}", {"is_paused": was_paused})
