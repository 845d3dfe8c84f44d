"""Reads of the prediction log, with the visibility rules in one place: a user sees their own
predictions; auditors (audit.view_all_predictions) and superusers see every one."""

from django.db.models import QuerySet

from audit.models import Prediction


def prediction_list_for(*, user) -> QuerySet[Prediction]:
    queryset = Prediction.objects.select_related("model", "user")
    if user is None or not user.is_authenticated:
        return queryset.none()
    if user.has_perm("audit.view_all_predictions"):
        return queryset
    return queryset.filter(user=user)


def prediction_get_for(*, user, pk) -> Prediction:
    """The prediction if `user` may see it; Prediction.DoesNotExist otherwise (so callers answer
    404 and do not reveal that it exists)."""
    try:
        pk = int(pk)
    except (TypeError, ValueError):
        raise Prediction.DoesNotExist(f"No prediction {pk!r}.") from None
    return prediction_list_for(user=user).get(pk=pk)
