"""Reads of the prediction log, with the visibility rules in one place: a user sees their own
predictions; auditors (audit.view_all_predictions) and superusers see every one."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING

from django.db import connections
from django.db.models import F, Func, JSONField, Q, QuerySet, Value
from django.utils import timezone

from audit.models import Prediction
from registry.models import DEFAULT_CLASS_NAMES, ModelVersion

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

# Ids are 64-bit: a larger number (from a URL or a filter) matches nothing instead of overflowing
# the database's integer.
_MAX_ID = 2**63 - 1


def prediction_list_for(*, user: AbstractBaseUser | AnonymousUser | None) -> QuerySet[Prediction]:
    queryset = Prediction.objects.select_related("model", "user")
    if user is None or not user.is_authenticated:
        return queryset.none()
    if user.has_perm("audit.view_all_predictions"):
        return queryset
    return queryset.filter(user=user)


def prediction_get_for(*, user: AbstractBaseUser | AnonymousUser | None, pk: int | str) -> Prediction:
    """The prediction if `user` may see it; Prediction.DoesNotExist otherwise (so callers answer
    404 and do not reveal that it exists)."""
    try:
        pk = int(pk)
    except (TypeError, ValueError):
        raise Prediction.DoesNotExist(f"No prediction {pk!r}.") from None
    if not 0 < pk <= _MAX_ID:
        raise Prediction.DoesNotExist(f"No prediction {pk!r}.")
    return prediction_list_for(user=user).get(pk=pk)


# The names of a row's positive findings, as jsonb; audit migration 0008 indexes this same
# expression with GIN on Postgres, so the filter's `@>` reads the index instead of every row.
_POSITIVE_NAMES_PATH = "$.findings[*] ? (@.positive == true).name"


def _positive_postgres(queryset: QuerySet[Prediction], finding: str) -> QuerySet[Prediction]:
    names = Func(
        F("results_json"),
        Func(Value(_POSITIVE_NAMES_PATH), template="%(expressions)s::jsonpath"),
        function="jsonb_path_query_array",
        output_field=JSONField(),
    )
    return queryset.alias(positive_names=names).filter(positive_names__contains=[finding])


def _day_start(day: date) -> datetime:
    """The first instant of `day` in TIME_ZONE: day filters become half-open created_at ranges,
    which the (created_at, id) index serves (created_at__date would read every row)."""
    return timezone.make_aware(datetime.combine(day, time.min))


def _positive(finding: str) -> Q | None:
    # Findings are stored in the model's output order, so a finding sits at the same index in every
    # row of one version: an index lookup works on SQLite and Postgres alike (JSON `contains` does
    # not exist on SQLite). The name is checked too, so a row never matches by position alone.
    condition = None
    for version_id, class_names in ModelVersion.objects.values_list("id", "class_names"):
        if finding not in (class_names or []):
            continue
        index = class_names.index(finding)
        one = Q(
            model_id=version_id,
            **{
                f"results_json__findings__{index}__name": finding,
                f"results_json__findings__{index}__positive": True,
            },
        )
        condition = one if condition is None else condition | one
    return condition


def predictions_owned_by(queryset: QuerySet[Prediction], *, user: AbstractBaseUser) -> QuerySet[Prediction]:
    """Only `user`'s own rows (the history page), whatever else `user` may see."""
    return queryset.filter(user=user).select_related("model", "user")


def predictions_filter(
    queryset: QuerySet[Prediction],
    *,
    date_from: date | None = None,
    date_to: date | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    user: str = "",
    model: ModelVersion | None = None,
    model_ref: str = "",
    finding: str = "",
) -> QuerySet[Prediction]:
    """The rows of `queryset` that pass every given filter. The audit page filters by day
    (`date_from`/`date_to`, inclusive, in TIME_ZONE) and by a version row (`model`); the API by
    instant (`created_after` inclusive, `created_before` exclusive) and by a version id or name
    (`model_ref`)."""
    if date_from:
        queryset = queryset.filter(created_at__gte=_day_start(date_from))
    if date_to and date_to < date.max:
        queryset = queryset.filter(created_at__lt=_day_start(date_to + timedelta(days=1)))
    if created_after is not None:
        queryset = queryset.filter(created_at__gte=created_after)
    if created_before is not None:
        queryset = queryset.filter(created_at__lt=created_before)
    if user:
        # The id first: then the (user, created_at, id) index serves the filter and the order.
        from django.contrib.auth import get_user_model

        user_ids = get_user_model().objects.filter(username=user.strip()).values_list("id", flat=True)
        queryset = queryset.filter(user_id__in=list(user_ids))
    if model:
        queryset = queryset.filter(model=model)
    model_ref = model_ref.strip()
    if model_ref:
        if not model_ref.isdecimal():  # not isdigit: int() refuses "²", which isdigit accepts
            # The id first, as for users: a join on the name would make Postgres read rows newest
            # first until it found the version's, instead of the (model, created_at, id) index.
            model_ids = ModelVersion.objects.filter(version_name=model_ref).values_list("id", flat=True)
            queryset = queryset.filter(model_id__in=list(model_ids))
        elif int(model_ref) <= _MAX_ID:
            queryset = queryset.filter(model_id=int(model_ref))
        else:
            queryset = queryset.none()
    if finding and connections[queryset.db].vendor == "postgresql":
        queryset = _positive_postgres(queryset, finding)
    elif finding:
        # SQLite has no JSON containment: the finding's place in each version's output order.
        positive = _positive(finding)
        queryset = queryset.filter(positive) if positive is not None else queryset.none()
    return queryset.select_related("model", "user")


def finding_names() -> list[str]:
    """Every finding any registered version reports, in first-seen order (the CSV columns)."""
    names: dict[str, None] = {}
    for class_names in ModelVersion.objects.order_by("id").values_list("class_names", flat=True):
        names.update(dict.fromkeys(class_names or []))
    return list(names) or list(DEFAULT_CLASS_NAMES)
