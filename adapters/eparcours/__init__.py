"""e-parcours platforms: FHIR topic-based Subscriptions (R4B backport IG), rest-hook.

Regional platforms (Paaco-Globule, Prédice, MonSisra…) subscribe to care-pathway events
of their territory. Pieces: `topics` (the SubscriptionTopics), `filters` and `registry`
(pure rules: filters, status machine, event numbering), `resource` (the backport
Subscription resource), `notify` (notification Bundles, HMAC signature), `guard` and
`sender` (SSRF-safe rest-hook POST), `store` (durable on the compacted topic
care.subscriptions), `service` (life cycle, delivery, heartbeats), `api` (REST routes
under /fhir) and `deliver` (the channel in the delivery harness).

Wiring (composition root):

    service = await build_service(settings, producer, bootstrap=bootstrap)
    app.router.routes.extend(subscription_routes(service, token_authorizer(clients)))
    worker = EparcoursWorker(service, producer, retry=retry_policy(settings.eparcours))
    consumer = worker.consumer(bootstrap, settings.kafka, DELIVERY_EPARCOURS.name)
    asyncio.create_task(run_heartbeats(service, stop))

Routing creates one work item per (event, subscription): `service` implements the
`processors.routing.rules.Subscriptions` protocol (`service.matching(event_type,
case_parties, patient_ids)`), and `service.subscribers_for(bundle)` gives the same
recipients from an event Bundle. Delivery re-checks topic, filters and the patient's
opposition, so a stale routing decision never leaks an event.

Kafka-native alternative: a platform that can run a Kafka client inside the care
network does not need subscriptions at all. It reads `care.referral.events`,
`care.stay.events` and `care.expertise.events` directly with its own consumer group
(the value is the FHIR message Bundle, headers are CloudEvents `ce_*`, the key is the
case id so each case is ordered), commits after processing and deduplicates on `ce_id`:
the same at-least-once contract the bus's own consumers follow. Access is granted per
topic with Kafka ACLs; the filters above then run on the platform's side.
"""
