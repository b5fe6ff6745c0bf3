-- One row per selective recovery, inserted in the recovery's own transaction. An undo needs proof
-- that the recovery committed in this database (not a record copied from elsewhere, nor one whose
-- apply never committed), the digest of the safety copy it wrote, and whether it was undone already.
create table recoveries (
  id uuid primary key,
  undo_sha256 text not null,
  applied_at timestamptz not null default now(),
  undone_at timestamptz
);
