"""Least privilege for the applications' and the operators' roles (``automl-db grant``).

Three kinds of role touch the database:

- the **owner** (the migrator, ``automl-db up``): owns the schema, runs the
  migrations, the seed and ``verify --repair``; may do anything, and is the only
  role that may write an adjustment directly;
- the **applications' role** (``automl-db grant ROLE``), the API's and the
  workers', owning nothing, gets exactly:

  - USAGE on schema ``public`` (no CREATE);
  - SELECT, INSERT, UPDATE, DELETE on every table, except:

    - ``credit_transactions``: SELECT and INSERT only (the ledger is append-only;
      the triggers refuse UPDATE, DELETE and TRUNCATE for anyone, a purchase
      without package or payment (ML020) and any adjustment (ML021) from this role);
    - ``users``: SELECT; INSERT and UPDATE of every column but the derived ones
      (``credit_balance``, the counters, ``storage_used_bytes``) and ``tier``, and
      UPDATE of neither ``id`` nor ``created_at``; no DELETE (purge leaves
      tombstones);
    - ``model_downloads``: SELECT and INSERT only (append-only: the triggers refuse
      UPDATE, DELETE and TRUNCATE for anyone, ML062);
    - ``model_versions``: SELECT, DELETE, INSERT and UPDATE of every column but
      ``download_count`` (kept by a trigger from the downloads; ML063 refuses a
      direct write from anyone), and UPDATE of neither ``id`` nor ``created_at``;
    - ``models``: SELECT, DELETE, INSERT and UPDATE of every column but
      ``is_deployed`` (kept by a trigger from the active deployments; ML080 refuses
      a direct write from anyone), and UPDATE of neither ``id`` nor ``created_at``;
    - ``reconciliation_runs`` and ``reconciliation_adjustments``: SELECT and INSERT
      (the worker's daily verify is recorded, never rewritten);
    - ``credit_packages``, ``price_books``, ``price_items``, ``derived_repairs`` and
      ``alembic_version``: SELECT only (prices are an operator's act);
    - ``audit_events``: SELECT only (the audit trail is written by the triggers and
      by ``public.audit_record``; its partitions get no grant at all: a query goes
      through the parent, whose privileges apply);
    - ``evaluation_row_results``: SELECT and INSERT only (written once by COPY; they
      leave with their run through the foreign key's cascade);

  - USAGE and SELECT on the sequences, if any;
    - ``inference_requests``, ``usage_events``, ``usage_charges``: SELECT and INSERT
      only (append-only: ML085, ML086); nothing on the partitions of
      ``inference_requests`` (clients go through the parent, whose privileges apply);

  - no TRUNCATE, REFERENCES or TRIGGER anywhere, and EXECUTE on no function of the
    schema (EXECUTE is revoked from PUBLIC on all of them) but ``APP_FUNCTIONS``
    (identity: the actor check, an admin's change of tier and credit adjustment;
    metering: the request log's partitions and the admission of a prediction; audit:
    ``audit_record``, ``audit_events_ensure_partitions``, ``audit_redact_user``);
  - ``users``: no INSERT of ``role``, ``is_active`` or the ``can_*`` permissions (a
    new account has the defaults); their UPDATE is checked by a trigger (ML100-ML102);

- an **operator's role** (``automl-db grant --operator ROLE``), for the people who
  sell credits and set tiers: SELECT on every table (so ``automl-db verify`` runs
  as it), INSERT, UPDATE and DELETE on ``credit_packages``, ``price_books`` and
  ``price_items`` (``automl-db prices set``), INSERT on ``reconciliation_runs`` and
  ``reconciliation_adjustments`` (its verify is recorded), UPDATE of ``users.tier``
  (which also lets it lock a user's row), and EXECUTE on ``public.credit_adjust``,
  its one way to move credits (an adjustment, with an actor and a reason). Nothing
  else: it does not charge, buy, upload or repair.

The trigger functions still maintain the derived columns: they are SECURITY
DEFINER with a pinned ``search_path`` and run as the schema owner; a trigger fires
whatever the privileges of the statement's role. As neither role owns a table, it
cannot ``ALTER TABLE ... DISABLE TRIGGER``; as it is no superuser, it cannot set
``session_replication_role`` either.

``grant`` is idempotent and exact: it first revokes everything the role holds in
the schema, then grants the list above (so granting a role as an operator takes
the applications' privileges away, and the reverse). Give the apps and the
operators different roles. Run it again after a migration adds a table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.engine import Connection

from database import errors
from database.models.user import DERIVED_COLUMNS, PRIVILEGE_COLUMNS

APPEND_ONLY = {
    "credit_transactions": "SELECT, INSERT",
    "model_downloads": "SELECT, INSERT",
    # Metering (database.metering): the request log and usage are append-only.
    "inference_requests": "SELECT, INSERT",
    "usage_events": "SELECT, INSERT",
    "usage_charges": "SELECT, INSERT",
    # A verify (the worker's daily one) is recorded, never rewritten.
    "reconciliation_runs": "SELECT, INSERT",
    "reconciliation_adjustments": "SELECT, INSERT",
    # Written once by COPY, removed with their run (the foreign key's cascade runs as
    # the owner): the apps never UPDATE or DELETE a row (ML117 refuses UPDATE).
    "evaluation_row_results": "SELECT, INSERT",
}
#: Tables written column by column: (columns not insertable, columns not updatable).
#: users is handled apart (no DELETE); these keep DELETE.
COLUMN_LIMITED = {
    # is_deployed follows the active deployments (sql/triggers/deployments.sql, ML080).
    "models": (
        frozenset({"is_deployed"}),
        frozenset({"is_deployed", "id", "created_at"}),
    ),
    "model_versions": (
        frozenset({"download_count"}),
        frozenset({"download_count", "id", "created_at"}),
    ),
}
READ_ONLY = frozenset(
    {
        "derived_repairs",
        "alembic_version",
        "credit_packages",
        "price_books",
        "price_items",
        "audit_events",
    }
)
#: users columns only an operator changes.
OPERATOR_USER_COLUMNS = frozenset({"tier"})
#: users columns the apps' role may UPDATE but not INSERT: a new account has the
#: defaults (role user, active, every permission); a change is an admin's, checked by
#: sql/triggers/identity.sql (ML100-ML102).
USERS_NOT_INSERTABLE = frozenset({*DERIVED_COLUMNS, *OPERATOR_USER_COLUMNS, *PRIVILEGE_COLUMNS})
USERS_NOT_UPDATABLE = frozenset({*DERIVED_COLUMNS, *OPERATOR_USER_COLUMNS, "id", "created_at"})
#: What an operator may write (on top of SELECT everywhere).
OPERATOR_TABLES = {
    "credit_packages": "INSERT, UPDATE, DELETE",
    # Prices are an operator's act (automl-db prices set): a new book.
    "price_books": "INSERT, UPDATE, DELETE",
    "price_items": "INSERT, UPDATE, DELETE",
    # automl-db verify, run as an operator, is recorded.
    "reconciliation_runs": "INSERT",
    "reconciliation_adjustments": "INSERT",
}
OPERATOR_FUNCTIONS = (
    "public.credit_adjust(uuid, integer, text, text, text)",
    # Run by the users guard trigger as the statement's role (a change of tier), and
    # the actor's user field it reads (sql/triggers/audit.sql).
    "public.identity_check_actor(uuid, text)",
    "public.audit_actor_field(integer)",
    "public.audit_actor_field_of(text[], integer)",
)
#: What the apps' role may call: the actor check the users guard trigger runs as the
#: statement's role, and an admin's two acts whose columns or rows that role may not
#: write itself (each checks the actor is an admin; sql/triggers/identity.sql); the
#: request log's partitions, made ahead by the worker and on demand by the API, and
#: the admission of a prediction (SECURITY DEFINER; sql/triggers/metering.sql).
APP_FUNCTIONS = (
    "public.identity_check_actor(uuid, text)",
    # audit_actor_field's body calls audit_actor_field_of: the planner inlines both
    # only for a role that may EXECUTE each (and a call not inlined checks it too).
    "public.audit_actor_field(integer)",
    "public.audit_actor_field_of(text[], integer)",
    "public.admin_set_tier(uuid, user_tier)",
    "public.admin_credit_adjust(uuid, integer, text, text)",
    "public.inference_requests_partition_for(timestamptz)",
    "public.inference_requests_ensure_partitions(integer)",
    "public.usage_admit(uuid, uuid, uuid, bigint, bigint, text, integer)",
    # The price of a user's next metered unit (metering.unit_price_micro; what
    # usage_events_apply_price records), from the price book (sql/triggers/billing.sql).
    "public.billing_usage_price_micro(uuid, text)",
    "public.usage_hold(uuid, uuid, uuid, bigint, bigint, text, integer)",
    # A serving process's credit lease (database.metering.CreditLeases).
    "public.usage_lease(uuid, bigint, bigint, uuid, bigint, integer)",
    # The API's audit events (the trail's time and actor are the database's, so no
    # INSERT on audit_events), the workers' monthly partitions ahead, and the purge's
    # redaction of a purged user's IPs and user agents (it refuses anyone not purged,
    # ML107, and changes no other column).
    "public.audit_record(text, text, uuid, text, jsonb, uuid)",
    "public.audit_events_ensure_partitions(timestamp with time zone, integer)",
    "public.audit_redact_user(uuid)",
)


@dataclass
class GrantReport:
    role: str
    created: bool = False
    operator: bool = False
    statements: list[str] = field(default_factory=list)

    def render(self) -> str:
        kind = "operator" if self.operator else "apps"
        head = f"role {self.role} ({kind}{', created' if self.created else ''}):"
        return "\n".join([head, *(f"  {s};" for s in self.statements)])


def _quote(conn: Connection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote_identifier(name)


def _columns(conn: Connection, table: str) -> list[str]:
    return list(
        conn.execute(
            text(
                "SELECT a.attname FROM pg_attribute AS a"
                " WHERE a.attrelid = CAST(:t AS regclass) AND a.attnum > 0"
                " AND NOT a.attisdropped ORDER BY a.attnum"
            ),
            {"t": f"public.{table}"},
        ).scalars()
    )


def grant(
    conn: Connection, role: str, *, create: bool = False, operator: bool = False
) -> GrantReport:
    """Give ``role`` exactly what the applications need, or with ``operator`` what an
    operator needs (see the module doc).

    Runs in ``conn``'s transaction (the caller commits). Raises ``RoleNotFound``
    (unless ``create``: then the role is created with LOGIN and no password) and
    ``UnsafeRole`` for a superuser or a role that owns, or is a member of an owner
    of, anything in the schema.
    """
    report = GrantReport(role=role, operator=operator)
    row = conn.execute(
        text("SELECT rolsuper FROM pg_roles WHERE rolname = :r"), {"r": role}
    ).one_or_none()
    q = _quote(conn, role)

    def run(statement: str) -> None:
        conn.execute(text(statement))
        report.statements.append(statement)

    if row is None:
        if not create:
            raise errors.RoleNotFound(f"role {role} does not exist (pass --create to create it)")
        run(f"CREATE ROLE {q} LOGIN")
        report.created = True
    elif row.rolsuper:
        raise errors.UnsafeRole(f"role {role} is a superuser: give the apps a role of their own")
    owned = (
        conn.execute(
            text(
                "SELECT c.relname FROM pg_class AS c"
                " WHERE c.relnamespace = 'public'::regnamespace"
                "   AND c.relkind IN ('r', 'p', 'v', 'S')"
                "   AND pg_has_role(:r, c.relowner, 'MEMBER')"
                " UNION ALL SELECT 'schema public' FROM pg_namespace AS n"
                " WHERE n.nspname = 'public' AND pg_has_role(:r, n.nspowner, 'MEMBER')"
                " ORDER BY 1 LIMIT 3"
            ),
            {"r": role},
        )
        .scalars()
        .all()
    )
    if owned:
        raise errors.UnsafeRole(
            f"role {role} owns (or is a member of the owner of) {', '.join(owned)}: it could"
            " disable triggers; give the apps a role that owns nothing"
        )

    tables = list(
        conn.execute(
            text(
                "SELECT c.relname FROM pg_class AS c WHERE c.relnamespace = 'public'::regnamespace"
                " AND c.relkind IN ('r', 'p') AND NOT c.relispartition ORDER BY 1"
            )
        ).scalars()
    )
    user_columns = _columns(conn, "users")

    # Start from nothing, so a second run is exact too.
    run(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {q}")
    run(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {q}")
    run(f"REVOKE ALL ON ALL FUNCTIONS IN SCHEMA public FROM {q}")
    run(f"REVOKE CREATE ON SCHEMA public FROM {q}")
    # Functions are executable by PUBLIC when created: take that back on all of them
    # (users_apply_deltas and users_repair_derived are the ones callable directly).
    run("REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA public FROM PUBLIC")
    run(f"GRANT USAGE ON SCHEMA public TO {q}")

    if operator:
        for table in tables:
            t = f"public.{_quote(conn, table)}"
            extra = OPERATOR_TABLES.get(table)
            run(f"GRANT SELECT{', ' + extra if extra else ''} ON {t} TO {q}")
        columns = ", ".join(_quote(conn, c) for c in sorted(OPERATOR_USER_COLUMNS))
        run(f"GRANT UPDATE ({columns}) ON public.users TO {q}")
        for fn in OPERATOR_FUNCTIONS:
            if conn.execute(text("SELECT to_regprocedure(:f) IS NOT NULL"), {"f": fn}).scalar_one():
                run(f"GRANT EXECUTE ON FUNCTION {fn} TO {q}")
        return report

    for table in tables:
        t = f"public.{_quote(conn, table)}"
        if table == "users":
            insertable = ", ".join(
                _quote(conn, c) for c in user_columns if c not in USERS_NOT_INSERTABLE
            )
            updatable = ", ".join(
                _quote(conn, c) for c in user_columns if c not in USERS_NOT_UPDATABLE
            )
            run(f"GRANT SELECT ON {t} TO {q}")
            run(f"GRANT INSERT ({insertable}) ON {t} TO {q}")
            run(f"GRANT UPDATE ({updatable}) ON {t} TO {q}")
        elif table in COLUMN_LIMITED:
            not_insertable, not_updatable = COLUMN_LIMITED[table]
            names = _columns(conn, table)
            insertable = ", ".join(_quote(conn, c) for c in names if c not in not_insertable)
            updatable = ", ".join(_quote(conn, c) for c in names if c not in not_updatable)
            run(f"GRANT SELECT, DELETE ON {t} TO {q}")
            run(f"GRANT INSERT ({insertable}) ON {t} TO {q}")
            run(f"GRANT UPDATE ({updatable}) ON {t} TO {q}")
        elif table in APPEND_ONLY:
            run(f"GRANT {APPEND_ONLY[table]} ON {t} TO {q}")
        elif table in READ_ONLY:
            run(f"GRANT SELECT ON {t} TO {q}")
        else:
            run(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {t} TO {q}")
    run(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {q}")
    for fn in APP_FUNCTIONS:
        if conn.execute(text("SELECT to_regprocedure(:f) IS NOT NULL"), {"f": fn}).scalar_one():
            run(f"GRANT EXECUTE ON FUNCTION {fn} TO {q}")
    return report
