"""Issue 17, the audit trail: audit_events written by triggers with the actor of the
transaction-local settings, append-only for every client, partitioned by month,
and the purge's redaction of a purged user's IP addresses and user agents."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import threading
import uuid
from typing import Any

import pytest
from sqlalchemy import Engine, bindparam, create_engine, event, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from database import audit, errors, lifecycle
from database.models import APIKey, AuditEvent

from factories import make_user, scalar, unique


# --- helpers --------------------------------------------------------------------------
def make_key(db: Any, user_id: uuid.UUID, **cols: Any) -> uuid.UUID:
    secret = unique("key")
    cols.setdefault("name", "k")
    cols.setdefault("prefix", "aml_" + secret[:8])
    cols.setdefault("key_hash", hashlib.sha256(secret.encode()).hexdigest())
    cols.setdefault("scopes", ["read"])
    keys = ", ".join(cols)
    values = ", ".join(f":{k}" for k in cols)
    rows = db(
        f"INSERT INTO api_keys (user_id, {keys}) VALUES (:user_id, {values}) RETURNING id",
        user_id=user_id,
        **cols,
    )
    return rows[0][0]


def events(sql: Any, **where: Any) -> list[Any]:
    cond = " AND ".join(f"{k} = :{k}" for k in where) or "true"
    return sql(f"SELECT * FROM audit_events WHERE {cond} ORDER BY occurred_at, id", **where)


def actions(sql: Any, entity_id: uuid.UUID) -> list[str]:
    return [e.action for e in events(sql, entity_id=entity_id)]


FIELDS = ("actor_user_id", "actor_api_key_id", "actor_session_id", "request_id", "client_ip")


def with_actor(engine: Engine, statements: list[str], **fields: str) -> None:
    """Run ``statements`` in one transaction whose ``automl.actor`` setting has
    ``fields`` (raw SQL: the format written out, not database.audit's)."""
    value = " ".join(fields.get(n, "") for n in FIELDS) + " " + fields.get("user_agent", "")
    with engine.begin() as conn:
        conn.execute(text("SELECT set_config('automl.actor', :v, true)"), {"v": value})
        for statement in statements:
            conn.execute(text(statement))


def run_as(eng: Engine, statement: str, **params: Any) -> list[Any]:
    with eng.begin() as conn:
        result = conn.execute(text(statement), params)
        return list(result) if result.returns_rows else []


# =====================================================================================
# the actor
# =====================================================================================
def test_raw_sql_changes_of_keys_are_audited_with_the_transactions_actor(sql, engine):
    user_id = make_user(sql)
    other = make_user(sql)
    key_id = make_key(sql, user_id)  # no actor set: audited with a NULL actor
    request = "req-" + uuid.uuid4().hex
    with_actor(
        engine,
        [f"UPDATE api_keys SET revoked_at = now() WHERE id = '{key_id}'"],
        actor_user_id=str(other),
        actor_api_key_id=str(key_id),
        request_id=request,
        client_ip="203.0.113.7",
        user_agent="curl/8.0",
    )
    created, revoked = events(sql, entity_id=key_id)
    assert (created.action, created.actor_user_id, created.client_ip) == (
        "api_key.created",
        None,
        None,
    )
    assert created.subject_user_id == user_id and created.entity_type == "api_key"
    assert created.detail["name"] == "k" and created.detail["scopes"] == ["read"]
    assert revoked.action == "api_key.revoked"
    assert (revoked.actor_user_id, revoked.actor_api_key_id) == (other, key_id)
    assert (revoked.request_id, str(revoked.client_ip), revoked.user_agent) == (
        request,
        "203.0.113.7",
        "curl/8.0",
    )
    assert revoked.db_role == "postgres" and revoked.outcome == "success"
    assert revoked.detail["column"] == "revoked_at" and revoked.detail["old"] is None
    # The settings were the transaction's: the next one has no actor.
    sql(f"UPDATE api_keys SET revoked_at = NULL WHERE id = '{key_id}'")
    assert events(sql, entity_id=key_id)[-1].action == "api_key.unrevoked"
    assert events(sql, entity_id=key_id)[-1].actor_user_id is None


def test_the_apps_role_is_audited_the_same_way(sql, app_engine):
    user_id = make_user(sql)
    key_id = make_key(sql, user_id)
    with app_engine.begin() as conn:
        audit.set_actor(conn, user_id=user_id, api_key_id=key_id, client_ip="::1")
        conn.execute(
            text("UPDATE api_keys SET scopes = '{read,write}' WHERE id = :k"), {"k": key_id}
        )
        conn.execute(text("DELETE FROM api_keys WHERE id = :k"), {"k": key_id})
    changed, deleted = events(sql, entity_id=key_id)[1:]
    assert changed.action == "api_key.scopes_changed"
    assert changed.detail == {"column": "scopes", "old": ["read"], "new": ["read", "write"]}
    assert deleted.action == "api_key.deleted"
    assert {e.actor_user_id for e in (changed, deleted)} == {user_id}
    assert {str(e.client_ip) for e in (changed, deleted)} == {"::1"}
    assert changed.db_role.startswith("app_")


def test_what_does_not_matter_is_not_audited(sql):
    user_id = make_user(sql)
    key_id = make_key(sql, user_id)
    before = scalar(sql, "SELECT count(*) FROM audit_events")
    sql("UPDATE api_keys SET last_used_at = now(), name = 'renamed' WHERE id = :k", k=key_id)
    sql("UPDATE users SET full_name = 'Ada', email_verified = true WHERE id = :u", u=user_id)
    sql("UPDATE api_keys SET revoked_at = NULL WHERE id = :k", k=key_id)  # no change
    assert scalar(sql, "SELECT count(*) FROM audit_events") == before


def test_set_actor_on_a_session_holds_across_its_transactions(session, sql):
    user_id = make_user(sql)
    audit.set_actor(session, user_id=user_id, request_id="r-1", user_agent="ua\x00\x07x" * 300)
    assert audit.actor_settings(session)["user_id"] == str(user_id)
    key = APIKey(
        user_id=user_id, name="a", prefix="aml_abcdefgh", key_hash="a" * 64, scopes=["read"]
    )
    session.add(key)
    session.commit()
    # A new transaction of the same session: the actor is set again.
    key.revoked_at = dt.datetime.now(dt.UTC)
    session.commit()
    rows = events(sql, entity_id=key.id)
    assert [r.action for r in rows] == ["api_key.created", "api_key.revoked"]
    assert {r.actor_user_id for r in rows} == {user_id}
    assert {r.request_id for r in rows} == {"r-1"}
    assert all(len(r.user_agent) == 512 and "\x00" not in r.user_agent for r in rows)
    audit.clear_actor(session)
    session.commit()
    assert audit.actor_settings(session)["user_id"] is None
    with pytest.raises(ValueError, match="request_id"):
        audit.set_actor(session, request_id="bad id with spaces")
    with pytest.raises(ValueError, match="user_id"):
        audit.set_actor(session, user_id="not-a-uuid")
    # A junk client IP (a proxy's) is dropped, not stored.
    assert audit.set_actor(session, client_ip="999.1.1.1, evil").client_ip is None


def test_a_malformed_actor_setting_refuses_the_change(sql, engine):
    user_id = make_user(sql)
    for setting, value in [
        ("actor_user_id", "root"),
        ("actor_api_key_id", "1 OR 1=1"),
        ("client_ip", "not an ip"),
    ]:
        with pytest.raises(errors.InvalidAuditActor) as info:
            with_actor(
                engine,
                [
                    f"INSERT INTO api_keys (user_id, name, prefix, key_hash) VALUES ('{user_id}',"
                    f" 'x', 'aml_x', '{'b' * 64}')"
                ],
                **{setting: value},
            )
        assert info.value.sqlstate == "ML106"
        assert (info.value.setting, info.value.field) == ("automl.actor", setting)
    assert scalar(sql, "SELECT count(*) FROM api_keys WHERE user_id = :u", u=user_id) == 0


@pytest.mark.parametrize(
    "field", ["actor_user_id", "actor_api_key_id", "actor_session_id", "client_ip"]
)
def test_a_malformed_field_is_refused_on_every_insert_of_a_session(sql, db_url, field):
    """audit_row_inserted reads the setting in its INSERT's own subquery
    (c17f00000001): in one connection (PL/pgSQL plans the statement with its values
    five times, then once for all), every insert with a malformed field is ML106,
    never the cast's 22P02, and a well-formed one between them is written."""
    user_id = make_user(sql)
    eng = errors.install(create_engine(db_url, pool_size=1))
    insert = text(
        "INSERT INTO api_keys (user_id, name, prefix, key_hash) VALUES (:u, 'x', 'aml_x', :h)"
    )
    bad = {"actor_user_id": "root", "actor_api_key_id": "1 OR 1=1", "client_ip": "not-an-ip"}
    bad["actor_session_id"] = "{" + "a" * 32  # one brace: not a UUID
    try:
        with eng.connect() as conn:
            for attempt in range(8):
                fields = {n: "" for n in FIELDS}
                fields[field] = bad[field]
                value = " ".join(fields[n] for n in FIELDS) + " agent"
                with pytest.raises(errors.InvalidAuditActor) as info, conn.begin():
                    conn.execute(text("SELECT set_config('automl.actor', :v, true)"), {"v": value})
                    conn.execute(
                        insert,
                        {"u": user_id, "h": hashlib.sha256(unique("h").encode()).hexdigest()},
                    )
                assert info.value.sqlstate == "ML106", attempt
                assert info.value.field == field
                with conn.begin():
                    conn.execute(
                        text("SELECT set_config('automl.actor', :v, true)"), {"v": f"{user_id}"}
                    )
                    conn.execute(
                        insert,
                        {"u": user_id, "h": hashlib.sha256(unique("h").encode()).hexdigest()},
                    )
    finally:
        eng.dispose()
    rows = events(sql, subject_user_id=user_id, action="api_key.created")
    assert len(rows) == 8
    assert {r.actor_user_id for r in rows} == {user_id}


def test_the_insert_triggers_actor_costs_no_function_call(sql, engine):
    """The audit row of an insert reads its actor through the same inlined functions
    as the columns' defaults: the transaction calls the trigger and nothing of the
    actor's (pg_stat_xact_user_functions counts every call with track_functions)."""
    user_id = make_user(sql)
    key_id = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL track_functions = 'all'"))
        conn.execute(
            text("SELECT set_config('automl.actor', :v, true)"),
            {"v": f"{user_id} {key_id}  r-1 10.0.0.7 an agent"},
        )
        make_key(lambda q, **p: list(conn.execute(text(q), p)), user_id)
        called = {
            r[0] for r in conn.execute(text("SELECT funcname FROM pg_stat_xact_user_functions"))
        }
    assert "audit_row_inserted" in called
    assert not {f for f in called if f.startswith("audit_actor")}, called
    (row,) = events(sql, subject_user_id=user_id, action="api_key.created")
    assert (row.actor_user_id, row.actor_api_key_id, row.actor_session_id) == (
        user_id,
        key_id,
        None,
    )
    assert (row.request_id, str(row.client_ip), row.user_agent) == ("r-1", "10.0.0.7", "an agent")


def test_raw_sql_names_a_user_with_the_one_setting_and_agents_keep_their_spaces(sql, engine):
    user_id = make_user(sql)
    other = make_user(sql)
    session_id = uuid.uuid4()
    with engine.begin() as conn:
        # The user's field alone: the trailing fields are optional.
        conn.execute(text(f"SET LOCAL automl.actor = '{other}'"))
        key_id = make_key(lambda q, **p: list(conn.execute(text(q), p)), user_id)
    (created,) = events(sql, entity_id=key_id)
    assert created.actor_user_id == other
    assert (created.actor_api_key_id, created.request_id, created.client_ip) == (None, None, None)
    agent = "Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0"
    with_actor(
        engine,
        [f"UPDATE api_keys SET revoked_at = now() WHERE id = '{key_id}'"],
        actor_user_id=str(other),
        actor_session_id=str(session_id),
        request_id="req-7",
        client_ip="2001:db8::7",
        user_agent=agent,
    )
    revoked = events(sql, entity_id=key_id)[-1]
    assert (revoked.actor_user_id, revoked.actor_api_key_id) == (other, None)
    assert revoked.actor_session_id == session_id
    assert (revoked.request_id, str(revoked.client_ip), revoked.user_agent) == (
        "req-7",
        "2001:db8::7",
        agent,
    )


def test_select_as_actor_names_the_looked_up_row_in_one_statement(session, sql):
    user_id = make_user(sql)
    key_id = make_key(sql, user_id, key_hash="c" * 64)
    lookup = audit.actor_lookup(
        select(APIKey).where(APIKey.key_hash == bindparam("h")),
        user_id=APIKey.user_id,
        api_key_id=APIKey.id,
    )
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(args[2])

    event.listen(session.bind, "before_cursor_execute", count)
    try:
        row = audit.select_as_actor(
            session,
            lookup,
            {"h": "c" * 64},
            request_id="req-1",
            client_ip=" 10.0.0.1 ",
            user_agent="a b\x00c",
        )
    finally:
        event.remove(session.bind, "before_cursor_execute", count)
    assert row is not None and row[0].id == key_id
    assert len(statements) == 1 and "set_config" in statements[0]
    expected = {
        "user_id": str(user_id),
        "api_key_id": str(key_id),
        "session_id": None,
        "request_id": "req-1",
        "client_ip": "10.0.0.1",
        "user_agent": "a bc",
    }
    assert audit.actor_settings(session) == expected
    session.commit()
    # The session's next transaction names the same actor again.
    assert audit.actor_settings(session) == expected
    assert audit.select_as_actor(session, lookup, {"h": "d" * 64}) is None
    with pytest.raises(ValueError, match="request_id"):
        audit.select_as_actor(session, lookup, {"h": "c" * 64}, request_id="two words")


@pytest.mark.parametrize("how", ["select_as_actor", "set_actor", "after_begin"])
def test_a_session_that_named_an_actor_is_freed_without_the_garbage_collector(engine, sql, how):
    """The session remembers which transaction has its actor set weakly: a strong
    reference from its own ``info`` made each session a reference cycle (its
    transaction refers to it), left to Python's cyclic garbage collector, whose runs
    cost the API more per request than the audit row (docs/performance.md, "What
    c17f00000001 changed"). With the collector off, closing and dropping the session
    frees it."""
    import gc
    import weakref

    user_id = make_user(sql)
    make_key(sql, user_id, key_hash="f" * 64)
    lookup = audit.actor_lookup(
        select(APIKey).where(APIKey.key_hash == bindparam("h")),
        user_id=APIKey.user_id,
        api_key_id=APIKey.id,
    )
    gc.collect()
    gc.disable()
    try:
        session = Session(engine)
        if how == "select_as_actor":
            assert audit.select_as_actor(session, lookup, {"h": "f" * 64}) is not None
        else:
            audit.set_actor(session, user_id=user_id, request_id="r-gc")
            if how == "set_actor":  # in a transaction already: set at once
                session.execute(text("SELECT 1"))
                audit.set_actor(session, user_id=user_id, request_id="r-gc")
            else:  # outside one: the after_begin listener sets it
                session.execute(text("SELECT 1"))
        assert audit.actor_settings(session)["user_id"] == str(user_id)
        session.commit()
        session.close()
        gone = weakref.ref(session)
        del session
        assert gone() is None
    finally:
        gc.enable()


def test_the_actor_columns_cost_no_function_call(engine):
    """The defaults' SQL functions are inlined into the audit row's INSERT: a row pays
    for no function call to read its actor (docs/audit.md, "Cost")."""
    with engine.begin() as conn:
        plan = "\n".join(
            r[0]
            for r in conn.execute(
                text(
                    "EXPLAIN (VERBOSE, COSTS OFF)"
                    " INSERT INTO audit_events (action, entity_type) VALUES ('a.b', 'x')"
                )
            )
        )
    assert "current_setting('automl.actor'" in plan
    for name in ("audit_actor_field", "audit_actor_uuid", "audit_actor_inet"):
        assert name not in plan, plan  # nor their _of helpers (same prefixes)


def test_the_actors_text_fields_are_cut_to_their_lengths_without_a_check(sql, engine):
    """audit_events has no CHECK of its own (c17e00000001): the request id and the
    user agent are cut where the setting is read, on every path of a row."""
    user_id = make_user(sql)
    with_actor(
        engine,
        [
            f"INSERT INTO api_keys (user_id, name, prefix, key_hash) VALUES ('{user_id}',"
            f" 'long', 'aml_long', '{'e' * 64}')"
        ],
        actor_user_id=str(user_id),
        request_id="r" * 1000,
        user_agent="agent with spaces " * 100,
    )
    (row,) = events(sql, subject_user_id=user_id, action="api_key.created")
    assert row.request_id == "r" * 200
    assert row.user_agent == ("agent with spaces " * 100)[:512]
    assert row.actor_user_id == user_id


def test_the_triggers_actions_and_entity_types_have_the_events_shape(sql):
    """The rule audit_events' checks kept before c17e00000001, for the triggers'
    constants: every audit trigger's entity type and action (audit_record checks the
    API's own, ML108)."""
    rows = sql(
        "SELECT t.tgname, t.tgargs FROM pg_trigger AS t JOIN pg_proc AS p ON p.oid = t.tgfoid"
        " WHERE p.proname IN ('audit_row_inserted', 'audit_rows', 'audit_changes')"
        " AND NOT t.tgisinternal AND t.tgparentid = 0"
    )
    assert len(rows) >= 14
    for name, raw in rows:
        args = bytes(raw).decode().split("\x00")[:-1]
        entity_type, actions = args[0], args[3:4]
        if name.endswith("_update"):  # audit_changes: '[~]column=action[/action]'
            actions = [a for spec in args[3:] for a in spec.split("=", 1)[1].split("/")]
        assert len(entity_type) <= 50 and re.fullmatch(r"[a-z][a-z_]*", entity_type), name
        for action in actions:
            assert len(action) <= 100, name
            assert re.fullmatch(r"[a-z][a-z_]*(\.[a-z][a-z_]*)+", action), (name, action)


@pytest.mark.parametrize("columns", [0, 1, 2, 3, 4, 5])
def test_the_detail_is_the_same_object_whatever_its_number_of_columns(sql, columns):
    """audit_row_inserted builds the detail in one expression per number of columns
    that a trigger uses (IF branches: 0, 1, 3 and 4 columns) and in a loop for any
    other number: the same object either way."""
    names = ["a", "b", "c", "d", "e"][:columns]
    sql(
        "CREATE TABLE audit_probe (id uuid PRIMARY KEY DEFAULT gen_random_uuid(),"
        " user_id uuid, a int, b text, c int[], d jsonb, e boolean)"
    )
    try:
        extra = "".join(f", '{n}'" for n in names)
        sql(
            "CREATE TRIGGER audit_probe_insert AFTER INSERT ON audit_probe FOR EACH ROW"
            " EXECUTE FUNCTION public.audit_row_inserted('probe', 'id', 'user_id',"
            f" 'probe.created'{extra})"
        )
        user_id = uuid.uuid4()
        (probe_id,) = sql(
            "INSERT INTO audit_probe (user_id, a, b, c, d, e) VALUES"
            " (:u, 1, 'x', '{1,2}', '{\"k\": null}', NULL) RETURNING id",
            u=user_id,
        )[0]
        (row,) = events(sql, entity_id=probe_id)
        assert (row.action, row.entity_type, row.subject_user_id) == (
            "probe.created",
            "probe",
            user_id,
        )
        full = {"a": 1, "b": "x", "c": [1, 2], "d": {"k": None}, "e": None}
        assert row.detail == {n: full[n] for n in names}
    finally:
        sql("DROP TABLE audit_probe")


def test_users_deleted_restored_tier_and_email(sql, session):
    user_id = make_user(sql)
    lifecycle.soft_delete_user(session, user_id)
    lifecycle.restore_user(session, user_id)
    sql(
        "UPDATE users SET tier = 'pro', email = :e WHERE id = :u",
        u=user_id,
        e=f"{unique('n')}@x.io",
    )
    rows = events(sql, entity_id=user_id)
    assert [r.action for r in rows] == [
        "user.created",
        "user.deleted",
        "user.restored",
        "user.tier_changed",
        "user.email_changed",
    ]
    assert rows[3].detail == {"column": "tier", "old": "free", "new": "pro"}
    # The email's change is recorded, its values are not (personal data).
    assert rows[4].detail == {"column": "email"}
    assert {r.subject_user_id for r in rows} == {user_id}


def test_sharing_and_registered_models(sql):
    owner = make_user(sql)
    grantee = make_user(sql)
    model_id = sql(
        "INSERT INTO registered_models (user_id, name) VALUES (:u, 'm') RETURNING id", u=owner
    )[0][0]
    grant_sql = (
        "INSERT INTO registered_model_permissions (registered_model_id, user_id, permission,"
        " granted_by) VALUES (:m, :g, CAST(:p AS model_permission), :o)"
        " ON CONFLICT (registered_model_id, user_id) DO UPDATE SET permission = EXCLUDED.permission"
    )
    sql(grant_sql, m=model_id, g=grantee, p="read", o=owner)
    sql(grant_sql, m=model_id, g=grantee, p="download", o=owner)
    sql(grant_sql, m=model_id, g=grantee, p="download", o=owner)  # no change: no event
    sql("UPDATE registered_models SET visibility = 'public' WHERE id = :m", m=model_id)
    sql("UPDATE registered_models SET description = 'd' WHERE id = :m", m=model_id)
    sql("DELETE FROM registered_models WHERE id = :m", m=model_id)  # the grant cascades
    rows = events(sql, entity_id=model_id)
    # The cascade's event comes with the delete's (in the order the triggers fire).
    rows[3:] = sorted(rows[3:], key=lambda r: r.action != "permission.revoked")
    assert [r.action for r in rows] == [
        "permission.granted",
        "permission.changed",
        "registered_model.visibility_changed",
        "permission.revoked",
        "registered_model.deleted",
    ]
    granted, changed, visibility, revoked, deleted = rows
    assert granted.detail == {
        "user_id": str(grantee),
        "permission": "read",
        "granted_by": str(owner),
    }
    assert granted.subject_user_id == grantee and revoked.subject_user_id == grantee
    assert changed.detail == {"column": "permission", "old": "read", "new": "download"}
    assert visibility.detail == {"column": "visibility", "old": "private", "new": "public"}
    assert (visibility.subject_user_id, deleted.subject_user_id) == (owner, owner)
    assert deleted.detail == {"name": "m"}


def test_a_bulk_statement_writes_one_event_per_row(sql):
    user_id = make_user(sql)
    sql(
        "INSERT INTO api_keys (user_id, name, prefix, key_hash)"
        " SELECT :u, 'bulk', 'aml_' || i, md5(i::text) || md5((i + 1)::text)"
        " FROM generate_series(1, 300) AS i",
        u=user_id,
    )
    assert (
        scalar(
            sql,
            "SELECT count(*) FROM audit_events WHERE action = 'api_key.created'"
            " AND subject_user_id = :u",
            u=user_id,
        )
        == 300
    )
    sql("DELETE FROM api_keys WHERE user_id = :u", u=user_id)
    assert (
        scalar(
            sql,
            "SELECT count(*) FROM audit_events WHERE action = 'api_key.deleted'"
            " AND subject_user_id = :u",
            u=user_id,
        )
        == 300
    )


def test_a_huge_key_name_is_audited_without_its_detail(sql):
    user_id = make_user(sql)
    key_id = make_key(sql, user_id, name="n" * 10_000)
    (created,) = events(sql, entity_id=key_id)
    assert created.detail == {"truncated": True}


# =====================================================================================
# the API's own events
# =====================================================================================
def test_record_writes_with_the_actor_and_the_apps_role_may_only_call_it(sql, app_engine):
    user_id = make_user(sql)
    model_id = uuid.uuid4()
    with Session(app_engine) as s:
        audit.set_actor(s, user_id=user_id, request_id="req-9")
        event_id = audit.record(
            s,
            "model.downloaded",
            "model",
            model_id,
            "success",
            {"bytes": 10},
            subject_user_id=user_id,
        )
        s.commit()
    (row,) = events(sql, id=event_id)
    assert (row.action, row.entity_id, row.actor_user_id, row.request_id) == (
        "model.downloaded",
        model_id,
        user_id,
        "req-9",
    )
    assert row.detail == {"bytes": 10}
    with Session(app_engine) as s:
        # ML108 (an InvalidValue, as the table's checks gave before c17e00000001).
        for args, detail, field in [
            (("Not An Action", "model"), None, "action"),
            (("model." + "x" * 100, "model"), None, "action"),
            (("model.downloaded", "Model"), None, "entity_type"),
            (("model.downloaded", "m" * 51), None, "entity_type"),
            (("model.downloaded", "model"), {"x": "y" * 5000}, "detail"),
        ]:
            with pytest.raises(errors.InvalidAuditEvent) as info:
                audit.record(s, *args, model_id, detail=detail)
            assert info.value.sqlstate == "ML108"
            assert info.value.field == field
            assert isinstance(info.value, errors.InvalidValue)
            s.rollback()
        with pytest.raises(errors.InvalidAuditEvent):
            s.execute(text("SELECT audit_record('a.b', 'x', NULL, NULL, '[1]'::jsonb, NULL)"))
        s.rollback()
        with pytest.raises(errors.InvalidAuditEvent):
            s.execute(text("SELECT audit_record(NULL, 'x', NULL, NULL, NULL, NULL)"))
        s.rollback()
        with pytest.raises(ValueError):
            audit.record(s, "model.downloaded", "model", model_id, outcome="maybe")
    # No INSERT of its own: the time and the actor are the database's.
    with pytest.raises(errors.PermissionDenied):
        run_as(
            app_engine,
            "INSERT INTO audit_events (action, entity_type, occurred_at)"
            " VALUES ('user.deleted', 'user', '2000-01-01')",
        )
    # Nor into a partition directly.
    part = scalar(
        sql, "SELECT tableoid::regclass::text FROM audit_events WHERE id = :i", i=event_id
    )
    with pytest.raises(errors.PermissionDenied):
        run_as(app_engine, f"INSERT INTO {part} (action, entity_type) VALUES ('a.b', 'x')")


# =====================================================================================
# append-only
# =====================================================================================
def test_audit_rows_refuse_update_delete_and_truncate_for_everyone(
    sql, engine, session, app_engine
):
    user_id = make_user(sql)
    key_id = make_key(sql, user_id)
    (row,) = events(sql, entity_id=key_id)
    part = scalar(sql, "SELECT tableoid::regclass::text FROM audit_events WHERE id = :i", i=row.id)
    assert insert_at(sql, "2099-01-01 00:00:00+00")[1] == "audit_events_default"
    owner_cases = [
        "UPDATE audit_events SET action = 'api_key.deleted' WHERE id = :i",
        "UPDATE audit_events SET client_ip = NULL, user_agent = NULL WHERE id = :i",
        "DELETE FROM audit_events WHERE id = :i",
        f"UPDATE {part} SET detail = '{{}}' WHERE id = :i",
        f"DELETE FROM {part} WHERE id = :i",
        "DELETE FROM audit_events_default",
        "TRUNCATE audit_events",
        f"TRUNCATE {part}",
        "TRUNCATE audit_events_default",
    ]
    for statement in owner_cases:
        with pytest.raises(errors.AuditAppendOnly) as info:
            sql(statement, i=row.id)
        assert info.value.sqlstate == "ML105", statement
    # The apps' role: no privilege to begin with, whatever it sets.
    for statement in owner_cases[:3]:
        with pytest.raises(errors.PermissionDenied):
            run_as(app_engine, statement, i=row.id)
    with pytest.raises(errors.PermissionDenied):
        run_as(app_engine, "TRUNCATE audit_events")
    # Through the ORM.
    event = session.get(AuditEvent, (row.occurred_at, row.id))
    assert event is not None
    event.action = "api_key.deleted"
    with pytest.raises(errors.AuditAppendOnly):
        session.flush()
    session.rollback()
    event = session.get(AuditEvent, (row.occurred_at, row.id))
    session.delete(event)
    with pytest.raises(errors.AuditAppendOnly):
        session.flush()
    session.rollback()
    assert events(sql, entity_id=key_id) == [row]


def test_the_redaction_door_opens_for_nothing_else(sql, engine, app_engine):
    user_id = make_user(sql)
    with engine.begin() as conn:
        audit.set_actor(conn, user_id=user_id, client_ip="198.51.100.1", user_agent="ua")
        make_key(lambda s, **p: list(conn.execute(text(s), p)), user_id)
    (row,) = events(sql, actor_user_id=user_id)
    # The owner, with the setting, still cannot change anything else or delete.
    for statement in [
        "UPDATE audit_events SET client_ip = NULL, user_agent = NULL, action = 'a.b' WHERE id = :i",
        "UPDATE audit_events SET client_ip = '10.0.0.1' WHERE id = :i",
        "DELETE FROM audit_events WHERE id = :i",
    ]:
        with pytest.raises(errors.AuditAppendOnly):
            with_actor(engine, [statement.replace(":i", f"'{row.id}'")], audit_redact="on")
    # The apps' role: setting it gives nothing; the function refuses a user not purged.
    with pytest.raises(errors.PermissionDenied):
        with_actor(
            app_engine,
            [f"UPDATE audit_events SET client_ip = NULL, user_agent = NULL WHERE id = '{row.id}'"],
            audit_redact="on",
        )
    with pytest.raises(errors.AuditRedactionRefused) as info:
        run_as(app_engine, "SELECT public.audit_redact_user(:u)", u=user_id)
    assert info.value.sqlstate == "ML107"
    with pytest.raises(errors.AuditRedactionRefused):
        sql("SELECT public.audit_redact_user(:u)", u=user_id)  # the owner as well
    assert events(sql, actor_user_id=user_id) == [row]


def test_purge_redacts_ip_and_user_agent_of_the_purged_users_events(sql, engine, session):
    gone = make_user(sql)
    stays = make_user(sql)
    key_id = make_key(sql, gone)
    for actor in (gone, stays):
        with engine.begin() as conn:
            audit.set_actor(conn, user_id=actor, client_ip="192.0.2.9", user_agent="Firefox")
            conn.execute(
                text("UPDATE api_keys SET scopes = '{read,write}' WHERE id = :k"), {"k": key_id}
            )
            conn.execute(text("UPDATE api_keys SET scopes = '{read}' WHERE id = :k"), {"k": key_id})
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=40)
    lifecycle.soft_delete_user(session, gone, at=long_ago)
    report = lifecycle.purge(engine, remove_file=lambda _: False)
    assert report.users_purged == 1
    mine = events(sql, actor_user_id=gone)
    theirs = events(sql, actor_user_id=stays)
    assert len(mine) == 2 and len(theirs) == 2
    assert all(e.client_ip is None and e.user_agent is None for e in mine)
    assert all(str(e.client_ip) == "192.0.2.9" and e.user_agent == "Firefox" for e in theirs)
    # The rest of the trail stays: the key's deletion by the purge, with no actor.
    assert actions(sql, key_id)[-1] == "api_key.deleted"


# =====================================================================================
# partitions
# =====================================================================================
def insert_at(sql: Any, at: str) -> tuple[uuid.UUID, str]:
    row = sql(
        "INSERT INTO audit_events (action, entity_type, occurred_at)"
        " VALUES ('test.event', 'test', CAST(:at AS timestamptz))"
        " RETURNING id, tableoid::regclass::text",
        at=at,
    )[0]
    return row[0], row[1]


def test_the_workers_role_may_make_partitions_ahead(sql, app_engine):
    """The workers (the apps' role) call it periodically: EXECUTE is granted, and the
    DDL runs as the owner (SECURITY DEFINER)."""
    made = run_as(app_engine, "SELECT public.audit_events_ensure_partitions(now(), 6)")[0][0]
    assert made == 3  # months 4, 5 and 6 ahead; 0-3 and the DEFAULT are the migration's
    owners = {
        r[0]
        for r in sql(
            "SELECT DISTINCT c.relowner::regrole::text FROM pg_inherits AS i"
            " JOIN pg_class AS c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'audit_events'::regclass"
        )
    }
    assert owners == {"postgres"}
    with pytest.raises(errors.PermissionDenied):
        run_as(app_engine, "DROP TABLE audit_events_default")


def test_the_migration_made_this_month_three_ahead_and_a_default(sql, engine):
    with engine.connect() as conn:
        names = [p.name for p in audit.list_partitions(conn)]
    now = dt.datetime.now(dt.UTC)
    month = dt.datetime(now.year, now.month, 1, tzinfo=dt.UTC)
    expected = []
    for _ in range(4):
        expected.append(f"audit_events_p{month:%Y%m}")
        month = (month + dt.timedelta(days=32)).replace(day=1)
    assert names[:4] == expected and names[-1] == "audit_events_default"
    assert audit.ensure_partitions(engine) == 0  # idempotent


def test_calendar_edges_land_in_the_right_month_whatever_the_time_zone(sql, engine):
    audit.ensure_partitions(engine, at=dt.datetime(2027, 12, 15, tzinfo=dt.UTC), months_ahead=3)
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL TimeZone = 'Pacific/Kiritimati'"))  # UTC+14
        rows = {
            at: conn.execute(
                text(
                    "INSERT INTO audit_events (action, entity_type, occurred_at)"
                    " VALUES ('test.event', 'test', CAST(:at AS timestamptz))"
                    " RETURNING tableoid::regclass::text"
                ),
                {"at": at},
            ).scalar_one()
            for at in [
                "2027-12-31 23:59:59.999999+00",
                "2028-01-01 00:00:00+00",
                "2028-01-01 09:00:00+14",  # still 31 December in UTC
                "2028-02-29 23:59:59+00",  # a leap day
                "2028-03-01 00:00:00+00",
            ]
        }
    assert rows == {
        "2027-12-31 23:59:59.999999+00": "audit_events_p202712",
        "2028-01-01 00:00:00+00": "audit_events_p202801",
        "2028-01-01 09:00:00+14": "audit_events_p202712",
        "2028-02-29 23:59:59+00": "audit_events_p202802",
        "2028-03-01 00:00:00+00": "audit_events_p202803",
    }


def test_rows_beyond_the_partitions_are_kept_and_moved_when_their_month_is_made(sql, engine):
    far = [insert_at(sql, at) for at in ("2031-05-01 00:00:00+00", "2031-05-31 23:59:59+00")]
    later = insert_at(sql, "2031-06-01 00:00:00+00")
    assert {p for _, p in far} | {later[1]} == {"audit_events_default"}
    assert (
        audit.ensure_partitions(engine, at=dt.datetime(2031, 5, 9, tzinfo=dt.UTC), months_ahead=0)
        == 1
    )
    moved = {
        r[0]: r[1]
        for r in sql(
            "SELECT id, tableoid::regclass::text FROM audit_events WHERE action = 'test.event'"
        )
    }
    assert moved == {
        far[0][0]: "audit_events_p203105",
        far[1][0]: "audit_events_p203105",
        later[0]: "audit_events_default",
    }
    # The new partition is append-only too (the cloned row trigger and its own TRUNCATE
    # refusal), and the moving door is closed again.
    for statement in [
        "DELETE FROM audit_events_p203105",
        "TRUNCATE audit_events_p203105",
        "DELETE FROM audit_events_default",
    ]:
        with pytest.raises(errors.AuditAppendOnly):
            sql(statement)
    # The moving door: the owner's, for the DEFAULT partition only (the month
    # partitions stay closed with it); the apps' role has no privilege at all.
    with pytest.raises(errors.AuditAppendOnly):
        with_actor(engine, ["DELETE FROM audit_events_p203105"], audit_maintenance="on")
    with pytest.raises(errors.AuditAppendOnly):
        with_actor(
            engine, ["UPDATE audit_events_default SET detail = '{}'"], audit_maintenance="on"
        )
    with pytest.raises(DBAPIError, match="months ahead"):
        audit.ensure_partitions(engine, months_ahead=-1)


def test_concurrent_ensure_makes_each_partition_once(engine):
    at = dt.datetime(2033, 1, 10, tzinfo=dt.UTC)
    results: list[int] = []
    failures: list[BaseException] = []
    barrier = threading.Barrier(4)

    def work() -> None:
        try:
            barrier.wait(timeout=30)
            results.append(audit.ensure_partitions(engine, at=at, months_ahead=2))
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not failures
    assert sorted(results) == [0, 0, 0, 3]


def test_dropping_a_partition_is_the_way_out_and_delete_stays_refused(sql, engine):
    audit.ensure_partitions(engine, at=dt.datetime(2024, 1, 1, tzinfo=dt.UTC), months_ahead=1)
    old = insert_at(sql, "2024-01-15 00:00:00+00")
    kept = insert_at(sql, "2024-02-15 00:00:00+00")
    assert (old[1], kept[1]) == ("audit_events_p202401", "audit_events_p202402")
    dry = audit.drop_partitions_before(
        engine, dt.datetime(2024, 2, 20, tzinfo=dt.UTC), dry_run=True
    )
    assert dry == [("audit_events_p202401", 1)]
    dropped = audit.drop_partitions_before(engine, dt.datetime(2024, 2, 20, tzinfo=dt.UTC))
    assert dropped == [("audit_events_p202401", 1)]  # February is cut by the date: it stays
    assert scalar(sql, "SELECT count(*) FROM audit_events WHERE id = :i", i=old[0]) == 0
    assert scalar(sql, "SELECT count(*) FROM audit_events WHERE id = :i", i=kept[0]) == 1
    with pytest.raises(errors.AuditAppendOnly):
        sql("DELETE FROM audit_events WHERE id = :i", i=kept[0])
    with pytest.raises(ValueError):
        audit.drop_partitions_before(engine, dt.datetime(2024, 2, 20))


# =====================================================================================
# indexes: each query the trail serves uses one (migration c17c00000001)
# =====================================================================================
def _plan(engine: Engine, stmt: Any) -> str:
    from sqlalchemy.dialects import postgresql

    compiled = stmt.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True})
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL enable_seqscan = off"))
        return "\n".join(r[0] for r in conn.execute(text(f"EXPLAIN {compiled}")))


def test_the_trails_queries_use_the_light_indexes(sql, engine):
    from sqlalchemy import select

    user = make_user(sql)
    other = make_user(sql)
    # The usual kind (actor = subject: the user's own key) and another actor's act
    # on the user's key.
    key = make_key(sql, user)
    with_actor(
        engine, [f"UPDATE api_keys SET name = 'n' WHERE id = '{key}'"], actor_user_id=str(user)
    )
    with_actor(
        engine,
        [
            f"INSERT INTO api_keys (user_id, name, prefix, key_hash, scopes) VALUES ('{user}', 'a',"
            f" 'aml_zzzzzzzz', '{hashlib.sha256(b'x').hexdigest()}', ARRAY['read'])",
            f"UPDATE api_keys SET revoked_at = now() WHERE id = '{key}'",
        ],
        actor_user_id=str(other),
    )
    with_actor(
        engine,
        [f"UPDATE api_keys SET scopes = ARRAY['read', 'write'] WHERE id = '{key}'"],
        actor_user_id=str(user),
    )
    sql("ANALYZE audit_events")
    # (The partitions' copies of an index are named after it: <partition>_<columns>_idx.)
    own = _plan(engine, audit.visible_to(user))
    assert "subject_user_id_occurred_at" in own, own
    assert "actor_user_id_occurred_at" in own, own
    by_actor = _plan(engine, select(AuditEvent).where(audit.by_actor(other)))
    assert "actor_user_id_occurred_at" in by_actor, by_actor
    admin = _plan(
        engine,
        select(AuditEvent).order_by(AuditEvent.occurred_at.desc(), AuditEvent.id.desc()).limit(50),
    )
    assert "Index Scan Backward using audit_events_p" in admin and "_pkey" in admin, admin
    # The answers are the same as the plain "actor = u OR subject = u".
    with Session(engine) as s:
        mine = {e.id for e in s.scalars(audit.visible_to(user))}
        plain = {
            e.id
            for e in s.scalars(
                select(AuditEvent).where(
                    (AuditEvent.actor_user_id == user) | (AuditEvent.subject_user_id == user)
                )
            )
        }
        assert mine == plain and len(mine) >= 3
        theirs = {e.id for e in s.scalars(select(AuditEvent).where(audit.by_actor(other)))}
        assert theirs == {
            e.id for e in s.scalars(select(AuditEvent).where(AuditEvent.actor_user_id == other))
        }
        assert theirs
