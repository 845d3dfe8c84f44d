"""`{% honesty_warning prediction %}`: the banner of what a result recorded about its version when
it was made (not evaluated, not validated, outside what it was evaluated on), in the words of its
honesty statement. The untrained banner is the page's own."""

from django import template

register = template.Library()

TITLES = {
    "not_evaluated": "NOT EVALUATED model",
    "not_validated": "NOT VALIDATED model",
    "evaluated": "Outside what this version was evaluated on",
    "untrained": "Outside what this version was evaluated on",
}


@register.inclusion_tag("registry/_honesty_warning.html")
def honesty_warning(prediction):
    honesty = prediction.honesty
    warning = honesty.get("statement")
    if honesty["state"] == "untrained" and not honesty.get("outside"):
        warning = None
    return {
        "warning": warning,
        "title": TITLES.get(honesty["state"], "Warning"),
        "state": honesty["state"],
        "version": prediction.model,
    }
