from __future__ import annotations

import datetime as dt

import pytest

from airloop.registry import alias_at, decide, read_history, run_gate, set_alias

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("challenger", "champion", "passed", "words"),
    [
        (0.70, None, True, "no champion yet"),
        (0.60, None, False, "below the absolute threshold"),
        (0.70, 0.705, True, "vs champion"),
        (0.70, 0.72, False, "behind the champion"),
        (0.61, 0.50, False, "below the absolute threshold"),
    ],
)
def test_decide(cfg, challenger, champion, passed, words):
    ok, reason = decide(cfg, challenger, champion)
    assert ok is passed and words in reason


def test_decide_lower_is_better(cfg):
    rmse = cfg.model_copy(
        update={"gate": cfg.gate.model_copy(update={"metric": "rmse", "min_metric": 20.0, "max_regression": 1.0})}
    )
    assert decide(rmse, 15.0, 14.5)[0] is True
    assert decide(rmse, 16.0, 14.5)[0] is False
    assert decide(rmse, 25.0, None)[0] is False


def test_alias_history_answers_which_version_served_when(data_root):
    class FakeRegistry:  # only alias bookkeeping; the real MLflow path is tested below
        def __init__(self):
            self.aliases = {}

        def get_model_version_by_alias(self, model, alias):
            from mlflow.exceptions import MlflowException

            if alias not in self.aliases:
                raise MlflowException("no alias")
            return type("V", (), {"version": self.aliases[alias]})()

        def set_registered_model_alias(self, model, alias, version):
            self.aliases[alias] = version

    reg = FakeRegistry()
    r1 = set_alias(reg, data_root, "m", "champion", "1", by="t", why="first")
    assert set_alias(reg, data_root, "m", "champion", "1", by="t", why="again") == {}  # no-op, not recorded
    r2 = set_alias(reg, data_root, "m", "champion", "2", by="t", why="promoted")
    hist = read_history(data_root, "m")
    assert [(h["version"], h["replaced"]) for h in hist] == [("1", None), ("2", "1")]
    t1, t2 = dt.datetime.fromisoformat(r1["at"]), dt.datetime.fromisoformat(r2["at"])
    assert alias_at(hist, "champion", t1 - dt.timedelta(seconds=1)) is None
    assert alias_at(hist, "champion", t1) == "1"
    assert alias_at(hist, "champion", t2) == "2"


@pytest.mark.heavy
def test_gate_with_real_models(feature_root, cfg, tmp_path):
    """No champion: the first passing version becomes champion. Then a better-or-equal one becomes
    challenger, and a poor one is refused with aliases unchanged."""
    from mlflow import MlflowClient

    from airloop.datasets import load_partitions
    from airloop.storage import DataRoot
    from airloop.training.request import TrainRequest
    from airloop.training.train import train

    root, parts = feature_root
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    history_root = DataRoot(tmp_path / "history")
    import mlflow

    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    first = train(TrainRequest(model=cfg.name, data_root=root.uri, partitions=parts, run_key="g/1", tracking_uri=uri))
    holdout = load_partitions(root, "raw", cfg.name, tuple(first["holdout_partitions"]))
    d1 = run_gate(cfg, client, history_root, first["version"], holdout, by="test")
    assert d1.passed and d1.aliases_set == ("champion",) and d1.champion_version is None
    second = train(
        TrainRequest(model=cfg.name, data_root=root.uri, partitions=parts, run_key="g/2", tracking_uri=uri, seed=14)
    )
    d2 = run_gate(cfg, client, history_root, second["version"], holdout, by="test")
    assert d2.champion_version == first["version"] and d2.champion_score == pytest.approx(d1.challenger_score)
    # a one-epoch model on the same window, without the linear start, is clearly worse than the champion (about
    # as good as chance: 0.50 ROC AUC, either side of it by seed and encoding). The absolute threshold is
    # out of the way (0), so the refusal can only come from the comparison with the champion.
    weak = train(
        TrainRequest(
            model=cfg.name,
            data_root=root.uri,
            partitions=parts,
            run_key="g/3",
            tracking_uri=uri,
            max_epochs=1,
            learning_rate=1e-5,
            linear_start=False,
        )
    )
    strict = cfg.model_copy(update={"gate": cfg.gate.model_copy(update={"max_regression": 0.0, "min_metric": 0.0})})
    d3 = run_gate(strict, client, history_root, weak["version"], holdout, by="test")
    assert not d3.passed and "behind the champion" in d3.reason
    assert d3.challenger_score < d3.champion_score - 0.1, d3
    assert str(client.get_model_version_by_alias(cfg.name, "champion").version) == first["version"]
    hist = read_history(history_root, cfg.name)
    assert all(h["version"] != weak["version"] for h in hist)


@pytest.mark.heavy
def test_manual_rollback_restores_a_version_and_records_it(feature_root, cfg, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    from airloop.registry import rollback
    from airloop.storage import DataRoot
    from airloop.training.request import TrainRequest
    from airloop.training.train import train

    root, parts = feature_root
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    hist = DataRoot(tmp_path / "h")
    v1 = train(
        TrainRequest(
            model=cfg.name, data_root=root.uri, partitions=parts, run_key="rb/1", tracking_uri=uri, max_epochs=2
        )
    )
    v2 = train(
        TrainRequest(
            model=cfg.name, data_root=root.uri, partitions=parts, run_key="rb/2", tracking_uri=uri, max_epochs=2
        )
    )
    set_alias(client, hist, cfg.name, "champion", v2["version"], by="t", why="promoted")
    with pytest.raises(ValueError, match="needs a reason"):
        rollback(client, hist, cfg.name, v1["version"], by="oncall", why=" ")
    with pytest.raises(ValueError, match="no version 99"):
        rollback(client, hist, cfg.name, "99", by="oncall", why="x")
    records = rollback(client, hist, cfg.name, v1["version"], by="oncall", why="latency regression")
    assert [(r["alias"], r["version"], r["replaced"]) for r in records] == [
        ("previous", v2["version"], None),
        ("champion", v1["version"], v2["version"]),
    ]
    assert str(client.get_model_version_by_alias(cfg.name, "champion").version) == v1["version"]
    assert str(client.get_model_version_by_alias(cfg.name, "previous").version) == v2["version"]
    assert read_history(hist, cfg.name)[-1]["why"] == "rollback: latency regression"
    with pytest.raises(ValueError, match="already the champion"):
        rollback(client, hist, cfg.name, v1["version"], by="oncall", why="again")
