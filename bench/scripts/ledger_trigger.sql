-- The trigger path: one INSERT; credit_tx_before_insert locks the user's row,
-- checks the balance, sets balance_after and updates users.credit_balance.
-- Each client charges its own users (no two clients share a user).
\set u 1 + :client_id + :nclients * random(0, :per - 1)
INSERT INTO credit_transactions (user_id, type, amount, description, actor)
VALUES (lpad(:u::text, 32, '0')::uuid, 'adjustment', -1, 'bench charge', 'bench');
