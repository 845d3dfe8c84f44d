"""Role checks for the API: a Django permission per operation, never a group name (README: roles)."""

from rest_framework.permissions import BasePermission


def has_perm(perm: str) -> type[BasePermission]:
    """A DRF permission class that lets through users for whom `user.has_perm(perm)` holds
    ("app_label.codename"; active superusers hold every permission, inactive users none).

    Anonymous callers fail it too, and DRF then answers 401 (not 403) because TokenAuthentication,
    listed first, offers a WWW-Authenticate challenge.
    """

    class HasPerm(BasePermission):
        message = "Your account does not have the permission this operation needs."

        def has_permission(self, request, view) -> bool:
            return request.user.has_perm(perm)

    HasPerm.__name__ = HasPerm.__qualname__ = f"HasPerm_{perm.replace('.', '_')}"
    return HasPerm
