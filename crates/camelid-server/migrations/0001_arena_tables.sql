-- The arena's first schema. IF NOT EXISTS: a database made before migrations were recorded
-- is taken as it is. An applied migration is checked by its text at every start: never edit
-- this file; change the schema in a new one.
CREATE TABLE IF NOT EXISTS arena_battles (
    id TEXT PRIMARY KEY,
    visitor TEXT NOT NULL,
    model_a TEXT NOT NULL,
    model_b TEXT NOT NULL,
    conversation_a TEXT NOT NULL,
    conversation_b TEXT NOT NULL,
    turns BIGINT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL);
CREATE INDEX IF NOT EXISTS arena_battles_expiry ON arena_battles (expires_at);
CREATE TABLE IF NOT EXISTS arena_votes (
    battle_id TEXT PRIMARY KEY,
    model_a TEXT NOT NULL,
    model_b TEXT NOT NULL,
    winner TEXT NOT NULL,
    anony BIGINT NOT NULL,
    tstamp DOUBLE PRECISION NOT NULL,
    judge TEXT NOT NULL,
    conversation_a TEXT NOT NULL,
    conversation_b TEXT NOT NULL,
    turn BIGINT NOT NULL);
CREATE INDEX IF NOT EXISTS arena_votes_order ON arena_votes (tstamp, battle_id);
CREATE TABLE IF NOT EXISTS arena_requests (
    kind TEXT NOT NULL,
    visitor TEXT NOT NULL,
    address TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL);
CREATE INDEX IF NOT EXISTS arena_requests_visitor ON arena_requests (kind, visitor, at);
CREATE INDEX IF NOT EXISTS arena_requests_address ON arena_requests (kind, address, at);
CREATE INDEX IF NOT EXISTS arena_requests_at ON arena_requests (at);
CREATE TABLE IF NOT EXISTS arena_answering (
    battle_id TEXT PRIMARY KEY,
    ends_by DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS arena_named (battle_id TEXT PRIMARY KEY);
