"""The local MLflow's authentication: MLflow's ``basic-auth`` app, its config ini and its three users.

* ``airloop-admin``: MLflow's administrator (users, permissions); for a person in the MLflow UI only.
* ``airloop-writer``: the Airflow tasks and the ``airloop models`` CLI (log runs, register versions, move
  aliases): a role that may create in the workspace and ``MANAGE`` every experiment and registered model;
  not an MLflow administrator (it cannot manage users or permissions).
* ``airloop-reader``: the model servers: a role that may ``READ`` every experiment and registered model and
  nothing else, so it loads a version but cannot register one, move an alias or create anything.

MLflow runs with workspaces on (``--enable-workspaces``, everything in the ``default`` workspace): without
them MLflow lets every authenticated user create experiments and models (and manage what it creates), so a
"read-only" user would not be. A user with no role in the workspace may do nothing.

The users are written straight into the auth database before MLflow starts (``python -m
airloop_local.mlflow_auth``, a process of its own because importing ``mlflow.server.auth`` reads the
config at import), so the MLflow process itself never sees a password: its environment holds the path of
the ini and its CSRF key, nothing else. Unauthenticated requests get 401; ``/health`` stays open.
"""

from __future__ import annotations

import configparser
import json
import sys
from pathlib import Path

ADMIN, WRITER, READER = "airloop-admin", "airloop-writer", "airloop-reader"
#: each user's role in MLflow's default workspace: (resource type, pattern, permission) grants
ROLES: dict[str, tuple[tuple[str, str, str], ...]] = {
    WRITER: (("workspace", "*", "USE"), ("experiment", "*", "MANAGE"), ("registered_model", "*", "MANAGE")),
    READER: (("experiment", "*", "READ"), ("registered_model", "*", "READ")),
}
#: the floor of a user's permission on a resource it has a grant for (a user without a role gets nothing)
DEFAULT_PERMISSION = "READ"


def write_ini(path: Path, database_uri: str) -> Path:
    """The ``MLFLOW_AUTH_CONFIG_PATH`` file (mode 600): no password in it (the users exist before MLflow
    starts, so MLflow never bootstraps one)."""
    cfg = configparser.ConfigParser(interpolation=None)
    cfg["mlflow"] = {
        "default_permission": DEFAULT_PERMISSION,
        "database_uri": database_uri,
        "admin_username": ADMIN,
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
        "grant_default_workspace_access": "false",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.touch(mode=0o600)
    tmp.chmod(0o600)
    with tmp.open("w") as fh:
        fh.write("# Written by airloop's local stack; MLflow's basic-auth app reads it (MLFLOW_AUTH_CONFIG_PATH).\n")
        cfg.write(fh)
    tmp.replace(path)
    return path


def ensure_users(passwords: dict[str, str]) -> list[str]:
    """Create the missing users, their roles and grants in the auth database the ini names; what is there is
    left as it is. Runs with ``MLFLOW_AUTH_CONFIG_PATH`` set; returns the users it created."""
    from mlflow.server.auth import auth_config
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore
    from mlflow.utils.workspace_utils import DEFAULT_WORKSPACE_NAME

    store = SqlAlchemyStore()
    store.init_db(auth_config.database_uri)
    created = []
    for name, is_admin in ((ADMIN, True), (WRITER, False), (READER, False)):
        if not store.has_user(name, use_primary=True):
            store.create_user(name, passwords[name], is_admin=is_admin)
            created.append(name)
    roles = {r.name: r for r in store.list_roles([DEFAULT_WORKSPACE_NAME])}
    for name, grants in ROLES.items():
        role = roles.get(name) or store.create_role(name, DEFAULT_WORKSPACE_NAME, f"airloop's {name}")
        have = {(p.resource_type, p.resource_pattern, p.permission) for p in store.list_role_permissions(role.id)}
        for grant in grants:
            if grant not in have:
                store.add_role_permission(role.id, *grant)
        user = store.get_user(name)
        if role.id not in {r.id for r in store.list_user_roles(user.id)}:
            store.assign_role_to_user(user.id, role.id)
    return created


def main(argv: list[str]) -> int:
    """``python -m airloop_local.mlflow_auth <credentials.json>``: the passwords are read from the file (mode
    600), never passed on a command line, which every local user can read."""
    creds = json.loads(Path(argv[0]).read_text())
    created = ensure_users({u: creds[u] for u in (ADMIN, WRITER, READER)})
    print(json.dumps({"created": created}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
