"""Research donation: de-identification (DICOM PS3.15 Annex E), pure functions over pydicom.

- ``annex_e``: Table E.1-1 as data (``annex_e.csv``) and the options.
- ``pseudonyms``: keyed (HMAC) patient IDs, UIDs and date offsets per project.
- ``redaction``: best-effort cleaning of free text.
- ``deid``: ``deidentify(dataset, key, profile)`` -> Deidentified | Excluded.
- ``cli``: ``gateway deid IN_DIR OUT_DIR``.

Nothing here reaches the database, the PACS or a route; an import contract keeps it so.
"""
