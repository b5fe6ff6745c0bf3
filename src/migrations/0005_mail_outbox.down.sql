drop index account_events_created_at_idx;
drop table mail_outbox;
