-- bench/audit.py, server side: authentication's key lookup, with (actor=1) or without
-- (actor=0) the one set_config that names the audit actor (database.audit.ActorLookup).
BEGIN;
\if :actor
SELECT k.*, u.*, now(), set_config('automl.actor', concat(k.user_id::text, ' ', k.id::text, ' ', CAST(:rest AS text)), true) FROM api_keys AS k JOIN users AS u ON u.id = k.user_id WHERE k.key_hash = :hash;
\else
SELECT k.*, u.*, now() FROM api_keys AS k JOIN users AS u ON u.id = k.user_id WHERE k.key_hash = :hash;
\endif
COMMIT;
