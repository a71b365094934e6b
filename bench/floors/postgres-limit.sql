\set n random(1, 2000000000)
INSERT INTO floor.limit_keys SELECT md5(:client_id || '-' || :n || '-' || g) || '0000' FROM generate_series(1, 1000) g ON CONFLICT DO NOTHING;
