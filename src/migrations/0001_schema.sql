-- The app from the incident: users own worlds, worlds hold stories, stories hold ordered beats.
-- Foreign keys RESTRICT: deleting a user with data fails unless the data is deleted first, on purpose.

create table users (
  id uuid primary key default gen_random_uuid(),
  email text not null check (length(email) between 3 and 254),
  name text not null check (length(name) between 1 and 200),
  password_hash text not null,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
create unique index users_email_key on users (lower(email));

create table sessions (
  id uuid primary key default gen_random_uuid(),
  token_hash bytea not null unique,
  user_id uuid not null references users (id) on delete cascade,
  created_at timestamptz not null default now(),
  expires_at timestamptz not null,
  last_used_at timestamptz not null default now(),
  user_agent text,
  ip text
);
create index sessions_user_id_idx on sessions (user_id);
create index sessions_expires_at_idx on sessions (expires_at);

create table worlds (
  id uuid primary key default gen_random_uuid(),
  owner_id uuid not null references users (id) on delete restrict,
  name text not null,
  description text not null default '',
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
create index worlds_owner_id_idx on worlds (owner_id);

create table stories (
  id uuid primary key default gen_random_uuid(),
  world_id uuid not null references worlds (id) on delete restrict,
  title text not null,
  summary text not null default '',
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
create index stories_world_id_idx on stories (world_id);

create table story_beats (
  id uuid primary key default gen_random_uuid(),
  story_id uuid not null references stories (id) on delete restrict,
  position integer not null check (position >= 0),
  content text not null,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (story_id, position)
);

-- Failed-login counters, keyed by a hash of "account:<email>" or "ip:<address>": never an account.
create table login_throttle (
  key text primary key,
  failures integer not null,
  window_start timestamptz not null
);
create index login_throttle_window_start_idx on login_throttle (window_start);
