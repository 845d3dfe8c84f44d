"""Per-user rate limit of predictions (scope "predictions")."""

from rest_framework.settings import api_settings
from rest_framework.throttling import UserRateThrottle


class PredictionRateThrottle(UserRateThrottle):
    """REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]["predictions"] (env LUNGSITE_PREDICTION_RATE, e.g.
    "600/minute"); an empty rate turns the limit off.

    DRF's throttles copy the rates once, at import; this one reads them on each request, so a change
    of settings (tests, a reload) takes effect. Counts live in Django's default cache, so with the
    default local-memory cache each worker process counts on its own.
    """

    scope = "predictions"

    def get_rate(self) -> str | None:
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope) or None
