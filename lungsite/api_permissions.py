"""Role checks for the API: a Django permission per operation, never a group name (DESIGN.md)."""

from django.contrib.auth.models import Permission
from django.db.models import Q
from rest_framework.permissions import BasePermission

from lungsite.queries import CompiledQuery


def _granted(app_label: str, codename: str, user_id):
    """The permission, where it is granted to the user or to one of the user's groups."""
    return Permission.objects.filter(content_type__app_label=app_label, codename=codename).filter(
        Q(user=user_id) | Q(group__user=user_id)
    )


_GRANTED = CompiledQuery(_granted, str, str, int, exists=True)


def user_holds(user, perm: str) -> bool:
    """What Django's ModelBackend answers to `user.has_perm(perm)` ("app_label.codename"), in one
    query instead of two: an active superuser holds every permission; anyone else active holds it
    when it is granted to them or to one of their groups. The other backend in use (django-axes)
    grants none. Every API request runs this before anything else; on Supabase's pooler each
    query is a network round trip."""
    if not (user and user.is_authenticated and user.is_active):
        return False
    if user.is_superuser:
        return True
    app_label, _, codename = perm.partition(".")
    if type(user.pk) is int:  # the SQL compiled once (lungsite.queries): 0.04 ms instead of 0.6
        return _GRANTED.first_row(app_label, codename, user.pk) is not None
    return _granted(app_label, codename, user.pk).exists()


def has_perm(perm: str) -> type[BasePermission]:
    """A DRF permission class that lets through authenticated users holding `perm`.

    Anonymous callers fail it too, and DRF then answers 401 (not 403) because TokenAuthentication,
    listed first, offers a WWW-Authenticate challenge.
    """

    class HasPerm(BasePermission):
        message = "Your account does not have the permission this operation needs."

        def has_permission(self, request, view) -> bool:
            return user_holds(request.user, perm)

    HasPerm.__name__ = HasPerm.__qualname__ = f"HasPerm_{perm.replace('.', '_')}"
    return HasPerm
