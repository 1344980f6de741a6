def test_migrated(sql):
    assert sql("SELECT count(*) FROM users")[0][0] == 0
