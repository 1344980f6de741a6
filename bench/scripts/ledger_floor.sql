-- The floor: the same INSERT with the project's triggers disabled (foreign-key
-- triggers stay); balance_after is given and users is not touched.
\set u 1 + :client_id + :nclients * random(0, :per - 1)
INSERT INTO credit_transactions (user_id, type, amount, balance_after, description, actor)
VALUES (lpad(:u::text, 32, '0')::uuid, 'adjustment', -1, 0, 'bench floor', 'bench');
