-- Schema version 2: the tables an application writes in its own transactions, beside the
-- events: messages to publish, messages already processed, and subscriber positions.

CREATE TABLE cairn_outbox (
    seq        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id         uuid NOT NULL UNIQUE,
    topic      text NOT NULL,
    key        text,
    headers    bytea NOT NULL,
    payload    bytea NOT NULL,
    created_us bigint NOT NULL
);

CREATE TABLE cairn_inbox (
    consumer     text COLLATE "C" NOT NULL,
    message_id   uuid NOT NULL,
    processed_us bigint NOT NULL,
    PRIMARY KEY (consumer, message_id)
);

CREATE TABLE cairn_checkpoints (
    subscriber  text COLLATE "C" PRIMARY KEY,
    position    bigint NOT NULL,
    updated_us  bigint NOT NULL
);
