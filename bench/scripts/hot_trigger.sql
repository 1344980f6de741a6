-- One hot user: every client charges the same user through the trigger.
INSERT INTO credit_transactions (user_id, type, amount, description, actor)
VALUES (lpad(:hot::text, 32, '0')::uuid, 'adjustment', -1, 'bench hot', 'bench');
