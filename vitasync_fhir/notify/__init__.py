"""E-mail notifications: an outbox written with the change that causes it, a Huey queue, and tasks
that send each e-mail once over SMTP (or into .eml files).

Callers use two functions, inside the unit of work of their change:

    await outbox.enqueue(session, kind=..., to=..., context={...}, dedup_key=...)
    await appointments.enqueue_appointment_email(session, kind=..., appointment={...})

Modules: tables (the outbox), outbox (enqueue, relay, requeue), queue (the Huey instance of a
configuration), tasks (send, relay, reminders; the exactly-once argument), mailer (SMTP and .eml),
messages and templates/ (rendering), appointments, reminders, worker (running the consumer),
commands (`worker`, `outbox-list`, `outbox-retry`).
"""
