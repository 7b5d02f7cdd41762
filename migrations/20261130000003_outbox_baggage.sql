-- Baggage that services set travels with an event the relay publishes
-- later, as the trace context does.
ALTER TABLE ordering.outbox ADD COLUMN baggage text;
