"""`{% honesty_warning prediction %}`: the "not evaluated" banner of a result made by a version that
had no measured evaluation then (the untrained banner is the page's own)."""

from django import template

register = template.Library()


@register.inclusion_tag("registry/_honesty_warning.html")
def honesty_warning(prediction):
    from registry.models import UNTRAINED_WARNING

    warning = prediction.model.honesty_warning(at=prediction.created_at)
    return {"warning": None if warning == UNTRAINED_WARNING else warning, "version": prediction.model}
