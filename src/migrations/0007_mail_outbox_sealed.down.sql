alter table mail_outbox drop column sealed_body, drop column sealed_by;
