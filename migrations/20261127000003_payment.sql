-- payment: one row per order charged. Only the card's last four digits are kept.
CREATE SCHEMA IF NOT EXISTS payment;

CREATE TABLE payment.payments (
    order_id        uuid PRIMARY KEY,
    payment_id      uuid   NOT NULL UNIQUE,
    amount_cents    bigint NOT NULL CHECK (amount_cents >= 0),
    card_last4      char(4) NOT NULL,
    status          text   NOT NULL CHECK (status IN ('approved', 'declined', 'failed')),
    decline_reason  text,
    created_at      timestamptz NOT NULL DEFAULT now()
);
