\set n random(1, 2000000000)
INSERT INTO floor.two SELECT md5(:client_id || '-' || :n || '-' || g) || '0000', false FROM generate_series(1, 1000) g ON CONFLICT DO NOTHING;
UPDATE floor.two SET done = true WHERE key IN (SELECT md5(:client_id || '-' || :n || '-' || g) || '0000' FROM generate_series(1, 1000) g);
