-- Account recovery by email. Codes are stored only as SHA-256 hashes: a leaked table grants no
-- resets. A used code is deleted; expired ones are deleted by the server now and then.
create table account_codes (
  code_hash bytea primary key,
  user_id uuid not null references users (id) on delete cascade,
  purpose text not null check (purpose in ('password_reset', 'verify_email')),
  created_at timestamptz not null default now(),
  expires_at timestamptz not null
);
create index account_codes_user_id_idx on account_codes (user_id, purpose);
create index account_codes_expires_at_idx on account_codes (expires_at);

-- What happened to an account, for the person who runs the server: resets, verifications.
create table account_events (
  id bigint generated always as identity primary key,
  user_id uuid not null references users (id) on delete cascade,
  kind text not null,
  ip text,
  user_agent text,
  created_at timestamptz not null default now()
);
create index account_events_user_id_idx on account_events (user_id, created_at);

-- When a rate-limited notice (the duplicate-registration mail) last went to an account.
create table account_notices (
  user_id uuid not null references users (id) on delete cascade,
  kind text not null,
  sent_at timestamptz not null,
  primary key (user_id, kind)
);

-- Accounts made before verification existed count as verified: turning REQUIRE_EMAIL_VERIFICATION
-- on must not lock every existing user out.
alter table users add column email_verified_at timestamptz;
update users set email_verified_at = created_at;
