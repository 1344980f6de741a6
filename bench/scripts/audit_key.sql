-- bench/audit.py, server side: a key's creation as POST /v1/api-keys makes it (the actor
-- set, one row); the variants differ only in api_keys_audit_insert being enabled.
BEGIN;
SELECT set_config('automl.actor', :setting, true);
INSERT INTO api_keys (user_id, name, prefix, key_hash, scopes) VALUES (:uid, 'b', 'aml_abcdefgh', md5(random()::text) || md5(random()::text), '{read,write}');
COMMIT;
