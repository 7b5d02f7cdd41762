-- notification: one e-mail per processed event. The recipient is not kept.
CREATE SCHEMA IF NOT EXISTS notification;

CREATE TABLE notification.emails (
    event_id      uuid PRIMARY KEY,
    order_id      uuid NOT NULL,
    kind          text NOT NULL CHECK (kind IN ('confirmation', 'failure')),
    status        text NOT NULL CHECK (status IN ('sent', 'skipped')),
    created_at    timestamptz NOT NULL DEFAULT now()
);
