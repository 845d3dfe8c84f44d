"""Hot swap under real load (docs/performance.md): gunicorn with 2 workers on the real
Postgres, 4 clients posting real X-rays for 30 s while a model admin activates two versions
alternately 20 times through the API. No request may fail; a request that started after an
activation returned (and ended before the next began) must be served by that version; every audit
row names the version its response named, and the audit chain verifies afterwards."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from dataclasses import dataclass

import pytest
from django.db import connection

from tests.conftest import shared_data_path
from tests.reliability import liveserver

CLIENTS = 4
ACTIVATIONS = 20
LOAD_SECONDS = 30.0
HARD_STOP_SECONDS = 100.0  # the loops end by then whatever happens (a slow, shared machine)
MAX_WAIT = 1.5  # longest extra pause between activations (see admin_loop)
IMAGES = ("00000075_000.png", "00000211_000.png", "00000284_000.png", "00000353_000.png")


@dataclass
class Call:
    started: float
    ended: float
    status: int  # 0: no HTTP answer
    model_id: int | None = None
    prediction_id: int | None = None
    detail: str = ""


@pytest.mark.slow
@pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="needs the real Postgres (DATABASE_URL=postgres://...; CI sets it): several gunicorn "
    "workers writing the audit log at once is what is under test",
)
@pytest.mark.django_db
def test_hot_swap_under_load_fails_nothing_and_attributes_every_result(tmp_path):
    import httpx
    import psycopg

    images = [shared_data_path("nih_reproduce_chexnet", "images", name).read_bytes() for name in IMAGES]
    weights = tmp_path / "second.pt"
    weights.write_bytes(liveserver.second_weights_bytes())

    with liveserver.scratch_database() as (params, name):
        url = liveserver.database_url(params, name)
        env = liveserver.site_env(url, tmp_path / "data", LUNGSITE_PREDICTION_RATE="100000/minute")
        site = liveserver.prepared_site(env, second_weights=weights)
        first, second = site["versions"]
        with liveserver.Gunicorn(env, workers=2, threads=2, log=tmp_path / "gunicorn.log") as server:
            server.wait_ready()
            clinician = {"Authorization": f"Token {site['alice_token']}"}
            admin = {"Authorization": f"Token {site['dave_token']}"}

            def predict(client: httpx.Client, image: bytes) -> Call:
                started = time.monotonic()
                try:
                    response = client.post(
                        "/api/v1/predictions/",
                        headers=clinician,
                        files={"image": ("xray.png", image, "image/png")},
                    )
                except httpx.HTTPError as exc:
                    return Call(started, time.monotonic(), 0, detail=repr(exc))
                ended = time.monotonic()
                if response.status_code != 201:
                    return Call(started, ended, response.status_code, detail=response.text[:300])
                body = response.json()
                return Call(started, ended, 201, body["model"]["id"], body["id"])

            # Warm up: both workers load the first version before the clock starts.
            warm: list[Call] = []
            with httpx.Client(base_url=server.url, timeout=120, trust_env=False) as client:
                threads = [
                    threading.Thread(target=lambda i=i: warm.append(predict(client, images[i])))
                    for i in range(CLIENTS)
                ]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join(timeout=120)
            assert [c.status for c in warm] == [201] * CLIENTS, (warm, server.log_tail())

            calls: list[Call] = []
            activations: list[tuple[float, float, int, int, str]] = []  # started, ended, target, status, body
            admin_done = threading.Event()
            t0 = time.monotonic()

            def client_loop(index: int) -> None:
                with httpx.Client(base_url=server.url, timeout=60, trust_env=False) as client:
                    n = 0
                    while n < 500 and time.monotonic() - t0 < HARD_STOP_SECONDS:
                        if admin_done.is_set() and time.monotonic() - t0 >= LOAD_SECONDS:
                            break
                        calls.append(predict(client, images[(index + n) % len(images)]))
                        n += 1

            def served_since(moment: float) -> bool:
                return any(call.started >= moment for call in list(calls))

            def admin_loop() -> None:
                spacing = (LOAD_SECONDS - 1.0) / ACTIVATIONS
                with httpx.Client(base_url=server.url, timeout=60, trust_env=False) as client:
                    for k in range(ACTIVATIONS):
                        delay = t0 + 0.5 + k * spacing - time.monotonic()
                        if delay > 0:
                            time.sleep(delay)
                        # On a slow machine a request outlasts the spacing; wait (a little) for one
                        # that started after the last activation returned, so that the attribution
                        # check below has requests to check.
                        if activations:
                            waited_from = time.monotonic()
                            while (
                                not served_since(activations[-1][1])
                                and time.monotonic() - waited_from < MAX_WAIT
                            ):
                                time.sleep(0.02)
                        if time.monotonic() - t0 > HARD_STOP_SECONDS:
                            break
                        target = second if k % 2 == 0 else first
                        started = time.monotonic()
                        try:
                            response = client.post(f"/api/v1/models/{target}/activate/", headers=admin)
                            status, text = response.status_code, response.text[:300]
                        except httpx.HTTPError as exc:
                            status, text = 0, repr(exc)
                        activations.append((started, time.monotonic(), target, status, text))
                admin_done.set()

            workers = [threading.Thread(target=client_loop, args=(i,)) for i in range(CLIENTS)]
            workers.append(threading.Thread(target=admin_loop))
            for thread in workers:
                thread.start()
            for thread in workers:
                thread.join(timeout=HARD_STOP_SECONDS + 60)
            elapsed = time.monotonic() - t0
            log = server.log_tail()

        print(_summary(calls, activations, elapsed, first, second))
        # Every request that ran wholly between activation k returning and activation k+1 starting
        # was served by version k (before the first activation: the first version).
        windows = [(float("-inf"), activations[0][0] if activations else float("inf"), first)]
        windows += [
            (
                activations[k][1],
                activations[k + 1][0] if k + 1 < len(activations) else float("inf"),
                activations[k][2],
            )
            for k in range(len(activations))
        ]
        checked, wrong = 0, []
        for call in calls:
            for opened, closed, version in windows:
                if opened <= call.started and call.ended <= closed:
                    checked += 1
                    if call.model_id != version:
                        wrong.append((call, version))
        print(json.dumps({"checked_in_windows": checked, "wrong": len(wrong)}))
        failed = [c for c in calls if c.status != 201]
        assert failed == [], (failed[:5], log)
        assert [a[3] for a in activations] == [200] * ACTIVATIONS, (
            [a for a in activations if a[3] != 200][:3],
            log,
        )

        assert wrong == [], wrong[:5]
        assert checked >= CLIENTS, f"only {checked} requests fell wholly inside an activation window"
        served = {c.model_id for c in calls}
        assert served == {first, second}, served

        # Every audit row names the version its response named.
        responses = {c.prediction_id: c.model_id for c in calls + warm}
        with psycopg.connect(**dict(params, dbname=name, connect_timeout=5)) as conn:
            rows = dict(conn.execute("SELECT id, model_id FROM predictions").fetchall())
            recorded = dict(
                conn.execute("SELECT id, (results_json->'model'->>'id')::int FROM predictions").fetchall()
            )
        assert rows == responses
        assert recorded == responses

        # Two processes wrote the log concurrently; the chain must still be one unbroken line.
        done = subprocess.run(
            [liveserver.PYTHON, "manage.py", "verify_audit"],
            cwd=liveserver.ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        report = json.loads(done.stdout.strip().splitlines()[-1])
        assert done.returncode == 0 and report["ok"], (report, done.stderr[-2000:])
        assert report["rows"] == len(responses)


def _summary(calls: list[Call], activations: list, elapsed: float, first: int, second: int) -> str:
    latencies = sorted(c.ended - c.started for c in calls) or [0.0]
    switch = sorted(a[1] - a[0] for a in activations) or [0.0]
    return json.dumps(
        {
            "requests": len(calls),
            "seconds": round(elapsed, 1),
            "per_second": round(len(calls) / elapsed, 2),
            "latency_median_s": round(latencies[len(latencies) // 2], 3),
            "latency_max_s": round(latencies[-1], 3),
            "activations": len(activations),
            "activation_median_s": round(switch[len(switch) // 2], 3),
            "activation_max_s": round(switch[-1], 3),
            "served_by": {v: sum(c.model_id == v for c in calls) for v in (first, second)},
        }
    )
