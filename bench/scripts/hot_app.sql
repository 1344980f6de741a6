-- One hot user, application-side pattern (triggers disabled).
BEGIN;
SELECT credit_balance AS bal FROM users WHERE id = lpad(:hot::text, 32, '0')::uuid FOR UPDATE \gset
\set nb :bal - 1
INSERT INTO credit_transactions (user_id, type, amount, balance_after, description, actor)
VALUES (lpad(:hot::text, 32, '0')::uuid, 'adjustment', -1, :nb, 'bench hot', 'bench');
UPDATE users SET credit_balance = :nb WHERE id = lpad(:hot::text, 32, '0')::uuid;
COMMIT;
