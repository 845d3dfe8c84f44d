"""registry.cache: one query per call, load once, swap and swap back without reloading, keep the
last good version when the new one cannot load (retrying within seconds) or gives non-finite
outputs, and stay consistent while another thread activates."""

import threading
from types import SimpleNamespace

import numpy as np
import pytest
from django.db import connection
from django.utils import timezone

from registry import cache
from registry.models import ModelVersion
from registry.services import model_version_activate
from tests.registry.conftest import corrupt_stored_weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def loads(monkeypatch):
    """The versions the cache loaded, in order (by version name)."""
    calls = []
    original = cache._load

    def counting(version):
        calls.append(version.version_name)
        return original(version)

    monkeypatch.setattr(cache, "_load", counting)
    return calls


@pytest.mark.django_db
def test_it_says_when_no_version_is_active():
    with pytest.raises(cache.NoActiveModel, match="No model version is active"):
        cache.get_active()


def test_it_loads_the_active_version_once_and_then_costs_one_query(
    starter_model, loads, django_assert_num_queries
):
    first = cache.get_active()
    assert first.version.pk == starter_model.pk and first.model.backend == "onnxruntime"
    with django_assert_num_queries(1):
        again = cache.get_active()
    assert again.model is first.model and again.version.pk == first.version.pk
    assert loads == [starter_model.version_name]


def test_it_reads_the_active_row_fresh_but_keeps_the_loaded_network(starter_model, loads):
    first = cache.get_active()
    starter_model.thresholds = {"Edema": 0.9}
    starter_model.save(update_fields=["thresholds"])
    again = cache.get_active()
    assert again.version.threshold_for("Edema") == 0.9
    assert again.model is first.model and len(loads) == 1


def test_it_swaps_and_swaps_back_without_reloading(starter_model, register, loads, django_assert_num_queries):
    first = cache.get_active()
    second_version = register("second")
    model_version_activate(version=second_version)

    second = cache.get_active()
    assert second.version.pk == second_version.pk
    assert second.model is not first.model
    # A request that started before the swap still holds its own model, untouched.
    assert first.version.pk == starter_model.pk
    assert first.version.serving_graph_sha256 != second.version.serving_graph_sha256

    model_version_activate(version=starter_model)
    with django_assert_num_queries(1):
        back = cache.get_active()
    assert back.model is first.model  # the previous version stayed loaded: no load, same object
    assert loads == [starter_model.version_name, "second"]
    assert set(cache.loaded_keys()) == {
        (starter_model.pk, starter_model.sha256),
        (second_version.pk, second_version.sha256),
    }


def test_it_keeps_two_versions_loaded_at_most(starter_model, register, loads):
    cache.get_active()
    for name in ("second", "third"):
        model_version_activate(version=register(name))
        cache.get_active()
    assert len(cache.loaded_keys()) == 2
    model_version_activate(version=starter_model)
    assert cache.get_active().version.pk == starter_model.pk
    assert loads == [starter_model.version_name, "second", "third", starter_model.version_name]


def test_it_keeps_serving_the_last_good_version_when_the_new_one_fails(
    starter_model, register, loads, caplog, monkeypatch
):
    good = cache.get_active()
    broken = register("broken-later")
    model_version_activate(version=broken)
    corrupt_stored_weights(broken)  # after activation: the file changed in storage

    with caplog.at_level("ERROR", logger="registry.cache"):
        serving = cache.get_active()
    assert serving.model is good.model
    assert serving.version.pk == starter_model.pk  # results are attributed to who really served
    assert "cannot load active model version" in caplog.text and "do not match their sha256" in caplog.text

    # The failure is remembered: the next requests do not retry the load each time.
    assert cache.get_active().model is good.model
    assert loads == [starter_model.version_name, "broken-later"]

    # After the retry delay it is tried again (still broken: still the good one serves).
    monkeypatch.setattr(cache, "RETRY_FIRST_S", 0.0)
    assert cache.get_active().version.pk == starter_model.pk
    assert loads == [starter_model.version_name, "broken-later", "broken-later"]


def test_it_retries_a_failed_load_after_a_short_backoff(starter_model, register, loads, monkeypatch):
    from registry.storage import weights_storage

    now = [1000.0]
    monkeypatch.setattr(cache, "time", SimpleNamespace(monotonic=lambda: now[0]))
    cache.get_active()
    new = register("new")
    model_version_activate(version=new)
    # Storage loses the new version's files after activation (an outage, a sync in progress).
    storage = weights_storage()
    kept = {}
    for path in (new.storage_path, new.serving_graph_path):
        with storage.open(path, "rb") as handle:
            kept[path] = handle.read()
        storage.delete(path)

    def serving_after(seconds: float) -> str:
        now[0] += seconds
        return cache.get_active().version.version_name

    assert serving_after(0) == starter_model.version_name  # the load failed: the last good serves
    assert serving_after(1.9) == starter_model.version_name and loads.count("new") == 1
    assert serving_after(0.2) == starter_model.version_name and loads.count("new") == 2  # 2 s
    assert serving_after(3.9) == starter_model.version_name and loads.count("new") == 2  # then 4 s
    for path, data in kept.items():  # storage is back
        with storage.open(path, "wb") as handle:
            handle.write(data)
    assert serving_after(0.2) == "new" and loads.count("new") == 3
    assert serving_after(0) == "new" and loads.count("new") == 3


def test_it_withdraws_a_version_whose_outputs_are_not_finite(starter_model, register, loads):
    good = cache.get_active()
    model_version_activate(version=register("second"))
    second = cache.get_active()
    assert second.version.version_name == "second"

    cache.model_withdraw(second, "NaN scores")
    for _ in range(2):  # the last good version serves, and the withdrawn one is not loaded again
        serving = cache.get_active()
        assert serving.version.pk == starter_model.pk and serving.model is good.model
    assert loads == [starter_model.version_name, "second"]

    cache.model_withdraw(serving, "NaN scores too")
    with pytest.raises(cache.NoActiveModel, match="NaN scores"):
        cache.get_active()


def test_it_serves_a_withdrawn_version_again_once_its_row_changes(starter_model, register, loads, client):
    serving = cache.get_active()
    cache.model_withdraw(serving, "NaN scores")
    assert cache.serving_state() == {"state": "withdrawn", "serving": None, "reason": "NaN scores"}
    health = client.get("/healthz")
    assert health.status_code == 503 and health.json()["checks"]["model"] == "withdrawn"
    assert "NaN scores" in health.json()["error"]["message"]
    with pytest.raises(cache.NoActiveModel, match="withdrawn"):
        cache.get_active()

    # Someone fixes it (here: activates it again, which stamps a new activation time).
    ModelVersion.objects.filter(pk=starter_model.pk).update(activated_at=timezone.now())
    assert cache.get_active().version.pk == starter_model.pk
    assert cache.serving_state()["state"] == "ok"
    assert client.get("/healthz").json()["checks"]["model"] == "ok"


def test_it_raises_when_nothing_loadable_was_ever_served(starter_model):
    corrupt_stored_weights(starter_model)
    with pytest.raises(cache.NoActiveModel, match="cannot be loaded"):
        cache.get_active()


def test_it_serves_the_stored_graph_and_falls_back_to_the_weights_when_it_is_damaged(starter_model, caplog):
    from engine.pipeline import predict
    from engine.serving import ServingRuntime

    served = cache.get_active().model
    assert isinstance(served, ServingRuntime)
    probe = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    expected = predict(served, probe).probabilities

    cache.clear()
    corrupt_stored_weights(starter_model, graph=True)
    with pytest.raises(cache.NoActiveModel):  # neither the graph nor the weights can be trusted
        cache.get_active()

    cache.clear()
    starter_model.refresh_from_db()
    from registry.storage import weights_storage
    from tests.conftest import starter_weights_bytes

    with open(weights_storage().path(starter_model.storage_path), "wb") as handle:
        handle.write(starter_weights_bytes())  # intact weights, damaged graph
    with caplog.at_level("ERROR", logger="registry.cache"):
        serving = cache.get_active()
    assert "serving graph" in caplog.text and "from its weights instead" in caplog.text
    np.testing.assert_allclose(predict(serving.model, probe).probabilities, expected, atol=1e-5)


@pytest.mark.django_db(transaction=True)
def test_it_serves_every_request_while_another_thread_activates(loads):
    from registry.models import DEFAULT_CLASS_NAMES
    from registry.services import model_version_register
    from tests.conftest import starter_weights_bytes
    from tests.registry.conftest import variant_weights_bytes

    one = model_version_register(
        data=starter_weights_bytes(), version_name="one", class_names=DEFAULT_CLASS_NAMES
    )
    two = model_version_register(
        data=variant_weights_bytes(2), version_name="two", class_names=DEFAULT_CLASS_NAMES
    )
    model_version_activate(version=one)
    cache.get_active()

    seen: list[tuple[int, int]] = []  # (version id, model object id)
    errors: list[BaseException] = []
    stop = threading.Event()

    def serve():
        try:
            while not stop.is_set():
                serving = cache.get_active()
                seen.append((serving.version.pk, id(serving.model)))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=serve) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        model_version_activate(version=two)
        deadline = threading.Event()
        for _ in range(200):  # until every thread has seen the new version
            if {pk for pk, _ in seen[-10:]} == {two.pk}:
                break
            deadline.wait(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)

    assert not errors, errors
    assert {pk for pk, _ in seen} <= {one.pk, two.pk}
    assert seen[-1][0] == two.pk
    # Each version maps to exactly one model object, and each was loaded exactly once.
    assert len({(pk, model) for pk, model in seen}) == len({pk for pk, _ in seen})
    assert sorted(loads) == ["one", "two"]
