"""The answer to a locked-out login: a page in the site's style that says for how long and how to get
back, with the 429 status django-axes gives it."""

from django.test import Client


def test_it_says_how_long_the_lock_lasts_and_links_back(settings, clinician):
    client = Client()
    for attempt in range(settings.AXES_FAILURE_LIMIT):
        response = client.post("/login/", {"username": "alice", "password": f"wrong-{attempt}"})
    assert response.status_code == 429
    html = response.content.decode()
    assert '<link rel="stylesheet" href="/static/css/lungsite.css">' in html
    assert "Too many failed logins for alice from this address." in html
    assert '<strong id="lockout-minutes">15 minutes</strong>' in html
    assert 'href="/login/"' in html and "Back to the login page" in html
    assert "axes_reset_username alice" in html
