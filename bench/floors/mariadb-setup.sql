DROP DATABASE IF EXISTS floor;
CREATE DATABASE floor;
USE floor;
CREATE TABLE limit_keys (k VARBINARY(64) PRIMARY KEY) ENGINE = InnoDB;
CREATE TABLE two (k VARBINARY(64) PRIMARY KEY, done BOOLEAN NOT NULL) ENGINE = InnoDB;
-- As stores/mysql/migrations/0001_records.sql.
CREATE TABLE oncely_records (
    scope VARBINARY(255) NOT NULL, `key` VARBINARY(512) NOT NULL, completed BOOLEAN NOT NULL,
    token BIGINT NOT NULL, attempt INT NOT NULL, fingerprint BINARY(32) NULL,
    created_at BIGINT NOT NULL, expires_at BIGINT NOT NULL, outcome LONGBLOB NULL,
    PRIMARY KEY (scope, `key`), INDEX oncely_records_expires_at (expires_at)) ENGINE = InnoDB;
