import sys, time
from bench.server import BenchDatabase
from bench.ledger import create_users
from bench import billing as b
db = BenchDatabase()
try:
    create_users(db, 2000)
    print(db.sql("SELECT attname, format_type(atttypid, atttypmod), attlen, attalign FROM pg_attribute WHERE attrelid='credit_transactions'::regclass AND attnum>0 AND NOT attisdropped ORDER BY attnum"))
    print(db.sql("SELECT indexrelid::regclass, pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid='credit_transactions'::regclass"))
    print(db.sql("SELECT reloptions FROM pg_class WHERE relname='credit_transactions'"))
    w = b.ledger_weight(db, n=20000, n_users=2000, log=print)
    for k, v in w.items(): print(k, v["relations"])
    for kind in b.KINDS:
        b._fill(db, kind, 2000, 2000, ids="default")
        print(kind, db.sql("SELECT avg(pg_column_size(t.*)), avg(pg_column_size(description)), avg(pg_column_size(idempotency_key)) FROM credit_transactions t"))
    print(db.url)
    if len(sys.argv) > 1: time.sleep(3600)
finally:
    db.close()
