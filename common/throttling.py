"""Per-user rate limit of predictions (scope "predictions")."""

import logging

from redis.exceptions import RedisError
from rest_framework.settings import api_settings
from rest_framework.throttling import UserRateThrottle

logger = logging.getLogger(__name__)


class PredictionRateThrottle(UserRateThrottle):
    """REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]["predictions"] (env LUNGSITE_PREDICTION_RATE, e.g.
    "600/minute"); an empty rate turns the limit off.

    DRF's throttles copy the rates once, at import; this one reads them on each request, so a change
    of settings (tests, a reload) takes effect. Counts live in Django's default cache: local memory
    (each worker process counts on its own) unless LUNGSITE_CACHE_URL names a Redis server, which
    all workers share.
    """

    scope = "predictions"

    def get_rate(self) -> str | None:
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope) or None

    def allow_request(self, request, view) -> bool:
        # A rate limit is not worth an outage: when the shared cache cannot be reached the request
        # goes through unthrottled, and the log says so.
        try:
            return super().allow_request(request, view)
        except (RedisError, OSError) as exc:
            logger.warning(
                "prediction throttle skipped: the cache is unavailable (%s: %s)", type(exc).__name__, exc
            )
            return True
