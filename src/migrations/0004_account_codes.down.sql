alter table users drop column email_verified_at;
drop table account_notices;
drop table account_events;
drop table account_codes;
