"""What the generated files hold, read with pydicom: the expectations of the API tests."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import Dataset, dcmread


@dataclass
class StudyFacts:
    uid: str
    first: Dataset
    series: set[str] = field(default_factory=set)
    instances: int = 0
    modalities: set[str] = field(default_factory=set)

    @property
    def patient_key(self) -> tuple[str, str]:
        return (str(self.first.get("IssuerOfPatientID", "") or ""), str(self.first.PatientID))

    @property
    def accession(self) -> str:
        return str(self.first.get("AccessionNumber", "") or "")


def read_catalog(files: list[Path]) -> dict[str, StudyFacts]:
    studies: dict[str, StudyFacts] = {}
    for path in files:
        ds = dcmread(path, stop_before_pixels=True)
        facts = studies.setdefault(
            str(ds.StudyInstanceUID), StudyFacts(str(ds.StudyInstanceUID), ds)
        )
        facts.series.add(str(ds.SeriesInstanceUID))
        facts.instances += 1
        facts.modalities.add(str(ds.Modality))
    return studies


def by_patient(studies: dict[str, StudyFacts]) -> dict[tuple[str, str], list[StudyFacts]]:
    grouped: dict[tuple[str, str], list[StudyFacts]] = defaultdict(list)
    for facts in studies.values():
        grouped[facts.patient_key].append(facts)
    return dict(grouped)
