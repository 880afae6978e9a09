"""The deferrable waits: the canary and drift triggers against a real data root (a saved rollout, a drift
history) and a stand-in serving target with fixed figures; the sensors defer to them and apply their
events as a look (``poke``) does. No server, no Spark, no training."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from types import SimpleNamespace

import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowRescheduleException, AirflowSkipException, TaskDeferred

from airloop.canary import VariantStats, load_rollout, save_rollout, start_rollout
from airloop.drift import drift_verdict
from airloop.storage import DataRoot
from airloop_airflow.sensors.canary import CanaryStepSensor
from airloop_airflow.sensors.deferrable import TriggerFailed
from airloop_airflow.sensors.drift import DriftSensor
from airloop_airflow.triggers.canary import CanaryStepTrigger
from airloop_airflow.triggers.drift import DriftResultTrigger

pytestmark = pytest.mark.unit

MODEL = "flight_delays"
HEALTHY = {"champion": VariantStats(requests=50), "challenger": VariantStats(requests=50)}
NO_TRAFFIC = {"champion": VariantStats(), "challenger": VariantStats()}


class FixedTarget:
    """A serving target whose figures are given: one set of readings per look, the last one repeated."""

    def __init__(self, *readings: dict[str, VariantStats]) -> None:
        self.readings_seq, self.looks, self.percents = list(readings), 0, []

    def readings(self) -> dict[str, VariantStats]:
        self.looks += 1
        return self.readings_seq[min(self.looks, len(self.readings_seq)) - 1]

    def set_percent(self, percent: int) -> None:
        self.percents.append(percent)


class GrowingTarget(FixedTarget):
    """Healthy traffic: 50 more requests on each variant at every look."""

    def readings(self) -> dict[str, VariantStats]:
        self.looks += 1
        return {variant: VariantStats(requests=50.0 * self.looks) for variant in ("champion", "challenger")}


class BrokenTarget(FixedTarget):
    def readings(self) -> dict[str, VariantStats]:
        raise ConnectionError("model server unreachable")


@pytest.fixture()
def fast_cfg(monkeypatch, cfg):
    """The model's config with a quick canary (10 requests per step, no least time) and no online metric."""
    from airloop import config

    fast = cfg.model_copy(
        update={
            "canary": cfg.canary.model_copy(update={"min_requests": 10, "interval_seconds": 0}),
            "deployment": cfg.deployment.model_copy(update={"outcome_key": (), "outcome_partition": ""}),
        }
    )
    monkeypatch.setattr(config, "get_pipeline", lambda name, folder=None: fast)
    return fast


@pytest.fixture()
def rollout(tmp_path, fast_cfg):
    """A running rollout of v2, started a minute ago at step 0, saved in a data root."""
    root = DataRoot(str(tmp_path))
    save_rollout(root, start_rollout(MODEL, "2", "1", NO_TRAFFIC, now=time.time() - 60))
    return root


@pytest.fixture()
def use_target(monkeypatch):
    """Serve the given target to the trigger and the sensor (both build it by ``build_target(cfg)``)."""
    import airloop_airflow.sensors.canary as sensor_module
    import airloop_airflow.targets as targets

    def use(target: FixedTarget) -> FixedTarget:
        monkeypatch.setattr(targets, "build_target", lambda cfg: target)
        monkeypatch.setattr(sensor_module, "build_target", lambda cfg: target)
        return target

    return use


def first_event(trigger, timeout: float = 10.0):
    """Run a trigger as the triggerer does, until its first event."""

    async def run():
        events = trigger.run()
        try:
            return await asyncio.wait_for(anext(events), timeout)
        finally:
            await events.aclose()

    return asyncio.run(run()).payload


def canary_ctx(root: DataRoot):
    started = {"version": "2", "state_uri": root.canary_state(MODEL, "2")}
    ti = SimpleNamespace(xcom_pull=lambda task_ids: started, get_first_reschedule_date=lambda context: None)
    return {"ti": ti}


def canary_sensor(root: DataRoot, **kw) -> CanaryStepSensor:
    return CanaryStepSensor(task_id="watch_canary", model=MODEL, data_root=root.uri, poke_interval=5, timeout=600, **kw)


# --- serialize(): what the triggerer stores is enough to rebuild the same trigger ---------------------------


@pytest.mark.parametrize(
    "trigger",
    [
        CanaryStepTrigger(model=MODEL, version="2", data_root="file:///data", poke_interval=30),
        DriftResultTrigger(model=MODEL, data_root="s3://bucket/root", interval_start="2013-07-01T00:00:00+00:00"),
    ],
    ids=["canary", "drift"],
)
def test_serialize_round_trips_through_the_classpath(trigger):
    from airflow.sdk.module_loading import import_string
    from airflow.sdk.serde import deserialize, serialize

    classpath, kwargs = trigger.serialize()
    assert classpath == f"{type(trigger).__module__}.{type(trigger).__name__}"
    stored = deserialize(json.loads(json.dumps(serialize(kwargs))))  # as the trigger table keeps them
    assert stored == kwargs
    rebuilt = import_string(classpath)(**stored)
    assert type(rebuilt) is type(trigger) and rebuilt.serialize() == (classpath, kwargs)


# --- the canary trigger ----------------------------------------------------------------------------------


def test_canary_trigger_polls_while_the_step_holds_and_fires_once_decided(rollout, use_target):
    target = use_target(FixedTarget(NO_TRAFFIC, NO_TRAFFIC, HEALTHY))
    event = first_event(CanaryStepTrigger(MODEL, "2", rollout.uri, poke_interval=0.01))
    assert event["status"] == "decided" and event["action"] == "continue" and event["step"] == 0
    assert event["message"] == "healthy at 10%; next 25%" and target.looks == 3
    state = load_rollout(rollout, MODEL, "2")
    assert state.step == 0 and state.decisions == [] and target.percents == []  # the trigger never writes


def test_canary_trigger_fires_at_once_on_a_rollback(rollout, use_target):
    use_target(FixedTarget({"champion": VariantStats(requests=50), "challenger": VariantStats(server_errors=50)}))
    event = first_event(CanaryStepTrigger(MODEL, "2", rollout.uri, poke_interval=0.01))
    assert event["action"] == "rollback" and "5xx rate" in event["message"]


def test_canary_trigger_reports_an_ended_or_missing_rollout_and_a_failed_look(rollout, use_target):
    use_target(BrokenTarget())
    event = first_event(CanaryStepTrigger(MODEL, "2", rollout.uri, poke_interval=0.01))
    assert event["status"] == "error" and "ConnectionError: model server unreachable" in event["message"]
    missing = first_event(CanaryStepTrigger(MODEL, "7", rollout.uri, poke_interval=0.01))
    assert missing["status"] == "missing" and missing["message"].endswith("canary/v7.json")
    state = load_rollout(rollout, MODEL, "2")
    state.status = "promoted"
    save_rollout(rollout, state)
    ended = first_event(CanaryStepTrigger(MODEL, "2", rollout.uri, poke_interval=0.01))
    assert ended["status"] == "ended" and ended["message"].endswith("already ended: promoted")


# --- the canary sensor: defers when deferrable, applies the trigger's event as a look --------------------


def test_canary_sensor_defers_to_its_trigger_after_a_look_that_holds(rollout, use_target):
    target = use_target(FixedTarget(NO_TRAFFIC))
    sensor = canary_sensor(rollout)
    assert sensor.deferrable
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(canary_ctx(rollout))
    assert target.looks == 1
    assert deferred.value.method_name == "execute_complete"
    assert deferred.value.trigger.serialize() == CanaryStepTrigger(MODEL, "2", rollout.uri, 5.0).serialize()
    assert 590 <= deferred.value.timeout.total_seconds() <= 600
    assert deferred.value.kwargs["timeout_at"] == pytest.approx(time.time() + 600, abs=10)


def test_canary_sensor_not_deferrable_reschedules(rollout, use_target):
    use_target(FixedTarget(NO_TRAFFIC))
    sensor = canary_sensor(rollout, deferrable=False)
    assert sensor.mode == "reschedule"
    with pytest.raises(AirflowRescheduleException):
        sensor.execute(canary_ctx(rollout))


def test_canary_sensor_applies_each_step_like_a_look_then_finishes(rollout, use_target, tmp_path):
    """Through every step by events, against a twin rollout driven by ``poke`` on the same figures: the same
    state, the same traffic shares, the same XCom value."""
    ours, theirs = GrowingTarget(), GrowingTarget()
    twin = DataRoot(str(tmp_path / "twin"))
    save_rollout(twin, load_rollout(rollout, MODEL, "2"))
    sensor, twin_sensor = canary_sensor(rollout), canary_sensor(twin, deferrable=False)
    event = {"status": "decided", "action": "continue", "message": "healthy"}
    timeout_at = time.time() + 600
    for step in range(3):
        use_target(ours)
        with pytest.raises(TaskDeferred) as deferred:  # the next step waits in the triggerer again
            sensor.execute_complete(canary_ctx(rollout), event=event, timeout_at=timeout_at)
        assert deferred.value.kwargs == {"timeout_at": timeout_at}
        assert load_rollout(rollout, MODEL, "2").step == step + 1
        use_target(theirs)
        assert not twin_sensor.poke(canary_ctx(twin)).is_done
    use_target(ours)
    done = sensor.execute_complete(canary_ctx(rollout), event={**event, "action": "promote"}, timeout_at=timeout_at)
    use_target(theirs)
    look = twin_sensor.poke(canary_ctx(twin))
    assert look.is_done and done["action"] == "promote" and ours.percents == theirs.percents == [25, 50, 100]
    assert without_times(done) == without_times(look.xcom_value)
    state, twin_state = load_rollout(rollout, MODEL, "2"), load_rollout(twin, MODEL, "2")
    assert state.status == twin_state.status == "promoted" and state.step == twin_state.step == 3
    assert [without_times(d) for d in state.decisions] == [without_times(d) for d in twin_state.decisions]


def without_times(decision: dict) -> dict:
    return {k: v for k, v in decision.items() if k != "at"}


def test_canary_sensor_rollback_by_event_stops_the_traffic_first(rollout, use_target):
    target = use_target(
        FixedTarget({"champion": VariantStats(requests=50), "challenger": VariantStats(server_errors=50)})
    )
    event = {"status": "decided", "action": "rollback", "message": "5xx"}
    done = canary_sensor(rollout).execute_complete(canary_ctx(rollout), event=event, timeout_at=time.time() + 600)
    assert done["action"] == "rollback" and target.percents == [0]
    assert load_rollout(rollout, MODEL, "2").status == "rolled_back"


def test_canary_sensor_raises_an_error_event_and_fails_on_a_missing_state(rollout, use_target, tmp_path):
    use_target(FixedTarget(HEALTHY))
    sensor = canary_sensor(rollout)
    with pytest.raises(TriggerFailed, match="model server unreachable"):
        sensor.execute_complete(
            canary_ctx(rollout), event={"status": "error", "message": "model server unreachable"}, timeout_at=0
        )
    empty = DataRoot(str(tmp_path / "empty"))
    with pytest.raises(AirflowFailException, match="no canary state at"):  # the same failure as a look's
        canary_sensor(empty).execute_complete(
            canary_ctx(empty), event={"status": "missing", "message": "no state"}, timeout_at=time.time() + 60
        )


def test_canary_sensor_times_out_when_no_time_is_left(rollout, use_target):
    from airflow.sdk.exceptions import AirflowSensorTimeout

    use_target(FixedTarget(NO_TRAFFIC))
    with pytest.raises(AirflowSensorTimeout):
        canary_sensor(rollout).execute_complete(
            canary_ctx(rollout), event={"status": "decided", "message": "x"}, timeout_at=time.time() - 1
        )


# --- the drift trigger and sensor --------------------------------------------------------------------------

JULY = dt.datetime(2013, 7, 1, tzinfo=dt.UTC)


def drift_result(start: dt.datetime, drifting: bool) -> dict:
    return {
        "model": MODEL,
        "champion_version": "1",
        "interval_start": start.isoformat(),
        "interval_end": (start + dt.timedelta(days=7)).isoformat(),
        "computed_at": "2013-07-08T00:05:00+00:00",
        "drift_share": 0.6 if drifting else 0.1,
        "dataset_drift": drifting,
        "drifted_columns": ["month"] if drifting else [],
        "column_scores": {"month": 0.9, "dep_hour": 0.01},
        "prediction_score": 0.02,
        "prediction_drifted": False,
        "report_uri": f"file:///reports/{start.date()}/report.html",
        "reference_uri": "runs:/r/reference",
        "reference_rows": 1000,
        "current_rows": 900,
    }


def write_history(root: DataRoot, *results: dict) -> None:
    root.write_jsonl_atomic(root.drift_history(MODEL), list(results))


def drift_ctx(start: dt.datetime = JULY):
    return {"ti": SimpleNamespace(get_first_reschedule_date=lambda context: None), "data_interval_start": start}


def drift_sensor(root: DataRoot, **kw) -> DriftSensor:
    return DriftSensor(task_id="watch_drift", model=MODEL, data_root=root.uri, poke_interval=60, timeout=600, **kw)


def test_drift_verdict_of_the_history():
    this = JULY.isoformat()
    assert drift_verdict([], this) == ("waiting", None)
    earlier = drift_result(JULY - dt.timedelta(days=7), drifting=False)
    assert drift_verdict([earlier], this) == ("waiting", None)
    assert drift_verdict([earlier, drift_result(JULY, drifting=False)], this)[0] == "no_drift"
    assert drift_verdict([drift_result(JULY - dt.timedelta(days=7), drifting=True)], this)[0] == "drift"


def test_drift_trigger_waits_for_this_intervals_result(tmp_path, fast_cfg):
    root = DataRoot(str(tmp_path))
    write_history(root, drift_result(JULY - dt.timedelta(days=7), drifting=False))
    trigger = DriftResultTrigger(MODEL, root.uri, JULY.isoformat(), poke_interval=0.01)

    async def wait_then_record():
        events = trigger.run()
        waiting = asyncio.ensure_future(anext(events))
        await asyncio.sleep(0.1)
        assert not waiting.done()  # only an earlier interval's result, no drift: keep waiting
        write_history(root, drift_result(JULY - dt.timedelta(days=7), False), drift_result(JULY, True))
        event = await asyncio.wait_for(waiting, 10)
        await events.aclose()
        return event.payload

    event = asyncio.run(wait_then_record())
    assert event["status"] == "drift" and event["result_interval_start"] == JULY.isoformat()


def test_drift_trigger_reports_an_unreadable_history(tmp_path):
    root = DataRoot(str(tmp_path))
    root.write_bytes_atomic(root.drift_history(MODEL), b"not json\n")
    event = first_event(DriftResultTrigger(MODEL, root.uri, JULY.isoformat(), poke_interval=0.01))
    assert event["status"] == "error" and "JSONDecodeError" in event["message"]


def test_drift_sensor_defers_then_returns_the_drift_context(tmp_path, fast_cfg):
    from airloop.drift import drift_context

    root = DataRoot(str(tmp_path))
    sensor = drift_sensor(root)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(drift_ctx())
    trigger = DriftResultTrigger(MODEL, root.uri, JULY.isoformat(), 60.0)
    assert deferred.value.trigger.serialize() == trigger.serialize()
    assert deferred.value.method_name == "execute_complete"
    result = drift_result(JULY, drifting=True)
    write_history(root, result)
    event = first_event(DriftResultTrigger(**{**trigger.serialize()[1], "poke_interval": 0.01}))
    assert sensor.execute_complete(drift_ctx(), event=event, **deferred.value.kwargs) == drift_context(result)
    assert drift_sensor(root, deferrable=False).poke(drift_ctx()).xcom_value == drift_context(result)


def test_drift_sensor_skips_on_no_drift_as_a_look_does(tmp_path, fast_cfg):
    root = DataRoot(str(tmp_path))
    write_history(root, drift_result(JULY, drifting=False))
    event = first_event(DriftResultTrigger(MODEL, root.uri, JULY.isoformat(), poke_interval=0.01))
    assert event["status"] == "no_drift"
    with pytest.raises(AirflowSkipException, match="no drift: share 0.1 < ") as by_event:
        drift_sensor(root).execute_complete(drift_ctx(), event=event, timeout_at=time.time() + 600)
    with pytest.raises(AirflowSkipException) as by_look:
        drift_sensor(root, deferrable=False).poke(drift_ctx())
    assert str(by_event.value) == str(by_look.value)


def test_drift_sensor_not_deferrable_reschedules(tmp_path, fast_cfg):
    with pytest.raises(AirflowRescheduleException):
        drift_sensor(DataRoot(str(tmp_path)), deferrable=False).execute(drift_ctx())
