"""Research donation (issue 14, phase 3): projects, patients' donation consents, delivery.

- ``projects``: research projects (name, protocol id, archive or download area,
  de-identification profile, the pseudonym key kept as a secret);
- ``consents``: a patient's donation to a project, per study or of all their
  studies (future ones included), and its withdrawal;
- ``copies``: a donated study's de-identified instances, one at a time, through
  the engine in ``gateway.research``;
- ``delivery``: deliveries to a project's archive as transfer jobs (the planner
  that queues them; the worker's destination and de-identifying transform);
- ``package``: a project's de-identified copies as one streamed ZIP;
- ``pull``: what a project's research backend client sees, pseudonymized on the fly;
- ``service``: ``Donation``, the one object the routes and the CLI use.

This is a service beside the records layer: it reaches the PACS only for
studies a patient donated (released to them, checked against their key), and
answers nothing but de-identified copies.
"""
