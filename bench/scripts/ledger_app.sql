-- What users write without triggers (the project's triggers disabled on
-- credit_transactions and users): lock the user's row, insert the ledger row
-- with the balance computed by the application, update the balance; one
-- transaction, driven from the client.
\set u 1 + :client_id + :nclients * random(0, :per - 1)
BEGIN;
SELECT credit_balance AS bal FROM users WHERE id = lpad(:u::text, 32, '0')::uuid FOR UPDATE \gset
\set nb :bal - 1
INSERT INTO credit_transactions (user_id, type, amount, balance_after, description, actor)
VALUES (lpad(:u::text, 32, '0')::uuid, 'adjustment', -1, :nb, 'bench charge', 'bench');
UPDATE users SET credit_balance = :nb WHERE id = lpad(:u::text, 32, '0')::uuid;
COMMIT;
