-- The limit: the balance kept by hand in one statement, no trigger at all (the
-- project's triggers disabled on credit_transactions and users). The UPDATE locks
-- the user's row, checks and moves the balance; the INSERT takes the new balance.
-- The cheapest correct way to keep users.credit_balance: what any trigger is
-- measured against to say what the trigger itself costs.
\set u 1 + :client_id + :nclients * random(0, :per - 1)
WITH b AS (
    UPDATE users SET credit_balance = credit_balance - 1
     WHERE id = lpad(:u::text, 32, '0')::uuid AND credit_balance >= 1
    RETURNING id, credit_balance
)
INSERT INTO credit_transactions (user_id, type, amount, balance_after, description, actor)
SELECT id, 'adjustment', -1, credit_balance, 'bench charge', 'bench' FROM b;
