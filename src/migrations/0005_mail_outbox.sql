-- Mail to send, kept in the database: a mail is written in the transaction that makes what it
-- carries (a code), so it exists exactly when its code does, and a restart does not lose it.
-- Servers sharing the database take rows one at a time (claimed_until), and retry with a growing
-- wait. A sent or abandoned row keeps its envelope for a while (pruned) but loses its body, which
-- may carry a live code; a row past expires_at (its code's expiry) is abandoned unsent.
create table mail_outbox (
  id bigint generated always as identity primary key,
  to_address text not null,
  subject text not null,
  text_body text,
  html_body text,
  created_at timestamptz not null default now(),
  due_at timestamptz not null default now(),
  expires_at timestamptz,
  attempts int not null default 0,
  claimed_until timestamptz,
  sent_at timestamptz,
  failed_at timestamptz,
  last_error text
);
create index mail_outbox_due_idx on mail_outbox (due_at) where sent_at is null and failed_at is null;
create index mail_outbox_created_at_idx on mail_outbox (created_at);

-- Retention of the append-only history goes by age.
create index account_events_created_at_idx on account_events (created_at);
