from django.apps import AppConfig


class LearningConfig(AppConfig):
    """Label tables, evaluation, training and shadow runs: how the registry gets better versions."""

    name = "learning"
    verbose_name = "Learning"
