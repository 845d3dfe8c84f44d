from django.apps import AppConfig


class WebConfig(AppConfig):
    """The pages and REST endpoints of single predictions: a door onto analysis.services."""

    name = "web"
    verbose_name = "Web pages and REST API"
