-- The trace context of the request that created a Class D transaction (a W3C traceparent):
-- its processing and its webhook continue that trace. Append-only.
ALTER TABLE transactions ADD COLUMN traceparent TEXT;
