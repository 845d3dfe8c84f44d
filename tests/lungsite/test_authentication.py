"""lungsite.authentication: DRF's token authentication with the lookup compiled once answers every
case as DRF's own does: the holder, a wrong or revoked key, an inactive holder."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework import exceptions
from rest_framework.authentication import TokenAuthentication as DrfTokenAuthentication
from rest_framework.authtoken.models import Token
from rest_framework.test import APIRequestFactory

from lungsite.authentication import TokenAuthentication


def _authenticate(authenticator, key: str):
    request = APIRequestFactory().get("/api/v1/predictions/", HTTP_AUTHORIZATION=f"Token {key}")
    try:
        return authenticator.authenticate(request)
    except exceptions.AuthenticationFailed as exc:
        return str(exc.detail)


def test_it_is_the_apis_authentication(settings):
    first = settings.REST_FRAMEWORK["DEFAULT_AUTHENTICATION_CLASSES"][0]
    assert first == "lungsite.authentication.TokenAuthentication"


def test_it_answers_as_drf_does(clinician, other_clinician):
    token = Token.objects.create(user=clinician)
    other = Token.objects.create(user=other_clinician)
    ours, drf = TokenAuthentication(), DrfTokenAuthentication()

    user, auth = _authenticate(ours, token.key)
    assert user == clinician and user.username == clinician.username and auth.key == token.key
    assert auth.user == clinician
    assert _authenticate(ours, other.key)[0] == other_clinician
    for key in ("0" * 40, token.key[:-1], token.key + "x", "", "' OR 1=1 --"):
        assert _authenticate(ours, key) == _authenticate(drf, key), key
    # A revoked key stops working at once, an inactive holder is refused with DRF's message.
    token.delete()
    assert _authenticate(ours, token.key) == "Invalid token."
    other_clinician.is_active = False
    other_clinician.save()
    assert _authenticate(ours, other.key) == _authenticate(drf, other.key) == "User inactive or deleted."


def test_it_costs_one_query(clinician):
    token = Token.objects.create(user=clinician)
    authenticator = TokenAuthentication()
    _authenticate(authenticator, token.key)
    with CaptureQueriesContext(connection) as queries:
        user, _ = _authenticate(authenticator, token.key)
    assert user == clinician and len(queries) == 1


@pytest.mark.parametrize("header", ["Token", "Token a b", "Bearer abc"])
def test_malformed_headers_are_drfs_to_refuse(db, header):
    request = APIRequestFactory().get("/", HTTP_AUTHORIZATION=header)
    for authenticator in (TokenAuthentication(), DrfTokenAuthentication()):
        try:
            result = authenticator.authenticate(request)
        except exceptions.AuthenticationFailed:
            result = "refused"
        assert result in (None, "refused")
