"""`{% honesty_statement prediction %}`: the statement every screen showing a result carries
(audit.honesty), as one alert."""

from django import template

from audit.honesty import prediction_honesty

register = template.Library()


@register.inclusion_tag("audit/_honesty.html")
def honesty_statement(prediction, compact=False):
    return {"honesty": prediction_honesty(prediction), "compact": compact}
