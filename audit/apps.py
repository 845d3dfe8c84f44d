from django.apps import AppConfig
from django.db.models.signals import post_migrate


class AuditConfig(AppConfig):
    name = "audit"
    verbose_name = "Audit log"

    def ready(self):
        from common.db_roles import app_role_grant

        # After `migrate --database owner`: the application's role may only read and append the log.
        post_migrate.connect(app_role_grant, sender=self, dispatch_uid="lungsite-app-role-grant")
